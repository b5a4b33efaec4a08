//! `ModelDeployment`: a base model and its adapters served behind an OpenAI-compatible
//! endpoint, changed by canary rollouts that roll themselves back.
//!
//! Size (over 700 lines, on purpose): the ModelDeployment API types and their field docs, which
//! are the CRD schema's text (`kubectl explain`); one kind, one file, like the other kinds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{KeyRef, LocalRef, Resources};

/// Go-style durations as Kubernetes writes them (`30s`, `1m30s`, `2h`).
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A served model: one base model in memory, each adapter a model name in the OpenAI API.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tailor.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    doc = "A base model and its adapters served behind an OpenAI-compatible endpoint, rolled out as weighted canaries that are analysed and rolled back automatically.",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "mdep",
    category = "tailor",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRevision"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canaryRevision"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas","priority":1}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.adapters) || self.adapters.all(a, a.name != self.baseModel.servedName)").message("an adapter name may not equal baseModel.servedName"))]
pub struct ModelDeploymentSpec {
    /// The base model and the name it is served under.
    pub base_model: ServedBaseModel,
    /// The inference engine of the serving pods: `tailor` (tailor-server) or `vllm` (the
    /// `vllm/vllm-openai` image, for tensor parallelism and quantized checkpoints). Adapters are
    /// loaded through the same runtime LoRA API on both, so canaries, analysis and rollback are
    /// the same. A change rolls out as a pod canary.
    #[serde(default)]
    pub runtime: Runtime,
    /// Adapters served on the base model; each `name` is a model name in the OpenAI API.
    /// Changing only the adapter a name points to rolls out as an adapter canary (no new pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("adapter names must be unique"))]
    pub adapters: Vec<ServedAdapter>,
    /// Serving pods per revision. Changing only this rolls nothing out. Also set through the
    /// `scale` subresource (`kubectl scale mdep NAME --replicas=N`, a HorizontalPodAutoscaler).
    /// Not used while `autoscaling` is set.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 256))]
    pub replicas: i32,
    /// Scale the serving pods on their own load, read from the servers' Inference Extension
    /// gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`) by the operator, as
    /// KServe's KPA and AIBrix's autoscaler do. The decision and its inputs are in
    /// `status.autoscaling` and Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Compute per serving pod.
    #[serde(default)]
    pub resources: Resources,
    /// Node labels serving pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for tainted (e.g. GPU) nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Inference server settings. Changing them rolls out as a pod canary.
    #[serde(default)]
    pub server: ServerSettings,
    /// Router pod settings.
    #[serde(default, skip_serializing_if = "RouterSettings::is_default")]
    pub router: RouterSettings,
    /// API keys required at the endpoint. Unset: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// How changes roll out.
    #[serde(default)]
    pub rollout: Rollout,
}

fn one() -> i32 {
    1
}

/// Load-based scaling of the serving pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("has(self.targetInFlightPerReplica) != has(self.targetQueueDepth)").message("set exactly one of autoscaling.targetInFlightPerReplica and autoscaling.targetQueueDepth"))]
pub struct Autoscaling {
    /// Fewest serving pods (scale-to-zero is not supported).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 256))]
    pub min_replicas: i32,
    /// Most serving pods.
    #[schemars(range(min = 1, max = 256))]
    pub max_replicas: i32,
    /// Requests in flight (running in the batch or waiting for it) per serving pod to aim for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 100000.0))]
    pub target_in_flight_per_replica: Option<f64>,
    /// Requests waiting for the batch per serving pod to aim for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 100000.0))]
    pub target_queue_depth: Option<f64>,
    /// Scale up only to what every recommendation of this window allows (the lowest): a short
    /// burst does not add pods. Default 0s.
    #[serde(default = "zero_seconds")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_up_stabilization: Duration,
    /// Scale down only to what every recommendation of this window allows (the highest): load
    /// that dips for a moment does not remove pods. Default 5m.
    #[serde(default = "five_minutes")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_down_stabilization: Duration,
    /// How often the load is read and a decision made. Default 10s.
    #[serde(default = "ten_seconds")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Duration,
}

