//! The FineTuneJob's status: what was observed of its run (Job, pod, `/progress`, summary,
//! adapter) and the previous status → the next status, as pure functions.

use super::*;

/// The adapter artifact as found after a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterArtifact {
    pub sha256: String,
    pub size_bytes: u64,
}

/// What the I/O steps found about the run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub job: Option<JobState>,
    pub pod: Option<PodState>,
    pub pods_seen: u32,
    pub progress: Option<TrainerProgress>,
    pub checkpoint: Option<Checkpoint>,
    pub summary: Option<TrainSummary>,
    /// The LoraAdapter recorded after success.
    pub adapter: Option<String>,
    /// Why the run failed, from the trainer's termination message.
    pub failure: Option<String>,
    /// The Hub commit the Job's fetch of the base model is pinned to.
    pub base_model_revision: Option<String>,
    /// The evaluate step, once the adapter is recorded.
    pub evaluation: EvaluationState,
    /// The attempt a multi-node group's Job runs (see [`group`]): its attempts are groups, not
    /// pods.
    pub group_attempt: Option<u32>,
    /// Why the run waits for its group to restart: the group's attempt failed and its Job is
    /// being deleted, so that the next one starts as fresh pods.
    pub restarting: Option<String>,
}

/// Where the evaluate step (`spec.evaluation`) is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum EvaluationState {
    /// No evaluation asked for (or not looked at: the adapter is not recorded yet).
    #[default]
    NotWanted,
    /// Not started, and why (the judge's ModelDeployment has no endpoint yet, …).
    Waiting(String),
    /// The evaluate Job of this name runs.
    Running(String),
    Done(Box<EvaluationReport>),
    Failed(String),
}

/// One line of an evaluation for messages: test loss of both and, with a judge, the win rate.
pub fn evaluation_summary(e: &EvaluationReport) -> String {
    let loss = |s: &tailor_wire::eval::Scores| {
        s.test_loss
            .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"))
    };
    let mut out = format!("test loss {} (base {})", loss(&e.adapter), loss(&e.base));
    if let Some(em) = e.adapter.exact_match {
        out.push_str(&format!(", exact match {em:.2}"));
    }
    if let Some(j) = &e.judge {
        match (j.win_rate, j.win_rate_lower, j.win_rate_upper) {
            (Some(w), Some(lo), Some(hi)) => out.push_str(&format!(
                ", win rate {w:.2} [{lo:.2}, {hi:.2}] over {} judged pairs",
                j.judged
            )),
            _ => out.push_str(", no pair judged"),
        }
        if j.unjudged > 0 {
            out.push_str(&format!(" ({} unjudged)", j.unjudged));
        }
    }
    out
}

fn progress_of(p: &TrainerProgress) -> Progress {
    Progress {
        epoch: p.epoch as f64,
        step: p.step,
        total_steps: p.total_steps,
        train_loss: p.train_loss,
        validation_loss: p.validation_loss,
        tokens_per_second: Some(p.tokens_per_second),
        eta_seconds: p.eta,
    }
}

