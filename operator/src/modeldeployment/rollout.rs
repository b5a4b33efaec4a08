//! The rollout state machine: previous status + what was observed → next status, Events, and
//! when to look again. Pure; everything it needs to resume after an operator restart is in
//! status (step, when the step began, failures in a row, the last analysis, history), so a
//! restarted operator continues the rollout where it was, without resetting weights.
//!
//! A canary goes: *preparing* (`currentStep` unset: the optional gate, then pods ready for a pod
//! canary or the adapter loaded on every pod for an adapter canary, within
//! `progressDeadlineSeconds`) → *step i* (weight `steps[i].weight`, held for `steps[i].pause`,
//! analysed every `analysis.interval`; the step advances once the pause is over and the latest
//! analysis in the step passed, so an inconclusive window makes the step wait) → *promoted*
//! after the last step. `failureLimit` failed analyses in a row roll it back (or pause it when
//! `autoRollback` is off). A rolled-back revision is not retried until the spec asks for a
//! different revision.
//!
//! Size (over 700 lines, on purpose): one state machine over one status; its phases read and
//! write the same fields, so split by phase its transitions would be spread over files.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tailor_api::conditions::{self, DEGRADED, PROGRESSING, READY, ROLLED_BACK};
use tailor_api::{
    AnalysisResult, ModelDeploymentPhase as Phase, ModelDeploymentStatus, Outcome, RevisionRecord,
    Rollout, RolloutKind, Verdict,
};

use super::analysis::{self, Sample};
use super::revision::rollout_kind;

/// Revisions kept in status.history.
pub const HISTORY_LIMIT: usize = 20;
/// How often to look again while waiting for adapters to load on ready pods (what a server
/// holds is read over HTTP: no watch event says it changed).
const PREPARING_REQUEUE: Duration = Duration::from_secs(5);
/// How often to look again while waiting for pods to become ready: a pod becoming ready is a
/// watch event that brings the next pass at once, so this is only a safety net. Polling every
/// few seconds instead made 200 deployments with Pending pods saturate the operator
/// (`scripts/bench-sim.sh deployments`).
const POD_WAIT_REQUEUE: Duration = Duration::from_secs(60);
/// How often to look again when nothing is in flight (changes arrive by watch anyway).
const IDLE_REQUEUE: Duration = Duration::from_secs(300);

/// Whether a revision serves, and if not why (pods not ready, adapters failing to load).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Readiness {
    pub ready: bool,
    pub message: String,
    /// Not ready because fewer pods are ready than wanted (what changes that is a pod event).
    pub waits_for_pods: bool,
}

impl Readiness {
    pub fn ready(message: impl Into<String>) -> Self {
        Self {
            ready: true,
            message: message.into(),
            waits_for_pods: false,
        }
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self {
            ready: false,
            message: message.into(),
            waits_for_pods: false,
        }
    }
    /// Fewer pods ready than wanted.
    pub fn pods_not_ready(message: impl Into<String>) -> Self {
        Self {
            waits_for_pods: true,
            ..Self::not_ready(message)
        }
    }

    /// When to look again while this revision is not ready.
    fn recheck(&self) -> Duration {
        if self.waits_for_pods {
            POD_WAIT_REQUEUE
        } else {
            PREPARING_REQUEUE
        }
    }
}

/// The optional gate before a canary takes traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// `requireBetterThanBase` is off, or the canary changes no adapter.
    NotRequired,
    Pass(String),
    /// The canary is rolled back without traffic.
    Fail(String),
    /// Lineage not known yet (the LoraAdapter is not Ready): wait.
    Pending(String),
}

/// One analysis window, when [`analysis_window`] said one was due.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub canary: Sample,
    /// `None` when the stable had no numbers (e.g. a route the stable revision does not serve).
    pub stable: Option<Sample>,
    /// The Prometheus query, when metrics came from Prometheus.
    pub query: Option<String>,
}

/// What was observed this pass.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub rollout: &'a Rollout,
    pub generation: Option<i64>,
    /// The revision the spec asks for.
    pub desired: &'a str,
    pub previous: &'a ModelDeploymentStatus,
    pub now: Timestamp,
    /// Of [`Plan::stable`].
    pub stable: Readiness,
    /// Of [`Plan::canary`] (ignored when there is none).
    pub canary: Readiness,
    pub gate: Gate,
    pub window: Option<Window>,
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// A rollout that ended this pass (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Promoted(RolloutKind),
    RolledBack(RolloutKind),
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub status: ModelDeploymentStatus,
    pub events: Vec<Event>,
    pub requeue_after: Duration,
    pub transition: Option<Transition>,
}

