//! Pure part of the FineTuneJob pipeline: the dataset gate, the train Job and its config, the
//! phase state machine (ValidatingData → Queued → Running → Succeeded | Failed | Cancelled), and
//! the LoraAdapter a successful run records.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, KeyToPath, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tailor_api::conditions::{
    self, DATASET_READY, DEGRADED, EVALUATED, PROGRESSING, READY, SCHEDULED,
};
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
/// The trainer's config, its `/progress` and its final summary (termination message,
/// `metrics.json`): one definition, shared with the trainer.
pub use tailor_wire::eval::{EvaluateConfig, Evaluation as EvaluationReport, JudgeConfig};
pub use tailor_wire::train::{
    Outcome, Progress as TrainerProgress, Summary as TrainSummary, TrainConfig,
};

pub const FTJ_LABEL: &str = "tailor.dev/finetunejob";
/// Annotation on the train Job with the [`run_spec_hash`] it was built for.
pub const RUN_SPEC: &str = "tailor.dev/run-spec";
/// Condition reason (and Event) when a spec change cancels the running attempt.
pub const SPEC_CHANGED: &str = "SpecChanged";
const CONFIG_KEY: &str = "train.json";
const EVALUATE_KEY: &str = "evaluate.json";

/// What the Dataset says about being trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetGate {
    Ready {
        content_hash: String,
        prepared_uri: String,
        validation_examples: u64,
        test_examples: u64,
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
                validation_examples: st.stats.as_ref().map_or(0, |s| s.validation),
                test_examples: st.stats.as_ref().map_or(0, |s| s.test),
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
    // Relative to the namespace's area of the artifact store or volume (see crate::stored).
    let output_path = format!("finetune/{name}-{uid}-{}", &run[..8]);
    Outputs {
        adapter_uri: crate::stored::output_uri(
            cfg,
            &ftj.namespace().unwrap_or_default(),
            &output_path,
        ),
        output_path,
        adapter_name: ftj.spec.output.adapter_name.clone().unwrap_or(name),
    }
}

/// The train Job's inputs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub hash: String,
    pub job_name: String,
    pub train_config: TrainConfig,
    pub outputs: Outputs,
    /// The Dataset's prepared data.
    pub prepared_uri: String,
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
        test_examples,
        ..
    } = gate
    else {
        return Err(Error::InvalidSpec("dataset is not Ready".into()));
    };
    if ftj.spec.evaluation.is_some() && *test_examples == 0 {
        return Err(Error::InvalidSpec(format!(
            "spec.evaluation needs a test split, and Dataset {:?} has no test examples: set its spec.preparation.split.test (a fraction such as 0.1)",
            ftj.spec.dataset_ref.name
        )));
    }
    let ns = ftj.namespace().unwrap_or_default();
    let mut vols = PodVolumes::new(&ns, "unused", true);
    let base_path = vols
        .input(cfg, &ftj.spec.base_model.uri, true, base_credentials(ftj))
        .map_err(|e| Error::InvalidSpec(format!("spec.baseModel.uri: {e}")))?;
    let prepared_path = vols
        .own(cfg, prepared_uri, true)
        .map_err(|e| Error::InvalidSpec(format!("dataset preparedUri: {e}")))?;
    let outputs = outputs(ftj, cfg);
    let output = vols
        .own(cfg, &outputs.adapter_uri, true)
        .map_err(Error::InvalidSpec)?;
    let h = &ftj.spec.hyperparameters;
    let l = &ftj.spec.lora;
    let train_config = TrainConfig {
        validation: (*validation_examples > 0).then(|| prepared_path.join("validation.jsonl")),
        rank: l.rank.into(),
        alpha: l.alpha,
        dropout: l.dropout,
        target_modules: l.target_modules.clone(),
        epochs: h.epochs as usize,
        learning_rate: h.learning_rate,
        batch_size: h.batch_size as usize,
        grad_accum: h.gradient_accumulation_steps as usize,
        max_seq_length: h.max_seq_length as usize,
        warmup_ratio: h.warmup_ratio,
        scheduler: h.scheduler,
        seed: h.seed,
        gradient_checkpointing: h.gradient_checkpointing,
        checkpoint_every: ftj.spec.checkpoint_every_steps as usize,
        base_model_name: artifacts::recorded_base_name(&ftj.spec.base_model.uri),
        ..TrainConfig::new(base_path, prepared_path.join("train.jsonl"), output)
    };
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
        job_name: group::job_name(ftj, &format!("train-{}", &hash[..8])),
        hash,
        train_config,
        outputs,
        prepared_uri: prepared_uri.clone(),
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
    json_config_map(ftj, &v.job_name, &v.hash, CONFIG_KEY, &v.train_config)
}

