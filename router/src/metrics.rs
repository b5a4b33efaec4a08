//! Prometheus metrics (`/metrics`, OpenMetrics text). Label values come from fixed sets or from
//! the configuration (served names and target names), never from request data.
//!
//! - `tailor_router_requests_total{route,target,status_class}`: proxied requests by the status
//!   class sent to the client.
//! - `tailor_router_errors_total{route,target,class}`: what the target caused; class is `5xx`,
//!   `404` (model or adapter missing on the pod), `timeout`, `connect` or `other` (see
//!   [`crate::stats::ErrorClass`]). The client's own mistakes (400, 401, 413, 422, 429 from the
//!   backend) are in `requests_total` only.
//! - `tailor_router_request_duration_seconds{route,target}`: histogram, until the response body
//!   (or stream) has been sent.
//! - `tailor_router_retries_total{route,target}`: connection failures retried on another URL.
//! - `tailor_router_rejected_total{reason}`: requests answered by the router itself before a
//!   target was chosen (`unauthorized`, `rate_limited`, `overloaded`, `bad_request`,
//!   `too_large`, `body_timeout`, `model_not_found`, `not_found`).
//! - `tailor_router_in_flight_requests`: proxied requests not yet finished.
//! - `tailor_router_config_reloads_total{result}`: `ok` or `error`.
//! - `tailor_router_open_connections`: client connections open on both listeners.
//! - `tailor_router_connection_timeouts_total{phase}`: connections closed by a deadline
//!   (`header`, `idle`, `write`; see [`crate::serve`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub target: String,
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: String,
    pub target: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub route: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~164 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 16,
    ))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<TargetLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<TargetLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub in_flight: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    pub open_connections: Gauge,
    pub connection_timeouts: Family<PhaseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tailor_router");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let retries = Family::<TargetLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let in_flight = Gauge::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let open_connections = Gauge::default();
        let connection_timeouts = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "requests",
            "Proxied requests by route, target and status class",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Proxied requests that failed by the target's doing, by class (5xx, 404, timeout, connect, other)",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body",
            duration.clone(),
        );
        registry.register(
            "retries",
            "Connection failures retried on another backend URL",
            retries.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused by the router before choosing a target",
            rejected.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Proxied requests not yet finished",
            in_flight.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open",
            open_connections.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Client connections closed by a deadline, by phase (header, idle, write)",
            connection_timeouts.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            duration,
            retries,
            rejected,
            in_flight,
            reloads,
            open_connections,
            connection_timeouts,
        }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
