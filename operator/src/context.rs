//! What every reconciler gets: the client, the operator's config, metrics and the Event recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        }
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

pub fn backoff_for(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.min(9));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(2));
        assert_eq!(backoff_for(2), Duration::from_secs(4));
        assert_eq!(backoff_for(30), Duration::from_secs(300));
    }
}
