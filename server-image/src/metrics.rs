//! Prometheus metrics (`/metrics`, OpenMetrics text). The `model` label is the served name or a
//! known adapter name (`unknown` for anything else), never free request data.
//!
//! - `tailor_server_requests_total{model,status}`: finished API requests by HTTP status code.
//! - `tailor_server_request_duration_seconds{model}`: histogram, until the last byte.
//! - `tailor_server_time_to_first_token_seconds{model}`: histogram.
//! - `tailor_server_prompt_tokens_total{model}`, `tailor_server_generation_tokens_total{model}`.
//! - `tailor_server_in_flight_requests`: API requests not yet finished.
//! - `tailor_server_running_sequences`: sequences in the running batch.
//! - `tailor_server_loaded_adapters`: adapters held in memory.
//! - `tailor_server_decode_steps`, `tailor_server_decoded_rows`: batched decode passes and the
//!   rows they carried (their ratio is the mean decode batch size).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub prompt_tokens: Family<ModelLabels, Counter>,
    pub generation_tokens: Family<ModelLabels, Counter>,
    pub in_flight: Gauge,
    pub running: Gauge,
    pub loaded_adapters: Gauge,
    pub decode_steps: Gauge,
    pub decoded_rows: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tailor_server");
        let requests = Family::<StatusLabels, Counter>::default();
        let duration = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let ttft = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        let generation_tokens = Family::<ModelLabels, Counter>::default();
        let in_flight = Gauge::default();
        let running = Gauge::default();
        let loaded_adapters = Gauge::default();
        registry.register(
            "requests",
            "API requests by model and HTTP status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated token",
            ttft.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated",
            generation_tokens.clone(),
        );
        registry.register(
            "in_flight_requests",
            "API requests not yet finished",
            in_flight.clone(),
        );
        registry.register(
            "running_sequences",
            "Sequences in the running batch",
            running.clone(),
        );
        registry.register(
            "loaded_adapters",
            "LoRA adapters held in memory",
            loaded_adapters.clone(),
        );
        let decode_steps = Gauge::default();
        let decoded_rows = Gauge::default();
        registry.register(
            "decode_steps",
            "Batched decode forward passes since start (a counter, exported as a gauge)",
            decode_steps.clone(),
        );
        registry.register(
            "decoded_rows",
            "Sequence rows decoded since start; decoded_rows / decode_steps is the mean batch",
            decoded_rows.clone(),
        );
        Self {
            decode_steps,
            decoded_rows,
            registry,
            requests,
            duration,
            ttft,
            prompt_tokens,
            generation_tokens,
            in_flight,
            running,
            loaded_adapters,
        }
    }

    pub fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