/// The phase state machine and the whole new status.
pub fn status(
    ftj: &FineTuneJob,
    gate: &DatasetGate,
    v: Option<&Validated>,
    obs: &Observed,
    now: Timestamp,
) -> FineTuneJobStatus {
    use FineTuneJobPhase as P;
    let mut prev = ftj.status.clone().unwrap_or_default();
    // Status describes the current train Job: one built for another spec is another run, so
    // nothing of the previous run carries over (this also holds when a reconcile reads a status
    // from before the one that cancelled the old run).
    if let (Some(old), Some(v)) = (&prev.job_name, v)
        && *old != v.job_name
    {
        prev = FineTuneJobStatus {
            phase: prev.phase,
            conditions: prev.conditions,
            ..FineTuneJobStatus::default()
        };
    }
    let generation = ftj.metadata.generation;
    let mut st = FineTuneJobStatus {
        observed_generation: generation,
        ..prev.clone()
    };
    let mut conds = prev.conditions.clone();
    let mut set = |t: &str, s: Option<bool>, reason: &str, msg: &str| {
        conditions::set(
            &mut conds,
            conditions::new(t, s, reason, msg, generation),
            now,
        );
    };
    match gate {
        DatasetGate::Ready { content_hash, .. } => {
            set(
                DATASET_READY,
                Some(true),
                "DatasetReady",
                &format!("Dataset {:?} is Ready", ftj.spec.dataset_ref.name),
            );
            if st.dataset_content_hash.is_none() || obs.job.is_none() {
                st.dataset_content_hash = Some(content_hash.clone());
            }
            if obs.base_model_revision.is_some() {
                st.base_model_revision = obs.base_model_revision.clone();
            }
        }
        DatasetGate::Missing(m) => set(
            DATASET_READY,
            Some(false),
            Category::DatasetNotFound.as_str(),
            m,
        ),
        DatasetGate::NotReady(m) => set(
            DATASET_READY,
            Some(false),
            Category::DatasetNotReady.as_str(),
            m,
        ),
    }
    if let Some(v) = v {
        st.job_name = Some(v.job_name.clone());
    }
    if let Some(p) = &obs.progress {
        st.progress = Some(progress_of(p));
        if p.base_validation_loss.is_some() {
            st.base_validation_loss = p.base_validation_loss;
        }
    }
    if let Some(c) = &obs.checkpoint {
        st.last_checkpoint = Some(c.clone());
    }
    // Pods that got to run: ended ones the Job counted, plus the current one once scheduled
    // (an unschedulable pod is not an attempt).
    let current = obs.pod.as_ref().is_some_and(|p| {
        matches!(p.scheduled, Some((true, ..)))
            && !matches!(p.phase.as_str(), "Succeeded" | "Failed")
    });
    let job_attempts = obs.job.as_ref().map_or(0, |j| {
        let ended = (j.failed_pods + j.succeeded_pods).max(0) as u32;
        match obs.group_attempt {
            // A group is one attempt, counted once any of its pods got to run.
            Some(k) if ended > 0 || obs.pods_seen > 0 => k,
            Some(k) => k.saturating_sub(1),
            None => ended + u32::from(current),
        }
    });
    let pods_seen = if obs.group_attempt.is_some() {
        0
    } else {
        obs.pods_seen
    };
    // A trainer that resumed from a checkpoint is at least the second attempt, whether or not
    // the Job counted the pod that went away.
    let resumed = u32::from(
        obs.summary
            .as_ref()
            .is_some_and(|s| s.resumed_from_step.is_some()),
    ) * 2;
    st.attempts = prev.attempts.max(job_attempts).max(pods_seen).max(resumed);

    let (phase, reason, message): (P, String, String) = match (&obs.job, gate) {
        (None, DatasetGate::Missing(m)) => (
            P::ValidatingData,
            Category::DatasetNotFound.as_str().into(),
            m.clone(),
        ),
        (None, DatasetGate::NotReady(m)) => (
            P::ValidatingData,
            Category::DatasetNotReady.as_str().into(),
            m.clone(),
        ),
        (None, DatasetGate::Ready { .. }) => (
            P::Queued,
            "Creating".into(),
            "creating the train Job".into(),
        ),
        (_, _) if obs.restarting.is_some() => (
            P::Running,
            "Restarting".into(),
            obs.restarting.clone().unwrap_or_default(),
        ),
        (Some(j), _) if j.complete && obs.adapter.is_some() => {
            let name = obs.adapter.clone().unwrap_or_default();
            match &obs.evaluation {
                EvaluationState::NotWanted => (
                    P::Succeeded,
                    "Succeeded".into(),
                    format!("adapter recorded as LoraAdapter {name:?}"),
                ),
                EvaluationState::Done(e) => (
                    P::Succeeded,
                    "Succeeded".into(),
                    format!(
                        "adapter recorded as LoraAdapter {name:?} and evaluated: {}",
                        evaluation_summary(e)
                    ),
                ),
                EvaluationState::Waiting(m) => (P::Evaluating, "Evaluating".into(), m.clone()),
                EvaluationState::Running(job) => (
                    P::Evaluating,
                    "Evaluating".into(),
                    format!(
                        "adapter recorded as LoraAdapter {name:?}; evaluating it against the base model on the test split (Job {job})"
                    ),
                ),
                EvaluationState::Failed(m) => (
                    P::Failed,
                    "EvaluationFailed".into(),
                    format!("the evaluation of LoraAdapter {name:?} failed: {m}"),
                ),
            }
        }
        (Some(j), _) if j.complete => (
            P::Running,
            "Recording".into(),
            "recording the adapter".into(),
        ),
        (Some(j), _) if j.failed.is_some() => {
            let (r, m) = j.failed.clone().unwrap_or_default();
            let mut msg = match &obs.failure {
                Some(f) => format!("{r}: {f}"),
                None => format!("{r}: {m}"),
            };
            if let Some(k) = obs.group_attempt {
                let why = if r == "DeadlineExceeded" {
                    "the run's activeDeadlineSeconds has passed".to_string()
                } else {
                    format!(
                        "its backoffLimit of {} restarts is spent",
                        ftj.spec.backoff_limit
                    )
                };
                msg.push_str(&format!(
                    " (attempt {k} of the group of {} trainer pods; {why})",
                    group::ranks(ftj).nodes
                ));
            }
            (P::Failed, Category::JobFailed.as_str().into(), msg)
        }
        (Some(j), _) if j.awaiting_admission.is_some() => (
            P::Queued,
            "AwaitingAdmission".into(),
            format!(
                "waiting for Kueue admission (queue {:?}){}",
                j.awaiting_admission.as_deref().unwrap_or_default(),
                if prev.start_time.is_some() {
                    "; preempted mid-run, it resumes from the last checkpoint"
                } else {
                    ""
                }
            ),
        ),
        (Some(j), _) if j.suspended => {
            if prev.start_time.is_some() {
                (
                    P::Cancelled,
                    "Suspended".into(),
                    "suspended mid-run; unsuspend to resume from the last checkpoint".into(),
                )
            } else {
                (
                    P::Queued,
                    "Suspended".into(),
                    "suspended; no pod runs until spec.suspend is false".into(),
                )
            }
        }
        (Some(_), _) => match &obs.pod {
            None => (
                P::Queued,
                "Pending".into(),
                "waiting for the trainer pod".into(),
            ),
            Some(p) if p.phase == "Running" => (
                P::Running,
                "Training".into(),
                match obs.group_attempt {
                    Some(k) => format!(
                        "trainer pod {} is running: rank 0 of the group of {} pods (attempt {k})",
                        p.name,
                        group::ranks(ftj).nodes
                    ),
                    None => format!("trainer pod {} is running", p.name),
                },
            ),
            Some(p) => match &p.scheduled {
                Some((false, r, m)) => (
                    P::Queued,
                    if r.is_empty() {
                        "Unschedulable".into()
                    } else {
                        r.clone()
                    },
                    m.clone(),
                ),
                Some((true, ..)) if p.phase == "Pending" => (
                    P::Running,
                    "Starting".into(),
                    format!("trainer pod {} is starting", p.name),
                ),
                Some((true, ..)) => (
                    P::Running,
                    "Retrying".into(),
                    format!(
                        "trainer pod {} ended ({}); the Job retries from the last checkpoint",
                        p.name, p.phase
                    ),
                ),
                None => (
                    P::Queued,
                    "Pending".into(),
                    format!("trainer pod {} is not scheduled yet", p.name),
                ),
            },
        },
    };
    // Scheduling, as the scheduler reported it.
    match (&obs.pod, &obs.job) {
        (_, Some(j)) if j.awaiting_admission.is_some() => set(
            SCHEDULED,
            Some(false),
            "AwaitingAdmission",
            "the Job waits for Kueue to admit it",
        ),
        (_, Some(j)) if j.suspended => {
            set(SCHEDULED, Some(false), "Suspended", "the Job is suspended")
        }
        (Some(p), _) => match &p.scheduled {
            Some((true, ..)) => set(
                SCHEDULED,
                Some(true),
                "Scheduled",
                &format!("trainer pod {} is scheduled", p.name),
            ),
            Some((false, r, m)) => set(
                SCHEDULED,
                Some(false),
                if r.is_empty() { "Unschedulable" } else { r },
                m,
            ),
            None => {}
        },
        _ => {}
    }
    if phase == P::Running && st.start_time.is_none() {
        st.start_time = Some(Time(now));
    }
    let terminal = matches!(phase, P::Succeeded | P::Failed);
    if terminal && st.completion_time.is_none() {
        st.completion_time = Some(Time(now));
    }
    // The run trained: what it measured is recorded whatever the evaluation does.
    let trained = obs.adapter.is_some() && obs.job.as_ref().is_some_and(|j| j.complete);
    if trained {
        if let Some(s) = &obs.summary {
            st.validation_loss = s.validation_loss;
            if s.base_validation_loss.is_some() {
                st.base_validation_loss = s.base_validation_loss;
            }
            st.trained_tokens = Some(s.tokens);
            if let Some(p) = st.progress.as_mut() {
                p.step = s.steps.max(p.step);
                p.total_steps = s.total_steps.max(p.total_steps);
                p.train_loss = s.train_loss.or(p.train_loss);
                p.validation_loss = s.validation_loss.or(p.validation_loss);
                p.eta_seconds = Some(0.0);
            } else {
                st.progress = Some(Progress {
                    epoch: s.epochs as f64,
                    step: s.steps,
                    total_steps: s.total_steps,
                    train_loss: s.train_loss,
                    validation_loss: s.validation_loss,
                    tokens_per_second: Some(s.tokens_per_second),
                    eta_seconds: Some(0.0),
                });
            }
        }
        st.adapter_ref = obs.adapter.clone().map(|name| LocalRef { name });
    }
    match &obs.evaluation {
        EvaluationState::NotWanted => {}
        EvaluationState::Done(e) => {
            st.evaluation = Some((**e).clone());
            set(EVALUATED, Some(true), "Evaluated", &evaluation_summary(e));
        }
        EvaluationState::Failed(_) => set(EVALUATED, Some(false), &reason, &message),
        EvaluationState::Waiting(_) | EvaluationState::Running(_) => {
            set(EVALUATED, Some(false), &reason, &message)
        }
    }
    st.phase = phase;
    let progressing = matches!(
        phase,
        P::ValidatingData | P::Queued | P::Running | P::Evaluating | P::Pending
    );
    set(READY, Some(phase == P::Succeeded), &reason, &message);
    set(PROGRESSING, Some(progressing), &reason, &message);
    set(
        DEGRADED,
        Some(phase == P::Failed),
        if phase == P::Failed {
            &reason
        } else {
            "AsExpected"
        },
        if phase == P::Failed { &message } else { "" },
    );
    st.conditions = conds;
    st
}

