//! One completion request's bookkeeping: its in-flight permit (`--max-in-flight`; 429 beyond)
//! and its metrics — the in-flight gauge now, status, latency and tokens when it is dropped (at
//! the end of the response body, streams included).

use std::time::Instant;

use axum::http::StatusCode;
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use crate::error::ApiError;
use crate::metrics::{Metrics, StatusLabels};

pub struct Track {
    state: Shared,
    /// The label: the served name or a known adapter (`unknown` until resolved).
    pub model: String,
    start: Instant,
    /// `None` when dropped: the client went away before the response was ready (499).
    pub status: Option<StatusCode>,
    first_token: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Track {
    /// Starts tracking a completion request, or refuses it when `--max-in-flight` requests are
    /// already in flight (counted as a 429).
    pub fn start(state: &Shared) -> Result<Self, ApiError> {
        let permit = state.in_flight.clone().try_acquire_owned().ok();
        state.metrics.in_flight.inc();
        let mut t = Self {
            state: state.clone(),
            model: "unknown".into(),
            start: Instant::now(),
            status: None,
            first_token: false,
            _permit: permit,
        };
        if t._permit.is_none() {
            return Err(t.fail(ApiError::TooManyRequests(
                "Too many requests in flight on this server; retry later.".into(),
            )));
        }
        Ok(t)
    }

    /// `n` tokens were generated (the first one times the time to first token).
    pub fn tokens(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let m = Metrics::model(&self.model);
        if !self.first_token {
            self.first_token = true;
            self.state
                .metrics
                .ttft
                .get_or_create(&m)
                .observe(self.start.elapsed().as_secs_f64());
        }
        self.state
            .metrics
            .generation_tokens
            .get_or_create(&m)
            .inc_by(n as u64);
    }

    pub fn prompt_tokens(&self, n: usize) {
        self.state
            .metrics
            .prompt_tokens
            .get_or_create(&Metrics::model(&self.model))
            .inc_by(n as u64);
    }

    /// Records `e`'s status and hands it back.
    pub fn fail(&mut self, e: ApiError) -> ApiError {
        self.status = Some(e.status());
        e
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let m = &self.state.metrics;
        m.in_flight.dec();
        let status = self.status.map_or(499, |s| s.as_u16());
        m.requests
            .get_or_create(&StatusLabels {
                model: self.model.clone(),
                status: status.to_string(),
            })
            .inc();
        let seconds = self.start.elapsed().as_secs_f64();
        m.duration
            .get_or_create(&Metrics::model(&self.model))
            .observe(seconds);
        m.vllm_e2e_latency
            .get_or_create(&crate::metrics::ModelNameLabels {
                model_name: self.model.clone(),
            })
            .observe(seconds);
    }
}
