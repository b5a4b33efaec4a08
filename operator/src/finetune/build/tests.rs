//! Tests of the pure FineTuneJob pipeline: validation, the Job and its config, the status machine.
//! Size (over 700 lines, on purpose): one scenario per rule of the phase table, with shared fixtures.

use super::*;
use crate::jobs::{JobState, PodState};
use tailor_api::{DatasetStatus, FineTuneJobPhase as P};

const QUICKSTART: &str = include_str!("../../../../examples/quickstart/finetunejob.yaml");

fn ftj() -> FineTuneJob {
    let mut f: FineTuneJob = serde_saphyr::from_str(QUICKSTART).expect("fixture parses");
    f.metadata.namespace = Some("tailor-demo".into());
    f.metadata.uid = Some("0123456789abcdef".into());
    f.metadata.generation = Some(1);
    f
}

fn ready_gate() -> DatasetGate {
    DatasetGate::Ready {
        content_hash: "c0ffee".into(),
        prepared_uri: "pvc://tailor-artifacts/datasets/support-chat/abcd".into(),
        validation_examples: 19,
        test_examples: 4,
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_000).expect("valid")
}

fn running_job() -> JobState {
    JobState {
        active: 1,
        ..JobState::default()
    }
}

fn pod(phase: &str, scheduled: Option<(bool, &str, &str)>) -> PodState {
    PodState {
        name: "support-v1-train-x-abc".into(),
        phase: phase.into(),
        scheduled: scheduled.map(|(s, r, m)| (s, r.to_string(), m.to_string())),
        ip: Some("10.0.0.5".into()),
        termination_message: None,
        fetch_failure: None,
    }
}

#[test]
fn dataset_gate_waits_for_a_current_ready_dataset() {
    let f = ftj();
    assert!(matches!(dataset_gate(&f, None), DatasetGate::Missing(_)));
    let mut ds: Dataset =
        serde_saphyr::from_str(include_str!("../../../../examples/quickstart/dataset.yaml"))
            .expect("dataset fixture");
    ds.metadata.generation = Some(2);
    assert!(matches!(
        dataset_gate(&f, Some(&ds)),
        DatasetGate::NotReady(_)
    ));
    let mut st = DatasetStatus {
        phase: DatasetPhase::Ready,
        observed_generation: Some(2),
        content_hash: Some("h".into()),
        prepared_uri: Some("pvc://tailor-artifacts/datasets/x".into()),
        ..DatasetStatus::default()
    };
    conditions::set(
        &mut st.conditions,
        conditions::new(READY, Some(true), "Prepared", "", Some(2)),
        now(),
    );
    ds.status = Some(st.clone());
    assert!(matches!(
        dataset_gate(&f, Some(&ds)),
        DatasetGate::Ready { .. }
    ));
    // A status of an older generation is not evidence.
    ds.metadata.generation = Some(3);
    assert!(matches!(
        dataset_gate(&f, Some(&ds)),
        DatasetGate::NotReady(_)
    ));
}

#[test]
fn train_job_carries_gpus_scheduling_and_config() {
    let mut f = ftj();
    f.spec.node_selector.insert("gpu".into(), "a100".into());
    f.spec.priority_class_name = Some("training".into());
    f.spec.active_deadline_seconds = Some(3600);
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert!(v.job_name.starts_with("support-v1-train-"));
    // What the trainer reads: the JSON of the shared `TrainConfig` (`tailor-wire`).
    let tc = serde_json::to_value(&v.train_config).expect("json");
    assert_eq!(tc["baseModel"], "/artifacts/models/base");
    assert_eq!(
        tc["train"],
        "/artifacts/datasets/support-chat/abcd/train.jsonl"
    );
    assert_eq!(
        tc["output"],
        format!(
            "/artifacts/finetune/support-v1-01234567-{}",
            &run_spec_hash(&f)[..8]
        )
    );
    assert_eq!(tc["rank"], 8);
    assert_eq!(
        tc["targetModules"],
        json!(["q_proj", "k_proj", "v_proj", "o_proj"])
    );
    assert_eq!(tc["scheduler"], "cosine");
    assert_eq!(tc["checkpointEvery"], 20);
    assert_eq!(v.outputs.adapter_name, "support-v1");
    let job = job(&f, &v, &cfg, &f.spec.base_model.uri);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(3));
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    assert_eq!(spec.suspend, Some(false));
    let pod = spec.template.spec.as_ref().expect("pod");
    crate::pods::assert_hardened(pod);
    assert_eq!(pod.priority_class_name.as_deref(), Some("training"));
    assert_eq!(pod.node_selector.as_ref().expect("sel")["gpu"], "a100");
    assert_eq!(
        pod.tolerations.as_ref().expect("tol")[0].key.as_deref(),
        Some("nvidia.com/gpu")
    );
    let c = &pod.containers[0];
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
    let args = c.args.as_ref().expect("args");
    assert!(args.contains(&"$(POD_IP):9090".to_string()));
    let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("FineTuneJob", Some(true))
    );
}

#[test]
fn job_name_is_stable_and_follows_the_spec_but_not_suspend() {
    let cfg = OperatorConfig::for_tests();
    let f = ftj();
    let a = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert_eq!(
        a.job_name,
        validate(&f, &cfg, &ready_gate()).expect("valid").job_name
    );
    let mut s = f.clone();
    s.spec.suspend = true;
    assert_eq!(
        a.job_name,
        validate(&s, &cfg, &ready_gate()).expect("valid").job_name
    );
    let mut g = f.clone();
    g.spec.resources.gpus = 4;
    assert_ne!(
        a.job_name,
        validate(&g, &cfg, &ready_gate()).expect("valid").job_name
    );
}

#[test]
fn a_base_model_on_the_hub_is_fetched_before_training_and_a_bad_uri_is_invalid() {
    let cfg = OperatorConfig::for_tests();
    let mut f = ftj();
    f.spec.base_model.uri = "hf://org/model@v1.0".into();
    f.spec.base_model.credentials_secret_ref = Some(tailor_api::LocalRef {
        name: "hub-token".into(),
    });
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert_eq!(v.train_config.base_model, std::path::Path::new("/inputs/0"));
    // The operator pins the branch or tag to a commit when it makes the Job.
    let pinned = "hf://org/model@0123456789abcdef0123456789abcdef01234567";
    let made = job(&f, &v, &cfg, pinned);
    assert_eq!(jobs::fetched(&made), [pinned]);
    assert_eq!(
        crate::inputs::revision_of(pinned).as_deref(),
        Some("0123456789abcdef0123456789abcdef01234567")
    );
    let pod = made.spec.expect("spec").template.spec.expect("pod");
    crate::pods::assert_hardened(&pod);
    let fetch = &pod.init_containers.clone().unwrap_or_default()[0];
    assert_eq!(fetch.args.as_deref().unwrap_or_default()[0], pinned);
    let secret = fetch
        .env_from
        .iter()
        .flatten()
        .find_map(|e| e.secret_ref.clone());
    assert_eq!(secret.map(|s| s.name).as_deref(), Some("hub-token"));

    f.spec.base_model.uri = "hf://org".into();
    let err = validate(&f, &cfg, &ready_gate()).expect_err("invalid");
    assert_eq!(err.category(), Category::InvalidSpec);
    assert!(err.to_string().contains("spec.baseModel.uri"), "{err}");
}

