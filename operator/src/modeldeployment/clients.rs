//! The ModelDeployment controller's HTTP side: the servers' adapter protocol (`/v1/models`, the
//! runtime LoRA API),
//! the router's `/stats`, and Prometheus instant queries. Every call carries the
//! ModelDeployment's token where the peer requires it, reads a bounded answer (see
//! [`crate::endpoints`]), and the calls over pods run concurrently with a bounded fan-out.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;

use super::analysis::Sample;
use super::build::{ROUTER_ADMIN_PORT, SERVER_PORT};
use super::pods::{self, LoadPlan, ServerAdapter};
use super::stats;
use crate::endpoints::{self, SMALL_BODY};
use crate::error::truncate;
use tailor_wire::server::{LoadLoraAdapterRequest, ModelList, UnloadLoraAdapterRequest};

/// Calls to pods of one reconcile in flight at once.
pub const FAN_OUT: usize = 8;

/// Runs `f` over `items` with at most [`FAN_OUT`] at once, results in `items`' order.
pub async fn fan_out<T, R, F, Fut>(items: impl IntoIterator<Item = T>, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffered(FAN_OUT)
        .collect()
        .await
}

/// One serving pod's load, summed over its engines and models.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub running: f64,
    pub waiting: f64,
    /// `vllm:e2e_request_latency_seconds_sum`: seconds requests have spent in the server; its
    /// rate is the mean number in flight (Little's law).
    pub busy_seconds: Option<f64>,
}

/// The load in a Prometheus or OpenMetrics text exposition; `None` without either gauge.
/// Only the two gauges' sample lines are read (`name{labels} value [timestamp]`): the
/// prometheus-parse crate refuses the `:` that vLLM's metric names carry.
pub fn parse_load(text: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let slot = match &line[..name_end] {
            "vllm:num_requests_running" => &mut load.running,
            "vllm:num_requests_waiting" => &mut load.waiting,
            "vllm:e2e_request_latency_seconds_sum" => load.busy_seconds.get_or_insert(0.0),
            _ => continue,
        };
        let rest = match line[name_end..].rfind('}') {
            Some(i) if line[name_end..].starts_with('{') => &line[name_end + i + 1..],
            _ => &line[name_end..],
        };
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if v.is_finite() {
            *slot += v;
            seen |= !line.starts_with("vllm:e2e");
        }
    }
    seen.then_some(load)
}

/// A peer and the token it requires.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    pub http: &'a reqwest::Client,
    pub token: Option<&'a str>,
}

impl Peer<'_> {
    fn with_token(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A serving pod's load: requests running in its batch and waiting for it, from the
    /// Inference Extension gauges of its `/metrics` (as tailor-server and vLLM expose them).
    pub async fn server_load(&self, ip: &str) -> Result<Load, String> {
        let url = format!("http://{ip}:{SERVER_PORT}/metrics");
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| endpoints::describe(&url, &e))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: {}", resp.status()));
        }
        let body = endpoints::read_body(resp, SMALL_BODY).await?;
        parse_load(&String::from_utf8_lossy(&body)).ok_or_else(|| {
            format!("{url}: no vllm:num_requests_running / vllm:num_requests_waiting gauge")
        })
    }

    /// The adapters a serving pod lists (`GET /v1/models`).
    pub async fn list_adapters(&self, ip: &str) -> Result<Vec<ServerAdapter>, String> {
        let url = format!("http://{ip}:{SERVER_PORT}/v1/models");
        let list: ModelList = endpoints::get_json(self.http, &url, self.token, SMALL_BODY).await?;
        Ok(pods::adapters_of(&list))
    }

    /// One call of the runtime LoRA API; the server's answer when it refused.
    async fn lora_call(&self, url: &str, body: &impl serde::Serialize) -> Result<(), String> {
        let req = self.with_token(self.http.post(url).json(body));
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = endpoints::read_body(r, SMALL_BODY)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                Err(truncate(&format!("{status}: {text}"), 300))
            }
            Err(e) => Err(endpoints::describe(url, &e)),
        }
    }

    /// Loads and unloads on one pod through the runtime LoRA API; the load errors by adapter.
    pub async fn apply_plan(&self, ip: &str, plan: &LoadPlan) -> BTreeMap<String, String> {
        let load_url = format!("http://{ip}:{SERVER_PORT}/v1/load_lora_adapter");
        let unload_url = format!("http://{ip}:{SERVER_PORT}/v1/unload_lora_adapter");
        let unload = |name: &str| UnloadLoraAdapterRequest {
            lora_name: name.to_string(),
            lora_int_id: None,
        };
        let mut errors = BTreeMap::new();
        for (name, path) in &plan.load {
            if plan.replace.contains(name)
                && let Err(e) = self.lora_call(&unload_url, &unload(name)).await
            {
                errors.insert(name.clone(), e);
                continue;
            }
            let body = LoadLoraAdapterRequest {
                lora_name: name.clone(),
                lora_path: path.clone(),
                ..Default::default()
            };
            if let Err(e) = self.lora_call(&load_url, &body).await {
                errors.insert(name.clone(), e);
            }
        }
        for name in &plan.unload {
            if let Err(e) = self.lora_call(&unload_url, &unload(name)).await {
                tracing::warn!(adapter = %name, error = %e, "unloading adapter");
            }
        }
        errors
    }

    /// The router's `/stats` over `window`.
    pub async fn router_stats(&self, ip: &str, window: Duration) -> Result<stats::Stats, String> {
        let url = format!(
            "http://{ip}:{ROUTER_ADMIN_PORT}/stats?window={}s",
            window.as_secs().max(1)
        );
        endpoints::get_json(self.http, &url, self.token, SMALL_BODY).await
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters pass).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query against an allowed Prometheus; the value of its single sample.
async fn prom_scalar(
    http: &reqwest::Client,
    address: &str,
    query: &str,
) -> Result<Option<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        percent_encode(query)
    );
    let v: serde_json::Value = endpoints::get_json(http, &url, None, SMALL_BODY).await?;
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|x| x.is_finite()))
}

