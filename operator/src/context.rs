//! What every reconciler gets: the client, the operator's config, metrics and the Event recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::Recorder;

use crate::config::OperatorConfig;
use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub config: Arc<OperatorConfig>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// For polling trainer pods' `/progress`.
    pub http: reqwest::Client,
    /// Bounds the Events sent at once (see [`crate::events`]).
    pub event_slots: Arc<tokio::sync::Semaphore>,
    failures: Mutex<HashMap<String, u32>>,
    written: Mutex<Written>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Arc<OperatorConfig>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            client,
            config,
            metrics,
            recorder,
            http,
            event_slots: Arc::new(tokio::sync::Semaphore::new(crate::events::EVENTS_IN_FLIGHT)),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(Written::default()),
        }
    }

    /// Records that this operator wrote the status of object `uid`, replacing version `before`
    /// with `after`.
    pub fn wrote_status(&self, uid: &str, before: &str, after: &str) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.wrote(uid, before, after, Instant::now());
    }

    /// Whether the cached version `rv` of object `uid` is one this operator has already
    /// overwritten: deciding on it would undo (or repeat) what the last reconcile wrote.
    pub fn is_stale(&self, uid: &str, rv: &str) -> bool {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.is_stale(uid, rv, Instant::now())
    }

    /// Exponential backoff per object for transient errors: 2 s, 4 s, … capped at 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_for(*n)
    }

    /// Forgets the failures of an object after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(key);
    }
}

/// How long a written status waits for the watch to bring it before the cache is trusted
/// again (a watch that lost the event relists well within this).
const STALE_WINDOW: Duration = Duration::from_secs(30);

/// The versions this operator's status writes replaced, by object uid: a reconcile that reads
/// one of them from its cache reads the past (the watch has not yet delivered the write) and
/// waits for the cache instead. The "expectations" of controllers that must not act twice.
#[derive(Default)]
struct Written(HashMap<String, (String, Instant)>);

impl Written {
    fn wrote(&mut self, uid: &str, before: &str, after: &str, now: Instant) {
        self.0
            .retain(|_, (_, at)| now.duration_since(*at) < STALE_WINDOW);
        if before != after {
            self.0.insert(uid.to_string(), (before.to_string(), now));
        }
    }

    fn is_stale(&mut self, uid: &str, rv: &str, now: Instant) -> bool {
        let Some((before, at)) = self.0.get(uid) else {
            return false;
        };
        if before == rv && now.duration_since(*at) < STALE_WINDOW {
            return true;
        }
        self.0.remove(uid);
        false
    }
}

pub fn backoff_for(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.min(9));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_this_operator_overwrote_is_stale_until_a_newer_one_is_read() {
        let t0 = Instant::now();
        let mut w = Written::default();
        w.wrote("u1", "10", "11", t0);
        assert!(w.is_stale("u1", "10", t0));
        assert!(!w.is_stale("u2", "10", t0), "another object");
        assert!(!w.is_stale("u1", "11", t0), "the write arrived");
        assert!(
            !w.is_stale("u1", "10", t0),
            "forgotten once the write was seen"
        );
        // A write that changed nothing leaves the version readable.
        w.wrote("u1", "11", "11", t0);
        assert!(!w.is_stale("u1", "11", t0));
        // A watch that never brings the write does not stall the object for ever.
        w.wrote("u1", "12", "13", t0);
        assert!(!w.is_stale("u1", "12", t0 + STALE_WINDOW));
        // Old entries go when new writes come.
        w.wrote("u3", "1", "2", t0);
        w.wrote("u4", "1", "2", t0 + STALE_WINDOW);
        assert_eq!(w.0.len(), 1);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(2));
        assert_eq!(backoff_for(2), Duration::from_secs(4));
        assert_eq!(backoff_for(30), Duration::from_secs(300));
    }
}