fn zero_seconds() -> Duration {
    std::time::Duration::ZERO.into()
}
fn five_minutes() -> Duration {
    std::time::Duration::from_secs(300).into()
}
fn ten_seconds() -> Duration {
    std::time::Duration::from_secs(10).into()
}

/// The base model of a deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(crate::common::FETCHED_ONLY).message(crate::common::FETCHED_ONLY_MESSAGE))]
pub struct ServedBaseModel {
    /// Where the Hugging Face checkpoint lives: mounted (`pvc://`, `file://`) or fetched into
    /// each serving pod before it starts (`s3://`, `gs://`, `az://`, `https://`, `hf://`).
    #[schemars(regex(pattern = r"^(pvc|file|s3|gs|az|abfs|https|hf)://.+"))]
    pub uri: String,
    /// A Secret of this namespace with the store's standard variables (`AWS_*`, `HF_TOKEN`, …;
    /// see FineTuneJob `spec.baseModel.credentialsSecretRef`). Only for fetched URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
    /// The model name clients use for the base model.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"), length(max = 128))]
    pub served_name: String,
}

/// One adapter, served as its own model name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServedAdapter {
    /// The model name clients use for this adapter.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"), length(max = 128))]
    pub name: String,
    /// The LoraAdapter (same namespace) to serve under that name.
    pub adapter_ref: LocalRef,
}

/// Inference server settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSettings {
    /// Most sequences decoded together in one forward pass.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: u32,
    /// Longest prompt + completion, in tokens.
    #[serde(default = "default_seq")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_seq_length: u32,
    /// Adapters held in memory per pod (least recently used evicted beyond).
    #[serde(default = "default_loaded")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_loaded_adapters: u32,
    /// Weight and compute type.
    #[serde(default)]
    pub dtype: Dtype,
    /// Additions to the serving pods (service account, registries, placement, runtime class);
    /// its fields are added to the operator's pod, whose
    /// own names, keys and paths win. A change rolls out as a pod canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<crate::PodTemplate>,
    /// The serving image instead of the operator's default for the runtime (a vLLM release
    /// other than the pinned one, a mirror). A change rolls out as a pod canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Flags appended to the engine's command line (`--enable-prefix-caching`,
    /// `--quantization=fp8`, `--gpu-memory-utilization=0.85`). Flags the operator sets from
    /// other fields (listen address, served name, LoRA and parallelism settings, API key) are
    /// refused with the field to use instead. A change rolls out as a pod canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(a, size(a) <= 1024)").message("each extra argument is at most 1024 characters"))]
    pub extra_args: Vec<String>,
}

/// The inference engine of a ModelDeployment's serving pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Runtime {
    /// tailor-server (libtorch; CPU or one GPU).
    #[default]
    Tailor,
    /// vLLM's OpenAI-compatible server (`vllm serve`), `--tensor-parallel-size` from
    /// `resources.gpus`.
    Vllm,
}

fn default_batch() -> u32 {
    16
}
fn default_seq() -> u32 {
    2048
}
fn default_loaded() -> u32 {
    8
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_batch_size: default_batch(),
            max_seq_length: default_seq(),
            max_loaded_adapters: default_loaded(),
            dtype: Dtype::default(),
            pod_template: None,
            image: None,
            extra_args: Vec::new(),
        }
    }
}

/// Weight and compute type of the server.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Dtype {
    /// bfloat16 on GPU, float32 on CPU.
    #[default]
    Auto,
    /// 32-bit floats.
    Float32,
    /// bfloat16.
    Bfloat16,
    /// IEEE half precision.
    Float16,
}

/// The router's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterSettings {
    /// Additions to the router pods; its fields are added to the operator's pod, whose
    /// own names, keys and paths win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<crate::PodTemplate>,
}

impl RouterSettings {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Endpoint authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// A Secret key holding accepted API keys, one per line.
    pub api_key_secret_ref: KeyRef,
}

