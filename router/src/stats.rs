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

use tailor_wire::router as wire;

/// Why a request counts as an error for its target in canary analysis: what the target caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The backend answered with a 5xx status.
    Status5xx,
    /// The backend answered 404: the model (adapter) the router asked for is missing on the pod.
    NotFound,
    /// No response headers within `timeouts.request` (the router answered 504).
    Timeout,
    /// No connection to any backend URL tried (the router answered 502).
    Connect,
    /// Any other transport failure: reset mid-request or mid-stream, protocol error.
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Status5xx,
        ErrorClass::NotFound,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Other,
    ];

    /// The label used in `/stats` and `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Status5xx => "5xx",
            ErrorClass::NotFound => "404",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether a backend's answer counts against its target. 5xx is the backend failing; 404 is
/// the model or adapter missing on the pod (the router forwards only the paths every backend
/// serves, with the model its config names), e.g. an adapter that failed to load or was
/// unloaded. Every other answer is not the target's doing: the client's own mistakes (400, 401,
/// 413, 422) and a backend's 429 (it is busy, not broken) count as answered requests.
pub fn classify(status: u16) -> Option<ErrorClass> {
    match status {
        404 => Some(ErrorClass::NotFound),
        500..=599 => Some(ErrorClass::Status5xx),
        _ => None,
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
    pub errors: [u64; 5],
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

    fn status_wire(&self) -> wire::StatusCounts {
        let [s1xx, s2xx, s3xx, s4xx, s5xx] = self.status;
        wire::StatusCounts {
            s1xx,
            s2xx,
            s3xx,
            s4xx,
            s5xx,
        }
    }

    fn errors_wire(&self) -> wire::ErrorCounts {
        let e = |c: ErrorClass| self.errors[c.index()];
        wire::ErrorCounts {
            s5xx: e(ErrorClass::Status5xx),
            not_found: e(ErrorClass::NotFound),
            timeout: e(ErrorClass::Timeout),
            connect: e(ErrorClass::Connect),
            other: e(ErrorClass::Other),
            total: self.error_total(),
        }
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
    pub fn to_wire(
        &self,
        now: Instant,
        window: Duration,
    ) -> (wire::WindowStats, wire::CumulativeStats) {
        let w = self.window(now, window);
        let (total, retries) = self.cumulative();
        let error_rate = if w.counts.requests == 0 {
            0.0
        } else {
            w.counts.error_total() as f64 / w.counts.requests as f64
        };
        let window = wire::WindowStats {
            requests: w.counts.requests,
            status: w.counts.status_wire(),
            errors: w.counts.errors_wire(),
            error_rate,
            latency_ms: wire::LatencyMs {
                p50: w.p50_ms,
                p95: w.p95_ms,
                p99: w.p99_ms,
            },
        };
        let cumulative = wire::CumulativeStats {
            requests: total.requests,
            status: total.status_wire(),
            errors: total.errors_wire(),
            retries,
        };
        (window, cumulative)
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
        assert_eq!(w.counts.errors, [2, 0, 0, 0, 0]);
        assert_eq!(w.p50_ms, Some(100.0));
        assert_eq!(w.p95_ms, Some(190.0));
        let all = t.window(t1, Duration::from_secs(200));
        assert_eq!(all.counts.requests, 30);
        assert_eq!(all.counts.errors, [2, 0, 0, 10, 0]);
        let (total, _) = t.cumulative();
        assert_eq!(total.requests, 30);
        // Past the retention the old events are gone from the window but not from the totals.
        let t2 = t0 + Duration::from_secs(350);
        t.record(outcome(200, None, 1), t2);
        assert_eq!(t.window(t2, Duration::from_secs(1000)).counts.requests, 21);
        assert_eq!(t.cumulative().0.requests, 31);
    }

    #[test]
    fn wire_shape() {
        let registry = StatsRegistry::new(Duration::from_secs(60));
        let t = registry.target("bot", "canary");
        let now = Instant::now();
        t.record(outcome(200, None, 10), now);
        t.record(outcome(504, Some(ErrorClass::Timeout), 30), now);
        t.record(outcome(404, classify(404), 20), now);
        t.record(outcome(422, classify(422), 5), now);
        t.record_retry();
        let (w, c) = t.to_wire(now, Duration::from_secs(60));
        assert_eq!(w.requests, 4);
        assert_eq!(w.errors.timeout, 1);
        assert_eq!(w.errors.not_found, 1);
        assert_eq!(w.errors.total, 2);
        assert_eq!((w.status.s2xx, w.status.s4xx, w.status.s5xx), (1, 2, 1));
        assert_eq!(w.error_rate, 0.5);
        assert_eq!(w.latency_ms.p50, Some(10.0));
        assert_eq!(w.latency_ms.p95, Some(30.0));
        assert_eq!(c.requests, 4);
        assert_eq!(c.errors.total, 2);
        assert_eq!(c.retries, 1);
    }

    /// What the target caused counts against it; the client's own mistakes do not.
    #[test]
    fn error_classes_by_backend_status() {
        let cases = [
            (200, None),
            (201, None),
            (304, None),
            (400, None),
            (401, None),
            (404, Some(ErrorClass::NotFound)),
            (413, None),
            (422, None),
            (429, None),
            (500, Some(ErrorClass::Status5xx)),
            (502, Some(ErrorClass::Status5xx)),
            (503, Some(ErrorClass::Status5xx)),
            (504, Some(ErrorClass::Status5xx)),
        ];
        for (status, class) in cases {
            assert_eq!(classify(status), class, "{status}");
        }
    }
}