/// A ConfigMap `name` holding `value` as pretty JSON under `key` (what a trainer pod mounts).
fn json_config_map<T: serde::Serialize>(
    ftj: &FineTuneJob,
    name: &str,
    hash: &str,
    key: &str,
    value: &T,
) -> ConfigMap {
    ConfigMap {
        metadata: meta(ftj, name, hash),
        data: Some(BTreeMap::from([(
            key.to_string(),
            serde_json::to_string_pretty(value).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    }
}

/// The train Job of a run's first attempt (see [`attempt_job`]).
pub fn job(ftj: &FineTuneJob, v: &Validated, cfg: &OperatorConfig, base_uri: &str) -> Job {
    attempt_job(ftj, v, cfg, base_uri, Attempt::first())
}

/// The train Job. Owned by the FineTuneJob; `suspend` follows the spec. `base_uri` is the
/// base model's URI as the pod fetches it (an `hf://` revision pinned to its commit, see
/// [`crate::inputs::pinned`]). Several ranks get the trainer's distributed environment; several
/// pods are an Indexed Job of the group's `attempt` (see [`group`]).
pub fn attempt_job(
    ftj: &FineTuneJob,
    v: &Validated,
    cfg: &OperatorConfig,
    base_uri: &str,
    attempt: Attempt,
) -> Job {
    let port = cfg.progress_port;
    let ranks = group::ranks(ftj);
    let mut env = vec![crate::pods::pod_ip_env()];
    env.extend(group::rank_env(ranks, &v.job_name));
    let mut ports = vec![ContainerPort {
        name: Some("progress".into()),
        container_port: i32::from(port),
        ..Default::default()
    }];
    if ranks.multi_node() {
        ports.push(ContainerPort {
            name: Some("rendezvous".into()),
            container_port: i32::from(group::RENDEZVOUS_PORT),
            ..Default::default()
        });
    }
    let container = Container {
        name: "train".into(),
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
        env: Some(env),
        ports: Some(ports),
        ..Container::default()
    };
    let spec = JobSpec {
        suspend: Some(ftj.spec.suspend),
        active_deadline_seconds: ftj.spec.active_deadline_seconds,
        ..JobSpec::default()
    };
    let step = Step {
        name: &v.job_name,
        hash: &v.hash,
        container,
        extra: vec![],
        spec,
        own: [&v.prepared_uri, &v.outputs.adapter_uri],
    };
    let mut job = trainer_job(ftj, cfg, base_uri, step);
    group::shape_group(&mut job, ranks, attempt);
    job
}

/// One step of a run as a Job of the trainer image (train, evaluate).
struct Step<'a> {
    /// The Job's name, also its config ConfigMap's.
    name: &'a str,
    hash: &'a str,
    /// Its image, resources, mounts and termination path are filled in.
    container: Container,
    /// Volumes mounted read-only at their mount paths.
    extra: Vec<(Volume, VolumeMount)>,
    /// The step's Job settings (suspend, deadline), which Kueue's queueing then adjusts.
    spec: JobSpec,
    /// The run's own artifacts (prepared data, output): mounted, or in the artifact store with
    /// the namespace's store Secret.
    own: [&'a str; 2],
}

/// A step's Job on the run's resources, placement and volumes (the base model, the artifact
/// area, the config ConfigMap).
fn trainer_job(ftj: &FineTuneJob, cfg: &OperatorConfig, base_uri: &str, step: Step<'_>) -> Job {
    let Step {
        name,
        hash,
        mut container,
        extra,
        spec,
        own,
    } = step;
    let ns = ftj.namespace().unwrap_or_default();
    let mut vols = PodVolumes::new(&ns, name, true);
    // Validated: these resolve (a pinned URI the same way as the spec's).
    let _ = vols.input(cfg, base_uri, true, base_credentials(ftj));
    for uri in own {
        let _ = vols.own(cfg, uri, true);
    }
    for (v, m) in extra {
        vols.volumes.push(v);
        vols.mounts.push(m);
    }
    let mut limits = BTreeMap::new();
    let r = &ftj.spec.resources.per_pod();
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
    labels.insert(JOB_LABEL.into(), name.to_string());
    let mut metadata = meta(ftj, name, hash);
    if let Some(a) = metadata.annotations.as_mut() {
        a.insert(RUN_SPEC.to_string(), run_spec_hash(ftj));
    }
    container.image = Some(cfg.trainer_image.clone());
    container.resources = (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits.clone()),
        requests: Some(limits),
        ..Default::default()
    });
    container.termination_message_path = Some(TERMINATION_PATH.into());
    container.env_from = vols.store_env();
    container.volume_mounts = Some(vols.mounts);
    let mut job = Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(ftj.spec.backoff_limit),
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
                        containers: vec![container],
                        volumes: Some(vols.volumes),
                        init_containers: (!vols.fetches.is_empty()).then_some(vols.fetches),
                        ..PodSpec::default()
                    },
                    &cfg.default_resources,
                )),
            },
            ..spec
        }),
        status: None,
    };
    if let Some(spec) = job.spec.as_mut() {
        crate::pods::customize(&mut spec.template, ftj.spec.pod_template.as_ref());
    }
    jobs::queue_for_kueue(&mut job, jobs::kueue_queue(&ftj.metadata));
    job
}

