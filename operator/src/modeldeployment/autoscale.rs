//! Load-based scaling of the serving pods (`spec.autoscaling`), decided from the servers' own
//! gauges the way Kubernetes' HPA decides from a metric:
//!
//! - the recommendation is `ceil(load / target)` (load summed over the pods read), within
//!   `[minReplicas, maxReplicas]`, unless the load per pod is within 10% of the target;
//! - scaling up goes only as far as every recommendation of the `scaleUpStabilization` window
//!   allows (their lowest), and at most to twice the pods or four more per decision;
//! - scaling down goes only as far as every recommendation of the `scaleDownStabilization`
//!   window allows (their highest), and at most to half the pods per decision;
//! - without a reading (no ready pod answered) nothing changes, and while a canary is analysed
//!   nothing scales down, so its analysis keeps the traffic it needs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tailor_api::{Autoscaling, AutoscalingStatus, Recommendation};

/// Load per pod within this fraction of the target changes nothing (HPA's tolerance).
const TOLERANCE: f64 = 0.1;
/// Recommendations remembered at most (the windows' memory stays small in status).
const MEMORY: usize = 64;

/// What one decision is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The metric summed over the pods read; `None` when no pod answered.
    pub load: Option<f64>,
    pub measured_pods: u32,
}

/// The serving pods a revision runs: the autoscaler's decision, else `spec.replicas`.
pub fn replicas(spec: &tailor_api::ModelDeploymentSpec, status: Option<&AutoscalingStatus>) -> i32 {
    match (&spec.autoscaling, status) {
        (Some(a), Some(s)) => s.desired_replicas.clamp(a.min_replicas, a.max_replicas),
        (Some(a), None) => spec.replicas.clamp(a.min_replicas, a.max_replicas),
        (None, _) => spec.replicas,
    }
}

/// The target per pod and the metric's name (for messages).
pub fn target(a: &Autoscaling) -> (f64, &'static str) {
    match (a.target_in_flight_per_replica, a.target_queue_depth) {
        (Some(t), _) => (t, "in-flight requests"),
        (None, Some(t)) => (t, "waiting requests"),
        (None, None) => (1.0, "in-flight requests"),
    }
}

/// The next decision, given the previous one (`None` the first time) and `current` pods.
pub fn decide(
    a: &Autoscaling,
    previous: Option<&AutoscalingStatus>,
    current: i32,
    reading: &Reading,
    canary: bool,
    now: Timestamp,
) -> AutoscalingStatus {
    let (target, metric) = target(a);
    let clamp = |n: i32| n.clamp(a.min_replicas, a.max_replicas);
    let current = clamp(current.max(1));
    let recommendation = match reading.load {
        None => current,
        Some(load) => {
            let per_pod = load / f64::from(current);
            if (per_pod / target - 1.0).abs() <= TOLERANCE {
                current
            } else {
                clamp((load / target).ceil() as i32)
            }
        }
    };
    let up = std::time::Duration::from(a.scale_up_stabilization);
    let down = std::time::Duration::from(a.scale_down_stabilization);
    let keep = up.max(down);
    let mut memory: Vec<Recommendation> = previous
        .map(|p| p.recommendations.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| age(now, &r.time) <= keep)
        .collect();
    memory.push(Recommendation {
        time: Time(now),
        replicas: recommendation,
    });
    if memory.len() > MEMORY {
        memory.drain(..memory.len() - MEMORY);
    }
    let within = |w: std::time::Duration| {
        memory
            .iter()
            .filter(move |r| age(now, &r.time) <= w)
            .map(|r| r.replicas)
    };
    let (desired, why) = if reading.load.is_none() {
        (
            current,
            "no serving pod answered with its load: keeping the pods".to_string(),
        )
    } else if recommendation > current {
        let allowed = within(up).min().unwrap_or(recommendation);
        let step = (current * 2).max(current + 4);
        let d = allowed.min(step).max(current);
        (
            d,
            format!(
                "scale up: {recommendation} pods recommended; {allowed} held for the {}s up-stabilization window; at most {step} per step",
                up.as_secs()
            ),
        )
    } else if recommendation < current {
        if canary {
            (
                current,
                "a canary is being analysed: no scale-down until it ends".to_string(),
            )
        } else {
            let allowed = within(down).max().unwrap_or(recommendation);
            let floor = (current + 1) / 2;
            let d = allowed.max(floor).min(current);
            (
                d,
                format!(
                    "scale down: {recommendation} pods recommended; {allowed} held for the {}s down-stabilization window; at most half per step",
                    down.as_secs()
                ),
            )
        }
    } else {
        (current, "load at target".to_string())
    };
    let desired = clamp(desired);
    let load_text = reading
        .load
        .map_or("no reading".to_string(), |l| format!("{l:.1}"));
    let message = format!(
        "{desired} pods: {why} ({metric}: {load_text} over {} pods, target {target} per pod)",
        reading.measured_pods
    );
    let last_scale_time = if desired != current || previous.is_none() {
        Some(Time(now))
    } else {
        previous.and_then(|p| p.last_scale_time.clone())
    };
    AutoscalingStatus {
        desired_replicas: desired,
        load: reading.load,
        measured_pods: reading.measured_pods,
        recommendation,
        message,
        last_evaluated: Some(Time(now)),
        last_scale_time,
        recommendations: memory,
    }
}