/// Which revisions serve this pass, before the decision: what the controller must observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub stable: String,
    pub canary: Option<String>,
    /// The desired revision was rolled back and the spec has not moved on since.
    pub blocked: bool,
}

fn established(status: &ModelDeploymentStatus, revision: &str) -> bool {
    status
        .history
        .iter()
        .any(|r| r.revision == revision && r.outcome == Outcome::Promoted)
}

/// Whether `desired` was the last revision rolled back, with no other canary since.
fn blocked(status: &ModelDeploymentStatus, desired: &str) -> bool {
    conditions::is_true(&status.conditions, ROLLED_BACK)
        && status
            .history
            .iter()
            .rev()
            .find(|r| r.outcome == Outcome::RolledBack)
            .is_some_and(|r| r.revision == desired)
}

pub fn plan(previous: &ModelDeploymentStatus, desired: &str) -> Plan {
    let stable = match &previous.stable_revision {
        // A stable that never served is replaced outright: there is nothing to protect.
        Some(s) if established(previous, s) => s.clone(),
        _ => desired.to_string(),
    };
    let blocked = desired != stable && blocked(previous, desired);
    let canary = (desired != stable && !blocked).then(|| desired.to_string());
    Plan {
        stable,
        canary,
        blocked,
    }
}

fn elapsed(now: Timestamp, since: Option<&Time>) -> Duration {
    let Some(since) = since else {
        return Duration::ZERO;
    };
    let ms = now.as_millisecond() - since.0.as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn interval(rollout: &Rollout) -> Duration {
    Duration::from(rollout.analysis.interval).max(Duration::from_secs(1))
}

/// The window to analyse now, if an analysis is due: every `interval` during a step, the
/// first one `interval` after the step began so that it sees only the step's weight.
pub fn analysis_window(
    rollout: &Rollout,
    previous: &ModelDeploymentStatus,
    desired: &str,
    now: Timestamp,
) -> Option<Duration> {
    let p = plan(previous, desired);
    let canary = p.canary?;
    if previous.canary_revision.as_deref() != Some(canary.as_str())
        || previous.current_step.is_none()
        || previous.phase == Phase::Paused
    {
        return None;
    }
    let every = interval(rollout);
    let since_step = elapsed(now, previous.step_started_at.as_ref());
    let since_last = match analysed_in_step(previous) {
        Some(a) => elapsed(now, a.time.as_ref()),
        None => since_step,
    };
    (since_last >= every).then_some(every)
}

/// The last analysis, if it ran during the current step.
fn analysed_in_step(status: &ModelDeploymentStatus) -> Option<&AnalysisResult> {
    let a = status.last_analysis.as_ref()?;
    let (Some(t), Some(start)) = (&a.time, &status.step_started_at) else {
        return None;
    };
    (t.0 >= start.0).then_some(a)
}

fn record(status: &mut ModelDeploymentStatus, rec: RevisionRecord) {
    status.history.push(rec);
    let extra = status.history.len().saturating_sub(HISTORY_LIMIT);
    status.history.drain(..extra);
}

fn clear_canary(status: &mut ModelDeploymentStatus) {
    status.canary_revision = None;
    status.canary_weight = 0;
    status.current_step = None;
    status.step_started_at = None;
    status.consecutive_failures = 0;
}

struct Pass<'a> {
    inp: &'a Input<'a>,
    st: ModelDeploymentStatus,
    events: Vec<Event>,
    transition: Option<Transition>,
    requeue: Duration,
    /// Why a preparing canary waits, for the Progressing condition.
    progressing_message: Option<String>,
}