#[test]
fn phases_follow_dataset_job_and_pod() {
    let f = ftj();
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let missing = DatasetGate::Missing("Dataset \"support-chat\" does not exist".into());
    let st = status(&f, &missing, None, &Observed::default(), now());
    assert_eq!(st.phase, P::ValidatingData);
    let c = conditions::get(&st.conditions, DATASET_READY).expect("cond");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "DatasetNotFound")
    );

    let queued = Observed {
        job: Some(running_job()),
        pod: Some(pod(
            "Pending",
            Some((
                false,
                "Unschedulable",
                "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            )),
        )),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &queued, now());
    assert_eq!(st.phase, P::Queued);
    let c = conditions::get(&st.conditions, SCHEDULED).expect("cond");
    assert_eq!(c.reason, "Unschedulable");
    assert!(c.message.contains("Insufficient nvidia.com/gpu"));
    assert!(conditions::is_true(&st.conditions, DATASET_READY));
    assert_eq!(st.job_name.as_deref(), Some(v.job_name.as_str()));

    let running = Observed {
        job: Some(running_job()),
        pod: Some(pod("Running", Some((true, "", "")))),
        progress: Some(TrainerProgress {
            step: 5,
            total_steps: 60,
            epoch: 0,
            train_loss: Some(2.5),
            base_validation_loss: Some(3.1),
            ..TrainerProgress::default()
        }),
        pods_seen: 1,
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &running, now());
    assert_eq!(st.phase, P::Running);
    assert_eq!(st.progress.as_ref().map(|p| p.step), Some(5));
    assert_eq!(st.base_validation_loss, Some(3.1));
    assert_eq!(st.attempts, 1);
    assert!(st.start_time.is_some());
    assert!(conditions::is_true(&st.conditions, PROGRESSING));
}

#[test]
fn success_needs_the_adapter_and_records_final_metrics() {
    let mut f = ftj();
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let mut done = Observed {
        job: Some(JobState {
            complete: true,
            succeeded_pods: 1,
            failed_pods: 1,
            ..JobState::default()
        }),
        summary: Some(TrainSummary {
            status: Outcome::Succeeded,
            validation_loss: Some(1.2),
            base_validation_loss: Some(3.0),
            tokens: 12345,
            steps: 60,
            total_steps: 60,
            ..TrainSummary::default()
        }),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &done, now());
    assert_eq!(
        st.phase,
        P::Running,
        "not Succeeded before the adapter is recorded"
    );
    done.adapter = Some("support-v1".into());
    let st = status(&f, &ready_gate(), Some(&v), &done, now());
    assert_eq!(st.phase, P::Succeeded);
    assert_eq!(st.validation_loss, Some(1.2));
    assert_eq!(st.trained_tokens, Some(12345));
    assert_eq!(st.attempts, 2);
    assert_eq!(
        st.adapter_ref.as_ref().map(|r| r.name.as_str()),
        Some("support-v1")
    );
    assert!(conditions::is_true(&st.conditions, READY));
    assert!(st.completion_time.is_some());

    f.status = Some(st.clone());
    let la = adapter(
        &f,
        &v.outputs,
        &AdapterArtifact {
            sha256: "a".repeat(64),
            size_bytes: 42,
        },
        &OperatorConfig::for_tests(),
    );
    assert_eq!(la.spec.uri, v.outputs.adapter_uri);
    assert_eq!(la.spec.source_job.as_deref(), Some("support-v1"));
    assert_eq!(la.spec.sha256.as_deref(), Some("a".repeat(64).as_str()));
    assert!(
        la.metadata.owner_references.is_none(),
        "adapters outlive their job"
    );
    assert!(
        la.metadata.annotations.is_none(),
        "nothing on the adapter is trusted as lineage"
    );
    // Lineage comes from the job's own status, and only for the adapter it recorded.
    let l: Lineage = lineage(&f, &cfg, &la).expect("recorded");
    assert_eq!(l.dataset_content_hash.as_deref(), Some("c0ffee"));
    assert_eq!(l.validation_loss, Some(1.2));
    assert_eq!(l.trained_tokens, Some(12345));
    let mut other = la.clone();
    other.spec.uri = "pvc://tailor-artifacts/finetune/someone-else".into();
    assert!(lineage(&f, &cfg, &other).is_none());
    let mut renamed = la.clone();
    renamed.metadata.name = Some("not-the-recorded-one".into());
    assert!(lineage(&f, &cfg, &renamed).is_none());
    let mut elsewhere = la.clone();
    elsewhere.metadata.namespace = Some("other-namespace".into());
    assert!(lineage(&f, &cfg, &elsewhere).is_none());
}

#[test]
fn failure_and_suspension() {
    let mut f = ftj();
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let failed = Observed {
        job: Some(JobState {
            failed: Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            )),
            failed_pods: 4,
            ..JobState::default()
        }),
        failure: Some("out of memory".into()),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &failed, now());
    assert_eq!(st.phase, P::Failed);
    assert!(conditions::is_true(&st.conditions, DEGRADED));
    assert!(
        conditions::get(&st.conditions, READY)
            .expect("c")
            .message
            .contains("out of memory")
    );

    let suspended = Observed {
        job: Some(JobState {
            suspended: true,
            ..JobState::default()
        }),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &suspended, now());
    assert_eq!(st.phase, P::Queued);
    assert_eq!(
        conditions::get(&st.conditions, SCHEDULED)
            .expect("c")
            .reason,
        "Suspended"
    );
    f.status = Some(FineTuneJobStatus {
        start_time: Some(Time(now())),
        ..FineTuneJobStatus::default()
    });
    let st = status(&f, &ready_gate(), Some(&v), &suspended, now());
    assert_eq!(st.phase, P::Cancelled);
}

/// A running job whose train Job was built for generation 1.
fn running(f: &FineTuneJob, cfg: &OperatorConfig) -> (Validated, Job, FineTuneJob) {
    let v = validate(f, cfg, &ready_gate()).expect("valid");
    let job = job(f, &v, cfg, &f.spec.base_model.uri);
    let mut running = f.clone();
    running.status = Some(FineTuneJobStatus {
        phase: P::Running,
        job_name: Some(v.job_name.clone()),
        start_time: Some(Time(now())),
        attempts: 1,
        progress: Some(Progress {
            step: 12,
            total_steps: 40,
            ..Progress::default()
        }),
        last_checkpoint: Some(Checkpoint {
            step: 10,
            uri: Some(format!("{}/checkpoints/step-10", v.outputs.adapter_uri)),
        }),
        base_validation_loss: Some(2.5),
        dataset_content_hash: Some("c0ffee".into()),
        ..FineTuneJobStatus::default()
    });
    (v, job, running)
}

