//! Canary analysis: one window of canary and stable numbers → Pass, Fail or Inconclusive.
//!
//! Low traffic is not evidence: below `minRequests` canary requests the verdict is
//! inconclusive. The canary fails when its error rate exceeds `maxErrorRate`, when it exceeds
//! the stable's by more than `maxErrorRateIncrease` *significantly* (one-sided two-proportion
//! z-test of "canary − stable > maxErrorRateIncrease" at 5%), or when its p95 latency exceeds
//! `maxLatencyP95`. Testing against the allowance, not against zero, is what keeps two
//! revisions with the same small error rate from "regressing" on noise window after window.

use tailor_api::{Analysis, RevisionMetrics, Verdict};

/// One-sided 5% significance: z above this rejects "the canary is no worse than stable".
pub const Z_CRITICAL: f64 = 1.6449;

/// Numbers of one revision over a window, as read from the router (or Prometheus).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub revision: String,
    pub requests: u64,
    pub errors: u64,
    pub p95_seconds: Option<f64>,
}

impl Sample {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// As recorded in status.
    pub fn to_metrics(&self) -> RevisionMetrics {
        RevisionMetrics {
            revision: self.revision.clone(),
            requests: self.requests,
            errors: self.errors,
            error_rate: round(self.error_rate(), 6),
            p95_seconds: self.p95_seconds.map(|p| round(p, 4)),
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// What one analysis decided, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub message: String,
}

/// z statistic of "proportion a exceeds proportion b by more than `margin`" (a non-inferiority
/// test with an unpooled standard error), `None` when either side is empty or neither varies.
pub fn excess_z(errors_a: u64, n_a: u64, errors_b: u64, n_b: u64, margin: f64) -> Option<f64> {
    if n_a == 0 || n_b == 0 {
        return None;
    }
    let (pa, pb) = (errors_a as f64 / n_a as f64, errors_b as f64 / n_b as f64);
    let se = (pa * (1.0 - pa) / n_a as f64 + pb * (1.0 - pb) / n_b as f64).sqrt();
    if se == 0.0 || !se.is_finite() {
        return None;
    }
    Some((pa - pb - margin) / se)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn describe(s: &Sample) -> String {
    format!("{} ({}/{})", pct(s.error_rate()), s.errors, s.requests)
}

/// Judges one window. `stable` is `None` when the stable revision had no traffic to compare
/// with (then only the absolute thresholds apply).
pub fn judge(a: &Analysis, canary: &Sample, stable: Option<&Sample>) -> Judgement {
    if canary.requests < a.min_requests {
        return Judgement {
            verdict: Verdict::Inconclusive,
            message: format!(
                "canary had {} requests in the window, fewer than minRequests {}: not evidence either way",
                canary.requests, a.min_requests
            ),
        };
    }
    let mut failures = vec![];
    let rate = canary.error_rate();
    if rate > a.max_error_rate {
        failures.push(format!(
            "canary error rate {} > maxErrorRate {}",
            describe(canary),
            pct(a.max_error_rate)
        ));
    }
    let comparable = stable.filter(|s| s.requests >= a.min_requests);
    if let Some(s) = comparable {
        let increase = rate - s.error_rate();
        if increase > a.max_error_rate_increase {
            let margin = a.max_error_rate_increase;
            match excess_z(canary.errors, canary.requests, s.errors, s.requests, margin) {
                Some(z) if z > Z_CRITICAL => failures.push(format!(
                    "canary error rate {} exceeds stable {} by {} > maxErrorRateIncrease {} (z = {z:.2} > {Z_CRITICAL})",
                    describe(canary),
                    describe(s),
                    pct(increase),
                    pct(a.max_error_rate_increase)
                )),
                _ => {}
            }
        }
    }
    if let (Some(max), Some(p95)) = (a.max_latency_p95, canary.p95_seconds) {
        let max = std::time::Duration::from(max).as_secs_f64();
        if p95 > max {
            failures.push(format!(
                "canary p95 latency {p95:.3}s > maxLatencyP95 {max}s"
            ));
        }
    }
    if !failures.is_empty() {
        return Judgement {
            verdict: Verdict::Fail,
            message: failures.join("; "),
        };
    }
    let mut message = format!("canary error rate {}", describe(canary));
    match comparable {
        Some(s) => message.push_str(&format!(", stable {}", describe(s))),
        None => message.push_str(", too little stable traffic to compare"),
    }
    if let Some(p95) = canary.p95_seconds {
        message.push_str(&format!(", canary p95 {p95:.3}s"));
    }
    Judgement {
        verdict: Verdict::Pass,
        message,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic binomial draws for realistic counts (xorshift64*; no dependency).
    pub(crate) struct Draws(u64);

    impl Draws {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        pub(crate) fn binomial(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.uniform() < p).count() as u64
        }
    }

    pub(crate) fn sample(revision: &str, requests: u64, errors: u64) -> Sample {
        Sample {
            revision: revision.into(),
            requests,
            errors,
            p95_seconds: Some(0.4),
        }
    }

    fn analysis() -> Analysis {
        Analysis {
            min_requests: 50,
            max_error_rate: 0.05,
            max_error_rate_increase: 0.02,
            ..Default::default()
        }
    }

    #[test]
    fn below_min_requests_is_inconclusive_even_when_every_request_failed() {
        let j = judge(
            &analysis(),
            &sample("c", 10, 10),
            Some(&sample("s", 900, 0)),
        );
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(
            j.message.contains("fewer than minRequests 50"),
            "{}",
            j.message
        );
    }

    #[test]
    fn absolute_error_rate_fails() {
        let j = judge(
            &analysis(),
            &sample("c", 200, 60),
            Some(&sample("s", 1800, 18)),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.message
                .contains("canary error rate 30.0% (60/200) > maxErrorRate 5.0%"),
            "{}",
            j.message
        );
        // The relative rule agrees, with its evidence.
        assert!(j.message.contains("z = "), "{}", j.message);
    }

    #[test]
    fn relative_increase_needs_significance() {
        let a = Analysis {
            max_error_rate: 0.5,
            ..analysis()
        };
        // 4% vs 1%: +3 points. On 50 canary requests (2 errors) that is chance…
        let small = judge(&a, &sample("c", 50, 2), Some(&sample("s", 450, 5)));
        assert_eq!(small.verdict, Verdict::Pass, "{}", small.message);
        // …on 2000 canary requests (80 errors) it is not.
        let large = judge(&a, &sample("c", 2000, 80), Some(&sample("s", 18000, 180)));
        assert_eq!(large.verdict, Verdict::Fail, "{}", large.message);
        assert!(
            large.message.contains("exceeds stable 1.0% (180/18000)"),
            "{}",
            large.message
        );
    }

    #[test]
    fn increase_below_the_allowance_passes_however_significant() {
        let a = Analysis {
            max_error_rate: 0.5,
            ..analysis()
        };
        // +1.5 points on huge counts: significant, but allowed.
        let j = judge(
            &a,
            &sample("c", 100_000, 2_500),
            Some(&sample("s", 900_000, 9_000)),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
    }

    #[test]
    fn p95_above_the_limit_fails() {
        let a = Analysis {
            max_latency_p95: Some(std::time::Duration::from_secs(2).into()),
            ..analysis()
        };
        let mut slow = sample("c", 200, 0);
        slow.p95_seconds = Some(2.5);
        let j = judge(&a, &slow, Some(&sample("s", 1800, 0)));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.message.contains("p95 latency 2.500s > maxLatencyP95 2s"),
            "{}",
            j.message
        );
        let mut ok = sample("c", 200, 0);
        ok.p95_seconds = Some(1.9);
        assert_eq!(judge(&a, &ok, None).verdict, Verdict::Pass);
    }

    #[test]
    fn no_stable_traffic_judges_on_absolute_thresholds_only() {
        let j = judge(&analysis(), &sample("c", 100, 4), Some(&sample("s", 3, 0)));
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(
            j.message.contains("too little stable traffic"),
            "{}",
            j.message
        );
    }

    #[test]
    fn z_statistic_matches_a_hand_computation() {
        // 60/200 vs 18/1800 with a 2-point allowance: se = sqrt(.3*.7/200 + .01*.99/1800).
        let z = excess_z(60, 200, 18, 1800, 0.02).expect("z");
        let se = (0.3f64 * 0.7 / 200.0 + 0.01 * 0.99 / 1800.0).sqrt();
        assert!((z - (0.3 - 0.01 - 0.02) / se).abs() < 1e-9, "{z}");
        assert_eq!(excess_z(0, 100, 0, 100, 0.0), None);
        assert_eq!(excess_z(1, 0, 0, 100, 0.0), None);
    }

    #[test]
    fn equal_one_percent_error_rates_rarely_fail_and_never_twice_in_a_row() {
        // Realistic counts: at a 10% weight ~200 canary and ~1800 stable requests per window,
        // both failing 1% of requests at random (7 of 200 happens). Two in a row, what a
        // rollback takes with failureLimit 2, never happens; single windows almost never.
        let mut draws = Draws::new(7);
        let mut fails = 0;
        let mut previous = Verdict::Pass;
        for window in 0..200 {
            let canary = sample("c", 200, draws.binomial(200, 0.01));
            let stable = sample("s", 1800, draws.binomial(1800, 0.01));
            let j = judge(&analysis(), &canary, Some(&stable));
            if j.verdict == Verdict::Fail {
                fails += 1;
                assert_ne!(previous, Verdict::Fail, "window {window}: {}", j.message);
            }
            previous = j.verdict;
        }
        assert!(fails <= 2, "{fails} of 200 windows failed");
    }

    #[test]
    fn thirty_percent_failing_canary_fails_every_window() {
        let mut draws = Draws::new(11);
        for window in 0..50 {
            let canary = sample("c", 200, draws.binomial(200, 0.3));
            let stable = sample("s", 1800, draws.binomial(1800, 0.01));
            let j = judge(&analysis(), &canary, Some(&stable));
            assert_eq!(j.verdict, Verdict::Fail, "window {window}: {}", j.message);
        }
    }

    #[test]
    fn recorded_metrics_are_rounded() {
        let m = sample("c", 3, 1).to_metrics();
        assert_eq!(m.error_rate, 0.333333);
        assert_eq!(m.requests, 3);
    }
}