impl Pass<'_> {
    fn event(&mut self, warning: bool, reason: &'static str, note: String) {
        self.events.push(Event {
            warning,
            reason,
            note,
        });
    }

    fn history(&mut self, revision: &str, outcome: Outcome, reason: String) {
        let kind = self
            .st
            .stable_revision
            .as_deref()
            .map_or(RolloutKind::Pod, |s| rollout_kind(s, revision));
        record(
            &mut self.st,
            RevisionRecord {
                revision: revision.to_string(),
                kind,
                outcome,
                reason,
                time: Some(Time(self.inp.now)),
            },
        );
    }

    fn requeue(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d.max(Duration::from_secs(1)));
    }

    fn roll_back(&mut self, canary: &str, reason: &'static str, message: String) {
        let stable = self.st.stable_revision.clone().unwrap_or_default();
        let kind = rollout_kind(&stable, canary);
        let text = format!("revision {canary}: {message}");
        self.history(canary, Outcome::RolledBack, message);
        clear_canary(&mut self.st);
        self.st.phase = Phase::RolledBack;
        conditions::set(
            &mut self.st.conditions,
            conditions::new(ROLLED_BACK, Some(true), reason, &text, self.inp.generation),
            self.inp.now,
        );
        self.event(
            true,
            "RolledBack",
            format!("rolled back to {stable}: {text}"),
        );
        self.transition = Some(Transition::RolledBack(kind));
    }

    fn promote(&mut self, canary: &str) {
        let old = self.st.stable_revision.clone().unwrap_or_default();
        let kind = rollout_kind(&old, canary);
        let steps = self.inp.rollout.steps.len();
        self.history(
            canary,
            Outcome::Promoted,
            format!("passed {steps} steps of analysis"),
        );
        clear_canary(&mut self.st);
        self.st.stable_revision = Some(canary.to_string());
        self.event(
            false,
            "Promoted",
            format!("revision {canary} promoted to stable (was {old})"),
        );
        self.transition = Some(Transition::Promoted(kind));
    }

    fn start_step(&mut self, canary: &str, i: usize) {
        let Some(step) = self.inp.rollout.steps.get(i) else {
            return;
        };
        self.st.current_step = Some(u32::try_from(i).unwrap_or(u32::MAX));
        self.st.canary_weight = step.weight;
        self.st.step_started_at = Some(Time(self.inp.now));
        self.event(
            false,
            "CanaryStep",
            format!(
                "canary {canary}: step {} of {}, {}% of users",
                i + 1,
                self.inp.rollout.steps.len(),
                step.weight
            ),
        );
        self.requeue(interval(self.inp.rollout));
    }

    /// A canary before its first step: gate, then readiness within the progress deadline.
    fn prepare(&mut self, canary: &str) {
        match &self.inp.gate {
            Gate::Fail(why) => {
                self.roll_back(canary, "GateFailed", why.clone());
                return;
            }
            Gate::Pending(why) => {
                self.st.phase = Phase::Progressing;
                self.progressing_message = Some(format!("canary {canary} waits: {why}"));
                self.requeue(PREPARING_REQUEUE);
                return;
            }
            Gate::NotRequired | Gate::Pass(_) => {}
        }
        if self.inp.canary.ready {
            self.start_step(canary, 0);
            self.st.phase = Phase::Progressing;
            return;
        }
        let deadline = Duration::from_secs(u64::from(self.inp.rollout.progress_deadline_seconds));
        if elapsed(self.inp.now, self.st.step_started_at.as_ref()) >= deadline {
            let message = format!(
                "not ready within progressDeadlineSeconds {}: {}",
                deadline.as_secs(),
                self.inp.canary.message
            );
            self.roll_back(canary, "ProgressDeadlineExceeded", message);
            return;
        }
        self.st.phase = Phase::Progressing;
        // At the deadline at the latest: it is checked on a pass.
        let left = deadline.saturating_sub(elapsed(self.inp.now, self.st.step_started_at.as_ref()));
        self.requeue(self.inp.canary.recheck().min(left));
    }

    /// A canary at a step: record the analysis, then roll back, pause, hold, advance or promote.
    fn step(&mut self, canary: &str, i: usize) {
        let rollout = self.inp.rollout;
        if self.st.phase == Phase::Paused {
            // Held for a human: a spec change (new revision or back to stable) moves on.
            return;
        }
        self.st.phase = Phase::Progressing;
        if let Some(w) = &self.inp.window {
            let j = analysis::judge(&rollout.analysis, &w.canary, w.stable.as_ref());
            self.st.last_analysis = Some(AnalysisResult {
                time: Some(Time(self.inp.now)),
                verdict: j.verdict,
                message: j.message.clone(),
                stable: w.stable.as_ref().map(Sample::to_metrics),
                canary: Some(w.canary.to_metrics()),
                query: w.query.clone(),
            });
            match j.verdict {
                Verdict::Pass => self.st.consecutive_failures = 0,
                Verdict::Inconclusive => {}
                Verdict::Fail => {
                    self.st.consecutive_failures += 1;
                    let n = self.st.consecutive_failures;
                    let limit = rollout.analysis.failure_limit.max(1);
                    self.event(
                        true,
                        "AnalysisFailed",
                        format!("canary {canary} ({n} of {limit} in a row): {}", j.message),
                    );
                    if n >= limit {
                        let evidence = format!("{} ({n} failed analyses in a row)", j.message);
                        if rollout.auto_rollback {
                            self.roll_back(canary, "AnalysisFailed", evidence);
                        } else {
                            self.st.phase = Phase::Paused;
                            self.event(
                                true,
                                "Paused",
                                format!(
                                    "canary {canary} held at {}% (autoRollback is off): {evidence}",
                                    self.st.canary_weight
                                ),
                            );
                        }
                        return;
                    }
                }
            }
        }
        let Some(step) = rollout.steps.get(i) else {
            // Fewer steps than when the step began (spec edited mid-step): promote on the
            // last analysis that passed.
            self.promote(canary);
            return;
        };
        let pause = Duration::from(step.pause);
        let in_step = elapsed(self.inp.now, self.st.step_started_at.as_ref());
        let passed = analysed_in_step(&self.st).is_some_and(|a| a.verdict == Verdict::Pass);
        if in_step >= pause && passed {
            if i + 1 < rollout.steps.len() {
                self.start_step(canary, i + 1);
            } else {
                self.promote(canary);
            }
            return;
        }
        // Keep the weight (also after a restart) and look again at the next analysis or the
        // end of the pause, whichever comes first.
        self.st.canary_weight = step.weight;
        let every = interval(rollout);
        let since_last =
            analysed_in_step(&self.st).map_or(in_step, |a| elapsed(self.inp.now, a.time.as_ref()));
        self.requeue(every.saturating_sub(since_last));
        if in_step < pause {
            self.requeue(pause - in_step);
        }
    }
}