/// How a new revision rolls out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Canary steps: traffic weight, then a pause during which analysis runs. After the last
    /// step the canary is promoted.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.map(s, s.weight).isSorted() && self.all(s, self.exists_one(t, t.weight == s.weight))").message("step weights must be strictly increasing"))]
    pub steps: Vec<RolloutStep>,
    /// When to roll back.
    #[serde(default)]
    pub analysis: Analysis,
    /// Roll back automatically when analysis fails (otherwise pause for a human).
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Require the adapter's validation loss (recorded by its FineTuneJob) to be below the
    /// base model's before it takes any traffic (as `gate.requireBetterThanBase`).
    #[serde(default)]
    pub require_better_than_base: bool,
    /// Checks each new adapter's evaluation (its FineTuneJob's `spec.evaluation`, recorded in
    /// the LoraAdapter's lineage) must pass before its canary takes any traffic; a failed
    /// check rolls the canary back (reason GateFailed), an adapter not evaluated yet waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<RolloutGate>,
    /// Seconds a pod canary's pods may take to become ready before it is rolled back.
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: u32,
}

fn yes() -> bool {
    true
}
fn default_deadline() -> u32 {
    600
}
fn default_steps() -> Vec<RolloutStep> {
    vec![
        RolloutStep {
            weight: 10,
            pause: default_pause(),
        },
        RolloutStep {
            weight: 50,
            pause: default_pause(),
        },
    ]
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            analysis: Analysis::default(),
            auto_rollback: true,
            require_better_than_base: false,
            gate: None,
            progress_deadline_seconds: default_deadline(),
        }
    }
}

/// Evaluation thresholds a canary's new adapters must meet before any traffic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutGate {
    /// The judge's win rate of the adapter against the base model must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_win_rate: Option<f64>,
    /// The lower bound of the win rate's Wilson 95% interval must be at least this (a win
    /// rate measured on few examples does not pass on luck).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_win_rate_lower_bound: Option<f64>,
    /// The adapter's test loss may exceed the base model's by at most this much (0: it must
    /// not be worse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_test_loss_increase: Option<f64>,
    /// The adapter's validation loss must be below the base model's.
    #[serde(default)]
    pub require_better_than_base: bool,
}

/// One canary step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of users sent to the canary.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
    /// How long to hold this weight (analysing all along) before the next step.
    #[serde(default = "default_pause")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub pause: Duration,
}

fn default_pause() -> Duration {
    std::time::Duration::from_secs(60).into()
}

/// Canary analysis: compare canary and stable over the same window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.metricsSource != 'prometheus' || has(self.prometheus)").message("metricsSource prometheus needs prometheus.address"))]
pub struct Analysis {
    /// How often to analyse (and the window each analysis covers).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Duration,
    /// Below this many canary requests in a window the verdict is inconclusive: low traffic is
    /// not evidence either way.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub min_requests: u64,
    /// Roll back when the canary's error rate exceeds this.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Roll back when the canary's error rate exceeds the stable's by more than this, and the
    /// difference is statistically significant.
    #[serde(default = "default_increase")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate_increase: f64,
    /// Roll back when the canary's p95 latency exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_latency_p95: Option<Duration>,
    /// Failed analyses in a row before rolling back.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: u32,
    /// Where request counts come from.
    #[serde(default)]
    pub metrics_source: MetricsSource,
    /// Prometheus to query when `metricsSource` is `prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
}

fn default_interval() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_min_requests() -> u64 {
    20
}
fn default_max_error_rate() -> f64 {
    0.05
}
fn default_increase() -> f64 {
    0.02
}
fn default_failure_limit() -> u32 {
    2
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            min_requests: default_min_requests(),
            max_error_rate: default_max_error_rate(),
            max_error_rate_increase: default_increase(),
            max_latency_p95: None,
            failure_limit: default_failure_limit(),
            metrics_source: MetricsSource::default(),
            prometheus: None,
        }
    }
}

/// Where analysis reads request counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MetricsSource {
    /// The deployment's own router (`/stats`).
    #[default]
    Router,
    /// A Prometheus server scraping the router.
    Prometheus,
}

/// A Prometheus server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub address: String,
}