/// A status that starts over for the current generation: `phase` with `reason` and `message` on
/// Ready and Progressing, and everything that described the old run (job, progress, checkpoint,
/// attempts, losses, times) cleared, so the next pass starts a new run from scratch.
fn new_run_status(
    ftj: &FineTuneJob,
    phase: FineTuneJobPhase,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> FineTuneJobStatus {
    let prev = ftj.status.clone().unwrap_or_default();
    let generation = ftj.metadata.generation;
    let mut conds = prev.conditions.clone();
    for (t, s, reason, msg) in [
        (READY, false, reason, message),
        (PROGRESSING, true, reason, message),
        (DEGRADED, false, "AsExpected", ""),
    ] {
        conditions::set(
            &mut conds,
            conditions::new(t, Some(s), reason, msg, generation),
            now,
        );
    }
    FineTuneJobStatus {
        phase,
        observed_generation: generation,
        conditions: conds,
        ..FineTuneJobStatus::default()
    }
}

/// " at step 12 of 40" when status has progress.
fn at_step(st: &FineTuneJobStatus) -> String {
    st.progress
        .as_ref()
        .map(|p| format!(" at step {} of {}", p.step, p.total_steps))
        .unwrap_or_default()
}

/// The status that cancels the running attempt after a spec change: phase Cancelled with the
/// reason [`SPEC_CHANGED`], and everything that described the old run cleared, so the next pass
/// starts a new run for the current generation from scratch.
pub fn restart_status(ftj: &FineTuneJob, old_job: &str, now: Timestamp) -> FineTuneJobStatus {
    let prev = ftj.status.clone().unwrap_or_default();
    let message = format!(
        "the spec changed during the run (now generation {}): cancelled the running attempt (train Job {old_job}{}); a new run starts from scratch",
        ftj.metadata.generation.unwrap_or_default(),
        at_step(&prev)
    );
    new_run_status(
        ftj,
        FineTuneJobPhase::Cancelled,
        SPEC_CHANGED,
        &message,
        now,
    )
}

/// What a reconcile does about a job whose run ended, given the train Job that status names
/// (from the cache; `None` when it is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEnd {
    /// The run has not ended, or it failed on an invalid spec (which waits for a corrected
    /// one): reconcile as usual.
    Reconcile,
    /// Ended, and status describes the current generation: nothing to do.
    Done,
    /// Ended, and the spec changed only in `suspend` (or was changed back): the run stands;
    /// status records the generation as observed (and drops a [`AfterEnd::ChangeIgnored`]
    /// Degraded).
    Observe,
    /// Succeeded, and the spec changed since. Admission refuses this (CEL transition rule on the
    /// FineTuneJob); where that rule does not run, the change is not applied either: Degraded
    /// (reason [`SPEC_CHANGED`]) says so, and a Warning Event.
    ChangeIgnored,
    /// Failed (not on an invalid spec), and the spec changed since: the failed Job is deleted
    /// and a new run starts for the new generation (own outputs, attempts from 0).
    Rerun,
}