/// Decides the next status.
pub fn decide(inp: &Input<'_>) -> Decision {
    let p = plan(inp.previous, inp.desired);
    let mut pass = Pass {
        inp,
        st: inp.previous.clone(),
        events: vec![],
        transition: None,
        requeue: IDLE_REQUEUE,
        progressing_message: None,
    };
    pass.st.observed_generation = inp.generation;

    // The stable revision: the first one, or one that never served replaced outright.
    if pass.st.stable_revision.as_deref() != Some(p.stable.as_str()) {
        if let Some(old) = pass.st.stable_revision.take() {
            pass.history(
                &old,
                Outcome::Superseded,
                format!("replaced by {} before it ever served", p.stable),
            );
        }
        pass.st.stable_revision = Some(p.stable.clone());
        pass.event(
            false,
            "Deploying",
            format!("deploying revision {}", p.stable),
        );
    }
    if inp.stable.ready && !established(&pass.st, &p.stable) {
        pass.history(&p.stable, Outcome::Promoted, "first revision served".into());
        pass.event(false, "Serving", format!("revision {} serves", p.stable));
    }

    // A canary the spec no longer asks for.
    if let Some(old) = pass.st.canary_revision.clone()
        && p.canary.as_deref() != Some(old.as_str())
    {
        let why = if inp.desired == p.stable {
            "the spec went back to the stable revision".to_string()
        } else {
            format!("the spec now asks for revision {}", inp.desired)
        };
        pass.history(&old, Outcome::Superseded, why.clone());
        clear_canary(&mut pass.st);
        if pass.st.phase == Phase::Paused {
            pass.st.phase = Phase::Progressing;
        }
        pass.event(
            false,
            "CanarySuperseded",
            format!("canary {old} stopped: {why}"),
        );
    }
    if !p.blocked && conditions::is_true(&pass.st.conditions, ROLLED_BACK) {
        conditions::set(
            &mut pass.st.conditions,
            conditions::new(
                ROLLED_BACK,
                Some(false),
                "SpecChanged",
                format!("the spec asks for revision {}", inp.desired),
                inp.generation,
            ),
            inp.now,
        );
    }

    match &p.canary {
        Some(canary) => {
            if pass.st.canary_revision.as_deref() != Some(canary.as_str()) {
                clear_canary(&mut pass.st);
                pass.st.canary_revision = Some(canary.clone());
                pass.st.step_started_at = Some(Time(inp.now));
                pass.st.last_analysis = None;
                pass.st.phase = Phase::Progressing;
                let kind = rollout_kind(&p.stable, canary);
                pass.event(
                    false,
                    "CanaryStarted",
                    format!(
                        "{} canary {canary} over stable {}",
                        match kind {
                            RolloutKind::Adapter => "adapter",
                            RolloutKind::Pod => "pod",
                        },
                        p.stable
                    ),
                );
            }
            match pass.st.current_step {
                None => pass.prepare(canary),
                Some(i) => pass.step(canary, i as usize),
            }
        }
        None => {
            pass.st.phase = if p.blocked {
                Phase::RolledBack
            } else if inp.stable.ready {
                Phase::Healthy
            } else if established(&pass.st, &p.stable) {
                Phase::Degraded
            } else {
                Phase::Progressing
            };
            if !inp.stable.ready {
                pass.requeue(inp.stable.recheck());
            }
        }
    }
    // A promotion this pass leaves no canary: the phase follows the new stable.
    if pass.st.canary_revision.is_none()
        && pass.st.phase == Phase::Progressing
        && matches!(pass.transition, Some(Transition::Promoted(_)))
    {
        pass.st.phase = Phase::Healthy;
    }
    set_conditions(&mut pass);
    Decision {
        status: pass.st,
        events: pass.events,
        requeue_after: pass.requeue,
        transition: pass.transition,
    }
}