/// Overall state of a deployment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelDeploymentPhase {
    /// Serving the spec's revision with nothing in flight.
    Healthy,
    /// Creating pods or stepping a canary.
    #[default]
    Progressing,
    /// A canary is held (analysis failed without autoRollback, or inconclusive for long).
    Paused,
    /// The last canary was rolled back; the stable revision serves.
    RolledBack,
    /// Serving is impaired (pods not ready, adapters failing to load).
    Degraded,
}

/// Observed state of a deployment and its rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// Overall state.
    #[serde(default)]
    pub phase: ModelDeploymentPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The revision taking all traffic outside a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The revision being rolled out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// Percent of users currently sent to the canary.
    #[serde(default)]
    pub canary_weight: u32,
    /// Index of the rollout step in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<u32>,
    /// When the current step began (its pause counts from here, across operator restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Failed analyses in a row for the current canary.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The most recent analysis and its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// Past revisions with their outcome, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
    /// The OpenAI-compatible base URL (the router's Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Hugging Face Hub commit the spec's revision fetches its base model at, for an
    /// `hf://` base model: a branch or tag (or none: `main`) is resolved once, when the revision
    /// is first seen, so every pod of it (restarts and new replicas too) serves the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_revision: Option<String>,
    /// Adapters each serving pod has actually loaded, and those that failed to load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodAdapters>,
    /// Ready serving pods of the stable revision (the `scale` subresource's replicas, which
    /// `kubectl scale` and a HorizontalPodAutoscaler read).
    #[serde(default)]
    pub replicas: i32,
    /// The label selector of the stable revision's serving pods, as a string (the `scale`
    /// subresource's selector: an autoscaler reads those pods' metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The last autoscaling decision and its inputs (with `spec.autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// An autoscaling decision and what it was made from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Serving pods per revision now asked for.
    pub desired_replicas: i32,
    /// The metric summed over the serving pods read (in-flight or waiting requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Serving pods whose load was read.
    #[serde(default)]
    pub measured_pods: u32,
    /// What this reading alone asks for, before the stabilization windows and step limits.
    pub recommendation: i32,
    /// Why the decision is what it is.
    #[serde(default)]
    pub message: String,
    /// When the operator last read the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Time>,
    /// When the desired count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Recent recommendations (the stabilization windows' memory), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
}

/// One past recommendation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    pub time: Time,
    pub replicas: i32,
}

/// One analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// What it decided.
    pub verdict: Verdict,
    /// Why, in words.
    #[serde(default)]
    pub message: String,
    /// The stable revision's numbers over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<RevisionMetrics>,
    /// The canary's numbers over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<RevisionMetrics>,
    /// The Prometheus query used, when metricsSource is prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// What analysis decided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// The canary is no worse than allowed.
    Pass,
    /// The canary breached a threshold.
    Fail,
    /// Too little traffic to judge.
    #[default]
    Inconclusive,
}

/// Request numbers of one revision over an analysis window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionMetrics {
    /// The revision (or adapter) measured.
    pub revision: String,
    /// Requests in the window.
    pub requests: u64,
    /// 5xx responses and timeouts in the window.
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// 95th percentile latency in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_seconds: Option<f64>,
}

/// A revision that was rolled out, and how it ended.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Revision hash.
    pub revision: String,
    /// `adapter` (same pods, new adapter) or `pod` (new pods).
    pub kind: RolloutKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Kind of rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RolloutKind {
    /// New adapter on the same pods.
    #[default]
    Adapter,
    /// New Deployment.
    Pod,
}

/// How a revision's rollout ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Became stable.
    #[default]
    Promoted,
    /// Rolled back; not retried until the spec changes again.
    RolledBack,
    /// Replaced by a newer spec before finishing.
    Superseded,
}

/// Adapters one serving pod holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodAdapters {
    /// Pod name.
    pub pod: String,
    /// Revision the pod serves.
    pub revision: String,
    /// Adapter names loaded.
    #[serde(default)]
    pub loaded: Vec<String>,
    /// Adapters that failed to load, with why (retried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<AdapterLoadFailure>,
}

/// An adapter that failed to load on a pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterLoadFailure {
    /// Adapter name.
    pub adapter: String,
    /// Error from the server.
    pub message: String,
}
