//! `tailor-sim up` serves a simulated cluster until SIGTERM; `tailor-sim bench` measures it.

use clap::{Parser, Subcommand};
use tailor_sim::up::UpArgs;

#[derive(Parser)]
#[command(
    name = "tailor-sim",
    about = "A local Kubernetes API stand-in with simulated GPU nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a simulated cluster until SIGTERM/SIGINT.
    Up(UpArgs),
    /// Start a throwaway cluster, create custom objects under several watchers, print latency and memory.
    Bench(tailor_sim::bench::BenchArgs),
}

async fn until_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAILOR_SIM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Up(a) => rt.block_on(tailor_sim::up::up(a, until_signal())),
        Cmd::Bench(b) => rt.block_on(tailor_sim::bench::run(b)),
    }
}
