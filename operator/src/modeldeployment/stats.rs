//! The router's `/stats` (router/README.md; the type is `tailor_wire::router::Stats`) →
//! analysis samples for the stable and canary targets, summed over the routes the canary
//! splits and over the router pods.
//!
//! Every router pod counts only the requests it proxied, so the analysis reads `/stats` from
//! each pod of the router Deployment and adds them up ([`window_over_pods`]); the router has
//! loaded a config only once every pod reports its hash ([`all_run`]).

pub use tailor_wire::router::Stats;

use super::analysis::Sample;
use super::build::{canary_target, stable_target};

pub fn parse(body: &[u8]) -> Result<Stats, String> {
    serde_json::from_slice(body).map_err(|e| format!("router /stats: {e}"))
}

/// Hex SHA-256 of a config file's bytes, as `/stats` reports the loaded one.
pub fn config_sha256(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One revision's numbers summed over every route where it has a target of the given name.
/// p95 is the worst route's (percentiles do not add up; the worst is the conservative one).
fn sum(stats: &Stats, target: &str, revision: &str) -> Option<Sample> {
    let mut found = false;
    let mut s = Sample {
        revision: revision.to_string(),
        requests: 0,
        errors: 0,
        p95_seconds: None,
    };
    for route in stats.routes.values() {
        if let Some(t) = route.targets.get(target) {
            found = true;
            s.requests += t.window.requests;
            s.errors += t.window.errors.total;
            if let Some(p) = t.window.latency_ms.p95 {
                let secs = p / 1000.0;
                s.p95_seconds = Some(s.p95_seconds.map_or(secs, |q: f64| q.max(secs)));
            }
        }
    }
    found.then_some(s)
}

/// Two samples of one revision (from two router pods) as one: counts add up; p95 is the worse
/// one (percentiles do not add up; the worst is the conservative one).
fn add(a: Sample, b: Sample) -> Sample {
    let p95_seconds = match (a.p95_seconds, b.p95_seconds) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    Sample {
        revision: a.revision,
        requests: a.requests + b.requests,
        errors: a.errors + b.errors,
        p95_seconds,
    }
}

/// [`window`] over every router pod's `/stats`. A pod that has no canary target yet (it has not
/// loaded the canary's config) adds nothing; `None` when no pod has one.
pub fn window_over_pods(
    pods: &[Stats],
    stable: &str,
    canary: &str,
) -> Option<(Sample, Option<Sample>)> {
    pods.iter()
        .filter_map(|p| window(p, stable, canary))
        .reduce(|(c1, s1), (c2, s2)| {
            let stable = match (s1, s2) {
                (Some(a), Some(b)) => Some(add(a, b)),
                (a, b) => a.or(b),
            };
            (add(c1, c2), stable)
        })
}

/// Whether every router pod runs the config whose file text is `text` (and there is a pod).
pub fn all_run(pods: &[Stats], text: &str) -> bool {
    let sha = config_sha256(text);
    !pods.is_empty() && pods.iter().all(|p| p.config.sha256 == sha)
}

/// The canary's and the stable's numbers. The stable is counted only on routes the canary
/// also serves, so both sides describe the same traffic. `None` when the router has no canary
/// target yet (an old config still loaded).
pub fn window(stats: &Stats, stable: &str, canary: &str) -> Option<(Sample, Option<Sample>)> {
    let canary_name = canary_target(canary);
    let c = sum(stats, &canary_name, canary)?;
    let shared = Stats {
        routes: stats
            .routes
            .iter()
            .filter(|(_, r)| r.targets.contains_key(&canary_name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..stats.clone()
    };
    let s = sum(&shared, &stable_target(stable), stable);
    Some((c, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example, extended with a canary target and a second route.
    const BODY: &str = r#"{
      "window_seconds": 30.0,
      "config": {"sha256": "abc", "generation": 3, "loaded_at_unix_ms": 1764130000000, "last_error": null},
      "routes": {
        "support": {"targets": {
          "stable-aaaaaaaa-111111": {"model": "support-v1", "revision": "aaaaaaaa-111111", "weight": 90, "share": 0.9,
            "backends": ["http://10.96.0.12:8000"],
            "window": {"requests": 1800, "status": {"1xx":0,"2xx":1782,"3xx":0,"4xx":0,"5xx":18},
                       "errors": {"5xx": 17, "timeout": 1, "connect": 0, "other": 0, "total": 18},
                       "error_rate": 0.01, "latency_ms": {"p50": 41.2, "p95": 180.5, "p99": 240.0}},
            "cumulative": {"requests": 5000, "status": {"1xx":0,"2xx":4990,"3xx":0,"4xx":4,"5xx":6},
                           "errors": {"5xx": 5, "timeout": 1, "connect": 0, "other": 0, "total": 6}, "retries": 2}},
          "canary-aaaaaaaa-222222": {"model": "support-v2", "revision": "aaaaaaaa-222222", "weight": 10, "share": 0.1,
            "backends": ["http://10.96.0.12:8000"],
            "window": {"requests": 200, "status": {"1xx":0,"2xx":140,"3xx":0,"4xx":0,"5xx":60},
                       "errors": {"5xx": 60, "timeout": 0, "connect": 0, "other": 0, "total": 60},
                       "error_rate": 0.3, "latency_ms": {"p50": 40.0, "p95": 350.0, "p99": 400.0}},
            "cumulative": {"requests": 200, "status": {"1xx":0,"2xx":140,"3xx":0,"4xx":0,"5xx":60},
                           "errors": {"5xx": 60, "timeout": 0, "connect": 0, "other": 0, "total": 60}, "retries": 0}}
        }},
        "base": {"targets": {
          "stable-aaaaaaaa-111111": {"model": "base", "revision": "aaaaaaaa-111111", "weight": 100, "share": 1.0,
            "backends": ["http://10.96.0.12:8000"],
            "window": {"requests": 0, "status": {"1xx":0,"2xx":0,"3xx":0,"4xx":0,"5xx":0},
                       "errors": {"5xx": 0, "timeout": 0, "connect": 0, "other": 0, "total": 0},
                       "error_rate": 0.0, "latency_ms": {"p50": null, "p95": null, "p99": null}},
            "cumulative": {"requests": 9, "status": {"1xx":0,"2xx":9,"3xx":0,"4xx":0,"5xx":0},
                           "errors": {"5xx": 0, "timeout": 0, "connect": 0, "other": 0, "total": 0}, "retries": 0}}
        }}
      }
    }"#;

    #[test]
    fn canary_and_stable_numbers_over_the_routes_the_canary_splits() {
        let stats = parse(BODY.as_bytes()).expect("parse");
        assert_eq!(stats.config.generation, 3);
        let (c, s) = window(&stats, "aaaaaaaa-111111", "aaaaaaaa-222222").expect("window");
        assert_eq!((c.requests, c.errors), (200, 60));
        assert_eq!(c.p95_seconds, Some(0.35));
        let s = s.expect("stable");
        assert_eq!((s.requests, s.errors), (1800, 18));
        assert_eq!(s.p95_seconds, Some(0.1805));
    }

    #[test]
    fn no_canary_target_yet_is_no_window() {
        let stats = parse(BODY.as_bytes()).expect("parse");
        assert_eq!(window(&stats, "aaaaaaaa-111111", "aaaaaaaa-333333"), None);
    }

    #[test]
    fn garbage_is_an_error_naming_the_source() {
        let e = parse(b"{").expect_err("error");
        assert!(e.starts_with("router /stats"), "{e}");
    }

    /// Two router pods, each with part of the traffic: the analysis sees the sum.
    #[test]
    fn samples_add_up_over_router_pods() {
        let one = parse(BODY.as_bytes()).expect("parse");
        let mut two = one.clone();
        let canary = two.routes["support"]
            .targets
            .get_mut("canary-aaaaaaaa-222222")
            .expect("canary");
        canary.window.requests = 100;
        canary.window.errors.total = 5;
        canary.window.latency_ms.p95 = Some(500.0);
        let (c, s) = window_over_pods(&[one.clone(), two], "aaaaaaaa-111111", "aaaaaaaa-222222")
            .expect("window");
        assert_eq!((c.requests, c.errors), (300, 65));
        assert_eq!(c.p95_seconds, Some(0.5));
        let s = s.expect("stable");
        assert_eq!((s.requests, s.errors), (3600, 36));
        // A pod still on the config before the canary adds nothing.
        let mut old = one.clone();
        old.routes["support"]
            .targets
            .shift_remove("canary-aaaaaaaa-222222");
        let (c, _) = window_over_pods(&[one, old.clone()], "aaaaaaaa-111111", "aaaaaaaa-222222")
            .expect("window");
        assert_eq!(c.requests, 200);
        assert_eq!(
            window_over_pods(&[old], "aaaaaaaa-111111", "aaaaaaaa-222222"),
            None
        );
        assert_eq!(window_over_pods(&[], "a", "b"), None);
    }

    #[test]
    fn a_config_runs_once_every_router_pod_reports_it() {
        let text = "{}";
        let mut a = parse(BODY.as_bytes()).expect("parse");
        a.config.sha256 = config_sha256(text);
        let mut b = a.clone();
        assert!(all_run(&[a.clone(), b.clone()], text));
        b.config.sha256 = config_sha256("older");
        assert!(!all_run(&[a.clone(), b], text));
        assert!(!all_run(&[], text));
        assert!(all_run(&[a], text));
    }

    #[test]
    fn config_hash_is_hex_sha256() {
        assert_eq!(
            config_sha256(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
