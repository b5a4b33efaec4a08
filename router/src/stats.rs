//! Per-target request statistics for `/stats`: cumulative counters plus a sliding window of
//! recent requests from which error counts and latency percentiles are computed on read.
//!
//! Each proxied request ends in exactly one [`Outcome`], recorded when the response body has
//! been fully sent to the client (or the client went away), so latency covers a whole stream.
//! Requests the router refuses before choosing a target (401, 429, 400, 404, 413) are not
//! per-target and appear only in `/metrics`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Why a request counts as an error for its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The backend answered with a 5xx status.
    Status5xx,
    /// No response headers within `timeouts.request` (the router answered 504).
    Timeout,
    /// No connection to any backend URL tried (the router answered 502).
    Connect,
    /// Any other transport failure: reset mid-request or mid-stream, protocol error.
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::Status5xx,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Other,
    ];

    /// The label used in `/stats` and `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Status5xx => "5xx",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `"2xx"` etc. for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// How one request to a target ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Status sent to the client.
    pub status: u16,
    pub error: Option<ErrorClass>,
    pub latency: Duration,
}

/// Counters over some set of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub status: [u64; 5],
    pub errors: [u64; 4],
}

impl Counts {
    pub fn add(&mut self, o: &Outcome) {
        self.requests += 1;
        self.status[status_index(o.status)] += 1;
        if let Some(e) = o.error {
            self.errors[e.index()] += 1;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn status_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (label, n) in STATUS_CLASSES.iter().zip(self.status) {
            m.insert((*label).to_string(), json!(n));
        }
        Value::Object(m)
    }

    fn errors_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for class in ErrorClass::ALL {
            m.insert(class.label().to_string(), json!(self.errors[class.index()]));
        }
        m.insert("total".to_string(), json!(self.error_total()));
        Value::Object(m)
    }
}

/// Nearest-rank percentile of an ascending slice (`q` in `[0, 1]`); `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: Instant,
    outcome: Outcome,
}

/// Summary of the requests that ended within a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSummary {
    pub counts: Counts,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Summarizes the events in `events` (oldest first) that ended at or after `now - window`.
