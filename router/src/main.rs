//! `tailor-router --config FILE --listen ADDR [--admin-listen ADDR] [...]` (router/README.md
//! lists every flag; `--help` too).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tailor_router::serve::{Limits, serve};
use tailor_router::state::{AppState, Settings};
use tailor_router::tokens::TokenFile;
use tailor_wire::router::parse_duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (what log collectors in a cluster want).
    Json,
}

/// Durations on every flag are written `500ms`, `30s`, `5m` or `1h 30m`.
#[derive(Debug, Parser)]
#[command(
    name = "tailor-router",
    version,
    about = "OpenAI-aware reverse proxy with weighted, user-sticky splits"
)]
struct Cli {
    /// Configuration file (YAML or JSON), re-read when it changes.
    #[arg(long, env = "TAILOR_ROUTER_CONFIG")]
    config: PathBuf,
    /// Address of the API listener.
    #[arg(long, env = "TAILOR_ROUTER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Separate listener for /metrics, /stats, /healthz, /readyz. Without it they are served
    /// on the API listener.
    #[arg(long, env = "TAILOR_ROUTER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// How often the configuration and token files are checked for changes.
    #[arg(long, env = "TAILOR_ROUTER_RELOAD_INTERVAL", default_value = "1s", value_parser = duration)]
    reload_interval: Duration,
    /// Longest window `/stats?window=` can ask for (also how long request samples are kept).
    #[arg(long, env = "TAILOR_ROUTER_STATS_RETENTION", default_value = "10m", value_parser = duration)]
    stats_retention: Duration,
    /// After SIGTERM, how long in-flight requests may take before the process exits.
    #[arg(long, env = "TAILOR_ROUTER_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// File holding the token sent to the backends as `Authorization: Bearer <token>` (a
    /// Secret volume; re-read when it changes). Clients' own credentials are never forwarded.
    #[arg(long, env = "TAILOR_ROUTER_BACKEND_TOKEN_FILE")]
    backend_token_file: Option<PathBuf>,
    /// File holding the token `/stats` requires as `Authorization: Bearer <token>` (re-read
    /// when it changes). Without it `/stats` is open.
    #[arg(long, env = "TAILOR_ROUTER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// A request's headers must arrive within this time of its first byte (a new connection's
    /// first request: of its opening); else the connection is closed.
    #[arg(long, env = "TAILOR_ROUTER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// A request body must arrive, whole, within this time; else 408 and the connection closes.
    #[arg(long, env = "TAILOR_ROUTER_BODY_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    body_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this time, and so
    /// is one whose client reads nothing of its response for this long. Keep it above the idle
    /// timeout of any load balancer in front.
    #[arg(long, env = "TAILOR_ROUTER_IDLE_TIMEOUT", default_value = "90s", value_parser = duration)]
    idle_timeout: Duration,
    /// Most client connections open per listener; more wait in the accept backlog.
    #[arg(long, env = "TAILOR_ROUTER_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Most proxied requests in progress (streams until their end); more are answered 429.
    #[arg(long, env = "TAILOR_ROUTER_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,
    /// Log lines as text or JSON. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "TAILOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
}

fn token_file(path: Option<&PathBuf>) -> anyhow::Result<Option<TokenFile>> {
    path.map(|p| TokenFile::load(p).map_err(anyhow::Error::from))
        .transpose()
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
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let settings = Settings {
        stats_retention: cli.stats_retention,
        body_read_timeout: cli.body_read_timeout,
        max_in_flight: cli.max_in_flight as usize,
        backend_token: token_file(cli.backend_token_file.as_ref())?,
        admin_token: token_file(cli.admin_token_file.as_ref())?,
    };
    let state = AppState::load(&cli.config, settings)
        .with_context(|| format!("loading {}", cli.config.display()))?;
    let snap = state.snapshot();
    tracing::info!(
        routes = snap.config.routes.len(),
        auth = snap.config.api_keys.is_some(),
        backend_token = state.backend_token.is_some(),
        admin_token = state.admin_token.is_some(),
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
            let reloaded = tokio::task::spawn_blocking(move || {
                s.reload_tokens();
                s.reload_if_changed()
            })
            .await;
            match reloaded {
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

    let limits = Limits {
        header_read_timeout: cli.header_read_timeout,
        idle_timeout: cli.idle_timeout,
        max_connections: cli.max_connections as usize,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let api = tailor_router::app::app(state.clone(), cli.admin_listen.is_none());

    let admin = match cli.admin_listen {
        Some(addr) => {
            let admin_listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
            let app = tailor_router::app::admin_app(state.clone());
            let (rx, state) = (stop_rx.clone(), state.clone());
            Some(tokio::spawn(async move {
                serve(admin_listener, app, limits, &state.metrics, wait_stop(rx)).await
            }))
        }
        None => None,
    };

    let (rx, api_state) = (stop_rx.clone(), state.clone());
    let server = tokio::spawn(async move {
        serve(listener, api, limits, &api_state.metrics, wait_stop(rx)).await
    });
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(cli.drain_timeout, async {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_and_an_env_fallback() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                "--{id} has no help text"
            );
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert!(env.starts_with("TAILOR_"), "--{id} has no env fallback");
            checked += 1;
        }
        assert_eq!(checked, 14);
    }

    #[test]
    fn every_duration_flag_reads_one_format() {
        let flags = [
            "--reload-interval",
            "--stats-retention",
            "--drain-timeout",
            "--header-read-timeout",
            "--body-read-timeout",
            "--idle-timeout",
        ];
        for flag in flags {
            let cli = Cli::try_parse_from(["tailor-router", "--config", "c.yaml", flag, "1m 30s"])
                .unwrap_or_else(|e| panic!("{flag}: {e}"));
            let parsed = [
                cli.reload_interval,
                cli.stats_retention,
                cli.drain_timeout,
                cli.header_read_timeout,
                cli.body_read_timeout,
                cli.idle_timeout,
            ];
            assert!(parsed.contains(&Duration::from_secs(90)), "{flag}");
            for bad in ["90", "0s", "soon"] {
                let e = Cli::try_parse_from(["tailor-router", "--config", "c.yaml", flag, bad])
                    .expect_err(bad)
                    .to_string();
                assert!(
                    e.contains(flag) && e.contains("duration"),
                    "{flag} {bad}: {e}"
                );
            }
        }
        let cli = Cli::try_parse_from(["tailor-router", "--config", "c.yaml"]).expect("defaults");
        assert_eq!(cli.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cli.body_read_timeout, Duration::from_secs(30));
        assert_eq!(cli.idle_timeout, Duration::from_secs(90));
        assert_eq!((cli.max_connections, cli.max_in_flight), (4096, 1024));
        assert_eq!(cli.log_format, LogFormat::Text);
        let e = Cli::try_parse_from(["tailor-router", "--config", "c", "--max-in-flight", "0"])
            .expect_err("zero");
        assert!(e.to_string().contains("--max-in-flight"), "{e}");
    }
}