/// Prometheus queries for one target over the window, recorded in status.
pub fn prom_queries(ns: &str, md: &str, target: &str, secs: u64) -> [String; 3] {
    let sel = format!("namespace=\"{ns}\", modeldeployment=\"{md}\", target=\"{target}\"");
    [
        format!("sum(increase(tailor_router_requests_total{{{sel}}}[{secs}s]))"),
        format!("sum(increase(tailor_router_errors_total{{{sel}}}[{secs}s]))"),
        format!(
            "histogram_quantile(0.95, sum by (le) (rate(tailor_router_request_duration_seconds_bucket{{{sel}}}[{secs}s])))"
        ),
    ]
}

pub async fn prom_sample(
    http: &reqwest::Client,
    address: &str,
    queries: &[String; 3],
    revision: &str,
) -> Result<Sample, String> {
    let requests = prom_scalar(http, address, &queries[0])
        .await?
        .unwrap_or(0.0);
    let errors = prom_scalar(http, address, &queries[1])
        .await?
        .unwrap_or(0.0);
    let p95 = prom_scalar(http, address, &queries[2]).await?;
    Ok(Sample {
        revision: revision.to_string(),
        requests: requests.round().max(0.0) as u64,
        errors: errors.round().max(0.0) as u64,
        p95_seconds: p95,
    })
}

/// Whether `address` is one the operator's admin allows, exactly (no path, query or fragment
/// tricks: `http://10.0.0.1:9090/latest/meta-data/#` is not `http://10.0.0.1:9090`).
pub fn prometheus_allowed(allow_list: &[String], address: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('/').to_string();
    let a = norm(address);
    !a.is_empty() && allow_list.iter().any(|x| norm(x) == a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_prometheus_addresses_are_called() {
        let allow = vec!["http://prometheus.monitoring.svc:9090".to_string()];
        assert!(prometheus_allowed(
            &allow,
            "http://prometheus.monitoring.svc:9090/"
        ));
        for bad in [
            "http://127.0.0.1:19999/latest/meta-data/iam/security-credentials/#",
            "http://prometheus.monitoring.svc:9090/latest/meta-data/#",
            "http://prometheus.monitoring.svc:9090@169.254.169.254",
            "",
        ] {
            assert!(!prometheus_allowed(&allow, bad), "{bad}");
        }
        assert!(!prometheus_allowed(&[], "http://prometheus:9090"));
    }

    #[tokio::test]
    async fn fan_out_keeps_order_and_bounds_concurrency() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let out = fan_out(0..40, |i| {
            let now = now.clone();
            let peak = peak.clone();
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                i * 2
            }
        })
        .await;
        assert_eq!(out, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        let p = peak.load(Ordering::SeqCst);
        assert!(p > 1 && p <= FAN_OUT, "peak {p}");
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn the_load_is_read_from_tailor_servers_and_vllms_gauges() {
        // tailor-server's exposition (OpenMetrics, as prometheus-client writes it).
        let tailor = "# HELP vllm:num_requests_waiting Requests waiting.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"base\",engine=\"0\"} 2\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"base\",engine=\"0\"} 3\n# TYPE tailor_server_requests counter\ntailor_server_requests_total{model=\"base\",status=\"200\"} 17\n# TYPE vllm:e2e_request_latency_seconds histogram\nvllm:e2e_request_latency_seconds_sum{model_name=\"base\"} 10.0\nvllm:e2e_request_latency_seconds_count{model_name=\"base\"} 7\nvllm:e2e_request_latency_seconds_bucket{le=\"0.001\",model_name=\"base\"} 0\nvllm:e2e_request_latency_seconds_sum{model_name=\"support-v1\"} 2.5\n# EOF\n";
        assert_eq!(
            parse_load(tailor),
            Some(Load {
                running: 3.0,
                waiting: 2.0,
                busy_seconds: Some(12.5),
            })
        );
        // vLLM's (Prometheus text, two engines, a float).
        let vllm = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4.0\nvllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 0.0\n";
        assert_eq!(
            parse_load(vllm),
            Some(Load {
                running: 5.0,
                waiting: 0.0,
                busy_seconds: None,
            })
        );
        assert_eq!(parse_load("up 1\n"), None);
        assert_eq!(parse_load("not prometheus {{{"), None);
    }
}