pub fn after_end(ftj: &FineTuneJob, run_job: Option<&Job>) -> AfterEnd {
    use FineTuneJobPhase as P;
    let Some(st) = &ftj.status else {
        return AfterEnd::Reconcile;
    };
    let invalid_spec = conditions::get(&st.conditions, READY)
        .is_some_and(|c| c.reason == Category::InvalidSpec.as_str());
    let ended = match st.phase {
        P::Succeeded => true,
        P::Failed => !invalid_spec,
        _ => false,
    };
    if !ended {
        return AfterEnd::Reconcile;
    }
    if ftj.metadata.generation.unwrap_or(0) <= st.observed_generation.unwrap_or(0) {
        return AfterEnd::Done;
    }
    // The run's spec, as its Job records it. A Job that is gone cannot say: a Succeeded job is
    // then taken as unchanged (admission lets only `suspend` change), a Failed one as changed.
    let same_run = match run_job {
        Some(j) => j
            .annotations()
            .get(RUN_SPEC)
            .is_some_and(|h| *h == run_spec_hash(ftj)),
        None => st.phase == P::Succeeded,
    };
    match (st.phase, same_run) {
        (_, true) => AfterEnd::Observe,
        (P::Succeeded, false) => AfterEnd::ChangeIgnored,
        _ => AfterEnd::Rerun,
    }
}