/// A pod's mean requests in flight between two readings of its busy seconds (the sum of its
/// requests' durations: Little's law); `None` without an earlier reading or when the counter
/// went back (the server restarted).
pub fn mean_in_flight(
    previous: Option<(std::time::Instant, f64)>,
    now: (std::time::Instant, f64),
) -> Option<f64> {
    let (t0, b0) = previous?;
    let dt = now.0.checked_duration_since(t0)?.as_secs_f64();
    (dt > 0.0 && now.1 >= b0).then(|| (now.1 - b0) / dt)
}

/// Whether it is time for a new decision.
pub fn due(a: &Autoscaling, previous: Option<&AutoscalingStatus>, now: Timestamp) -> bool {
    let interval = std::time::Duration::from(a.interval);
    previous
        .and_then(|p| p.last_evaluated.as_ref())
        .is_none_or(|t| age(now, t) >= interval)
}

fn age(now: Timestamp, t: &Time) -> std::time::Duration {
    let d: SignedDuration = now.duration_since(t.0);
    d.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, up: u64, down: u64) -> Autoscaling {
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_in_flight_per_replica: Some(4.0),
            target_queue_depth: None,
            scale_up_stabilization: std::time::Duration::from_secs(up).into(),
            scale_down_stabilization: std::time::Duration::from_secs(down).into(),
            interval: std::time::Duration::from_secs(10).into(),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn read(load: f64, pods: u32) -> Reading {
        Reading {
            load: Some(load),
            measured_pods: pods,
        }
    }

    #[test]
    fn load_above_target_scales_up_in_bounded_steps_and_holds_near_target() {
        let a = spec(1, 20, 0, 300);
        // 40 requests in flight on one pod, target 4: 10 recommended, 5 allowed in one step.
        let d = decide(&a, None, 1, &read(40.0, 1), false, at(0));
        assert_eq!((d.recommendation, d.desired_replicas), (10, 5));
        assert!(d.message.contains("scale up"), "{}", d.message);
        let d = decide(&a, Some(&d), 5, &read(40.0, 5), false, at(10));
        assert_eq!(d.desired_replicas, 10);
        // Within 10% of the target per pod: nothing changes.
        let d = decide(&a, Some(&d), 10, &read(42.0, 10), false, at(20));
        assert_eq!((d.recommendation, d.desired_replicas), (10, 10));
        // Never beyond maxReplicas.
        let d = decide(&a, Some(&d), 10, &read(400.0, 10), false, at(30));
        assert_eq!(d.desired_replicas, 20);
    }

    #[test]
    fn the_up_window_ignores_a_burst_and_the_down_window_a_dip() {
        let a = spec(1, 20, 30, 60);
        let d0 = decide(&a, None, 2, &read(8.0, 2), false, at(0));
        assert_eq!(d0.desired_replicas, 2);
        // A burst: 6 recommended, but 2 was recommended within the last 30 s.
        let d1 = decide(&a, Some(&d0), 2, &read(24.0, 2), false, at(10));
        assert_eq!((d1.recommendation, d1.desired_replicas), (6, 2));
        // Still high 31 s after the low reading: up it goes.
        let d2 = decide(&a, Some(&d1), 2, &read(24.0, 2), false, at(41));
        assert_eq!(d2.desired_replicas, 6);
        // A dip to nothing: held at 6 for the 60 s down window...
        let d3 = decide(&a, Some(&d2), 6, &read(0.0, 6), false, at(50));
        assert_eq!((d3.recommendation, d3.desired_replicas), (1, 6));
        let d4 = decide(&a, Some(&d3), 6, &read(0.0, 6), false, at(100));
        assert_eq!(d4.desired_replicas, 6);
        // ...then down, at most half per step, to minReplicas.
        let d5 = decide(&a, Some(&d4), 6, &read(0.0, 6), false, at(112));
        assert_eq!(d5.desired_replicas, 3);
        let d6 = decide(&a, Some(&d5), 3, &read(0.0, 3), false, at(122));
        assert_eq!(d6.desired_replicas, 2);
        let d7 = decide(&a, Some(&d6), 2, &read(0.0, 2), false, at(132));
        assert_eq!(d7.desired_replicas, 1);
        assert_eq!(d7.last_scale_time, Some(Time(at(132))));
    }

    #[test]
    fn no_reading_or_a_canary_under_analysis_never_scales_down() {
        let a = spec(1, 8, 0, 0);
        let none = Reading {
            load: None,
            measured_pods: 0,
        };
        let d = decide(&a, None, 4, &none, false, at(0));
        assert_eq!(d.desired_replicas, 4);
        assert!(
            d.message.contains("no serving pod answered"),
            "{}",
            d.message
        );
        let d = decide(&a, Some(&d), 4, &read(0.0, 4), true, at(10));
        assert_eq!(d.desired_replicas, 4);
        assert!(d.message.contains("canary"), "{}", d.message);
        // A canary does not stop scaling up.
        let d = decide(&a, Some(&d), 4, &read(32.0, 4), true, at(20));
        assert_eq!(d.desired_replicas, 8);
    }

    #[test]
    fn the_mean_in_flight_is_the_rate_of_busy_seconds() {
        let t0 = std::time::Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(10);
        // 25 request-seconds in 10 s: 2.5 requests in flight on average.
        assert_eq!(mean_in_flight(Some((t0, 100.0)), (t1, 125.0)), Some(2.5));
        assert_eq!(mean_in_flight(None, (t1, 125.0)), None);
        // A restarted server's counter starts again: no rate.
        assert_eq!(mean_in_flight(Some((t0, 100.0)), (t1, 3.0)), None);
        assert_eq!(mean_in_flight(Some((t1, 100.0)), (t0, 125.0)), None);
    }

    #[test]
    fn replicas_come_from_the_decision_within_the_bounds() {
        let mut spec_ = tailor_api::ModelDeploymentSpec {
            replicas: 3,
            ..serde_json::from_value(serde_json::json!({
                "baseModel": {"uri": "pvc://a/b", "servedName": "base"}
            }))
            .expect("spec")
        };
        assert_eq!(replicas(&spec_, None), 3);
        spec_.autoscaling = Some(spec(2, 5, 0, 0));
        assert_eq!(replicas(&spec_, None), 3);
        let st = AutoscalingStatus {
            desired_replicas: 9,
            ..Default::default()
        };
        assert_eq!(replicas(&spec_, Some(&st)), 5);
        assert!(due(&spec(1, 2, 0, 0), None, at(0)));
        let st = AutoscalingStatus {
            last_evaluated: Some(Time(at(0))),
            ..Default::default()
        };
        assert!(!due(&spec(1, 2, 0, 0), Some(&st), at(5)));
        assert!(due(&spec(1, 2, 0, 0), Some(&st), at(10)));
    }
}
