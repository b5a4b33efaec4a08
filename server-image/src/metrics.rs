//! Prometheus metrics (`/metrics`, OpenMetrics text). Labels come from fixed sets: `model` is the
//! served name or a known adapter name (`unknown` for anything else), never free request data.
//!
//! tailor's own:
//! - `tailor_server_requests_total{model,status}`: finished API requests by HTTP status code.
//! - `tailor_server_request_duration_seconds{model}`: histogram, until the last byte.
//! - `tailor_server_time_to_first_token_seconds{model}`: histogram.
//! - `tailor_server_prompt_tokens_total{model}`, `tailor_server_generation_tokens_total{model}`.
//! - `tailor_server_in_flight_requests`: API requests not yet finished.
//! - `tailor_server_running_sequences`: sequences in the running batch.
//! - `tailor_server_loaded_adapters`: adapters held in memory.
//! - `tailor_server_decode_steps`, `tailor_server_decoded_rows`: batched decode passes and the
//!   rows they carried (their ratio is the mean decode batch size).
//!
//! The Gateway API Inference Extension's model-server protocol, under vLLM's names and labels
//! (what its endpoint picker reads), set from the engine's state at each scrape:
//! - `vllm:num_requests_waiting{model_name,engine}`: requests queued for the engine.
//! - `vllm:num_requests_running{model_name,engine}`: sequences in the running batch.
//! - `vllm:gpu_cache_usage_perc{model_name,engine}` and its newer name
//!   `vllm:kv_cache_usage_perc`: KV-cache utilisation, 0..1 — tokens held by the running batch
//!   over the cache's fixed capacity (`--max-batch-size` × `--max-seq-length` tokens).
//! - `vllm:e2e_request_latency_seconds{model_name}`: histogram of request durations (the same
//!   numbers as `tailor_server_request_duration_seconds`); its `_sum` grows by one second per
//!   second a request is in flight, so its rate is the mean concurrency (Little's law), which
//!   the operator's autoscaler reads.
//! - `vllm:lora_requests_info{running_lora_adapters,waiting_lora_adapters,max_lora}`: value the
//!   scrape time (Unix seconds); adapters of running and waiting requests, comma-separated;
//!   `max_lora` the adapters servable at once (`--max-loaded-adapters`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{AdapterCounts, EngineStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// vLLM's model label on its request histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelNameLabels {
    pub model_name: String,
}

/// vLLM's labels on its scheduler gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub model_name: String,
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoraInfoLabels {
    pub running_lora_adapters: String,
    pub waiting_lora_adapters: String,
    pub max_lora: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What the engine-state gauges are computed from at a scrape.
pub struct EngineView<'a> {
    pub stats: &'a EngineStats,
    pub served_name: String,
    pub max_lora: usize,
    /// KV-cache capacity in tokens.
    pub kv_capacity: u64,
    pub loaded_adapters: usize,
}

pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: the engine-state families are cleared and refilled for each.
    scrape: Mutex<()>,
    pub requests: Family<StatusLabels, Counter>,
    pub duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub vllm_e2e_latency: Family<ModelNameLabels, Histogram, fn() -> Histogram>,
    pub prompt_tokens: Family<ModelLabels, Counter>,
    pub generation_tokens: Family<ModelLabels, Counter>,
    pub in_flight: Gauge,
    running: Gauge,
    loaded_adapters: Gauge,
    decode_steps: Gauge,
    decoded_rows: Gauge,
    vllm_waiting: Family<EngineLabels, Gauge>,
    vllm_running: Family<EngineLabels, Gauge>,
    vllm_gpu_cache: Family<EngineLabels, FloatGauge>,
    vllm_kv_cache: Family<EngineLabels, FloatGauge>,
    vllm_lora_info: Family<LoraInfoLabels, FloatGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `a,b` from adapter counts (vLLM's label format).
fn adapter_list(counts: &AdapterCounts) -> String {
    counts.keys().cloned().collect::<Vec<_>>().join(",")
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            vllm_e2e_latency: Family::new_with_constructor(latency_histogram),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            in_flight: Gauge::default(),
            running: Gauge::default(),
            loaded_adapters: Gauge::default(),
            decode_steps: Gauge::default(),
            decoded_rows: Gauge::default(),
            vllm_waiting: Family::default(),
            vllm_running: Family::default(),
            vllm_gpu_cache: Family::default(),
            vllm_kv_cache: Family::default(),
            vllm_lora_info: Family::default(),
        };
        let t = registry.sub_registry_with_prefix("tailor_server");
        t.register(
            "requests",
            "API requests by model and HTTP status code",
            m.requests.clone(),
        );
        t.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            m.duration.clone(),
        );
        t.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated token",
            m.ttft.clone(),
        );
        t.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        t.register(
            "generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        t.register(
            "in_flight_requests",
            "API requests not yet finished",
            m.in_flight.clone(),
        );
        t.register(
            "running_sequences",
            "Sequences in the running batch",
            m.running.clone(),
        );
        t.register(
            "loaded_adapters",
            "LoRA adapters held in memory",
            m.loaded_adapters.clone(),
        );
        t.register(
            "decode_steps",
            "Batched decode forward passes since start (a counter, exported as a gauge)",
            m.decode_steps.clone(),
        );
        t.register(
            "decoded_rows",
            "Sequence rows decoded since start; decoded_rows / decode_steps is the mean batch",
            m.decoded_rows.clone(),
        );
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            m.vllm_e2e_latency.clone(),
        );
        registry.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            m.vllm_waiting.clone(),
        );
        registry.register(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            m.vllm_running.clone(),
        );
        registry.register(
            "vllm:gpu_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            m.vllm_gpu_cache.clone(),
        );
        registry.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            m.vllm_kv_cache.clone(),
        );
        registry.register(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            m.vllm_lora_info.clone(),
        );
        Self { registry, ..m }
    }

    pub fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    /// The text exposition, with the engine-state gauges set from `view`.
    pub fn encode(&self, view: &EngineView<'_>) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let s = view.stats;
        let running = s.running.load(Ordering::Relaxed);
        let waiting = s.waiting.load(Ordering::Relaxed);
        self.running.set(running as i64);
        self.loaded_adapters.set(view.loaded_adapters as i64);
        self.decode_steps
            .set(s.decode_steps.load(Ordering::Relaxed) as i64);
        self.decoded_rows
            .set(s.decoded_rows.load(Ordering::Relaxed) as i64);
        let engine = EngineLabels {
            model_name: view.served_name.clone(),
            engine: "0".into(),
        };
        let usage = kv_usage(s.kv_tokens.load(Ordering::Relaxed), view.kv_capacity);
        for family in [&self.vllm_waiting, &self.vllm_running] {
            family.clear();
        }
        for family in [&self.vllm_gpu_cache, &self.vllm_kv_cache] {
            family.clear();
            family.get_or_create(&engine).set(usage);
        }
        self.vllm_waiting.get_or_create(&engine).set(waiting as i64);
        self.vllm_running.get_or_create(&engine).set(running as i64);
        self.vllm_lora_info.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.vllm_lora_info
            .get_or_create(&LoraInfoLabels {
                running_lora_adapters: adapter_list(&s.running_adapters()),
                waiting_lora_adapters: adapter_list(&s.waiting_adapters()),
                max_lora: view.max_lora.to_string(),
            })
            .set(now);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Fraction of the KV cache in use, 0..1.
pub fn kv_usage(tokens: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        return 0.0;
    }
    (tokens as f64 / capacity as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_extension_metrics_have_vllms_names_and_labels() {
        let m = Metrics::new();
        let stats = EngineStats::default();
        stats.running.store(3, Ordering::Relaxed);
        stats.kv_tokens.store(64, Ordering::Relaxed);
        stats.submitted(Some("b"));
        stats.submitted(None);
        stats
            .running_adapters
            .lock()
            .expect("lock")
            .extend([("a".to_string(), 2), ("c".to_string(), 1)]);
        let view = EngineView {
            stats: &stats,
            served_name: "base".into(),
            max_lora: 8,
            kv_capacity: 256,
            loaded_adapters: 2,
        };
        let text = m.encode(&view);
        for line in [
            "# TYPE vllm:num_requests_waiting gauge",
            "vllm:num_requests_waiting{model_name=\"base\",engine=\"0\"} 2",
            "vllm:num_requests_running{model_name=\"base\",engine=\"0\"} 3",
            "vllm:gpu_cache_usage_perc{model_name=\"base\",engine=\"0\"} 0.25",
            "vllm:kv_cache_usage_perc{model_name=\"base\",engine=\"0\"} 0.25",
            "tailor_server_running_sequences 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let lora = text
            .lines()
            .find(|l| l.starts_with("vllm:lora_requests_info{"))
            .expect("lora info");
        assert!(
            lora.starts_with(
                "vllm:lora_requests_info{running_lora_adapters=\"a,c\",waiting_lora_adapters=\"b\",max_lora=\"8\"} "
            ),
            "{lora}"
        );
        // The value is the scrape time; each scrape shows one series, the current one.
        stats.dequeued(Some("b"));
        let text = m.encode(&view);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vllm:lora_requests_info{"))
            .collect();
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(
            series[0].contains("waiting_lora_adapters=\"\""),
            "{series:?}"
        );
        let ts: f64 = series[0]
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert!(ts > 1.7e9, "{ts}");
    }

    #[test]
    fn kv_usage_is_a_fraction_of_the_fixed_capacity() {
        assert_eq!(kv_usage(0, 100), 0.0);
        assert_eq!(kv_usage(25, 100), 0.25);
        assert_eq!(kv_usage(500, 100), 1.0);
        assert_eq!(kv_usage(5, 0), 0.0);
    }
}