fn summarize<'a>(
    events: impl DoubleEndedIterator<Item = &'a Event>,
    now: Instant,
    window: Duration,
) -> WindowSummary {
    let since = now.checked_sub(window);
    let mut counts = Counts::default();
    let mut latencies = Vec::new();
    for e in events.rev() {
        if since.is_some_and(|s| e.at < s) {
            break;
        }
        counts.add(&e.outcome);
        latencies.push(e.outcome.latency.as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    WindowSummary {
        counts,
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// Most events kept per target, whatever the retention (bounds memory under heavy load).
const MAX_EVENTS: usize = 500_000;

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Event>,
    total: Counts,
    retries: u64,
}

/// Statistics of one (route, target).
#[derive(Debug)]
pub struct TargetStats {
    inner: Mutex<Inner>,
    retention: Duration,
}

impl TargetStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        inner.total.add(&outcome);
        inner.events.push_back(Event { at: now, outcome });
        let horizon = now.checked_sub(self.retention);
        while let Some(front) = inner.events.front() {
            let expired = horizon.is_some_and(|h| front.at < h);
            if expired || inner.events.len() > MAX_EVENTS {
                inner.events.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn record_retry(&self) {
        self.lock().retries += 1;
    }

    pub fn window(&self, now: Instant, window: Duration) -> WindowSummary {
        let inner = self.lock();
        summarize(inner.events.iter(), now, window)
    }

    pub fn cumulative(&self) -> (Counts, u64) {
        let inner = self.lock();
        (inner.total, inner.retries)
    }

    /// The `window` and `cumulative` members of a target's `/stats` entry.
    pub fn to_json(&self, now: Instant, window: Duration) -> (Value, Value) {
        let w = self.window(now, window);
        let (total, retries) = self.cumulative();
        let error_rate = if w.counts.requests == 0 {
            0.0
        } else {
            w.counts.error_total() as f64 / w.counts.requests as f64
        };
        let window_json = json!({
            "requests": w.counts.requests,
            "status": w.counts.status_json(),
            "errors": w.counts.errors_json(),
            "error_rate": error_rate,
            "latency_ms": {"p50": w.p50_ms, "p95": w.p95_ms, "p99": w.p99_ms},
        });
        let cumulative_json = json!({
            "requests": total.requests,
            "status": total.status_json(),
            "errors": total.errors_json(),
            "retries": retries,
        });
        (window_json, cumulative_json)
    }
}

/// All targets' statistics, keyed by (served name, target name); they outlive config reloads.
#[derive(Debug)]
pub struct StatsRegistry {
    targets: Mutex<HashMap<(String, String), Arc<TargetStats>>>,
    retention: Duration,
}

impl StatsRegistry {
    /// `retention`: the longest window `/stats` can be asked for.
    pub fn new(retention: Duration) -> Self {
        StatsRegistry {
            targets: Mutex::new(HashMap::new()),
            retention,
        }
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    pub fn target(&self, route: &str, target: &str) -> Arc<TargetStats> {
        let mut map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((route.to_string(), target.to_string()))
            .or_insert_with(|| {
                Arc::new(TargetStats {
                    inner: Mutex::new(Inner::default()),
                    retention: self.retention,
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, error: Option<ErrorClass>, ms: u64) -> Outcome {
        Outcome {
            status,
            error,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn window_only_counts_recent_requests() {
        let registry = StatsRegistry::new(Duration::from_secs(300));
        let t = registry.target("bot", "stable");
        let t0 = Instant::now();
        // 10 old requests, all slow errors; then 20 recent ones.
        for _ in 0..10 {
            t.record(outcome(502, Some(ErrorClass::Connect), 5000), t0);
        }
        let t1 = t0 + Duration::from_secs(100);
        for i in 1..=20 {
            let (status, err) = if i % 10 == 0 {
                (500, Some(ErrorClass::Status5xx))
            } else {
                (200, None)
            };
            t.record(outcome(status, err, i * 10), t1);
        }
        let w = t.window(t1, Duration::from_secs(60));
        assert_eq!(w.counts.requests, 20);
        assert_eq!(w.counts.status[1], 18);
        assert_eq!(w.counts.status[4], 2);
        assert_eq!(w.counts.errors, [2, 0, 0, 0]);
        assert_eq!(w.p50_ms, Some(100.0));
        assert_eq!(w.p95_ms, Some(190.0));
        let all = t.window(t1, Duration::from_secs(200));
        assert_eq!(all.counts.requests, 30);
        assert_eq!(all.counts.errors, [2, 0, 10, 0]);
        let (total, _) = t.cumulative();
        assert_eq!(total.requests, 30);
        // Past the retention the old events are gone from the window but not from the totals.
        let t2 = t0 + Duration::from_secs(350);
        t.record(outcome(200, None, 1), t2);
        assert_eq!(t.window(t2, Duration::from_secs(1000)).counts.requests, 21);
        assert_eq!(t.cumulative().0.requests, 31);
    }

    #[test]
    fn json_shape() {
        let registry = StatsRegistry::new(Duration::from_secs(60));
        let t = registry.target("bot", "canary");
        let now = Instant::now();
        t.record(outcome(200, None, 10), now);
        t.record(outcome(504, Some(ErrorClass::Timeout), 30), now);
        t.record_retry();
        let (w, c) = t.to_json(now, Duration::from_secs(60));
        assert_eq!(w["requests"], 2);
        assert_eq!(w["errors"]["timeout"], 1);
        assert_eq!(w["errors"]["total"], 1);
        assert_eq!(w["status"]["2xx"], 1);
        assert_eq!(w["error_rate"], 0.5);
        assert_eq!(w["latency_ms"]["p50"], 10.0);
        assert_eq!(w["latency_ms"]["p95"], 30.0);
        assert_eq!(c["requests"], 2);
        assert_eq!(c["retries"], 1);
    }
}
