//! `FineTuneJob`: trains a LoRA adapter on a Dataset, on GPUs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::common::{LocalRef, ModelRef, Resources};

/// A LoRA fine-tuning run. Until it ends, a changed spec (anything but `suspend`) cancels the
/// running attempt and starts a new run for the new spec; `suspend` pauses and resumes the same
/// run. After `Failed`, a changed spec starts a new run. After `Succeeded` the spec is frozen,
/// `suspend` aside, because the LoraAdapter's lineage records it: create a new FineTuneJob for
/// another run (as hosted fine-tuning APIs do).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tailor.dev",
    version = "v1alpha1",
    kind = "FineTuneJob",
    doc = "A LoRA fine-tuning run of a base model on a Ready Dataset. It trains in a Job and records the adapter it produced as a LoraAdapter, with lineage.",
    namespaced,
    status = "FineTuneJobStatus",
    validation = Rule::new(spec_frozen_after_success_rule())
        .message(SPEC_FROZEN_MESSAGE)
        .field_path(".spec")
        .reason(Reason::FieldValueForbidden),
    shortname = "ftj",
    category = "tailor",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.progress.step"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.progress.totalSteps"}"#,
    printcolumn = r#"{"name":"Train-Loss","type":"number","jsonPath":".status.progress.trainLoss"}"#,
    printcolumn = r#"{"name":"Val-Loss","type":"number","jsonPath":".status.validationLoss"}"#,
    printcolumn = r#"{"name":"Win-Rate","type":"number","jsonPath":".status.evaluation.judge.winRate","priority":1}"#,
    printcolumn = r#"{"name":"Adapter","type":"string","jsonPath":".status.adapterRef.name","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneJobSpec {
    /// The model to adapt: a Hugging Face checkpoint of the Llama family.
    pub base_model: ModelRef,
    /// The Dataset (same namespace) to train on; the job waits until it is Ready.
    pub dataset_ref: LocalRef,
    /// Fine-tuning method.
    #[serde(default)]
    pub method: Method,
    /// LoRA settings, with PEFT's meaning.
    #[serde(default)]
    pub lora: LoraConfig,
    /// Optimisation settings.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// Compute per trainer pod, and how many pods train together: each GPU of a pod runs one
    /// data-parallel rank, `nodes` pods run as one group, and `hyperparameters.batchSize` is per
    /// rank.
    #[serde(default)]
    pub resources: TrainingResources,
    /// Node labels the trainer pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for tainted (e.g. GPU) nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Hold the job (Kueue-style): no pod runs while true; a running pod is stopped and resumes
    /// from its checkpoint when unsuspended.
    #[serde(default)]
    pub suspend: bool,
    /// Retries of a failed trainer pod (of the whole group of pods, with `resources.nodes`
    /// above 1); each retry resumes from the last checkpoint.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,
    /// Wall-clock limit for the whole run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Save a resumable checkpoint every this many optimizer steps.
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1, max = 1000000))]
    pub checkpoint_every_steps: u32,
    /// What to call the result.
    #[serde(default)]
    pub output: Output,
    /// Additions to the trainer pod (service account, registries, placement, runtime class);
    /// its fields are added to the operator's pod, whose
    /// own names, keys and paths win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<crate::PodTemplate>,
    /// Evaluate the adapter against its base model on the Dataset's test split before the job
    /// Succeeds (its own Job on the same resources): test loss and perplexity, exact match and
    /// token F1, and with a judge an order-swapped win rate. The results go to status and to
    /// the LoraAdapter's lineage, where a ModelDeployment's `rollout.gate` reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
}

