//! The HTTP surface: the public API (`/v1/...`, behind API keys when configured) and the
//! operational endpoints (`/healthz`, `/readyz`, `/metrics`, `/stats`).
//!
//! `/stats` answers `tailor_wire::router::Stats` (router/README.md shows it): per target of the
//! current configuration, in file order, counters kept per (served name, target name) across
//! reloads. With `--admin-token-file` it requires `Authorization: Bearer <admin token>`;
//! `/metrics`, `/healthz` and `/readyz` stay open for Prometheus and the kubelet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use indexmap::IndexMap;
use tailor_wire::router as wire;

use crate::config::parse_duration;
use crate::error::ApiError;
use crate::proxy;
use crate::state::{AppState, Snapshot};

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
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(token) = &state.admin_token
        && !token.accepts(&headers)
    {
        let e = if crate::auth::presented_key(&headers).is_some() {
            ApiError::InvalidAdminToken
        } else {
            ApiError::MissingAdminToken
        };
        return proxy::reject(&state, e);
    }
    let snap = state.snapshot();
    let window = match query.get("window") {
        None => snap.config.stats_window,
        Some(w) => match parse_duration(w) {
            Ok(d) => d,
            Err(e) => {
                return ApiError::InvalidRequest(format!("window: {e}")).into_response();
            }
        },
    }
    .min(state.stats.retention());
    axum::Json(stats_of(&state, &snap, window, Instant::now())).into_response()
}

/// The `/stats` answer for `window`.
fn stats_of(state: &AppState, snap: &Snapshot, window: Duration, now: Instant) -> wire::Stats {
    let mut routes = IndexMap::new();
    for name in &snap.config.route_order {
        let Some(route) = snap.config.routes.get(name) else {
            continue;
        };
        let total: u64 = route.targets.iter().map(|t| u64::from(t.weight)).sum();
        let mut targets = IndexMap::new();
        for t in &route.targets {
            let (window, cumulative) = state.stats.target(name, &t.name).to_wire(now, window);
            let share = if total == 0 {
                0.0
            } else {
                f64::from(t.weight) / total as f64
            };
            targets.insert(
                t.name.clone(),
                wire::TargetStats {
                    model: t.model.clone(),
                    revision: t.revision.clone(),
                    weight: t.weight,
                    share,
                    backends: t.backends.clone(),
                    window,
                    cumulative,
                },
            );
        }
        routes.insert(name.clone(), wire::RouteStats { targets });
    }
    let loaded_at_unix_ms = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    wire::Stats {
        window_seconds: window.as_secs_f64(),
        config: wire::ConfigStatus {
            sha256: snap.sha256.clone(),
            generation: snap.generation,
            loaded_at_unix_ms,
            last_error: state.last_error(),
        },
        routes,
    }
}
