//! The HTTP surface: the public API (`/v1/...`, behind API keys when configured) and the
//! operational endpoints (`/healthz`, `/readyz`, `/metrics`, `/stats`).
//!
//! # `/stats`
//!
//! `GET /stats[?window=30s]` (window: `500ms`, `30s`, `5m` or seconds; default the config's
//! `stats.window`, at most `--stats-retention`). Shape (`null` percentiles when the window holds
//! no request; latencies in milliseconds, from request to the end of the response body):
//!
//! ```json
//! {
//!   "window_seconds": 60.0,
//!   "config": {"sha256": "<hex of the config file>", "generation": 2,
//!              "loaded_at_unix_ms": 1764130000000, "last_error": null},
//!   "routes": {
//!     "support-bot": {
//!       "targets": {
//!         "stable": {
//!           "model": "support-bot-v1", "revision": "v1", "weight": 90, "share": 0.9,
//!           "backends": ["http://support-bot-v1:8000"],
//!           "window": {
//!             "requests": 120,
//!             "status": {"1xx": 0, "2xx": 118, "3xx": 0, "4xx": 1, "5xx": 1},
//!             "errors": {"5xx": 1, "timeout": 0, "connect": 0, "other": 0, "total": 1},
//!             "error_rate": 0.0083,
//!             "latency_ms": {"p50": 41.2, "p95": 180.5, "p99": 240.0}
//!           },
//!           "cumulative": {
//!             "requests": 5000,
//!             "status": {"1xx": 0, "2xx": 4990, "3xx": 0, "4xx": 4, "5xx": 6},
//!             "errors": {"5xx": 5, "timeout": 1, "connect": 0, "other": 0, "total": 6},
//!             "retries": 2
//!           }
//!         }
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! `routes` and `targets` follow the current configuration (file order); counters are kept per
//! (served name, target name) across reloads, so cumulative counts survive weight changes. Error
//! classes: `5xx` the backend answered 5xx; `timeout` no response headers within
//! `timeouts.request` (router answers 504); `connect` no connection on either attempt (502);
//! `other` any other transport failure. `errors.total` is their sum and `error_rate` is
//! `errors.total / requests`. `4xx` answers are not errors. `retries` counts connection failures
//! that were retried on another URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::config::parse_duration;
use crate::error::ApiError;
use crate::proxy;
use crate::state::AppState;

/// The public API. With `with_ops`, also the operational endpoints (no admin listener).
pub fn app(state: Arc<AppState>, with_ops: bool) -> Router {
    let api = Router::new()
        .route(
            "/v1/chat/completions",
            post(proxy::completions).fallback(proxy::method_not_allowed),
        )
        .route(
            "/v1/completions",
            post(proxy::completions).fallback(proxy::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(proxy::list_models).fallback(proxy::method_not_allowed),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let api = if with_ops {
        api.merge(ops_routes())
    } else {
        api
    };
    api.fallback(proxy::not_found).with_state(state)
}

/// The admin listener: operational endpoints only.
pub fn admin_app(state: Arc<AppState>) -> Router {
    ops_routes()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(proxy::not_found)
        .with_state(state)
}

fn ops_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once a configuration is loaded, which is before the listener opens.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let snap = state.snapshot();
    (
        StatusCode::OK,
        format!("ready: config generation {}\n", snap.generation),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn stats(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let snap = state.snapshot();
    let window = match query.get("window") {
        None => snap.config.stats_window,
        Some(w) => match parse_duration(w) {
            Some(d) => d,
            None => {
                return ApiError::InvalidRequest(format!(
                    "window: expected a duration such as 30s or 5m, got {w:?}"
                ))
                .into_response();
            }
        },
    }
    .min(state.stats.retention());
    let now = Instant::now();
    let mut routes = Map::new();
    for name in &snap.config.route_order {
        let Some(route) = snap.config.routes.get(name) else {
            continue;
        };
        let total: u64 = route.targets.iter().map(|t| u64::from(t.weight)).sum();
        let mut targets = Map::new();
        for t in &route.targets {
            let (window_json, cumulative_json) =
                state.stats.target(name, &t.name).to_json(now, window);
            let share = if total == 0 {
                0.0
            } else {
                f64::from(t.weight) / total as f64
            };
            targets.insert(
                t.name.clone(),
                json!({
                    "model": t.model,
                    "revision": t.revision,
                    "weight": t.weight,
                    "share": share,
                    "backends": t.backends,
                    "window": window_json,
                    "cumulative": cumulative_json,
                }),
            );
        }
        routes.insert(name.clone(), json!({ "targets": Value::Object(targets) }));
    }
    let loaded_at_ms = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    axum::Json(json!({
        "window_seconds": window.as_secs_f64(),
        "config": {
            "sha256": snap.sha256,
            "generation": snap.generation,
            "loaded_at_unix_ms": loaded_at_ms,
            "last_error": state.last_error(),
        },
        "routes": Value::Object(routes),
    }))
    .into_response()
}