/// The compute of a run: what each trainer pod asks for, and how many pods train together.
/// Every GPU of a pod runs one data-parallel rank (one rank on CPU), and `nodes` pods train as
/// one group, so a run has `max(gpus, 1) × nodes` ranks. `hyperparameters.batchSize` is per
/// rank: an optimizer step sees `batchSize × ranks × gradientAccumulationSteps` examples.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingResources {
    /// GPUs per trainer pod, one rank on each (0 runs one rank on CPU).
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus: u32,
    /// The extended resource a GPU is requested as, e.g. `nvidia.com/mig-1g.10gb` for a MIG
    /// profile or `amd.com/gpu`. Unset: the operator config's `gpuResourceName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(
            pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
        ),
        length(max = 253)
    )]
    pub gpu_resource: Option<String>,
    /// CPU request (and limit) per trainer pod, e.g. `4` or `500m`. Unset: no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request (and limit) per trainer pod, e.g. `32Gi`. Unset: no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Trainer pods that train together (multi-node data parallelism): an Indexed Job of this
    /// many pods that meet over a headless Service, as JobSet and Kubeflow Trainer run them.
    /// Rank 0 (the pod of index 0) writes checkpoints, the adapter and the progress; every
    /// rank resumes from the last checkpoint. A failed pod fails the whole group's attempt, and
    /// the group restarts as fresh pods from the last checkpoint (up to `backoffLimit` times).
    #[serde(default = "one_node", skip_serializing_if = "is_one_node")]
    #[schemars(range(min = 1, max = 64), extend("default" = 1))]
    pub nodes: u32,
}

fn default_gpus() -> u32 {
    1
}
fn one_node() -> u32 {
    1
}
// A run of one node serializes (and hashes) as before `nodes` existed.
fn is_one_node(n: &u32) -> bool {
    *n == 1
}

impl Default for TrainingResources {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_resource: None,
            cpu: None,
            memory: None,
            nodes: one_node(),
        }
    }
}

impl TrainingResources {
    /// What each trainer pod asks for.
    pub fn per_pod(&self) -> Resources {
        Resources {
            gpus: self.gpus,
            gpu_resource: self.gpu_resource.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
        }
    }
}

/// The evaluate step of a FineTuneJob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// An LLM that compares the base model's and the adapter's answers (each pair twice, the
    /// order swapped). Without one, only loss, exact match and F1 are measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    /// Evaluate at most this many test examples.
    #[serde(default = "default_max_examples")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_examples: u32,
    /// Decoding of both models' answers (greedy by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<tailor_wire::eval::Decoding>,
}

fn default_max_examples() -> u32 {
    200
}

/// The judge: an OpenAI-compatible chat endpoint, outside the cluster or a ModelDeployment in
/// the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.endpoint) != has(self.modelDeploymentRef)").message("set exactly one of judge.endpoint and judge.modelDeploymentRef"))]
pub struct Judge {
    /// Base URL of an OpenAI-compatible API (`https://api.example.com/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// A ModelDeployment (same namespace) whose endpoint judges, e.g. one serving a bigger
    /// model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_deployment_ref: Option<LocalRef>,
    /// The model name sent to the judge.
    #[schemars(length(min = 1))]
    pub model: String,
    /// A Secret key holding the judge's API key (sent as a bearer token; never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<crate::common::KeyRef>,
    /// A ConfigMap key holding a minijinja template that replaces the default judge prompt
    /// (variables `question`, `reference`, `answer_a`, `answer_b`; the reply must be JSON with
    /// `winner`: "A", "B" or "tie").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_config_map_ref: Option<crate::common::KeyRef>,
    /// Judgements in flight at once.
    #[serde(default = "default_judge_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: u32,
    /// Constrain the judge's reply to exactly one verdict through vLLM's structured outputs
    /// (`structured_outputs: {"choice": [...]}`; tailor-server and vLLM >= 0.12): for a judge too
    /// small to follow the JSON instruction. The verdicts then carry no reason. Leave it off
    /// for APIs without the extension (OpenAI refuses the field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub structured_outputs: bool,
}

fn default_judge_concurrency() -> u32 {
    4
}

/// The spec fields that make a run: all but `suspend`. A Succeeded job's are frozen (see
/// [`spec_frozen_after_success_rule`]).
pub const RUN_SPEC_FIELDS: [&str; 15] = [
    "baseModel",
    "datasetRef",
    "method",
    "lora",
    "hyperparameters",
    "resources",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "backoffLimit",
    "activeDeadlineSeconds",
    "checkpointEverySteps",
    "output",
    "podTemplate",
    "evaluation",
];

/// Why an update of a Succeeded job's spec is refused.
pub const SPEC_FROZEN_MESSAGE: &str = "this FineTuneJob has Succeeded and its LoraAdapter's lineage records this spec, so only spec.suspend may change; create a new FineTuneJob (with another name) for a new run";