/// The evaluate Job of the run whose train Job is `train_job` (same hash, `eval` for `train`).
pub fn evaluate_job_name(train_job: &str) -> String {
    match train_job.rsplit_once("-train-") {
        Some((base, hash)) => format!("{base}-eval-{hash}"),
        None => jobs::child_name(train_job, "eval"),
    }
}

/// Where the judge's API key and prompt template are mounted in the evaluate pod.
const JUDGE_DIR: &str = "/var/run/tailor/judge";

/// The evaluate step's config (`spec.evaluation` set): the run's base model, adapter and the
/// Dataset's test split at the paths the train pod used, the report next to the adapter.
/// `judge_url` is the judge's base URL: `spec.evaluation.judge.endpoint`, or the endpoint of
/// its ModelDeployment as the caller read it.
pub fn evaluate_config(
    ftj: &FineTuneJob,
    v: &Validated,
    judge_url: Option<&str>,
) -> Option<EvaluateConfig> {
    let e = ftj.spec.evaluation.as_ref()?;
    let t = &v.train_config;
    let prepared = t.train.parent().map(Path::to_path_buf).unwrap_or_default();
    let judge = match (&e.judge, judge_url) {
        (Some(j), Some(url)) => Some(JudgeConfig {
            url: url.to_string(),
            model: j.model.clone(),
            api_key_file: j
                .api_key_secret_ref
                .as_ref()
                .map(|_| PathBuf::from(format!("{JUDGE_DIR}/key/api-key"))),
            prompt_file: j
                .prompt_config_map_ref
                .as_ref()
                .map(|_| PathBuf::from(format!("{JUDGE_DIR}/prompt/prompt.j2"))),
            timeout_seconds: 60,
            max_attempts: 3,
            concurrency: j.concurrency as usize,
            structured_outputs: j.structured_outputs,
        }),
        _ => None,
    };
    Some(EvaluateConfig {
        base_model: t.base_model.clone(),
        adapter: t.output.clone(),
        test: prepared.join("test.jsonl"),
        // An output in the store: the report is the termination message alone.
        output: tailor_artifacts::ArtifactUri::parse(&v.outputs.adapter_uri)
            .is_ok_and(|u| u.is_local())
            .then(|| t.output.join("evaluation")),
        max_examples: Some(e.max_examples as usize),
        decoding: e.decoding.clone().unwrap_or_default(),
        judge,
        samples: 5,
        max_seq_length: t.max_seq_length,
        batch_size: t.batch_size,
        termination_message_path: None,
        threads: None,
        device: t.device.clone(),
        work_dir: None,
        artifact_cache: None,
        dump_batches: None,
    })
}