/// The status for [`AfterEnd::Observe`] and [`AfterEnd::ChangeIgnored`]: the ended run's, at the
/// current generation. `None` for the other decisions.
pub fn ended_status(
    ftj: &FineTuneJob,
    decision: AfterEnd,
    now: Timestamp,
) -> Option<FineTuneJobStatus> {
    let prev = ftj.status.clone().unwrap_or_default();
    let generation = ftj.metadata.generation;
    let mut st = FineTuneJobStatus {
        observed_generation: generation,
        ..prev.clone()
    };
    let degraded = match decision {
        AfterEnd::Observe => {
            let ignored = conditions::get(&prev.conditions, DEGRADED)
                .is_some_and(|c| c.reason == SPEC_CHANGED && c.status == "True");
            if !ignored {
                return Some(st);
            }
            (false, "AsExpected".to_string(), String::new())
        }
        AfterEnd::ChangeIgnored => (
            true,
            SPEC_CHANGED.to_string(),
            format!(
                "the spec changed after the job Succeeded (now generation {}) and was not applied: the adapter {} was trained on the earlier spec, which its lineage records; create a new FineTuneJob for a new run",
                generation.unwrap_or_default(),
                prev.adapter_ref
                    .as_ref()
                    .map(|a| format!("{:?}", a.name))
                    .unwrap_or_default()
            ),
        ),
        _ => return None,
    };
    conditions::set(
        &mut st.conditions,
        conditions::new(
            DEGRADED,
            Some(degraded.0),
            &degraded.1,
            &degraded.2,
            generation,
        ),
        now,
    );
    Some(st)
}

