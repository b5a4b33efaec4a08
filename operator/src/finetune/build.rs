//! Pure part of the FineTuneJob pipeline: the dataset gate, the train Job and its config, the
//! phase state machine (ValidatingData → Queued → Running → Succeeded | Failed | Cancelled), and
//! the LoraAdapter a successful run records.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tailor_api::conditions::{self, DATASET_READY, DEGRADED, PROGRESSING, READY, SCHEDULED};
use tailor_api::{
    Checkpoint, Dataset, DatasetPhase, DeletionPolicy, FineTuneJob, FineTuneJobPhase,
    FineTuneJobStatus, Lineage, LocalRef, LoraAdapter, LoraAdapterSpec, Progress,
};

use crate::artifacts;
use crate::config::OperatorConfig;
use crate::error::{Category, Error};
use crate::jobs::{
    self, CONFIG_DIR, JOB_LABEL, JobState, PodState, PodVolumes, SPEC_HASH, TERMINATION_PATH,
};

/// Label on the train Job, its ConfigMap and pods, and the LoraAdapter, naming the FineTuneJob.
pub const FTJ_LABEL: &str = "tailor.dev/finetunejob";
/// Annotation on the train Job with the [`run_spec_hash`] it was built for.
pub const RUN_SPEC: &str = "tailor.dev/run-spec";
/// Condition reason (and Event) when a spec change cancels the running attempt.
pub const SPEC_CHANGED: &str = "SpecChanged";
const CONFIG_KEY: &str = "train.json";

/// What the Dataset says about being trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetGate {
    Ready {
        content_hash: String,
        prepared_uri: String,
        validation_examples: u64,
    },
    Missing(String),
    NotReady(String),
}

pub fn dataset_gate(ftj: &FineTuneJob, ds: Option<&Dataset>) -> DatasetGate {
    let name = &ftj.spec.dataset_ref.name;
    let Some(ds) = ds else {
        return DatasetGate::Missing(format!(
            "Dataset {name:?} does not exist in {}; waiting for it",
            ftj.namespace().unwrap_or_default()
        ));
    };
    let st = ds.status.clone().unwrap_or_default();
    let current = st.observed_generation == ds.metadata.generation;
    match (st.phase, st.content_hash, st.prepared_uri) {
        (DatasetPhase::Ready, Some(content_hash), Some(prepared_uri))
            if current && conditions::is_true(&st.conditions, READY) =>
        {
            DatasetGate::Ready {
                content_hash,
                prepared_uri,
                validation_examples: st.stats.map_or(0, |s| s.validation),
            }
        }
        (phase, ..) => {
            let why = conditions::get(&st.conditions, READY)
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("phase {phase:?}"));
            DatasetGate::NotReady(format!("Dataset {name:?} is not Ready: {why}"))
        }
    }
}

/// What makes a run: the whole spec except `suspend` (suspending and resuming continue the
/// same run from its checkpoint; any other change makes a new run).
pub fn run_spec_hash(ftj: &FineTuneJob) -> String {
    let mut spec = serde_json::to_value(&ftj.spec).unwrap_or_default();
    if let Some(o) = spec.as_object_mut() {
        o.remove("suspend");
    }
    jobs::hash_json(&spec)[..16].to_string()
}

/// Whether `job` was built for another spec than the current one after its run started: the
/// attempt is then cancelled and a new run starts (see [`restart_status`]). Called only while
/// status has not recorded the run's end (see [`after_end`]), so this holds for a Job that
/// finished too: its spec was replaced before its outcome was recorded, and recording it
/// under the new spec would give the adapter a lineage it was not trained with. Jobs without
/// the [`RUN_SPEC`] annotation predate it and are left alone.
pub fn spec_changed_mid_run(ftj: &FineTuneJob, job: &Job, started: bool) -> bool {
    started
        && job
            .annotations()
            .get(RUN_SPEC)
            .is_some_and(|h| *h != run_spec_hash(ftj))
}

/// Where a run's outputs go: fixed by the job's identity and its [`run_spec_hash`], so retries,
/// a recreated Job and a suspended-then-resumed run continue from the same checkpoints, while
/// a new spec never resumes a checkpoint of another one.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub output_path: String,
    pub adapter_uri: String,
    pub adapter_name: String,
}

pub fn outputs(ftj: &FineTuneJob, cfg: &OperatorConfig) -> Outputs {
    let name = ftj.name_any();
    let uid: String = ftj.uid().unwrap_or_default().chars().take(8).collect();
    let run = run_spec_hash(ftj);
    // Relative to the namespace's area of the artifact volume (see crate::artifacts).
    let output_path = format!("finetune/{name}-{uid}-{}", &run[..8]);
    Outputs {
        adapter_uri: artifacts::pvc_uri(&cfg.artifacts_claim, &output_path),
        output_path,
        adapter_name: ftj.spec.output.adapter_name.clone().unwrap_or(name),
    }
}

