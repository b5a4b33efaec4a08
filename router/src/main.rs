//! `tailor-router --config FILE --listen ADDR [--admin-listen ADDR]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tailor_router::config::parse_duration;
use tailor_router::state::AppState;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "tailor-router",
    version,
    about = "OpenAI-aware reverse proxy with weighted, user-sticky splits"
)]
struct Cli {
    /// Configuration file (YAML), re-read when it changes.
    #[arg(long, env = "TAILOR_ROUTER_CONFIG")]
    config: PathBuf,
    /// Address of the API listener.
    #[arg(long, env = "TAILOR_ROUTER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Separate listener for /metrics, /stats, /healthz, /readyz. Without it they are served
    /// on the API listener.
    #[arg(long, env = "TAILOR_ROUTER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// How often the configuration file is checked for changes.
    #[arg(long, env = "TAILOR_ROUTER_RELOAD_INTERVAL", default_value = "1s", value_parser = duration)]
    reload_interval: Duration,
    /// Longest window `/stats?window=` can ask for (also how long request samples are kept).
    #[arg(long, env = "TAILOR_ROUTER_STATS_RETENTION", default_value = "10m", value_parser = duration)]
    stats_retention: Duration,
    /// After SIGTERM, how long in-flight requests may take before the process exits.
    #[arg(long, env = "TAILOR_ROUTER_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let retention = cli.stats_retention;
    let state = AppState::load(&cli.config, retention)
        .with_context(|| format!("loading {}", cli.config.display()))?;
    let snap = state.snapshot();
    tracing::info!(
        routes = snap.config.routes.len(),
        auth = snap.config.api_keys.is_some(),
        sha256 = %snap.sha256,
        "configuration loaded"
    );
    drop(snap);

    let reload_state = state.clone();
    let interval = cli.reload_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = reload_state.clone();
            match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    let snap = reload_state.snapshot();
                    tracing::info!(generation = snap.generation, sha256 = %snap.sha256, "configuration reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "configuration rejected; keeping the previous one")
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    });

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let api = tailor_router::app::app(state.clone(), cli.admin_listen.is_none());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let admin = match cli.admin_listen {
        Some(addr) => {
            let admin_listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
            let app = tailor_router::app::admin_app(state.clone());
            let rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                axum::serve(admin_listener, app)
                    .with_graceful_shutdown(wait_stop(rx))
                    .await
            }))
        }
        None => None,
    };

    let drain = cli.drain_timeout;
    let server = axum::serve(listener, api).with_graceful_shutdown(wait_stop(stop_rx.clone()));
    let server = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        let _ = server.await;
        if let Some(a) = admin {
            let _ = a.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached with requests still in flight");
    }
    Ok(())
}
