//! A progress line every few seconds while a transfer runs: bytes, rate and ETA, as structured
//! tracing fields and as readable text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3725` → `1h02m05s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// Rate and remaining time after `done` of `total` bytes in `elapsed` seconds.
pub fn rate_and_eta(done: u64, total: u64, elapsed: f64) -> (f64, Option<f64>) {
    let rate = if elapsed > 0.0 {
        done as f64 / elapsed
    } else {
        0.0
    };
    let eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
    (rate, eta)
}

/// A background task logging progress until stopped (or dropped).
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(uri: &str, total: u64, done: Arc<AtomicU64>, every: Duration) -> Self {
        let uri = uri.to_string();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                let elapsed = started.elapsed().as_secs_f64();
                let (rate, eta) = rate_and_eta(d, total, elapsed);
                let pct = if total > 0 {
                    100.0 * d as f64 / total as f64
                } else {
                    100.0
                };
                tracing::info!(
                    uri = %uri,
                    bytes = d,
                    total_bytes = total,
                    bytes_per_second = rate.round() as u64,
                    eta_seconds = eta.map(|e| e.round() as u64),
                    "fetching: {} of {} ({pct:.0}%), {}/s, ETA {}",
                    human_bytes(d as f64),
                    human_bytes(total as f64),
                    human_bytes(rate),
                    eta.map_or_else(|| "unknown".to_string(), human_duration),
                );
            }
        });
        Self { task: Some(task) }
    }

    pub fn stop(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_rates_and_times() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(2.0 * 1024.0 * 1024.0 * 1024.0), "2.0 GiB");
        assert_eq!(human_duration(5.0), "5s");
        assert_eq!(human_duration(65.0), "1m05s");
        assert_eq!(human_duration(3725.0), "1h02m05s");
        let (rate, eta) = rate_and_eta(100, 300, 2.0);
        assert_eq!(rate, 50.0);
        assert_eq!(eta, Some(4.0));
        assert_eq!(rate_and_eta(0, 300, 2.0).1, None);
    }
}
