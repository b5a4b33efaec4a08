//! Probes and metrics, open without an API key. `/ready` fails while the model loads, while
//! draining, and at once when the engine dies; `/health` fails once the engine has been dead for
//! `--engine-failure-grace` (the kubelet then restarts the pod).

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;

pub async fn health(State(s): State<Shared>) -> Response {
    if s.health.alive(Instant::now()) {
        (StatusCode::OK, "ok").into_response()
    } else {
        let why = s.health.unavailable().unwrap_or_default();
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

/// `/health` standing in for vLLM, whose server listens only once the model is loaded and
/// answers 503 once its engine is dead.
pub async fn vllm_health(State(s): State<Shared>) -> Response {
    match s.health.unavailable() {
        None => StatusCode::OK.into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

pub async fn ready(State(s): State<Shared>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match s.health.unavailable() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

pub async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(&s.engine_view()),
    )
        .into_response()
}
