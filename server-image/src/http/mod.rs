//! The HTTP API, split by concern:
//! - [`openai`]: OpenAI request types, parsed once, and their validation into a job;
//! - [`completions`]: `/v1/chat/completions` and `/v1/completions`, non-streamed responses;
//! - [`stream`]: SSE responses (a failure after the first byte is an SSE error event);
//! - [`adapters`]: `/v1/models`, vLLM's runtime LoRA API and the deprecated `/admin/adapters`;
//! - [`probes`]: `/health`, `/ready`, `/metrics`;
//! - [`extract`]: the JSON body extractor (size and time bounds, errors in our shape);
//! - [`track`]: per-request metrics and the in-flight bound.
//!
//! [`app`] builds the router: the OpenAI API, the LoRA API and the admin API behind the API key
//! (when `--api-key-file` is set); probes and metrics open.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use sha2::{Digest, Sha256};
use tailor_model::{ChatTemplate, Tokenizer};
use tailor_wire::server::FaultInjection;
use tokio::sync::{Semaphore, mpsc};

use crate::adapters::Registry;
use crate::engine::{EngineStats, GenRequest};
use crate::error::ApiError;
use crate::health::EngineHealth;
use crate::metrics::{EngineView, Metrics};

pub mod adapters;
pub mod completions;
pub mod extract;
pub mod openai;
pub mod probes;
pub mod stream;
pub mod track;

#[cfg(test)]
mod tests;

/// Accepted API keys, held as SHA-256 digests (the keys themselves are never kept or logged).
#[derive(Clone, Default)]
pub struct ApiKeys(HashSet<[u8; 32]>);

impl ApiKeys {
    /// One key per line; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        )
    }

    pub fn accepts(&self, key: &str) -> bool {
        self.0
            .contains(&<[u8; 32]>::from(Sha256::digest(key.as_bytes())))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

pub struct AppState {
    pub served_name: RwLock<String>,
    /// The base model's directory (`root` in `/v1/models`).
    pub model_dir: PathBuf,
    pub registry: Arc<Registry>,
    /// Adapters by URI (the LoRA API's `lora_path`).
    pub remote: Arc<crate::remote::RemoteAdapters>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub engine: mpsc::Sender<GenRequest>,
    pub stats: Arc<EngineStats>,
    pub health: Arc<EngineHealth>,
    pub metrics: Metrics,
    pub max_seq: usize,
    pub max_batch: usize,
    pub max_body: usize,
    pub body_read_timeout: Duration,
    /// Completion requests in flight (`--max-in-flight` permits).
    pub in_flight: Arc<Semaphore>,
    pub api_keys: RwLock<Option<ApiKeys>>,
    pub fault: RwLock<FaultInjection>,
    /// TEST-ONLY: the engine's panic step (0: off), from the config file's fault injection.
    pub engine_panic_at_step: Arc<AtomicU64>,
    /// TEST-ONLY: fixed responses given so far (which one comes next).
    pub fixed_served: std::sync::atomic::AtomicUsize,
    pub draining: AtomicBool,
    pub created: u64,
    /// Standing in for vLLM: its routes, probes and LoRA checks (see [`crate::vllm`]).
    pub vllm: Option<crate::vllm::VllmMode>,
}

impl AppState {
    pub fn served_name(&self) -> String {
        self.served_name
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn fault(&self) -> FaultInjection {
        self.fault.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// What `/metrics` reads of the engine.
    pub fn engine_view(&self) -> EngineView<'_> {
        EngineView {
            stats: &self.stats,
            served_name: self.served_name(),
            max_lora: self.registry.max_loaded(),
            kv_capacity: (self.max_batch * self.max_seq) as u64,
            loaded_adapters: self.registry.loaded_count(),
        }
    }
}

pub type Shared = Arc<AppState>;

pub fn app(state: Shared) -> Router {
    let openai_api = Router::new()
        .route("/v1/models", get(adapters::models))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions));
    let lora_api = Router::new()
        .route("/v1/load_lora_adapter", post(adapters::load_lora_adapter))
        .route(
            "/v1/unload_lora_adapter",
            post(adapters::unload_lora_adapter),
        );
    let admin_api = Router::new()
        .route(
            "/admin/adapters",
            get(adapters::list_adapters).post(adapters::add_adapter),
        )
        .route("/admin/adapters/{name}", delete(adapters::delete_adapter));
    let mut authenticated = Router::new().merge(openai_api);
    let mut probes = Router::new().route("/metrics", get(probes::metrics));
    match &state.vllm {
        None => {
            authenticated = authenticated.merge(lora_api).merge(admin_api);
            probes = probes
                .route("/health", get(probes::health))
                .route("/ready", get(probes::ready));
        }
        Some(v) => {
            if v.runtime_lora_updating {
                authenticated = authenticated.merge(lora_api);
            }
            probes = probes.route("/health", get(probes::vllm_health));
        }
    }
    let authenticated =
        authenticated.route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(authenticated)
        .merge(probes)
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let keys = s.api_keys.read().ok().and_then(|k| k.clone());
    if let Some(keys) = keys {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|k| keys.accepts(k)) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}