/// The status of a deployment whose spec the operator cannot act on (`reason` says which kind
/// of problem): what serves keeps serving and stays recorded; the conditions say why nothing
/// else happens until the spec changes.
pub fn invalid_status(
    md: &tailor_api::ModelDeployment,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> ModelDeploymentStatus {
    let mut st = md.status.clone().unwrap_or_default();
    let g = md.metadata.generation;
    st.observed_generation = g;
    st.phase = Phase::Degraded;
    for (t, s) in [(READY, false), (PROGRESSING, false), (DEGRADED, true)] {
        conditions::set(
            &mut st.conditions,
            conditions::new(t, Some(s), reason, message, g),
            now,
        );
    }
    st
}

fn set_conditions(pass: &mut Pass<'_>) {
    let inp = pass.inp;
    let g = inp.generation;
    let st = &mut pass.st;
    let stable = st.stable_revision.clone().unwrap_or_default();
    let ready = if inp.stable.ready {
        conditions::new(
            READY,
            Some(true),
            "Serving",
            format!("revision {stable} serves: {}", inp.stable.message),
            g,
        )
    } else {
        conditions::new(
            READY,
            Some(false),
            "NotReady",
            format!("revision {stable}: {}", inp.stable.message),
            g,
        )
    };
    let steps = inp.rollout.steps.len();
    let progressing = match (&st.canary_revision, st.current_step, st.phase) {
        (Some(c), _, Phase::Paused) => conditions::new(
            PROGRESSING,
            Some(false),
            "Paused",
            format!(
                "canary {c} held at {}%: {}",
                st.canary_weight,
                st.last_analysis
                    .as_ref()
                    .map(|a| a.message.as_str())
                    .unwrap_or("analysis failed")
            ),
            g,
        ),
        (Some(c), Some(i), _) => conditions::new(
            PROGRESSING,
            Some(true),
            "CanaryStep",
            format!(
                "canary {c} at {}% (step {} of {steps})",
                st.canary_weight,
                i + 1
            ),
            g,
        ),
        (Some(c), None, _) => conditions::new(
            PROGRESSING,
            Some(true),
            "CanaryPreparing",
            pass.progressing_message
                .clone()
                .unwrap_or_else(|| format!("canary {c}: {}", inp.canary.message)),
            g,
        ),
        (None, _, Phase::Progressing) => conditions::new(
            PROGRESSING,
            Some(true),
            "Deploying",
            format!("revision {stable}: {}", inp.stable.message),
            g,
        ),
        (None, _, Phase::RolledBack) => conditions::new(
            PROGRESSING,
            Some(false),
            "RolledBack",
            format!(
                "revision {} was rolled back; revision {stable} serves",
                inp.desired
            ),
            g,
        ),
        (None, _, _) => conditions::new(
            PROGRESSING,
            Some(false),
            "Complete",
            format!("revision {stable} is stable"),
            g,
        ),
    };
    let degraded = match st.phase {
        Phase::RolledBack => conditions::new(
            DEGRADED,
            Some(true),
            "RolledBack",
            conditions::get(&st.conditions, ROLLED_BACK)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
            g,
        ),
        Phase::Degraded => conditions::new(
            DEGRADED,
            Some(true),
            "NotReady",
            format!("stable revision {stable}: {}", inp.stable.message),
            g,
        ),
        _ => conditions::new(DEGRADED, Some(false), "AsExpected", "", g),
    };
    for c in [ready, progressing, degraded] {
        conditions::set(&mut st.conditions, c, inp.now);
    }
    if conditions::get(&st.conditions, ROLLED_BACK).is_none() {
        conditions::set(
            &mut st.conditions,
            conditions::new(ROLLED_BACK, Some(false), "NotRolledBack", "", g),
            inp.now,
        );
    }
}

#[cfg(test)]
mod tests;
