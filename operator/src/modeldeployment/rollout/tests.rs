use super::*;
use crate::modeldeployment::analysis::tests::{Draws, sample};
use tailor_api::{Analysis, RolloutStep};

const STABLE: &str = "aaaaaaaa-111111";
const CANARY: &str = "aaaaaaaa-222222";
const POD_CANARY: &str = "bbbbbbbb-111111";

fn rollout(auto_rollback: bool) -> Rollout {
    Rollout {
        steps: vec![
            RolloutStep {
                weight: 10,
                pause: Duration::from_secs(60).into(),
            },
            RolloutStep {
                weight: 50,
                pause: Duration::from_secs(60).into(),
            },
        ],
        analysis: Analysis {
            interval: Duration::from_secs(30).into(),
            min_requests: 50,
            max_error_rate: 0.05,
            max_error_rate_increase: 0.02,
            failure_limit: 2,
            ..Default::default()
        },
        auto_rollback,
        require_better_than_base: false,
        gate: None,
        progress_deadline_seconds: 120,
    }
}

/// What the router would count over a window at a canary weight.
type Traffic<'a> = &'a mut dyn FnMut(u32) -> Window;

struct Sim {
    rollout: Rollout,
    status: ModelDeploymentStatus,
    now: Timestamp,
    generation: i64,
    events: Vec<Event>,
    transitions: Vec<Transition>,
    /// Canary weight after every pass.
    weights: Vec<u32>,
    analyses: usize,
    /// Not-ready revisions wait for pods (Pending) rather than for adapters to load.
    pods_pending: bool,
}

impl Sim {
    fn new(rollout: Rollout) -> Self {
        Self {
            rollout,
            status: ModelDeploymentStatus::default(),
            now: Timestamp::from_second(1_764_000_000).expect("time"),
            generation: 1,
            events: vec![],
            transitions: vec![],
            weights: vec![],
            analyses: 0,
            pods_pending: false,
        }
    }

    /// A stable revision that already serves.
    fn serving(stable: &str) -> Self {
        let mut sim = Self::new(rollout(true));
        sim.pass(
            stable,
            true,
            true,
            Gate::NotRequired,
            &mut |_| unreachable!(),
        );
        assert_eq!(sim.status.phase, Phase::Healthy);
        sim.events.clear();
        sim.weights.clear();
        sim
    }

    fn advance(&mut self, d: Duration) {
        self.now = Timestamp::from_millisecond(
            self.now.as_millisecond() + i64::try_from(d.as_millis()).expect("ms"),
        )
        .expect("time");
    }

    fn pass(
        &mut self,
        desired: &str,
        stable_ready: bool,
        canary_ready: bool,
        gate: Gate,
        traffic: Traffic<'_>,
    ) -> Decision {
        // Status goes through the API server between passes: JSON, as any restart reads it.
        let previous: ModelDeploymentStatus =
            serde_json::from_value(serde_json::to_value(&self.status).expect("to json"))
                .expect("from json");
        let window = analysis_window(&self.rollout, &previous, desired, self.now).map(|_| {
            self.analyses += 1;
            traffic(previous.canary_weight)
        });
        let d = decide(&Input {
            rollout: &self.rollout,
            generation: Some(self.generation),
            desired,
            previous: &previous,
            now: self.now,
            stable: if stable_ready {
                Readiness::ready("2/2 pods ready")
            } else if self.pods_pending {
                Readiness::pods_not_ready("0/2 pods ready")
            } else {
                Readiness::not_ready("0/2 pods ready")
            },
            canary: if canary_ready {
                Readiness::ready("adapter loaded on 2/2 pods")
            } else if self.pods_pending {
                Readiness::pods_not_ready("0/2 pods ready")
            } else {
                Readiness::not_ready("adapter loaded on 0/2 pods")
            },
            gate,
            window,
        });
        self.status = d.status.clone();
        self.events.extend(d.events.clone());
        self.transitions.extend(d.transition);
        self.weights.push(self.status.canary_weight);
        d
    }