#[test]
fn a_spec_change_mid_run_is_a_new_run_but_suspend_is_not() {
    let cfg = OperatorConfig::for_tests();
    let f = ftj();
    let (v, job, _) = running(&f, &cfg);
    assert_eq!(
        job.annotations().get(RUN_SPEC),
        Some(&run_spec_hash(&f)),
        "the Job records the spec it runs"
    );
    assert!(!spec_changed_mid_run(&f, &job, true));
    // Suspending and resuming continue the same run, from its checkpoints.
    let mut suspended = f.clone();
    suspended.spec.suspend = true;
    suspended.metadata.generation = Some(2);
    assert!(!spec_changed_mid_run(&suspended, &job, true));
    assert_eq!(outputs(&suspended, &cfg), v.outputs);
    // Any other change is a new run, with outputs of its own (no old checkpoint is resumed).
    let mut changed = f.clone();
    changed.spec.hyperparameters.learning_rate *= 2.0;
    changed.metadata.generation = Some(2);
    assert!(spec_changed_mid_run(&changed, &job, true));
    let w = validate(&changed, &cfg, &ready_gate()).expect("valid");
    assert_ne!(w.job_name, v.job_name);
    assert_ne!(w.outputs.adapter_uri, v.outputs.adapter_uri);
    // Not started yet: the Job is simply replaced (not a cancelled run).
    assert!(!spec_changed_mid_run(&changed, &job, false));
    // A Job that finished before its end was recorded is replaced all the same (its outcome
    // belongs to the old spec); a Job from before the annotation is left alone.
    let mut done = job.clone();
    done.status = Some(k8s_openapi::api::batch::v1::JobStatus {
        conditions: Some(vec![k8s_openapi::api::batch::v1::JobCondition {
            type_: "Complete".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    assert!(spec_changed_mid_run(&changed, &done, true));
    assert!(!spec_changed_mid_run(&f, &done, true));
    let mut legacy = job.clone();
    legacy
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .remove(RUN_SPEC);
    assert!(!spec_changed_mid_run(&changed, &legacy, true));
}

#[test]
fn a_spec_change_mid_run_cancels_the_attempt_then_starts_over() {
    let cfg = OperatorConfig::for_tests();
    let f = ftj();
    let (v, _, mut running) = running(&f, &cfg);
    running.spec.hyperparameters.epochs += 1;
    running.metadata.generation = Some(2);
    let st = restart_status(&running, &v.job_name, now());
    assert_eq!(st.phase, P::Cancelled);
    assert_eq!(st.observed_generation, Some(2));
    let ready = conditions::get(&st.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, SPEC_CHANGED);
    assert!(ready.message.contains(&v.job_name), "{}", ready.message);
    assert!(ready.message.contains("step 12 of 40"), "{}", ready.message);
    assert!(conditions::is_true(&st.conditions, PROGRESSING));
    assert!(!conditions::is_true(&st.conditions, DEGRADED));
    assert!(crate::events::is_warning(SPEC_CHANGED));
    // Nothing of the old run is left to be mistaken for the new one's.
    assert_eq!(
        (
            st.job_name.as_ref(),
            st.start_time.as_ref(),
            st.progress.as_ref(),
            st.last_checkpoint.as_ref(),
            st.attempts,
            st.base_validation_loss
        ),
        (None, None, None, None, 0, None)
    );
    // The next pass creates the new generation's Job: Queued until its pod runs.
    running.status = Some(st);
    let w = validate(&running, &cfg, &ready_gate()).expect("valid");
    let queued = Observed {
        job: Some(JobState::default()),
        ..Observed::default()
    };
    let st = status(&running, &ready_gate(), Some(&w), &queued, now());
    assert_eq!(st.phase, P::Queued);
    assert_eq!(st.job_name.as_deref(), Some(w.job_name.as_str()));
    assert_eq!(st.start_time, None);
}

#[test]
fn a_status_read_before_the_cancel_does_not_leak_into_the_new_run() {
    // A reconcile may still see the old run's status when the new Job already exists.
    let cfg = OperatorConfig::for_tests();
    let f = ftj();
    let (_, _, mut stale) = running(&f, &cfg);
    stale.spec.lora.rank = 16;
    stale.metadata.generation = Some(2);
    let w = validate(&stale, &cfg, &ready_gate()).expect("valid");
    let obs = Observed {
        job: Some(running_job()),
        pod: Some(pod("Pending", None)),
        ..Observed::default()
    };
    let st = status(&stale, &ready_gate(), Some(&w), &obs, now());
    assert_eq!(st.phase, P::Queued);
    assert_eq!(st.start_time, None);
    assert_eq!(st.progress, None);
    assert_eq!(st.last_checkpoint, None);
    assert_eq!(st.attempts, 0);
}

/// `job` with a final condition (`Complete` or `Failed`).
fn ended(job: &Job, type_: &str) -> Job {
    let mut j = job.clone();
    j.status = Some(k8s_openapi::api::batch::v1::JobStatus {
        conditions: Some(vec![k8s_openapi::api::batch::v1::JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some("BackoffLimitExceeded".into()),
            message: Some("Job has reached the specified backoff limit".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    j
}

/// A job of generation 1 whose run ended in `phase` (its train Job `ended` accordingly).
fn ended_run(phase: P, reason: &str) -> (Job, FineTuneJob) {
    let cfg = OperatorConfig::for_tests();
    let (v, job, mut f) = running(&ftj(), &cfg);
    let st = f.status.as_mut().expect("status");
    st.phase = phase;
    st.observed_generation = Some(1);
    st.adapter_ref = (phase == P::Succeeded).then(|| LocalRef {
        name: v.outputs.adapter_name.clone(),
    });
    conditions::set(
        &mut st.conditions,
        conditions::new(READY, Some(phase == P::Succeeded), reason, "", Some(1)),
        now(),
    );
    let job = ended(
        &job,
        if phase == P::Succeeded {
            "Complete"
        } else {
            "Failed"
        },
    );
    (job, f)
}

#[test]
fn an_ended_run_is_left_alone_until_its_spec_changes() {
    for (phase, reason) in [(P::Succeeded, "Succeeded"), (P::Failed, "JobFailed")] {
        let (job, f) = ended_run(phase, reason);
        assert_eq!(after_end(&f, Some(&job)), AfterEnd::Done, "{phase:?}");
        assert_eq!(after_end(&f, None), AfterEnd::Done, "{phase:?}");
        // `suspend` alone does not make another run: the generation is recorded, nothing else.
        let mut suspended = f.clone();
        suspended.spec.suspend = true;
        suspended.metadata.generation = Some(2);
        assert_eq!(after_end(&suspended, Some(&job)), AfterEnd::Observe);
        let st = ended_status(&suspended, AfterEnd::Observe, now()).expect("status");
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(st.phase, phase);
        assert_eq!(
            st.conditions,
            f.status.as_ref().expect("status").conditions,
            "no condition changes"
        );
    }
    // Runs that did not end are reconciled as usual, whatever changed.
    let cfg = OperatorConfig::for_tests();
    let (_, job, mut running) = running(&ftj(), &cfg);
    running.metadata.generation = Some(2);
    running.spec.lora.rank = 4;
    assert_eq!(after_end(&running, Some(&job)), AfterEnd::Reconcile);
    assert_eq!(
        after_end(&ftj(), None),
        AfterEnd::Reconcile,
        "no status yet"
    );
}

#[test]
fn a_succeeded_runs_spec_change_is_not_applied_and_says_so() {
    let (job, f) = ended_run(P::Succeeded, "Succeeded");
    let mut changed = f.clone();
    changed.spec.hyperparameters.epochs = 7;
    changed.metadata.generation = Some(2);
    assert_eq!(after_end(&changed, Some(&job)), AfterEnd::ChangeIgnored);
    let st = ended_status(&changed, AfterEnd::ChangeIgnored, now()).expect("status");
    assert_eq!(st.phase, P::Succeeded, "the run and its adapter stand");
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(st.adapter_ref, f.status.as_ref().expect("st").adapter_ref);
    assert!(conditions::is_true(&st.conditions, READY));
    let degraded = conditions::get(&st.conditions, DEGRADED).expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", SPEC_CHANGED)
    );
    assert!(
        degraded.message.contains("not applied")
            && degraded.message.contains("new FineTuneJob")
            && degraded.message.contains("support-v1"),
        "{}",
        degraded.message
    );
    assert!(crate::events::is_warning(&degraded.reason));
    // The next pass has nothing to do; changing the spec back clears the warning.
    changed.status = Some(st);
    assert_eq!(after_end(&changed, Some(&job)), AfterEnd::Done);
    let mut reverted = f.clone();
    reverted.status = changed.status.clone();
    reverted.metadata.generation = Some(3);
    assert_eq!(after_end(&reverted, Some(&job)), AfterEnd::Observe);
    let st = ended_status(&reverted, AfterEnd::Observe, now()).expect("status");
    assert!(!conditions::is_true(&st.conditions, DEGRADED));
    assert_eq!(st.observed_generation, Some(3));
    // Without its Job (deleted by hand) a change cannot be told from `suspend`: admission
    // refuses the rest, so it is taken as unchanged.
    assert_eq!(
        after_end(&changed_generation(&f, 2), None),
        AfterEnd::Observe
    );
    assert_eq!(
        ended_status(&f, AfterEnd::Rerun, now()),
        None,
        "only Observe and ChangeIgnored keep the run"
    );
}

fn changed_generation(f: &FineTuneJob, generation: i64) -> FineTuneJob {
    let mut c = f.clone();
    c.spec.hyperparameters.seed += 1;
    c.metadata.generation = Some(generation);
    c
}

#[test]
fn a_failed_runs_spec_change_starts_a_new_run() {
    let cfg = OperatorConfig::for_tests();
    let (job, f) = ended_run(P::Failed, "JobFailed");
    let old = f
        .status
        .as_ref()
        .and_then(|s| s.job_name.clone())
        .expect("job");
    let changed = changed_generation(&f, 2);
    assert_eq!(after_end(&changed, Some(&job)), AfterEnd::Rerun);
    assert_eq!(after_end(&changed, None), AfterEnd::Rerun, "Job gone");
    let st = rerun_status(&changed, Some(&old), now());
    assert_eq!(st.phase, P::Pending);
    assert_eq!(st.observed_generation, Some(2));
    let ready = conditions::get(&st.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, SPEC_CHANGED);
    assert!(
        ready.message.contains("failed") && ready.message.contains(&old),
        "{}",
        ready.message
    );
    assert!(conditions::is_true(&st.conditions, PROGRESSING));
    assert!(!conditions::is_true(&st.conditions, DEGRADED));
    assert_eq!(
        (
            st.job_name.as_ref(),
            st.start_time.as_ref(),
            st.completion_time.as_ref(),
            st.progress.as_ref(),
            st.last_checkpoint.as_ref(),
            st.attempts
        ),
        (None, None, None, None, None, 0),
        "attempts and the old run are reset"
    );
    // The next pass is an ordinary one, for a new Job in new outputs.
    let mut next = changed.clone();
    next.status = Some(st);
    assert_eq!(after_end(&next, None), AfterEnd::Reconcile);
    let w = validate(&next, &cfg, &ready_gate()).expect("valid");
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert_ne!(w.job_name, v.job_name);
    assert_ne!(w.outputs.output_path, v.outputs.output_path);
    let st = status(
        &next,
        &ready_gate(),
        Some(&w),
        &Observed {
            job: Some(JobState::default()),
            ..Observed::default()
        },
        now(),
    );
    assert_eq!(st.phase, P::Queued);
    assert_eq!(st.attempts, 0);
}

#[test]
fn an_invalid_spec_waits_for_a_correction_not_a_rerun() {
    let (_, mut f) = ended_run(P::Failed, "InvalidSpec");
    f.metadata.generation = Some(2);
    assert_eq!(
        after_end(&f, None),
        AfterEnd::Reconcile,
        "an invalid spec is revalidated on every change"
    );
}

#[test]
fn a_change_to_an_invalid_spec_cancels_the_earlier_attempt() {
    let cfg = OperatorConfig::for_tests();
    let (v, job, mut f) = running(&ftj(), &cfg);
    f.spec.base_model.uri = "pvc://other-claim/../models".into();
    f.metadata.generation = Some(2);
    let Err(Error::InvalidSpec(msg)) = validate(&f, &cfg, &ready_gate()) else {
        panic!("'..' is not allowed in a base model path");
    };
    // Running, waiting to be scheduled or suspended: cancelled. Ended: left alone.
    assert!(cancel_on_invalid(Some(&job)));
    let mut suspended = job.clone();
    if let Some(s) = suspended.spec.as_mut() {
        s.suspend = Some(true);
    }
    assert!(cancel_on_invalid(Some(&suspended)));
    assert!(!cancel_on_invalid(Some(&ended(&job, "Complete"))));
    assert!(!cancel_on_invalid(Some(&ended(&job, "Failed"))));
    assert!(!cancel_on_invalid(None));

    let st = invalid_status(&f, &ready_gate(), &msg, Some(&v.job_name), now());
    assert_eq!(st.phase, P::Failed);
    assert_eq!(st.observed_generation, Some(2));
    for t in [READY, PROGRESSING, DEGRADED] {
        let c = conditions::get(&st.conditions, t).expect("condition");
        assert_eq!(c.reason, "InvalidSpec", "{t}");
        assert_eq!(c.status, if t == DEGRADED { "True" } else { "False" });
        assert!(
            c.message.contains("spec.baseModel.uri")
                && c.message.contains(&v.job_name)
                && c.message.contains("step 12 of 40"),
            "{}",
            c.message
        );
    }
    assert_eq!(
        (
            st.job_name.as_ref(),
            st.start_time.as_ref(),
            st.progress.as_ref(),
            st.attempts
        ),
        (None, None, None, 0),
        "the cancelled run is gone from status"
    );
    // The next pass (the Job is gone) keeps the message that names the cancelled attempt.
    let mut again = f.clone();
    again.status = Some(st.clone());
    let next = invalid_status(&again, &ready_gate(), &msg, None, now());
    assert_eq!(next, st);
    // Failed on an invalid spec: the corrected spec is reconciled into a new run.
    let mut corrected = f.clone();
    corrected.status = Some(st);
    corrected.spec.base_model.uri = "pvc://tailor-artifacts/models/base".into();
    corrected.metadata.generation = Some(3);
    assert_eq!(after_end(&corrected, None), AfterEnd::Reconcile);
    let w = validate(&corrected, &cfg, &ready_gate()).expect("valid");
    let st = status(
        &corrected,
        &ready_gate(),
        Some(&w),
        &Observed {
            job: Some(JobState::default()),
            ..Observed::default()
        },
        now(),
    );
    assert_eq!(st.phase, P::Queued);
    assert!(!conditions::is_true(&st.conditions, DEGRADED));

    // A pass that read the status from before the cancelling write (its Job already gone)
    // still names the attempt that was cancelled.
    let st = invalid_status(&f, &ready_gate(), &msg, None, now());
    let m = &conditions::get(&st.conditions, READY)
        .expect("Ready")
        .message;
    assert!(m.contains(&v.job_name), "{m}");

    // Nothing was cancelled (no Job yet): the message is the validation error alone.
    let mut fresh = f.clone();
    fresh.status = None;
    let st = invalid_status(&fresh, &ready_gate(), &msg, None, now());
    assert_eq!(
        conditions::get(&st.conditions, READY)
            .expect("Ready")
            .message,
        msg
    );
}

#[test]
fn target_modules_are_checked_against_the_base_models_family() {
    let mut f = ftj();
    let llama = br#"{"architectures": ["LlamaForCausalLM"]}"#;
    let phi3 = br#"{"architectures": ["Phi3ForCausalLM"]}"#;
    assert!(check_family(&f, Some(llama)).is_ok());
    assert!(
        check_family(&f, None).is_ok(),
        "unreadable: left to the trainer"
    );
    let msg = |r: Result<(), Error>| match r {
        Err(Error::InvalidSpec(m)) => m,
        other => panic!("{other:?}"),
    };
    // Phi-3 fuses q/k/v: q_proj does not exist there, and the message says what does.
    f.spec.lora.target_modules = vec!["q_proj".into(), "v_proj".into()];
    let m = msg(check_family(&f, Some(phi3)));
    assert!(
        m.contains("spec.lora.targetModules") && m.contains("phi3"),
        "{m}"
    );
    assert!(m.contains("qkv_proj"), "{m}");
    f.spec.lora.target_modules = vec!["qkv_proj".into(), "all-linear".into()];
    assert!(check_family(&f, Some(phi3)).is_ok());
    let m = msg(check_family(
        &f,
        Some(br#"{"architectures": ["GPT2LMHeadModel"]}"#),
    ));
    assert!(
        m.contains("GPT2LMHeadModel") && m.contains("LlamaForCausalLM"),
        "{m}"
    );
    let m = msg(check_family(&f, Some(b"{not json")));
    assert!(m.contains("config.json"), "{m}");
}

#[test]
fn gpus_are_requested_as_the_spec_or_the_operator_config_names_them() {
    let limits = |f: &FineTuneJob, cfg: &OperatorConfig| {
        let v = validate(f, cfg, &ready_gate()).expect("valid");
        let job = job(f, &v, cfg, &f.spec.base_model.uri);
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        pod.containers[0]
            .resources
            .clone()
            .and_then(|r| r.limits)
            .expect("limits")
    };
    let mut f = ftj();
    let mut cfg = OperatorConfig::for_tests();
    assert_eq!(limits(&f, &cfg)["nvidia.com/gpu"], Quantity("1".into()));
    cfg.gpu_resource_name = "amd.com/gpu".into();
    assert_eq!(limits(&f, &cfg)["amd.com/gpu"], Quantity("1".into()));
    f.spec.resources.gpu_resource = Some("nvidia.com/mig-1g.10gb".into());
    let l = limits(&f, &cfg);
    assert_eq!(l["nvidia.com/mig-1g.10gb"], Quantity("1".into()));
    assert!(!l.contains_key("amd.com/gpu"));
}

fn with_evaluation(mut f: FineTuneJob) -> FineTuneJob {
    f.spec.evaluation = Some(
        serde_json::from_value(json!({
            "judge": {
                "endpoint": "https://judge.example.com/v1",
                "model": "big",
                "apiKeySecretRef": {"name": "judge-key", "key": "token"},
                "promptConfigMapRef": {"name": "judge-prompt", "key": "prompt.j2"},
                "concurrency": 2
            },
            "maxExamples": 50,
            "decoding": {"maxNewTokens": 64}
        }))
        .expect("evaluation spec"),
    );
    f
}

#[test]
fn an_evaluation_needs_a_test_split() {
    let f = with_evaluation(ftj());
    let cfg = OperatorConfig::for_tests();
    let no_test = DatasetGate::Ready {
        content_hash: "c0ffee".into(),
        prepared_uri: "pvc://tailor-artifacts/datasets/support-chat/abcd".into(),
        validation_examples: 19,
        test_examples: 0,
    };
    match validate(&f, &cfg, &no_test) {
        Err(Error::InvalidSpec(m)) => assert!(
            m.contains("spec.evaluation needs a test split, and Dataset \"support-chat\" has no test examples"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(validate(&f, &cfg, &ready_gate()).is_ok());
}

#[test]
fn the_evaluate_job_reads_what_the_run_wrote_and_mounts_the_judges_secrets() {
    let f = with_evaluation(ftj());
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let name = evaluate_job_name(&v.job_name);
    assert_eq!(name, v.job_name.replace("-train-", "-eval-"));
    let e = evaluate_config(&f, &v, Some("https://judge.example.com/v1")).expect("config");
    let out = &v.train_config.output;
    assert_eq!(e.base_model, v.train_config.base_model);
    assert_eq!(&e.adapter, out);
    assert_eq!(
        e.test,
        PathBuf::from("/artifacts/datasets/support-chat/abcd/test.jsonl")
    );
    assert_eq!(e.output.as_deref(), Some(out.join("evaluation").as_path()));
    assert_eq!(e.max_examples, Some(50));
    assert_eq!(e.decoding.max_new_tokens, 64);
    let j = e.judge.as_ref().expect("judge");
    assert_eq!((j.model.as_str(), j.concurrency), ("big", 2));
    assert_eq!(
        j.api_key_file.as_deref(),
        Some(Path::new("/var/run/tailor/judge/key/api-key"))
    );
    // Without the judge's URL (its ModelDeployment has none yet) there is no judge config.
    assert!(
        evaluate_config(&f, &v, None)
            .expect("config")
            .judge
            .is_none()
    );

    let job = evaluate_job(&f, &name, &v, &cfg, &f.spec.base_model.uri);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.suspend, None, "it runs once the adapter exists");
    let pod = spec.template.spec.as_ref().expect("pod");
    crate::pods::assert_hardened(pod);
    let c = &pod.containers[0];
    assert_eq!(c.name, "evaluate");
    let args = c.args.as_ref().expect("args");
    assert!(
        args.windows(2)
            .any(|w| w == ["--config", "/etc/tailor/evaluate.json"]),
        "{args:?}"
    );
    // The same GPUs as the run: both models are as large as the one trained.
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
    let vols = pod.volumes.as_ref().expect("volumes");
    let key = vols
        .iter()
        .find(|v| v.name == "judge-key")
        .expect("key volume");
    let secret = key.secret.as_ref().expect("secret");
    assert_eq!(secret.secret_name.as_deref(), Some("judge-key"));
    assert_eq!(secret.items.as_ref().expect("items")[0].key, "token");
    assert!(vols.iter().any(|v| v.name == "judge-prompt"));
    assert!(
        vols.iter()
            .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == name))
    );
    let mounts = c.volume_mounts.as_ref().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/var/run/tailor/judge/key" && m.read_only == Some(true))
    );
    let cm = evaluate_config_map(&f, &name, &v.hash, &e);
    let body: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().expect("data")["evaluate.json"]).expect("json");
    assert_eq!(body["judge"]["url"], "https://judge.example.com/v1");
    assert_eq!(
        body["test"],
        "/artifacts/datasets/support-chat/abcd/test.jsonl"
    );
}

#[test]
fn a_trained_adapter_is_evaluated_before_the_job_succeeds() {
    let mut f = with_evaluation(ftj());
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let report = EvaluationReport {
        examples: 20,
        answered: 20,
        base: tailor_wire::eval::Scores {
            test_loss: Some(3.0),
            ..Default::default()
        },
        adapter: tailor_wire::eval::Scores {
            test_loss: Some(1.5),
            exact_match: Some(0.25),
            ..Default::default()
        },
        judge: Some(tailor_wire::eval::JudgeSummary {
            model: "big".into(),
            pairs: 20,
            judged: 19,
            unjudged: 1,
            wins: 15,
            win_rate: Some(15.0 / 19.0),
            win_rate_lower: Some(0.57),
            win_rate_upper: Some(0.91),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut obs = Observed {
        job: Some(JobState {
            complete: true,
            succeeded_pods: 1,
            ..JobState::default()
        }),
        summary: Some(TrainSummary {
            status: Outcome::Succeeded,
            validation_loss: Some(1.2),
            base_validation_loss: Some(3.0),
            ..TrainSummary::default()
        }),
        adapter: Some("support-v1".into()),
        evaluation: EvaluationState::Running("support-v1-eval-x".into()),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &obs, now());
    assert_eq!(st.phase, P::Evaluating);
    let evaluated = conditions::get(&st.conditions, EVALUATED).expect("Evaluated");
    assert_eq!(
        (evaluated.status.as_str(), evaluated.reason.as_str()),
        ("False", "Evaluating")
    );
    assert!(
        evaluated.message.contains("Job support-v1-eval-x"),
        "{}",
        evaluated.message
    );
    assert!(conditions::is_true(&st.conditions, PROGRESSING));
    // What training measured is recorded already; the run is not complete.
    assert_eq!(st.validation_loss, Some(1.2));
    assert_eq!(
        st.adapter_ref.as_ref().map(|r| r.name.as_str()),
        Some("support-v1")
    );
    assert!(st.completion_time.is_none());
    // Lineage (what the gate reads) only once the job Succeeded.
    f.status = Some(st);
    let la = adapter(
        &f,
        &v.outputs,
        &AdapterArtifact {
            sha256: "a".repeat(64),
            size_bytes: 42,
        },
        &OperatorConfig::for_tests(),
    );
    assert!(lineage(&f, &cfg, &la).is_none());

    obs.evaluation = EvaluationState::Done(Box::new(report.clone()));
    let st = status(&f, &ready_gate(), Some(&v), &obs, now());
    assert_eq!(st.phase, P::Succeeded);
    assert_eq!(st.evaluation.as_ref(), Some(&report));
    let ready = conditions::get(&st.conditions, READY).expect("Ready");
    assert!(
        ready
            .message
            .contains("win rate 0.79 [0.57, 0.91] over 19 judged pairs (1 unjudged)"),
        "{}",
        ready.message
    );
    assert!(conditions::is_true(&st.conditions, EVALUATED));
    f.status = Some(st);
    let l = lineage(&f, &cfg, &la).expect("recorded");
    assert_eq!(l.evaluation.as_ref(), Some(&report));

    obs.evaluation = EvaluationState::Failed("Job x: BackoffLimitExceeded: out of memory".into());
    f.status = None;
    let st = status(&f, &ready_gate(), Some(&v), &obs, now());
    assert_eq!(st.phase, P::Failed);
    let ready = conditions::get(&st.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, "EvaluationFailed");
    assert!(ready.message.contains("out of memory"), "{}", ready.message);
}

#[test]
fn queued_train_and_evaluate_jobs_are_created_suspended_for_kueue() {
    let mut f = with_evaluation(ftj());
    f.metadata.labels = Some(BTreeMap::from([(
        jobs::KUEUE_QUEUE.to_string(),
        "team-a".to_string(),
    )]));
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let name = evaluate_job_name(&v.job_name);
    for job in [
        job(&f, &v, &cfg, &f.spec.base_model.uri),
        evaluate_job(&f, &name, &v, &cfg, &f.spec.base_model.uri),
    ] {
        assert_eq!(
            job.spec.as_ref().and_then(|s| s.suspend),
            Some(true),
            "{job:?}"
        );
        assert_eq!(jobs::kueue_queue(&job.metadata), Some("team-a"));
    }
}

#[test]
fn with_an_artifact_store_the_run_reads_and_writes_its_namespaces_area_of_the_bucket() {
    let mut f = ftj();
    f.spec.base_model.uri = "s3://acme/models/base".into();
    f.spec.base_model.credentials_secret_ref = Some(tailor_api::LocalRef {
        name: "models".into(),
    });
    let mut cfg = OperatorConfig::for_tests();
    cfg.artifact_store = Some(crate::config::ArtifactStore {
        uri: "s3://acme/tailor".into(),
        credentials_secret: "tailor-store".into(),
    });
    let gate = DatasetGate::Ready {
        content_hash: "c0ffee".into(),
        prepared_uri: "s3://acme/tailor/tailor-demo/datasets/support-chat/abcd".into(),
        validation_examples: 19,
        test_examples: 4,
    };
    let v = validate(&f, &cfg, &gate).expect("valid");
    assert!(
        v.outputs
            .adapter_uri
            .starts_with("s3://acme/tailor/tailor-demo/finetune/"),
        "{}",
        v.outputs.adapter_uri
    );
    // The trainer reads the prepared data and writes the run by URI (checkpoints go to the
    // bucket as written, so a pod on another node resumes from there).
    let t = &v.train_config;
    assert_eq!(
        t.train.to_str(),
        Some("s3://acme/tailor/tailor-demo/datasets/support-chat/abcd/train.jsonl")
    );
    assert_eq!(t.output.to_str(), Some(v.outputs.adapter_uri.as_str()));
    let job = job(&f, &v, &cfg, &f.spec.base_model.uri);
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    crate::pods::assert_hardened(&pod);
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .all(|vol| vol.persistent_volume_claim.is_none()),
        "no claim in a namespace that has none"
    );
    let trainer = &pod.containers[0];
    let secrets: Vec<&str> = trainer
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.secret_ref.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(secrets, ["tailor-store"]);
    // The base model is fetched before, with its own Secret.
    let init = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), 1);
    // The evaluate step's report is its termination message (no local path in a URI).
    let mut e = f.clone();
    e.spec.evaluation = serde_json::from_value(serde_json::json!({"maxExamples": 4})).ok();
    let ev = evaluate_config(&e, &v, None).expect("evaluate config");
    assert!(ev.output.is_none());
    // The recorded adapter is read with the store Secret.
    let la = adapter(
        &f,
        &v.outputs,
        &AdapterArtifact {
            sha256: "ab".repeat(32),
            size_bytes: 10,
        },
        &cfg,
    );
    assert_eq!(la.spec.uri, v.outputs.adapter_uri);
    assert_eq!(
        la.spec.credentials_secret_ref.map(|r| r.name).as_deref(),
        Some("tailor-store")
    );
}

// ---------------------------------------------------------------------------------------------
// Several GPUs and nodes (see `group`).

fn env_of(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| &p.containers[0])
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

fn with_ranks(gpus: u32, nodes: u32) -> FineTuneJob {
    let mut f = ftj();
    f.spec.resources.gpus = gpus;
    f.spec.resources.nodes = nodes;
    f
}

#[test]
fn one_rank_keeps_the_job_and_its_name_as_before_nodes_existed() {
    let cfg = OperatorConfig::for_tests();
    let f = ftj();
    // The spec as written before `resources.nodes`, and as the apiserver defaults it now.
    let mut defaulted = f.clone();
    defaulted.spec.resources.nodes = 1;
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert_eq!(
        validate(&defaulted, &cfg, &ready_gate())
            .expect("valid")
            .job_name,
        v.job_name
    );
    assert_eq!(run_spec_hash(&f), run_spec_hash(&defaulted));
    let job = job(&f, &v, &cfg, &f.spec.base_model.uri);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.completion_mode, None);
    assert_eq!((spec.completions, spec.parallelism), (None, None));
    assert_eq!(spec.backoff_limit, Some(3), "the Job's own retries");
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.subdomain, None);
    assert_eq!(
        env_of(&job).keys().collect::<Vec<_>>(),
        vec!["HOME", "POD_IP"],
        "no distributed environment"
    );
    assert_eq!(pod.containers[0].ports.as_ref().map(Vec::len), Some(1));
    assert!(!job.annotations().contains_key(group::ATTEMPT));
    assert!(group::rendezvous_service(&f, &v).is_none());
    assert!(group::network_policy(&f, &v, &cfg).is_none());
}

#[test]
fn several_gpus_run_one_rank_each_in_one_pod() {
    let cfg = OperatorConfig::for_tests();
    let f = with_ranks(4, 1);
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let job = job(&f, &v, &cfg, &f.spec.base_model.uri);
    let env = env_of(&job);
    assert_eq!(env["TAILOR_NNODES"], "1");
    assert_eq!(env["TAILOR_NPROC_PER_NODE"], "4");
    assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
    assert_eq!(env["MASTER_PORT"], "29500");
    let spec = job.spec.as_ref().expect("spec");
    // One pod: the Job retries it as before, each retry a fresh process group.
    assert_eq!(spec.completion_mode, None);
    assert_eq!(spec.backoff_limit, Some(3));
    let limits = spec.template.spec.as_ref().expect("pod").containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"], Quantity("4".into()));
    assert!(group::rendezvous_service(&f, &v).is_none());
}

#[test]
fn several_nodes_are_an_indexed_job_behind_a_headless_service() {
    let mut cfg = OperatorConfig::for_tests();
    cfg.operator_namespace = "tailor-system".into();
    let f = with_ranks(1, 2);
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let job = job(&f, &v, &cfg, &f.spec.base_model.uri);
    let name = job.name_any();
    assert_eq!(name, v.job_name);
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    assert_eq!(
        spec.backoff_limit,
        Some(0),
        "a failed rank fails the attempt"
    );
    assert_eq!(job.annotations()[group::ATTEMPT], "1");
    let pod = spec.template.spec.as_ref().expect("pod");
    crate::pods::assert_hardened(pod);
    assert_eq!(pod.subdomain.as_deref(), Some(name.as_str()));
    let env = env_of(&job);
    assert_eq!(env["TAILOR_NNODES"], "2");
    assert_eq!(env["TAILOR_NPROC_PER_NODE"], "1");
    assert_eq!(env["MASTER_ADDR"], format!("{name}-0.{name}"));
    assert_eq!(env["MASTER_PORT"], "29500");
    assert!(
        !env.contains_key("TAILOR_NODE_RANK"),
        "the node rank is the pod's JOB_COMPLETION_INDEX"
    );
    let ports = pod.containers[0].ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("rendezvous") && p.container_port == 29500)
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(labels[JOB_LABEL], name);

    let svc = group::rendezvous_service(&f, &v).expect("service");
    assert_eq!(svc.metadata.name.as_deref(), Some(name.as_str()));
    let owner = &svc.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(owner.kind, "FineTuneJob");
    let s = svc.spec.as_ref().expect("spec");
    assert_eq!(s.cluster_ip.as_deref(), Some("None"));
    assert_eq!(s.publish_not_ready_addresses, Some(true));
    assert_eq!(
        s.selector.as_ref().expect("selector"),
        &BTreeMap::from([(JOB_LABEL.to_string(), name.clone())])
    );
    let port = &s.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("rendezvous"), 29500)
    );

    let np = group::network_policy(&f, &v, &cfg).expect("policy");
    let np = serde_json::to_value(&np).expect("json");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"][JOB_LABEL], name);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    let rules = np["spec"]["ingress"].as_array().expect("rules");
    assert_eq!(
        rules[0],
        json!({"from": [{"podSelector": {"matchLabels": {JOB_LABEL: name}}}]}),
        "the group's own pods, on any port"
    );
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "tailor-system"
    );
    assert_eq!(
        rules[1]["ports"],
        json!([{"port": 9090, "protocol": "TCP"}])
    );

    // Both ways of several ranks at once: two pods of four GPUs are eight ranks.
    let f8 = with_ranks(4, 2);
    let v8 = validate(&f8, &cfg, &ready_gate()).expect("valid");
    let env = env_of(&job_fn(&f8, &v8, &cfg));
    assert_eq!(
        (
            env["TAILOR_NNODES"].as_str(),
            env["TAILOR_NPROC_PER_NODE"].as_str()
        ),
        ("2", "4")
    );
    assert_ne!(v8.job_name, v.job_name);
}

fn job_fn(f: &FineTuneJob, v: &Validated, cfg: &OperatorConfig) -> Job {
    job(f, v, cfg, &f.spec.base_model.uri)
}

#[test]
fn a_groups_pods_have_dns_label_hostnames_and_its_service_a_dns_1035_name() {
    let cfg = OperatorConfig::for_tests();
    let mut f = with_ranks(1, 64);
    f.metadata.name = Some(format!("7.{}", "a".repeat(61)));
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    assert!(v.job_name.len() <= 60, "{}", v.job_name);
    assert!(!v.job_name.contains('.'), "{}", v.job_name);
    assert!(format!("{}-63", v.job_name).len() <= 63);
    let svc = group::service_name(&v.job_name);
    assert!(svc.starts_with('r') && svc.len() <= 63, "{svc}");
    let job = job_fn(&f, &v, &cfg);
    assert_eq!(
        env_of(&job)["MASTER_ADDR"],
        format!("{}-0.{svc}", v.job_name)
    );
}

fn failed_group(
    f: &FineTuneJob,
    cfg: &OperatorConfig,
    attempt: u32,
    reason: &str,
) -> (Job, JobState) {
    let v = validate(f, cfg, &ready_gate()).expect("valid");
    let job = group_attempt_job(f, &v, cfg, attempt);
    let state = JobState {
        failed: Some((
            reason.into(),
            "Job has reached the specified backoff limit".into(),
        )),
        failed_pods: 1,
        ..JobState::default()
    };
    (job, state)
}

fn group_attempt_job(f: &FineTuneJob, v: &Validated, cfg: &OperatorConfig, n: u32) -> Job {
    attempt_job(
        f,
        v,
        cfg,
        &f.spec.base_model.uri,
        Attempt {
            number: n,
            deadline_left: None,
        },
    )
}

#[test]
fn a_failed_group_restarts_whole_until_its_backoff_limit_is_spent() {
    let cfg = OperatorConfig::for_tests();
    let f = with_ranks(1, 2);
    assert_eq!(f.spec.backoff_limit, 3);
    for attempt in 1..=3 {
        let (job, state) = failed_group(&f, &cfg, attempt, "BackoffLimitExceeded");
        let why = group::restart(&f, &job, &state, Some("rank 1: connection reset by peer"))
            .unwrap_or_else(|| panic!("attempt {attempt} restarts"));
        assert!(
            why.contains("connection reset by peer")
                && why.contains(&format!("attempt {} of at most 4", attempt + 1)),
            "{why}"
        );
    }
    let (job, state) = failed_group(&f, &cfg, 4, "BackoffLimitExceeded");
    assert_eq!(group::restart(&f, &job, &state, None), None, "spent");
    let (job, state) = failed_group(&f, &cfg, 1, "DeadlineExceeded");
    assert_eq!(
        group::restart(&f, &job, &state, None),
        None,
        "the run's deadline"
    );
    // A one-pod Job is retried by the Job controller, never restarted by the operator.
    let one = ftj();
    let v = validate(&one, &cfg, &ready_gate()).expect("valid");
    let (_, state) = failed_group(&f, &cfg, 1, "BackoffLimitExceeded");
    assert_eq!(
        group::restart(&one, &job_fn(&one, &v, &cfg), &state, None),
        None
    );
}

#[test]
fn the_next_attempt_follows_status_and_gets_what_is_left_of_the_deadline() {
    let mut f = with_ranks(1, 2);
    assert_eq!(group::next_attempt(&f, now()), Attempt::first());
    f.spec.active_deadline_seconds = Some(600);
    f.status = Some(FineTuneJobStatus {
        attempts: 2,
        start_time: Some(Time(Timestamp::from_second(800).expect("valid"))),
        ..FineTuneJobStatus::default()
    });
    assert_eq!(
        group::next_attempt(&f, now()),
        Attempt {
            number: 3,
            deadline_left: Some(400)
        }
    );
    let cfg = OperatorConfig::for_tests();
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let job = attempt_job(
        &f,
        &v,
        &cfg,
        &f.spec.base_model.uri,
        group::next_attempt(&f, now()),
    );
    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.active_deadline_seconds, Some(400));
    assert_eq!(job.annotations()[group::ATTEMPT], "3");
    // Spent: the Job fails at once rather than running unbounded.
    assert_eq!(
        group::next_attempt(&f, Timestamp::from_second(5_000).expect("valid")).deadline_left,
        Some(1)
    );
}

#[test]
fn a_groups_status_counts_groups_shows_rank_zero_and_says_when_it_restarts() {
    let cfg = OperatorConfig::for_tests();
    let f = with_ranks(1, 2);
    let v = validate(&f, &cfg, &ready_gate()).expect("valid");
    let both = Observed {
        job: Some(JobState {
            active: 2,
            ..JobState::default()
        }),
        pod: Some(pod("Running", Some((true, "", "")))),
        pods_seen: 2,
        group_attempt: Some(1),
        ..Observed::default()
    };
    let st = status(&f, &ready_gate(), Some(&v), &both, now());
    assert_eq!(st.phase, P::Running);
    assert_eq!(st.attempts, 1, "two pods, one attempt");
    let ready = conditions::get(&st.conditions, READY).expect("c");
    assert!(
        ready.message.contains("rank 0 of the group of 2"),
        "{}",
        ready.message
    );

    let mut f2 = f.clone();
    f2.status = Some(st);
    let restarting = Observed {
        job: Some(JobState {
            failed: Some(("BackoffLimitExceeded".into(), "limit".into())),
            failed_pods: 1,
            ..JobState::default()
        }),
        group_attempt: Some(1),
        restarting: Some("attempt 1 of the group of 2 trainer pods failed".into()),
        ..Observed::default()
    };
    let st = status(&f2, &ready_gate(), Some(&v), &restarting, now());
    assert_eq!(st.phase, P::Running, "not Failed: the group restarts");
    let progressing = conditions::get(&st.conditions, PROGRESSING).expect("c");
    assert_eq!(progressing.reason, "Restarting");
    assert!(!conditions::is_true(&st.conditions, DEGRADED));
    assert_eq!(st.attempts, 1);

    // Attempt 2 is created but not scheduled yet: still one attempt; once scheduled, two.
    f2.status = Some(st);
    let created = Observed {
        job: Some(JobState::default()),
        pod: Some(pod("Pending", None)),
        group_attempt: Some(2),
        ..Observed::default()
    };
    let st = status(&f2, &ready_gate(), Some(&v), &created, now());
    assert_eq!(st.attempts, 1);
    let scheduled = Observed {
        pods_seen: 1,
        pod: Some(pod("Pending", Some((true, "", "")))),
        ..created
    };
    assert_eq!(
        status(&f2, &ready_gate(), Some(&v), &scheduled, now()).attempts,
        2
    );

    // Out of restarts: Failed, saying so.
    let out = Observed {
        restarting: None,
        group_attempt: Some(4),
        failure: Some("rank 1 exited".into()),
        ..restarting
    };
    let st = status(&f2, &ready_gate(), Some(&v), &out, now());
    assert_eq!(st.phase, P::Failed);
    let msg = &conditions::get(&st.conditions, READY).expect("c").message;
    assert!(
        msg.contains("rank 1 exited")
            && msg.contains("attempt 4")
            && msg.contains("backoffLimit of 3"),
        "{msg}"
    );
}

fn group_pod(
    index: u32,
    phase: &str,
    scheduled: Option<bool>,
    created: i64,
) -> k8s_openapi::api::core::v1::Pod {
    let mut p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("j-{index}-x{created}"), "annotations": {group::INDEX: index.to_string()},
            "creationTimestamp": format!("2024-01-01T00:00:{created:02}Z")},
        "status": {"phase": phase, "podIP": format!("10.0.0.{index}")}
    }))
    .expect("pod");
    if let Some(s) = scheduled {
        p.status.as_mut().expect("status").conditions = Some(vec![
            serde_json::from_value(json!({"type": "PodScheduled", "status": if s {"True"} else {"False"}, "reason": if s {""} else {"Unschedulable"}}))
                .expect("condition"),
        ]);
    }
    p
}

#[test]
fn status_shows_rank_zero_unless_a_rank_waits_for_a_node() {
    let r0 = group_pod(0, "Running", Some(true), 1);
    let r1 = group_pod(1, "Running", Some(true), 2);
    let shown = group::shown_pod(&[r1.clone(), r0.clone()]).expect("pod");
    assert_eq!(shown.name, "j-0-x1", "rank 0, though not the newest");
    assert!(group::reports(&r0) && !group::reports(&r1));
    let stuck = group_pod(1, "Pending", Some(false), 3);
    let shown = group::shown_pod(&[r0.clone(), stuck]).expect("pod");
    assert_eq!(shown.name, "j-1-x3");
    assert_eq!(shown.scheduled.as_ref().map(|s| s.0), Some(false));
    // A one-pod Job: the newest pod, as before.
    let mut lone = r1.clone();
    lone.metadata.annotations = None;
    let mut older = lone.clone();
    older.metadata.name = Some("older".into());
    older.metadata.creation_timestamp = r0.metadata.creation_timestamp.clone();
    assert_eq!(
        group::shown_pod(&[lone, older]).expect("pod").name,
        "j-1-x2"
    );
}