/// The status for [`AfterEnd::Rerun`]: phase Pending with reason [`SPEC_CHANGED`], the failed
/// run (its Job `old_job`) forgotten.
pub fn rerun_status(ftj: &FineTuneJob, old_job: Option<&str>, now: Timestamp) -> FineTuneJobStatus {
    let message = format!(
        "the spec changed after the run failed (now generation {}): a new run starts from scratch{}",
        ftj.metadata.generation.unwrap_or_default(),
        old_job
            .map(|j| format!(" (the failed train Job {j} is deleted)"))
            .unwrap_or_default()
    );
    new_run_status(ftj, FineTuneJobPhase::Pending, SPEC_CHANGED, &message, now)
}

/// Whether an invalid spec cancels the current train Job: any that has not ended (running,
/// waiting to be scheduled, or suspended) was built for an earlier spec and must not go on.
pub fn cancel_on_invalid(job: Option<&Job>) -> bool {
    job.is_some_and(|j| {
        let s = jobs::job_state(j);
        !s.complete && s.failed.is_none()
    })
}

/// The status of an invalid spec: phase Failed, reason InvalidSpec on Ready, Progressing and
/// Degraded, and `message`. When the spec change cancelled a train Job (`cancelled`), the
/// message names it and the old run is cleared from status, so a corrected spec starts afresh.
pub fn invalid_status(
    ftj: &FineTuneJob,
    gate: &DatasetGate,
    message: &str,
    cancelled: Option<&str>,
    now: Timestamp,
) -> FineTuneJobStatus {
    let mut base = ftj.clone();
    let mut message = message.to_string();
    let prev = ftj.status.clone().unwrap_or_default();
    let g = ftj.metadata.generation;
    // A later pass of the same generation finds nothing left to cancel: the first pass's message
    // (which names what it cancelled) stands.
    if let Some(c) = conditions::get(&prev.conditions, READY)
        && cancelled.is_none()
        && prev.phase == FineTuneJobPhase::Failed
        && c.reason == Category::InvalidSpec.as_str()
        && c.observed_generation == g
        && c.message.starts_with(&message)
    {
        message = c.message.clone();
    }
    // A pass that reads the status from before the cancelling pass's write (the Job already
    // gone) still names the attempt the change cancelled: that status records its run.
    let active = !matches!(
        prev.phase,
        FineTuneJobPhase::Failed | FineTuneJobPhase::Succeeded | FineTuneJobPhase::Cancelled
    );
    let cancelled = cancelled
        .map(String::from)
        .or_else(|| prev.job_name.clone().filter(|_| active));
    if let Some(job) = cancelled {
        message = format!(
            "{message}; cancelled the attempt of the earlier spec (train Job {job}{})",
            at_step(&prev)
        );
        base.status = Some(FineTuneJobStatus {
            phase: prev.phase,
            conditions: prev.conditions,
            ..FineTuneJobStatus::default()
        });
    }
    let mut st = status(&base, gate, None, &Observed::default(), now);
    st.phase = FineTuneJobPhase::Failed;
    for (t, s) in [(READY, false), (PROGRESSING, false), (DEGRADED, true)] {
        conditions::set(
            &mut st.conditions,
            conditions::new(t, Some(s), Category::InvalidSpec.as_str(), &message, g),
            now,
        );
    }
    st
}