    /// Passes every 5 s for `secs` seconds (the controller also wakes on requeue; a
    /// finer clock than the requeue only checks that extra passes change nothing).
    fn run(&mut self, desired: &str, secs: u64, traffic: Traffic<'_>) {
        for _ in 0..secs / 5 {
            self.pass(desired, true, true, Gate::NotRequired, traffic);
            self.advance(Duration::from_secs(5));
        }
    }

    fn reasons(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.reason).collect()
    }
}

fn healthy_traffic(weight: u32) -> Window {
    let canary = u64::from(weight) * 20;
    let stable = 2000 - canary;
    Window {
        canary: sample(CANARY, canary, canary / 200),
        stable: Some(sample(STABLE, stable, stable / 200)),
        query: None,
    }
}

#[test]
fn first_revision_becomes_stable_without_a_canary() {
    let mut sim = Sim::new(rollout(true));
    sim.pass(
        STABLE,
        false,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.stable_revision.as_deref(), Some(STABLE));
    assert_eq!(sim.status.canary_revision, None);
    assert_eq!(sim.status.phase, Phase::Progressing);
    assert!(!conditions::is_true(&sim.status.conditions, READY));
    sim.advance(Duration::from_secs(5));
    sim.pass(
        STABLE,
        true,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.phase, Phase::Healthy);
    assert!(conditions::is_true(&sim.status.conditions, READY));
    assert_eq!(sim.status.history.len(), 1);
    assert_eq!(sim.status.history[0].outcome, Outcome::Promoted);
    assert_eq!(sim.status.observed_generation, Some(1));
    // A first revision that never served is replaced outright by the next spec.
    let mut sim = Sim::new(rollout(true));
    sim.pass(
        STABLE,
        false,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    sim.pass(
        POD_CANARY,
        false,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.stable_revision.as_deref(), Some(POD_CANARY));
    assert_eq!(sim.status.canary_revision, None);
    assert_eq!(sim.status.history[0].outcome, Outcome::Superseded);
}

#[test]
fn good_adapter_canary_follows_the_steps_and_is_promoted() {
    let mut sim = Sim::serving(STABLE);
    sim.run(CANARY, 400, &mut healthy_traffic);
    assert_eq!(sim.status.stable_revision.as_deref(), Some(CANARY));
    assert_eq!(sim.status.canary_revision, None);
    assert_eq!(sim.status.canary_weight, 0);
    assert_eq!(sim.status.phase, Phase::Healthy);
    assert_eq!(
        sim.transitions,
        [Transition::Promoted(RolloutKind::Adapter)]
    );
    // Weights went 10 then 50 then 0 (promoted), never back.
    let mut seen = sim.weights.clone();
    seen.dedup();
    assert_eq!(seen, [10, 50, 0]);
    assert_eq!(
        sim.reasons(),
        ["CanaryStarted", "CanaryStep", "CanaryStep", "Promoted"]
    );
    let last = sim.status.history.last().expect("history");
    assert_eq!(
        (last.revision.as_str(), last.outcome),
        (CANARY, Outcome::Promoted)
    );
    assert_eq!(last.kind, RolloutKind::Adapter);
    assert!(!conditions::is_true(&sim.status.conditions, PROGRESSING));
    assert!(conditions::is_true(&sim.status.conditions, READY));
}

#[test]
fn thirty_percent_failing_canary_rolls_back_after_failure_limit_windows() {
    let mut sim = Sim::serving(STABLE);
    let mut draws = Draws::new(3);
    let mut traffic = |weight: u32| {
        let canary = u64::from(weight) * 20;
        let stable = 2000 - canary;
        Window {
            canary: sample(CANARY, canary, draws.binomial(canary, 0.3)),
            stable: Some(sample(STABLE, stable, draws.binomial(stable, 0.01))),
            query: None,
        }
    };
    sim.pass(CANARY, true, true, Gate::NotRequired, &mut traffic);
    let start = sim.now;
    let mut rolled_back_at = None;
    for _ in 0..60 {
        sim.advance(Duration::from_secs(5));
        sim.pass(CANARY, true, true, Gate::NotRequired, &mut traffic);
        if sim.status.phase == Phase::RolledBack {
            rolled_back_at = Some(sim.now);
            break;
        }
    }
    let at = rolled_back_at.expect("rolled back");
    // Two windows of 30 s after traffic reached the canary: within (failureLimit + 1) × interval.
    let took = at.as_second() - start.as_second();
    assert_eq!(
        took, 60,
        "rolled back {took}s after the canary took traffic"
    );
    assert_eq!(sim.analyses, 2);
    assert_eq!(sim.status.canary_revision, None);
    assert_eq!(sim.status.canary_weight, 0);
    assert_eq!(sim.status.stable_revision.as_deref(), Some(STABLE));
    assert_eq!(
        sim.transitions,
        [Transition::RolledBack(RolloutKind::Adapter)]
    );
    let rolled = conditions::get(&sim.status.conditions, ROLLED_BACK).expect("condition");
    assert_eq!(
        (rolled.status.as_str(), rolled.reason.as_str()),
        ("True", "AnalysisFailed")
    );
    assert!(
        rolled.message.contains("> maxErrorRate 5.0%"),
        "{}",
        rolled.message
    );
    assert!(
        rolled.message.contains("2 failed analyses in a row"),
        "{}",
        rolled.message
    );
    assert!(conditions::is_true(&sim.status.conditions, DEGRADED));
    let evidence = sim.status.last_analysis.as_ref().expect("evidence");
    assert_eq!(evidence.verdict, Verdict::Fail);
    assert!(evidence.canary.as_ref().expect("canary").error_rate > 0.2);
    let warnings: Vec<_> = sim
        .events
        .iter()
        .filter(|e| e.warning)
        .map(|e| e.reason)
        .collect();
    assert_eq!(warnings, ["AnalysisFailed", "AnalysisFailed", "RolledBack"]);
    let last = sim.status.history.last().expect("history");
    assert_eq!(
        (last.revision.as_str(), last.outcome),
        (CANARY, Outcome::RolledBack)
    );

    // Not retried while the spec asks for the same revision, also on a replicas-only
    // change (a new generation, the same revision).
    sim.generation = 2;
    sim.events.clear();
    for _ in 0..30 {
        sim.advance(Duration::from_secs(5));
        sim.pass(
            CANARY,
            true,
            true,
            Gate::NotRequired,
            &mut |_| unreachable!(),
        );
    }
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert_eq!(sim.status.canary_revision, None);
    assert!(sim.events.is_empty(), "{:?}", sim.events);
    // A new spec starts a new canary and clears RolledBack.
    sim.pass(
        "aaaaaaaa-333333",
        true,
        true,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(
        sim.status.canary_revision.as_deref(),
        Some("aaaaaaaa-333333")
    );
    assert_eq!(sim.status.canary_weight, 10);
    assert!(!conditions::is_true(&sim.status.conditions, ROLLED_BACK));
    assert!(!conditions::is_true(&sim.status.conditions, DEGRADED));
}

#[test]
fn equal_one_percent_error_rates_never_roll_back_across_20_windows() {
    let mut r = rollout(true);
    for s in &mut r.steps {
        s.pause = Duration::from_secs(600).into();
    }
    for seed in 0..20 {
        let mut sim = Sim::serving(STABLE);
        sim.rollout = r.clone();
        let mut draws = Draws::new(seed);
        let mut traffic = |weight: u32| {
            let canary = u64::from(weight) * 20;
            let stable = 2000 - canary;
            Window {
                canary: sample(CANARY, canary, draws.binomial(canary, 0.01)),
                stable: Some(sample(STABLE, stable, draws.binomial(stable, 0.01))),
                query: None,
            }
        };
        sim.run(CANARY, 20 * 30 + 5, &mut traffic);
        assert_eq!(sim.analyses, 20, "seed {seed}");
        assert!(sim.transitions.is_empty(), "seed {seed}: {:?}", sim.events);
        assert_eq!(
            sim.status.canary_revision.as_deref(),
            Some(CANARY),
            "seed {seed}"
        );
    }
}

#[test]
fn low_traffic_is_inconclusive_and_the_step_waits() {
    let mut sim = Sim::serving(STABLE);
    let mut quiet = |_: u32| Window {
        canary: sample(CANARY, 3, 3),
        stable: Some(sample(STABLE, 27, 0)),
        query: None,
    };
    sim.run(CANARY, 600, &mut quiet);
    assert_eq!(sim.status.canary_weight, 10, "held at the first step");
    assert_eq!(sim.status.current_step, Some(0));
    assert_eq!(sim.status.consecutive_failures, 0);
    assert!(sim.transitions.is_empty());
    let a = sim.status.last_analysis.as_ref().expect("analysis");
    assert_eq!(a.verdict, Verdict::Inconclusive);
    // Traffic arrives: the next window passes and the pause (long over) lets it advance.
    sim.run(CANARY, 35, &mut healthy_traffic);
    assert_eq!(sim.status.canary_weight, 50);
}

#[test]
fn restart_mid_rollout_resumes_without_resetting_weights() {
    let mut sim = Sim::serving(STABLE);
    sim.run(CANARY, 100, &mut healthy_traffic);
    assert_eq!(sim.status.canary_weight, 50);
    let started = sim.status.step_started_at.clone();
    let history = sim.status.history.len();
    // A new operator process reads status back (Sim::pass always does: JSON round trip)
    // and passes again at once: same weight, same step start, no new record or event.
    sim.events.clear();
    sim.pass(CANARY, true, true, Gate::NotRequired, &mut healthy_traffic);
    sim.pass(CANARY, true, true, Gate::NotRequired, &mut healthy_traffic);
    assert_eq!(sim.status.canary_weight, 50);
    assert_eq!(sim.status.step_started_at, started);
    assert_eq!(sim.status.history.len(), history);
    assert!(sim.events.is_empty(), "{:?}", sim.events);
    sim.run(CANARY, 120, &mut healthy_traffic);
    assert_eq!(sim.status.stable_revision.as_deref(), Some(CANARY));
}

#[test]
fn pod_canary_that_never_becomes_ready_rolls_back_at_its_deadline() {
    let mut sim = Sim::serving(STABLE);
    let mut rolled = false;
    for _ in 0..40 {
        sim.pass(
            POD_CANARY,
            true,
            false,
            Gate::NotRequired,
            &mut |_| unreachable!(),
        );
        assert_eq!(sim.status.canary_weight, 0, "no traffic before ready");
        if sim.status.phase == Phase::RolledBack {
            rolled = true;
            break;
        }
        sim.advance(Duration::from_secs(5));
    }
    assert!(rolled);
    assert_eq!(sim.transitions, [Transition::RolledBack(RolloutKind::Pod)]);
    let c = conditions::get(&sim.status.conditions, ROLLED_BACK).expect("condition");
    assert_eq!(c.reason, "ProgressDeadlineExceeded");
    assert!(
        c.message
            .contains("not ready within progressDeadlineSeconds 120: adapter loaded on 0/2 pods"),
        "{}",
        c.message
    );
    assert_eq!(
        sim.status.history.last().map(|r| r.kind),
        Some(RolloutKind::Pod)
    );
}

#[test]
fn waiting_for_pods_relies_on_pod_events_and_the_deadline_not_on_polling() {
    let none = &mut |_| unreachable!();
    // A first revision with no pod ready: a pod becoming ready is an event that brings the
    // next pass, so the requeue is only a safety net.
    let mut sim = Sim::new(rollout(true));
    sim.pods_pending = true;
    let d = sim.pass(STABLE, false, false, Gate::NotRequired, none);
    assert_eq!(d.requeue_after, POD_WAIT_REQUEUE);
    // Pods ready, adapters loading: what a server holds is read over HTTP, so it is polled.
    sim.pods_pending = false;
    let d = sim.pass(STABLE, false, false, Gate::NotRequired, none);
    assert_eq!(d.requeue_after, PREPARING_REQUEUE);
    // A pod canary whose pods stay Pending is looked at by its deadline at the latest.
    let mut sim = Sim::serving(STABLE);
    sim.pods_pending = true;
    let d = sim.pass(POD_CANARY, true, false, Gate::NotRequired, none);
    assert_eq!(d.requeue_after, POD_WAIT_REQUEUE, "deadline 120 s away");
    sim.advance(Duration::from_secs(100));
    let d = sim.pass(POD_CANARY, true, false, Gate::NotRequired, none);
    assert_eq!(
        d.requeue_after,
        Duration::from_secs(20),
        "the deadline is nearer"
    );
    sim.advance(d.requeue_after);
    sim.pass(POD_CANARY, true, false, Gate::NotRequired, none);
    assert_eq!(sim.status.phase, Phase::RolledBack);
    let c = conditions::get(&sim.status.conditions, ROLLED_BACK).expect("condition");
    assert_eq!(c.reason, "ProgressDeadlineExceeded");
}

#[test]
fn failing_gate_rolls_back_before_any_traffic() {
    let mut sim = Sim::serving(STABLE);
    sim.pass(
        CANARY,
        true,
        true,
        Gate::Pending("LoraAdapter support-v2 has no lineage yet".into()),
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.canary_weight, 0);
    let p = conditions::get(&sim.status.conditions, PROGRESSING).expect("progressing");
    assert!(p.message.contains("no lineage yet"), "{}", p.message);
    sim.pass(
        CANARY,
        true,
        true,
        Gate::Fail("support-v2: validation loss 2.31 is not below the base model's 2.05".into()),
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert!(sim.weights.iter().all(|w| *w == 0));
    let c = conditions::get(&sim.status.conditions, ROLLED_BACK).expect("condition");
    assert_eq!(c.reason, "GateFailed");
}

#[test]
fn without_auto_rollback_a_failing_canary_is_paused_until_the_spec_changes() {
    let mut sim = Sim::serving(STABLE);
    sim.rollout.auto_rollback = false;
    let mut failing = |weight: u32| {
        let canary = u64::from(weight) * 20;
        Window {
            canary: sample(CANARY, canary, canary / 4),
            stable: Some(sample(STABLE, 2000 - canary, 0)),
            query: None,
        }
    };
    sim.run(CANARY, 300, &mut failing);
    assert_eq!(sim.status.phase, Phase::Paused);
    assert_eq!(sim.status.canary_weight, 10, "held");
    assert_eq!(sim.analyses, 2, "no analysis while paused");
    assert!(sim.transitions.is_empty());
    let p = conditions::get(&sim.status.conditions, PROGRESSING).expect("progressing");
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("False", "Paused"));
    // Going back to the stable spec ends it.
    sim.pass(
        STABLE,
        true,
        true,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.phase, Phase::Healthy);
    assert_eq!(sim.status.canary_revision, None);
    assert_eq!(
        sim.status.history.last().map(|r| r.outcome),
        Some(Outcome::Superseded)
    );
}

#[test]
fn a_new_spec_mid_canary_supersedes_it_and_starts_over() {
    let mut sim = Sim::serving(STABLE);
    sim.run(CANARY, 100, &mut healthy_traffic);
    assert_eq!(sim.status.canary_weight, 50);
    sim.pass(
        POD_CANARY,
        true,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.canary_revision.as_deref(), Some(POD_CANARY));
    assert_eq!(
        sim.status.canary_weight, 0,
        "a pod canary waits for its pods"
    );
    assert_eq!(sim.status.current_step, None);
    let superseded = &sim.status.history[sim.status.history.len() - 1];
    assert_eq!(
        (superseded.revision.as_str(), superseded.outcome),
        (CANARY, Outcome::Superseded)
    );
}

#[test]
fn stable_pods_lost_is_degraded() {
    let mut sim = Sim::serving(STABLE);
    sim.pass(
        STABLE,
        false,
        false,
        Gate::NotRequired,
        &mut |_| unreachable!(),
    );
    assert_eq!(sim.status.phase, Phase::Degraded);
    assert!(conditions::is_true(&sim.status.conditions, DEGRADED));
    assert!(!conditions::is_true(&sim.status.conditions, READY));
}

#[test]
fn history_is_bounded() {
    let mut st = ModelDeploymentStatus::default();
    for i in 0..(HISTORY_LIMIT + 5) {
        record(
            &mut st,
            RevisionRecord {
                revision: format!("r{i}"),
                ..Default::default()
            },
        );
    }
    assert_eq!(st.history.len(), HISTORY_LIMIT);
    assert_eq!(st.history[0].revision, "r5");
}
