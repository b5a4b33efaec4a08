//! `tailor-local-s3`: the tests' local S3 server as a process (for `scripts/bench-fetch.sh`).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tailor-local-s3",
    version,
    about = "A local S3-compatible server (s3s-fs) for tests and benchmarks"
)]
struct Cli {
    /// Directory holding the buckets (one subdirectory each).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Access key id clients must sign with.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    /// Secret key clients must sign with.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Buckets to create at start.
    #[arg(long)]
    bucket: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let s3 = tailor_local_s3::LocalS3::start_on(
        cli.listen,
        &cli.root,
        &cli.access_key,
        &cli.secret_key,
    )?;
    for b in &cli.bucket {
        s3.create_bucket(b)?;
    }
    println!("{}", s3.endpoint());
    loop {
        std::thread::park();
    }
}