/// The train Job's inputs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub hash: String,
    pub job_name: String,
    pub train_config: serde_json::Value,
    pub outputs: Outputs,
}

pub fn validate(
    ftj: &FineTuneJob,
    cfg: &OperatorConfig,
    gate: &DatasetGate,
) -> Result<Validated, Error> {
    crate::pods::check_template("spec.podTemplate", ftj.spec.pod_template.as_ref())
        .map_err(Error::InvalidSpec)?;
    let DatasetGate::Ready {
        prepared_uri,
        validation_examples,
        ..
    } = gate
    else {
        return Err(Error::InvalidSpec("dataset is not Ready".into()));
    };
    let ns = ftj.namespace().unwrap_or_default();
    let mut vols = PodVolumes::new(cfg, &ns, "unused", true);
    let base_path = vols
        .input(cfg, &ftj.spec.base_model.uri, true, base_credentials(ftj))
        .map_err(|e| Error::InvalidSpec(format!("spec.baseModel.uri: {e}")))?;
    let prepared_path = vols
        .add(cfg, prepared_uri, true)
        .map_err(|e| Error::InvalidSpec(format!("dataset preparedUri: {e}")))?;
    let outputs = outputs(ftj, cfg);
    let output = vols
        .add(cfg, &outputs.adapter_uri, true)
        .map_err(Error::InvalidSpec)?;
    let h = &ftj.spec.hyperparameters;
    let l = &ftj.spec.lora;
    let mut train_config = json!({
        "baseModel": base_path,
        "train": prepared_path.join("train.jsonl"),
        "output": output,
        "rank": l.rank,
        "alpha": l.alpha,
        "dropout": l.dropout,
        "targetModules": l.target_modules,
        "epochs": h.epochs,
        "learningRate": h.learning_rate,
        "batchSize": h.batch_size,
        "gradAccum": h.gradient_accumulation_steps,
        "maxSeqLength": h.max_seq_length,
        "warmupRatio": h.warmup_ratio,
        "scheduler": h.scheduler,
        "seed": h.seed,
        "checkpointEvery": ftj.spec.checkpoint_every_steps,
    });
    if *validation_examples > 0 {
        train_config["validation"] = json!(prepared_path.join("validation.jsonl"));
    }
    if let Some(name) = artifacts::recorded_base_name(&ftj.spec.base_model.uri) {
        train_config["baseModelName"] = json!(name);
    }
    let identity = json!({
        "runSpec": run_spec_hash(ftj),
        "trainConfig": train_config,
        "image": cfg.trainer_image,
        "resources": ftj.spec.resources,
        "nodeSelector": ftj.spec.node_selector,
        "tolerations": ftj.spec.tolerations,
        "priorityClassName": ftj.spec.priority_class_name,
        "backoffLimit": ftj.spec.backoff_limit,
        "activeDeadlineSeconds": ftj.spec.active_deadline_seconds,
    });
    let hash = jobs::hash_json(&identity)[..16].to_string();
    Ok(Validated {
        job_name: jobs::child_name(&ftj.name_any(), &format!("train-{}", &hash[..8])),
        hash,
        train_config,
        outputs,
    })
}

fn base_credentials(ftj: &FineTuneJob) -> Option<&str> {
    ftj.spec
        .base_model
        .credentials_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

fn meta(ftj: &FineTuneJob, name: &str, hash: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ftj.namespace(),
        labels: Some(jobs::managed_labels(FTJ_LABEL, &ftj.name_any())),
        annotations: Some(BTreeMap::from([(SPEC_HASH.to_string(), hash.to_string())])),
        owner_references: ftj.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Checks `spec.lora.targetModules` against the base model's family, from the `config.json`
/// the operator read (`None`: it cannot read the base model, e.g. another claim; the trainer
/// checks there). An unknown architecture or a module the family lacks is an invalid spec that
/// names what was found and what is allowed, before any pod starts.
pub fn check_family(ftj: &FineTuneJob, config_json: Option<&[u8]>) -> Result<(), Error> {
    let Some(bytes) = config_json else {
        return Ok(());
    };
    let uri = &ftj.spec.base_model.uri;
    let config: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::InvalidSpec(format!(
            "spec.baseModel.uri {uri}: config.json is not valid JSON: {e}"
        ))
    })?;
    let Some(architecture) = config["architectures"][0].as_str() else {
        return Err(Error::InvalidSpec(format!(
            "spec.baseModel.uri {uri}: config.json names no architectures"
        )));
    };
    let family = tailor_wire::families::Family::from_architecture(architecture)
        .map_err(|e| Error::InvalidSpec(format!("spec.baseModel.uri {uri}: {e}")))?;
    family
        .check_targets(&ftj.spec.lora.target_modules)
        .map_err(|e| Error::InvalidSpec(format!("spec.lora.targetModules: {e}")))
}