/// The CEL transition rule on the FineTuneJob root: once `status.phase` is `Succeeded`, every
/// field of [`RUN_SPEC_FIELDS`] keeps its value (present or absent alike). Status writes keep
/// the spec, so they always pass.
pub fn spec_frozen_after_success_rule() -> String {
    let same: Vec<String> = RUN_SPEC_FIELDS
        .iter()
        .map(|f| {
            format!(
                "(has(self.spec.{f}) ? has(oldSelf.spec.{f}) && self.spec.{f} == oldSelf.spec.{f} : !has(oldSelf.spec.{f}))"
            )
        })
        .collect();
    format!(
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase != 'Succeeded' || ({})",
        same.join(" && ")
    )
}

fn default_backoff_limit() -> i32 {
    3
}
fn default_checkpoint_every() -> u32 {
    50
}

/// Fine-tuning method.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    /// Low-rank adapters on the target modules; the base model stays frozen.
    #[default]
    Lora,
}

/// LoRA settings (PEFT semantics: scaling = alpha / rank, dropout on the input of A).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoraConfig {
    /// Rank r of the update B·A.
    #[serde(default = "default_rank")]
    #[schemars(range(min = 1, max = 1024))]
    pub rank: u32,
    /// Alpha; the update is scaled by alpha / rank.
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.0, max = 100000.0))]
    #[x_kube(validation = Rule::new("self > 0.0").message("alpha must be greater than 0"))]
    pub alpha: f64,
    /// Dropout probability on the LoRA input path during training.
    #[serde(default = "default_dropout")]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub dropout: f64,
    /// Module names (as in the checkpoint, e.g. `q_proj`, `down_proj`; `qkv_proj` and
    /// `gate_up_proj` in Phi-3/Phi-4) that get adapters, or `all-linear`. Which names a base
    /// model has depends on its family: the operator checks them against the base model's
    /// `config.json` before training.
    #[serde(default = "default_target_modules")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(m, m in ['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj','qkv_proj','gate_up_proj','all-linear'])").message("targetModules may only name q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, qkv_proj, gate_up_proj or all-linear"))]
    pub target_modules: Vec<String>,
}

fn default_rank() -> u32 {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_dropout() -> f64 {
    0.05
}
fn default_target_modules() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: default_dropout(),
            target_modules: default_target_modules(),
        }
    }
}

/// Learning-rate schedule after warmup (the trainer reads the same type).
pub use tailor_wire::train::Scheduler;

/// Optimisation settings (AdamW).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hyperparameters {
    /// Passes over the train split.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 1000))]
    pub epochs: u32,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    #[schemars(range(max = 1.0))]
    #[x_kube(validation = Rule::new("self > 0.0").message("learningRate must be greater than 0"))]
    pub learning_rate: f64,
    /// Examples per micro-batch of each rank (per GPU; see `resources`): a micro-batch of the
    /// whole run is this times the number of ranks.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: u32,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 4096))]
    pub gradient_accumulation_steps: u32,
    /// Examples are truncated to this many tokens.
    #[serde(default = "default_seq")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_seq_length: u32,
    /// Fraction of steps spent warming the learning rate up linearly from 0.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub warmup_ratio: f64,
    /// Schedule after warmup.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Seed for adapter initialisation, data order and dropout.
    #[serde(default = "default_seed")]
    #[schemars(range(min = 0))]
    pub seed: u64,
    /// Gradient checkpointing: the forward pass keeps only each decoder layer's input, and
    /// backward recomputes one layer at a time. Activation memory falls from every layer's to
    /// about one layer's, for one more forward pass per step; losses and the adapter are the
    /// same. For long sequences or large batches that would not fit the GPU otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub gradient_checkpointing: bool,
}

fn default_epochs() -> u32 {
    3
}
fn default_lr() -> f64 {
    2e-4
}
fn default_batch() -> u32 {
    4
}
fn one() -> u32 {
    1
}
fn default_seq() -> u32 {
    1024
}
fn default_warmup() -> f64 {
    0.03
}
fn default_seed() -> u64 {
    42
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            learning_rate: default_lr(),
            batch_size: default_batch(),
            gradient_accumulation_steps: one(),
            max_seq_length: default_seq(),
            warmup_ratio: default_warmup(),
            scheduler: Scheduler::default(),
            seed: default_seed(),
            gradient_checkpointing: false,
        }
    }
}