/// The evaluate step's mounted config (same name as its Job).
pub fn evaluate_config_map(
    ftj: &FineTuneJob,
    name: &str,
    hash: &str,
    e: &EvaluateConfig,
) -> ConfigMap {
    json_config_map(ftj, name, hash, EVALUATE_KEY, e)
}

/// One key of the judge's Secret (`secret`) or ConfigMap, as `file` in `<JUDGE_DIR>/<dir>`.
fn judge_file(
    volume: &str,
    dir: &str,
    key: &tailor_api::KeyRef,
    file: &str,
    secret: bool,
) -> (Volume, VolumeMount) {
    let items = Some(vec![KeyToPath {
        key: key.key.clone(),
        path: file.into(),
        ..Default::default()
    }]);
    let mut v = Volume {
        name: volume.into(),
        ..Default::default()
    };
    if secret {
        v.secret = Some(SecretVolumeSource {
            secret_name: Some(key.name.clone()),
            items,
            ..Default::default()
        });
    } else {
        v.config_map = Some(ConfigMapVolumeSource {
            name: key.name.clone(),
            items,
            ..Default::default()
        });
    }
    let m = VolumeMount {
        name: volume.into(),
        mount_path: format!("{JUDGE_DIR}/{dir}"),
        read_only: Some(true),
        ..Default::default()
    };
    (v, m)
}

/// The evaluate Job: `tailor-trainer evaluate` on the run's resources (the models it compares
/// are as large as the one trained), the judge's key and prompt mounted from their Secret and
/// ConfigMap. Not suspended with the job: it runs once the adapter exists.
pub fn evaluate_job(
    ftj: &FineTuneJob,
    name: &str,
    v: &Validated,
    cfg: &OperatorConfig,
    base_uri: &str,
) -> Job {
    let judge = ftj.spec.evaluation.as_ref().and_then(|e| e.judge.as_ref());
    let mut extra = vec![];
    if let Some(k) = judge.and_then(|j| j.api_key_secret_ref.as_ref()) {
        extra.push(judge_file("judge-key", "key", k, "api-key", true));
    }
    if let Some(p) = judge.and_then(|j| j.prompt_config_map_ref.as_ref()) {
        extra.push(judge_file("judge-prompt", "prompt", p, "prompt.j2", false));
    }
    let container = Container {
        name: "evaluate".into(),
        args: Some(vec![
            "--log-format".into(),
            "json".into(),
            "evaluate".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{EVALUATE_KEY}"),
            "--termination-message-path".into(),
            TERMINATION_PATH.into(),
        ]),
        ..Container::default()
    };
    let step = Step {
        name,
        hash: &v.hash,
        container,
        extra,
        spec: JobSpec::default(),
        own: [&v.prepared_uri, &v.outputs.adapter_uri],
    };
    trainer_job(ftj, cfg, base_uri, step)
}

/// The LoraAdapter a successful run records; not owned by the job, so it outlives it. An
/// adapter in the artifact store is read with the namespace's store Secret.
pub fn adapter(
    ftj: &FineTuneJob,
    outputs: &Outputs,
    artifact: &AdapterArtifact,
    cfg: &OperatorConfig,
) -> LoraAdapter {
    let ns = ftj.namespace().unwrap_or_default();
    let mut la = LoraAdapter::new(
        &outputs.adapter_name,
        LoraAdapterSpec {
            base_model: ftj.spec.base_model.clone(),
            uri: outputs.adapter_uri.clone(),
            credentials_secret_ref: crate::stored::store_secret(cfg, &ns, &outputs.adapter_uri)
                .map(|name| tailor_api::LocalRef {
                    name: name.to_string(),
                }),
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
        evaluation: st.evaluation.clone(),
    })
}

mod status;
pub use status::*;

pub mod group;
pub use group::{Attempt, Ranks};

#[cfg(test)]
mod tests;
