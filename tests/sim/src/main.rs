//! `tailor-sim up` serves a simulated cluster until SIGTERM; `tailor-sim bench` measures it.

use std::path::PathBuf;
use std::time::Duration;

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

/// From the signal on, the process ends within `limit` whatever happens: a test or a demo that
/// stops the simulator must never wait for ever. Past the limit the containers are killed from
/// their records and the process exits with an error.
fn watchdog(state_dir: PathBuf, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            ?limit,
            "shutdown did not finish in time: killing the containers and exiting"
        );
        tailor_sim::kubelet::process::kill_recorded_containers(&state_dir, false);
        std::process::exit(1);
    });
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
    let res = match cli.cmd {
        Cmd::Up(a) => {
            let (state_dir, limit) = (
                a.state_dir.clone(),
                a.shutdown_grace_period + Duration::from_secs(30),
            );
            rt.block_on(tailor_sim::up::up(a, async move {
                until_signal().await;
                watchdog(state_dir, limit);
            }))
        }
        Cmd::Bench(b) => rt.block_on(tailor_sim::bench::run(b)),
    };
    // Tasks still running (watch streams, proxies) are dropped; a blocking task (a file read)
    // is not waited for, as dropping the runtime would.
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}