/// What the job produces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Name of the LoraAdapter to create. Default: the job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub adapter_name: Option<String>,
}

/// The OpenAI fine-tuning lifecycle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FineTuneJobPhase {
    /// Not looked at yet.
    #[default]
    Pending,
    /// Waiting for the Dataset to be Ready.
    ValidatingData,
    /// The trainer Job exists but its pod is not scheduled (or the job is suspended).
    Queued,
    /// Training.
    Running,
    /// The adapter is recorded; `spec.evaluation` runs on the test split.
    Evaluating,
    /// The adapter was produced and recorded (and evaluated, with `spec.evaluation`).
    Succeeded,
    /// Training failed after all retries; see conditions.
    Failed,
    /// Stopped by the user (deleted or suspended mid-run).
    Cancelled,
}

/// Observed state of a fine-tuning run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneJobStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: FineTuneJobPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, DatasetReady, Scheduled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Live training progress, refreshed while Running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Validation loss of the untouched base model, measured before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_validation_loss: Option<f64>,
    /// Validation loss of the final adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Attempts started so far: trainer pods, or groups of them with `resources.nodes` above 1
    /// (a retry resumes from the last checkpoint).
    #[serde(default)]
    pub attempts: u32,
    /// Most recent resumable checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<Checkpoint>,
    /// The LoraAdapter this job produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_ref: Option<crate::common::LocalRef>,
    /// Name of the trainer Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Content hash of the Dataset trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_content_hash: Option<String>,
    /// The Hugging Face Hub commit the base model is fetched at, for an `hf://` base model: a
    /// branch or tag (or none: `main`) is resolved once, when the run's Job is made, so every
    /// attempt of the run trains on the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_revision: Option<String>,
    /// Tokens trained on (all epochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_tokens: Option<u64>,
    /// The evaluation of the adapter against its base model (`spec.evaluation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<tailor_wire::eval::Evaluation>,
    /// When the first trainer pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Live training progress, as served by the trainer's `/progress`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Fractional epoch.
    pub epoch: f64,
    /// Optimizer steps done.
    pub step: u64,
    /// Optimizer steps in the whole run.
    pub total_steps: u64,
    /// Mean train loss over the last logging window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Most recent validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Training throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Estimated seconds until done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

/// A resumable checkpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Optimizer step it was taken at.
    pub step: u64,
    /// Where it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use tailor_wire::families::{ALL_LINEAR, Family};

    #[test]
    fn nodes_is_a_finetunejob_field_defaulting_to_one_and_kept_out_of_the_spec_at_one() {
        let schema = |crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            serde_json::to_value(&crd.spec.versions[0].schema).expect("schema")["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]["properties"].clone()
        };
        let ftj = schema(&super::FineTuneJob::crd());
        assert_eq!(ftj["nodes"]["default"], 1, "{ftj}");
        assert_eq!(ftj["nodes"]["minimum"].as_f64(), Some(1.0), "{ftj}");
        assert_eq!(ftj["nodes"]["maximum"].as_f64(), Some(64.0), "{ftj}");
        let md = schema(&crate::ModelDeployment::crd());
        assert!(md["gpus"].is_object() && md.get("nodes").is_none(), "{md}");
        // One node serializes as before the field existed (run hashes and Job names stay).
        let r = super::TrainingResources::default();
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v, serde_json::to_value(r.per_pod()).expect("json"));
        let two: super::TrainingResources =
            serde_json::from_value(serde_json::json!({"gpus": 2, "nodes": 2})).expect("parses");
        assert_eq!((two.gpus, two.nodes), (2, 2));
        assert_eq!(serde_json::to_value(&two).expect("json")["nodes"], 2);
    }

    #[test]
    fn admission_allows_every_familys_lora_targets() {
        let crd = serde_json::to_string(&super::FineTuneJob::crd()).expect("crd");
        for f in Family::ALL {
            for t in f.lora_targets().iter().chain([&ALL_LINEAR]) {
                assert!(crd.contains(&format!("'{t}'")), "{f}: {t}");
            }
        }
    }
}
