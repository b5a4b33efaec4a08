//! The gate before a canary takes traffic: each adapter the canary changes must meet the
//! rollout's checks, from what its FineTuneJob recorded in the LoraAdapter's lineage —
//! validation loss below the base model's (`requireBetterThanBase`), and the evaluation's
//! thresholds (`rollout.gate`: win rate, its interval's lower bound, test loss against the
//! base). A check that fails rolls the canary back with the evidence; an adapter without the
//! numbers a check needs waits for them.

use tailor_api::{Rollout, RolloutGate};
use tailor_wire::eval::Evaluation;

use super::revision::{ResolvedAdapter, RevisionSpec, changed_routes};
use super::rollout::Gate;

/// One adapter against the checks: `Ok(evidence)`, or the gate's verdict for the canary.
fn check(a: &ResolvedAdapter, g: &RolloutGate) -> Result<Vec<String>, Gate> {
    let name = &a.adapter;
    let mut evidence = vec![];
    if g.require_better_than_base {
        match (a.validation_loss, a.base_validation_loss) {
            (Some(v), Some(b)) if v < b => {
                evidence.push(format!("validation loss {v:.4} < base {b:.4}"));
            }
            (Some(v), Some(b)) => {
                return Err(Gate::Fail(format!(
                    "{name}: validation loss {v:.4} is not below the base model's {b:.4} (requireBetterThanBase)"
                )));
            }
            _ => {
                return Err(Gate::Pending(format!(
                    "LoraAdapter {name} has no recorded validation losses (requireBetterThanBase)"
                )));
            }
        }
    }
    let wants_evaluation = g.min_win_rate.is_some()
        || g.min_win_rate_lower_bound.is_some()
        || g.max_test_loss_increase.is_some();
    if !wants_evaluation {
        return Ok(evidence);
    }
    let Some(e) = &a.evaluation else {
        return Err(Gate::Pending(format!(
            "LoraAdapter {name} has no recorded evaluation (rollout.gate; its FineTuneJob's spec.evaluation records one)"
        )));
    };
    evaluation_checks(name, e, g, &mut evidence)?;
    Ok(evidence)
}

fn evaluation_checks(
    name: &str,
    e: &Evaluation,
    g: &RolloutGate,
    evidence: &mut Vec<String>,
) -> Result<(), Gate> {
    let judge = e.judge.as_ref();
    let judged = judge.map_or(0, |j| j.judged);
    if let Some(min) = g.min_win_rate {
        let Some(w) = judge.and_then(|j| j.win_rate) else {
            return Err(Gate::Fail(format!(
                "{name}: no win rate was measured (the evaluation had no judge or no pair was judged), and rollout.gate.minWinRate is {min}"
            )));
        };
        if w < min {
            return Err(Gate::Fail(format!(
                "{name}: win rate {w:.3} over {judged} judged pairs is below rollout.gate.minWinRate {min}"
            )));
        }
        evidence.push(format!("win rate {w:.3} >= {min} ({judged} pairs)"));
    }
    if let Some(min) = g.min_win_rate_lower_bound {
        let Some(lo) = judge.and_then(|j| j.win_rate_lower) else {
            return Err(Gate::Fail(format!(
                "{name}: no win rate interval was measured, and rollout.gate.minWinRateLowerBound is {min}"
            )));
        };
        if lo < min {
            return Err(Gate::Fail(format!(
                "{name}: the win rate's 95% interval starts at {lo:.3} over {judged} judged pairs, below rollout.gate.minWinRateLowerBound {min}"
            )));
        }
        evidence.push(format!("win rate lower bound {lo:.3} >= {min}"));
    }
    if let Some(max) = g.max_test_loss_increase {
        let (Some(t), Some(b)) = (e.adapter.test_loss, e.base.test_loss) else {
            return Err(Gate::Fail(format!(
                "{name}: the evaluation measured no test loss, and rollout.gate.maxTestLossIncrease is {max}"
            )));
        };
        if t - b > max {
            return Err(Gate::Fail(format!(
                "{name}: test loss {t:.4} exceeds the base model's {b:.4} by more than rollout.gate.maxTestLossIncrease {max}"
            )));
        }
        evidence.push(format!("test loss {t:.4} (base {b:.4})"));
    }
    Ok(())
}

