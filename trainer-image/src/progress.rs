//! Live progress while training: `GET /progress` (JSON) and `GET /metrics` (Prometheus text),
//! served from a background thread so the training loop never waits on a scrape.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use tailor_wire::train::{Phase, Progress};

struct Metrics {
    registry: Registry,
    step: Gauge,
    total_steps: Gauge,
    epoch: Gauge,
    train_loss: Gauge<f64, AtomicU64>,
    validation_loss: Gauge<f64, AtomicU64>,
    tokens_per_second: Gauge<f64, AtomicU64>,
    tokens: Counter,
}

/// Shared between the training loop (writer) and the HTTP server (reader).
#[derive(Clone)]
pub struct ProgressHandle {
    progress: Arc<Mutex<Progress>>,
    metrics: Arc<Metrics>,
}

impl Default for ProgressHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressHandle {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tailor_trainer");
        let m = Metrics {
            step: Gauge::<i64, AtomicI64>::default(),
            total_steps: Gauge::<i64, AtomicI64>::default(),
            epoch: Gauge::<i64, AtomicI64>::default(),
            train_loss: Gauge::default(),
            validation_loss: Gauge::default(),
            tokens_per_second: Gauge::default(),
            tokens: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("step", "Optimizer steps completed", m.step.clone());
        registry.register(
            "total_steps",
            "Optimizer steps planned",
            m.total_steps.clone(),
        );
        registry.register("epoch", "Current epoch (0-based)", m.epoch.clone());
        registry.register(
            "train_loss",
            "Mean token cross-entropy of the last step",
            m.train_loss.clone(),
        );
        registry.register(
            "validation_loss",
            "Mean token cross-entropy on the validation set",
            m.validation_loss.clone(),
        );
        registry.register(
            "tokens_per_second",
            "Training throughput (non-padding tokens per second)",
            m.tokens_per_second.clone(),
        );
        registry.register("tokens", "Non-padding tokens trained on", m.tokens.clone());
        Self {
            progress: Arc::new(Mutex::new(Progress {
                phase: Phase::Starting,
                ..Progress::default()
            })),
            metrics: Arc::new(Metrics { registry, ..m }),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        let m = &self.metrics;
        m.step.set(p.step as i64);
        m.total_steps.set(p.total_steps as i64);
        m.epoch.set(p.epoch as i64);
        if let Some(l) = p.train_loss {
            m.train_loss.set(l);
        }
        if let Some(l) = p.validation_loss {
            m.validation_loss.set(l);
        }
        m.tokens_per_second.set(p.tokens_per_second);
    }

    pub fn add_tokens(&self, n: u64) {
        self.metrics.tokens.inc_by(n);
    }

    pub fn snapshot(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn render_metrics(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.metrics.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn progress(State(h): State<ProgressHandle>) -> impl IntoResponse {
    axum::Json(h.snapshot())
}

async fn metrics(State(h): State<ProgressHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.render_metrics(),
    )
}

pub fn app(handle: ProgressHandle) -> Router {
    Router::new()
        .route("/progress", get(progress))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(handle)
}

/// Binds `addr` now (so a taken port fails the run at once) and serves in a background thread.
pub fn serve(addr: &str, handle: ProgressHandle) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--progress-listen {addr:?} is not HOST:PORT"))?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("progress-http".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app(handle)).await {
                            tracing::warn!(error = %e, "progress server stopped");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "progress server could not start"),
                }
            });
        })?;
    Ok(local)
}
