//! The engine thread's life as the probes see it: loading, serving, or dead. A dead engine
//! (a panicking libtorch op, a CUDA OOM that unwinds) fails `/ready` at once, so the pod leaves
//! its Service, and `/health` after a grace period, so the kubelet restarts it once the requests
//! in flight have had their 503s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    Loading,
    Serving,
    /// Since when, and why.
    Dead(Instant, String),
}

#[derive(Debug)]
pub struct EngineHealth {
    state: Mutex<EngineState>,
    grace: Duration,
}

impl EngineHealth {
    pub fn new(grace: Duration) -> Self {
        Self {
            state: Mutex::new(EngineState::Loading),
            grace,
        }
    }

    pub fn state(&self) -> EngineState {
        self.state
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |s| s.clone())
    }

    fn set(&self, s: EngineState) {
        match self.state.lock() {
            Ok(mut g) => *g = s,
            Err(e) => *e.into_inner() = s,
        }
    }

    pub fn serving(&self) {
        self.set(EngineState::Serving);
    }

    /// The engine is gone for good; the first reason is kept.
    pub fn died(&self, reason: impl Into<String>) {
        if !matches!(self.state(), EngineState::Dead(..)) {
            self.set(EngineState::Dead(Instant::now(), reason.into()));
        }
    }

    pub fn is_serving(&self) -> bool {
        self.state() == EngineState::Serving
    }

    /// Why requests cannot be served now, if they cannot.
    pub fn unavailable(&self) -> Option<String> {
        match self.state() {
            EngineState::Serving => None,
            EngineState::Loading => Some("the model is still loading".into()),
            EngineState::Dead(_, why) => Some(format!("the inference engine has stopped: {why}")),
        }
    }

    /// `/health`: the process is worth keeping (false once the engine has been dead for the
    /// grace period).
    pub fn alive(&self, now: Instant) -> bool {
        alive(&self.state(), self.grace, now)
    }
}

/// The liveness decision.
pub fn alive(state: &EngineState, grace: Duration, now: Instant) -> bool {
    match state {
        EngineState::Dead(since, _) => now.saturating_duration_since(*since) < grace,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_engine_fails_readiness_at_once_and_liveness_after_the_grace() {
        let h = EngineHealth::new(Duration::from_secs(10));
        assert!(h.unavailable().is_some_and(|m| m.contains("loading")));
        h.serving();
        assert!(h.is_serving() && h.unavailable().is_none());
        h.died("op panicked");
        h.died("a later reason");
        let EngineState::Dead(since, why) = h.state() else {
            panic!("not dead");
        };
        assert_eq!(why, "op panicked");
        assert!(!h.is_serving());
        assert!(h.unavailable().is_some_and(|m| m.contains("op panicked")));
        let grace = Duration::from_secs(10);
        assert!(alive(&h.state(), grace, since + Duration::from_secs(9)));
        assert!(!alive(&h.state(), grace, since + Duration::from_secs(10)));
        assert!(alive(
            &EngineState::Loading,
            grace,
            since + Duration::from_secs(100)
        ));
    }
}