/// The rollout's checks: `gate`, with the older `requireBetterThanBase` beside it folded in.
fn checks(rollout: &Rollout) -> RolloutGate {
    let mut g = rollout.gate.clone().unwrap_or_default();
    g.require_better_than_base |= rollout.require_better_than_base;
    g
}

pub fn gate(rollout: &Rollout, stable: &RevisionSpec, canary: &RevisionSpec) -> Gate {
    let g = checks(rollout);
    if g == RolloutGate::default() {
        return Gate::NotRequired;
    }
    let mut checked = vec![];
    for route in changed_routes(stable, canary) {
        let Some(a) = canary.adapter_for(&route) else {
            continue; // removed from the canary: nothing to judge
        };
        match check(a, &g) {
            Ok(evidence) => checked.push(format!("{}: {}", a.adapter, evidence.join(", "))),
            Err(verdict) => return verdict,
        }
    }
    if checked.is_empty() {
        Gate::NotRequired
    } else {
        Gate::Pass(checked.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modeldeployment::revision::{PodSpec, ResolvedAdapter};
    use tailor_wire::eval::{JudgeSummary, Scores};

    fn rev(adapter: &str, loss: Option<(f64, f64)>) -> RevisionSpec {
        RevisionSpec {
            pods: PodSpec {
                base_model_uri: "pvc://a/base".into(),
                base_model_credentials: None,
                base_model_revision: None,
                adapter_credentials: None,
                served_name: "base".into(),
                max_batch_size: 16,
                max_seq_length: 2048,
                max_loaded_adapters: 8,
                dtype: "auto".into(),
                template: None,
                runtime: tailor_api::Runtime::Tailor,
                image: None,
                extra_args: vec![],
                max_lora_rank: None,
            },
            adapters: vec![ResolvedAdapter {
                served_name: "support".into(),
                adapter: adapter.into(),
                uri: format!("pvc://a/{adapter}"),
                sha256: None,
                rank: Some(8),
                credentials: None,
                validation_loss: loss.map(|l| l.0),
                base_validation_loss: loss.map(|l| l.1),
                evaluation: None,
            }],
        }
    }

    fn evaluated(adapter: &str, wins: usize, judged: usize, test_loss: (f64, f64)) -> RevisionSpec {
        let mut r = rev(adapter, None);
        let (lo, hi) = tailor_wire::eval::wilson_interval(wins, judged).unzip();
        r.adapters[0].evaluation = Some(Evaluation {
            examples: judged,
            answered: judged,
            base: Scores {
                test_loss: Some(test_loss.1),
                ..Default::default()
            },
            adapter: Scores {
                test_loss: Some(test_loss.0),
                ..Default::default()
            },
            judge: Some(JudgeSummary {
                model: "judge".into(),
                pairs: judged,
                judged,
                wins,
                losses: judged - wins,
                win_rate: (judged > 0).then(|| wins as f64 / judged as f64),
                win_rate_lower: lo,
                win_rate_upper: hi,
                ..Default::default()
            }),
            ..Default::default()
        });
        r
    }

    fn rollout(require: bool, gate: Option<RolloutGate>) -> Rollout {
        Rollout {
            require_better_than_base: require,
            gate,
            ..Rollout::default()
        }
    }

    #[test]
    fn better_than_base_passes_worse_fails_unknown_waits() {
        let r = rollout(true, None);
        let stable = rev("v1", Some((1.0, 2.0)));
        assert!(matches!(
            gate(&r, &stable, &rev("v2", Some((0.9, 2.0)))),
            Gate::Pass(_)
        ));
        match gate(&r, &stable, &rev("v2", Some((2.3, 2.05)))) {
            Gate::Fail(m) => assert!(
                m.contains("v2: validation loss 2.3000 is not below the base model's 2.0500"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            gate(&r, &stable, &rev("v2", None)),
            Gate::Pending(_)
        ));
        assert_eq!(
            gate(&rollout(false, None), &stable, &rev("v2", Some((3.0, 2.0)))),
            Gate::NotRequired
        );
        // The same check under rollout.gate.
        let g = rollout(
            false,
            Some(RolloutGate {
                require_better_than_base: true,
                ..Default::default()
            }),
        );
        assert!(matches!(
            gate(&g, &stable, &rev("v2", Some((2.3, 2.05)))),
            Gate::Fail(_)
        ));
        // Unchanged adapters are not judged again.
        assert_eq!(gate(&r, &stable, &stable.clone()), Gate::NotRequired);
    }

    #[test]
    fn win_rate_and_its_interval_gate_the_canary() {
        let stable = rev("v1", None);
        let min = |w: f64, lo: Option<f64>| {
            rollout(
                false,
                Some(RolloutGate {
                    min_win_rate: Some(w),
                    min_win_rate_lower_bound: lo,
                    ..Default::default()
                }),
            )
        };
        // 8 of 10: 0.8 >= 0.7, interval [0.49, 0.94].
        match gate(
            &min(0.7, None),
            &stable,
            &evaluated("v2", 8, 10, (1.0, 2.0)),
        ) {
            Gate::Pass(m) => assert!(m.contains("v2: win rate 0.800 >= 0.7 (10 pairs)"), "{m}"),
            other => panic!("{other:?}"),
        }
        match gate(
            &min(0.7, None),
            &stable,
            &evaluated("v2", 6, 10, (1.0, 2.0)),
        ) {
            Gate::Fail(m) => assert!(
                m.contains(
                    "v2: win rate 0.600 over 10 judged pairs is below rollout.gate.minWinRate 0.7"
                ),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // The same 0.8 on 10 pairs is not enough evidence for a lower bound of 0.6 …
        match gate(
            &min(0.7, Some(0.6)),
            &stable,
            &evaluated("v2", 8, 10, (1.0, 2.0)),
        ) {
            Gate::Fail(m) => assert!(m.contains("interval starts at 0.490"), "{m}"),
            other => panic!("{other:?}"),
        }
        // … on 100 pairs it is ([0.71, 0.87]).
        assert!(matches!(
            gate(
                &min(0.7, Some(0.6)),
                &stable,
                &evaluated("v2", 80, 100, (1.0, 2.0))
            ),
            Gate::Pass(_)
        ));
        // No judge, no win rate: a gate that asks for one fails, it does not wait forever.
        let mut no_judge = evaluated("v2", 0, 0, (1.0, 2.0));
        if let Some(e) = no_judge.adapters[0].evaluation.as_mut() {
            e.judge = None;
        }
        assert!(matches!(
            gate(&min(0.5, None), &stable, &no_judge),
            Gate::Fail(_)
        ));
        // Not evaluated yet: wait.
        assert!(matches!(
            gate(&min(0.5, None), &stable, &rev("v2", None)),
            Gate::Pending(m) if m.contains("no recorded evaluation")
        ));
    }

    #[test]
    fn test_loss_may_rise_only_as_far_as_allowed() {
        let stable = rev("v1", None);
        let g = rollout(
            false,
            Some(RolloutGate {
                max_test_loss_increase: Some(0.05),
                ..Default::default()
            }),
        );
        assert!(matches!(
            gate(&g, &stable, &evaluated("v2", 5, 10, (2.04, 2.0))),
            Gate::Pass(_)
        ));
        match gate(&g, &stable, &evaluated("v2", 5, 10, (2.10, 2.0))) {
            Gate::Fail(m) => assert!(
                m.contains("test loss 2.1000 exceeds the base model's 2.0000 by more than rollout.gate.maxTestLossIncrease 0.05"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