/// The trainer's mounted config. Owned by the FineTuneJob.
pub fn config_map(ftj: &FineTuneJob, v: &Validated) -> ConfigMap {
    ConfigMap {
        metadata: meta(ftj, &v.job_name, &v.hash),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            serde_json::to_string_pretty(&v.train_config).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    }
}

/// The train Job. Owned by the FineTuneJob; `suspend` follows the spec. `base_uri` is the
/// base model's URI as the pod fetches it (an `hf://` revision pinned to its commit, see
/// [`crate::inputs::pinned`]).
pub fn job(ftj: &FineTuneJob, v: &Validated, cfg: &OperatorConfig, base_uri: &str) -> Job {
    let ns = ftj.namespace().unwrap_or_default();
    let mut vols = PodVolumes::new(cfg, &ns, &v.job_name, true);
    // Validated: it resolves (a pinned URI the same way as the spec's).
    let _ = vols.input(cfg, base_uri, true, base_credentials(ftj));
    let mut limits = BTreeMap::new();
    let r = &ftj.spec.resources;
    if r.gpus > 0 {
        limits.insert(
            crate::pods::gpu_resource(r, cfg).to_string(),
            Quantity(r.gpus.to_string()),
        );
    }
    if let Some(c) = &r.cpu {
        limits.insert("cpu".to_string(), c.clone());
    }
    if let Some(m) = &r.memory {
        limits.insert("memory".to_string(), m.clone());
    }
    let mut labels = jobs::managed_labels(FTJ_LABEL, &ftj.name_any());
    labels.insert(JOB_LABEL.into(), v.job_name.clone());
    let port = cfg.progress_port;
    let mut metadata = meta(ftj, &v.job_name, &v.hash);
    if let Some(a) = metadata.annotations.as_mut() {
        a.insert(RUN_SPEC.to_string(), run_spec_hash(ftj));
    }
    let mut job = Job {
        metadata,
        spec: Some(JobSpec {
            suspend: Some(ftj.spec.suspend),
            backoff_limit: Some(ftj.spec.backoff_limit),
            active_deadline_seconds: ftj.spec.active_deadline_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(crate::pods::finish(
                    PodSpec {
                        restart_policy: Some("Never".into()),
                        node_selector: (!ftj.spec.node_selector.is_empty())
                            .then(|| ftj.spec.node_selector.clone()),
                        tolerations: (!ftj.spec.tolerations.is_empty())
                            .then(|| ftj.spec.tolerations.clone()),
                        priority_class_name: ftj.spec.priority_class_name.clone(),
                        containers: vec![Container {
                            name: "train".into(),
                            image: Some(cfg.trainer_image.clone()),
                            args: Some(vec![
                                "--log-format".into(),
                                "json".into(),
                                "train".into(),
                                "--config".into(),
                                format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                                // The pod IP is only known at run time: the kubelet expands it.
                                "--progress-listen".into(),
                                format!("$(POD_IP):{port}"),
                                "--termination-message-path".into(),
                                TERMINATION_PATH.into(),
                            ]),
                            env: Some(vec![EnvVar {
                                name: "POD_IP".into(),
                                value_from: Some(EnvVarSource {
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: "status.podIP".into(),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                            ports: Some(vec![ContainerPort {
                                name: Some("progress".into()),
                                container_port: i32::from(port),
                                ..Default::default()
                            }]),
                            resources: (!limits.is_empty()).then(|| ResourceRequirements {
                                limits: Some(limits.clone()),
                                requests: Some(limits),
                                ..Default::default()
                            }),
                            termination_message_path: Some(TERMINATION_PATH.into()),
                            volume_mounts: Some(vols.mounts),
                            ..Container::default()
                        }],
                        volumes: Some(vols.volumes),
                        init_containers: (!vols.fetches.is_empty()).then_some(vols.fetches),
                        ..PodSpec::default()
                    },
                    &cfg.default_resources,
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    if let Some(spec) = job.spec.as_mut() {
        crate::pods::customize(&mut spec.template, ftj.spec.pod_template.as_ref());
    }
    jobs::queue_for_kueue(&mut job, jobs::kueue_queue(&ftj.metadata));
    job
}

/// The trainer's `/progress`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TrainerProgress {
    pub phase: String,
    pub epoch: f64,
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub base_validation_loss: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub eta: Option<f64>,
}

/// The trainer's final summary (termination message, `metrics.json`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TrainSummary {
    pub status: String,
    pub message: Option<String>,
    pub base_validation_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: u64,
    pub tokens: Option<u64>,
    pub tokens_per_second: Option<f64>,
    pub resumed_from_step: Option<u64>,
}

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
}

fn progress_of(p: &TrainerProgress) -> Progress {
    Progress {
        epoch: p.epoch,
        step: p.step,
        total_steps: p.total_steps,
        train_loss: p.train_loss,
        validation_loss: p.validation_loss,
        tokens_per_second: p.tokens_per_second,
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
        (j.failed_pods + j.succeeded_pods).max(0) as u32 + u32::from(current)
    });
    // A trainer that resumed from a checkpoint is at least the second attempt, whether or not
    // the Job counted the pod that went away.
    let resumed = u32::from(
        obs.summary
            .as_ref()
            .is_some_and(|s| s.resumed_from_step.is_some()),
    ) * 2;
    st.attempts = prev
        .attempts
        .max(job_attempts)
        .max(obs.pods_seen)
        .max(resumed);

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
        (Some(j), _) if j.complete && obs.adapter.is_some() => {
            let name = obs.adapter.clone().unwrap_or_default();
            (
                P::Succeeded,
                "Succeeded".into(),
                format!("adapter recorded as LoraAdapter {name:?}"),
            )
        }
        (Some(j), _) if j.complete => (
            P::Running,
            "Recording".into(),
            "recording the adapter".into(),
        ),
        (Some(j), _) if j.failed.is_some() => {
            let (r, m) = j.failed.clone().unwrap_or_default();
            let msg = match &obs.failure {
                Some(f) => format!("{r}: {f}"),
                None => format!("{r}: {m}"),
            };
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
                format!("trainer pod {} is running", p.name),
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
    if phase == P::Succeeded {
        if let Some(s) = &obs.summary {
            st.validation_loss = s.validation_loss;
            if s.base_validation_loss.is_some() {
                st.base_validation_loss = s.base_validation_loss;
            }
            st.trained_tokens = s.tokens;
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
                    tokens_per_second: s.tokens_per_second,
                    eta_seconds: Some(0.0),
                });
            }
        }
        st.adapter_ref = obs.adapter.clone().map(|name| LocalRef { name });
    }
    st.phase = phase;
    let progressing = matches!(
        phase,
        P::ValidatingData | P::Queued | P::Running | P::Pending
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

/// The LoraAdapter a successful run records; not owned by the job, so it outlives it.
pub fn adapter(ftj: &FineTuneJob, outputs: &Outputs, artifact: &AdapterArtifact) -> LoraAdapter {
    let mut la = LoraAdapter::new(
        &outputs.adapter_name,
        LoraAdapterSpec {
            base_model: ftj.spec.base_model.clone(),
            uri: outputs.adapter_uri.clone(),
            rank: ftj.spec.lora.rank,
            alpha: ftj.spec.lora.alpha,
            target_modules: ftj.spec.lora.target_modules.clone(),
            sha256: Some(artifact.sha256.clone()),
            size_bytes: Some(artifact.size_bytes),
            source_job: Some(ftj.name_any()),
            deletion_policy: DeletionPolicy::Retain,
        },
    );
    la.metadata.namespace = ftj.namespace();
    la.metadata.labels = Some(jobs::managed_labels(FTJ_LABEL, &ftj.name_any()));
    la
}

/// The lineage of the adapter a FineTuneJob produced, from what the operator recorded in the
/// job's status when the run succeeded (and its frozen spec): `None` until then. This, not
/// anything on the LoraAdapter a user could edit, is what its status and the rollout gate trust.
pub fn lineage(ftj: &FineTuneJob, cfg: &OperatorConfig, adapter: &LoraAdapter) -> Option<Lineage> {
    let st = ftj.status.as_ref()?;
    let recorded = st.phase == FineTuneJobPhase::Succeeded
        && st.adapter_ref.as_ref().map(|r| r.name.as_str()) == Some(adapter.name_any().as_str())
        && outputs(ftj, cfg).adapter_uri == adapter.spec.uri
        && ftj.namespace() == adapter.namespace();
    recorded.then(|| Lineage {
        dataset: Some(ftj.spec.dataset_ref.name.clone()),
        dataset_content_hash: st.dataset_content_hash.clone(),
        base_model_revision: st.base_model_revision.clone(),
        hyperparameters: Some(ftj.spec.hyperparameters.clone()),
        base_validation_loss: st.base_validation_loss,
        validation_loss: st.validation_loss,
        trained_tokens: st.trained_tokens,
    })
}

#[cfg(test)]
mod tests;
