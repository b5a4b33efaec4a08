//! `tailor-operator`: reconciles Datasets, FineTuneJobs and LoraAdapters (see the crate docs).
//!
//! Runs in-cluster with its ServiceAccount (or with a kubeconfig outside), reads
//! `--config operator.json`, serves `/metrics`, `/healthz`, `/readyz`, and runs the controllers
//! only while it holds the leader Lease.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tailor_operator::config::OperatorConfig;
use tailor_operator::context::Context;
use tailor_operator::controllers;
use tailor_operator::http::{self, HttpState};
use tailor_operator::leader::LeaderElector;
use tailor_operator::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "tailor-operator",
    version,
    about = "tailor's Kubernetes operator"
)]
struct Cli {
    /// The operator's JSON config (trainerImage, artifactsMount, listen, ...).
    #[arg(long, env = "TAILOR_OPERATOR_CONFIG")]
    config: PathBuf,
    /// Overrides `listen` of the config.
    #[arg(long, env = "TAILOR_OPERATOR_LISTEN")]
    listen: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tailor-system")]
    namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "tailor-operator")]
    lease_name: String,
    /// How long a Lease holds without renewal (`15s`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines; the
    /// install manifests set json.
    #[arg(long, env = "TAILOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // reqwest and kube both link rustls; pick the one provider the workspace builds.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .init(),
    }
    let mut cfg = OperatorConfig::load(&cli.config)?;
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    cfg.operator_namespace = cli.namespace.clone();
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, "serving /metrics, /healthz, /readyz");
    let app = http::app(HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or kubeconfig)")?;
    client
        .apiserver_version()
        .await
        .context("the Kubernetes API does not answer")?;
    let identity = cli
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("tailor-operator-{}", std::process::id()));
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &cli.namespace),
        &cli.lease_name,
        &identity,
        cli.lease_duration,
    );
    // A standby replica is healthy and ready: it serves metrics and waits for the Lease.
    ready.store(true, Ordering::Relaxed);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown_signal() => return Ok(()),
    }
    metrics.set_leader(true);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tailor-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(client, cfg, metrics.clone(), recorder));
    let runs = controllers::ALL.iter().map(|(name, run)| {
        tracing::info!(controller = name, "starting controller");
        run(ctx.clone())
    });
    let lost = tokio::select! {
        _ = futures::future::join_all(runs) => false,
        _ = elector.hold() => true,
    };
    metrics.set_leader(false);
    if lost {
        anyhow::bail!("lost the leader Lease; exiting so that only one replica reconciles");
    }
    elector.release().await;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
