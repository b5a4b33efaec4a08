//! `tailor-sim bench`: placeholder replaced below.
#[derive(clap::Parser, Clone)]
pub struct BenchArgs {
    /// Custom objects to create.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 5)]
    pub watchers: usize,
}

pub async fn run(_a: BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
