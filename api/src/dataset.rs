//! `Dataset`: raw examples turned into prepared train/validation/test splits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{KeyRef, LocalRef};

/// A set of training examples and how to prepare them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tailor.dev",
    version = "v1alpha1",
    kind = "Dataset",
    doc = "Raw JSONL training examples (chat, completion or text) and how to prepare them: deduplicated, redacted and split into train/validation/test sets that FineTuneJobs train on.",
    namespaced,
    status = "DatasetStatus",
    shortname = "dset",
    category = "tailor",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Examples","type":"integer","jsonPath":".status.stats.examples"}"#,
    printcolumn = r#"{"name":"Invalid","type":"integer","jsonPath":".status.stats.invalid"}"#,
    printcolumn = r#"{"name":"Tokens","type":"integer","jsonPath":".status.stats.tokens","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Where the raw JSONL comes from: exactly one of `configMap`, `pvc`, `uri`, `inline`.
    pub source: DatasetSource,
    /// How each line is read: `chat` (OpenAI fine-tuning `{"messages": [...]}`), `completion`
    /// (`{"prompt", "completion"}`) or `text` (`{"text"}`).
    #[serde(default)]
    pub format: DatasetFormat,
    /// Cleaning and splitting applied before training.
    #[serde(default)]
    pub preparation: Preparation,
    /// Additions to the prepare pod (service account, registries, placement); its fields
    /// are added to the operator's pod, whose own names, keys and paths win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<crate::PodTemplate>,
}

/// Where the raw examples are read from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.configMap), has(self.pvc), has(self.uri), has(self.inline)].filter(x, x).size() == 1").message("exactly one of configMap, pvc, uri or inline must be set"))]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretRef) || (has(self.uri) && !(self.uri.startsWith('pvc://') || self.uri.startsWith('file://')))").message("credentialsSecretRef goes with a fetched uri (s3, gs, az, https, hf)"))]
pub struct DatasetSource {
    /// A key of a ConfigMap in the Dataset's namespace holding the JSONL (small datasets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
    /// A file on a PersistentVolumeClaim in the Dataset's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// A JSONL file, or a prefix ending in `/` whose `*.jsonl` files are read in name order:
    /// mounted (`pvc://claim/path`, `file:///path`) or fetched into the prepare pod before it
    /// starts (`s3://`, `gs://`, `az://`, `https://`, `hf://datasets/<org>/<name>/<file>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(pvc|file|s3|gs|az|abfs|https|hf)://.+"))]
    pub uri: Option<String>,
    /// A Secret of this namespace with the store's standard variables for a fetched `uri`
    /// (`AWS_*`, `HF_TOKEN`, …; see FineTuneJob `spec.baseModel.credentialsSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
    /// The JSONL itself, for demos and tests (the object must stay under etcd's size limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000000))]
    pub inline: Option<String>,
}

/// A file on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim, in the Dataset's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Path of the JSONL file inside the volume.
    #[schemars(length(min = 1))]
    pub path: String,
}

/// The line format of the raw data, and the kinds of personal data preparation can mask: the
/// same types the prepare pod reads (tailor-wire), so the API and the trainer cannot disagree.
pub use tailor_wire::prepare::{Format as DatasetFormat, RedactKind};

/// Cleaning and splitting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preparation {
    /// Drop examples whose normalized content (case, whitespace) repeats an earlier one.
    #[serde(default = "yes")]
    pub dedupe: bool,
    /// Personal data to mask before anything is stored or trained on.
    #[serde(default = "default_redact")]
    pub redact: Vec<RedactKind>,
    /// Fail the Dataset when fewer valid examples than this remain.
    #[serde(default = "default_min_examples")]
    #[schemars(range(min = 1, max = 100000000))]
    pub min_examples: u32,
    /// Examples longer than this many tokens (rendered with `tokenizer`'s chat template) are
    /// rejected as invalid. Applied only when `tokenizer` is set: without a tokenizer, lengths
    /// cannot be measured.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_tokens_per_example: u32,
    /// The tokenizer that measures examples: a model directory holding `tokenizer.json` (and
    /// optionally `tokenizer_config.json` with the chat template), or that `tokenizer.json`
    /// itself, as `pvc://<claim>/<path>` or `file:///<path>`; usually the base model the data
    /// is for. It is mounted read-only into the prepare pod, enforces `maxTokensPerExample` and
    /// counts `status.stats.tokens`. Unset: neither happens. Changing it prepares again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(pvc|file)://.+"), length(max = 4096))]
    #[x_kube(validation = Rule::new("!self.endsWith('.json') || self.endsWith('/tokenizer.json')").message("tokenizer names a model directory or its tokenizer.json file"))]
    pub tokenizer: Option<String>,
    /// Held-out fractions. Assignment is by a stable hash of each example, so adding data never
    /// moves an existing example between splits.
    #[serde(default)]
    pub split: Split,
}

fn yes() -> bool {
    true
}
fn default_redact() -> Vec<RedactKind> {
    vec![RedactKind::Email, RedactKind::Phone]
}
fn default_min_examples() -> u32 {
    10
}
fn default_max_tokens() -> u32 {
    4096
}

impl Default for Preparation {
    fn default() -> Self {
        Self {
            dedupe: true,
            redact: default_redact(),
            min_examples: default_min_examples(),
            max_tokens_per_example: default_max_tokens(),
            tokenizer: None,
            split: Split::default(),
        }
    }
}

/// Fractions held out for validation and test.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.validation + self.test < 1.0").message("validation + test must be below 1 so that something is left to train on"))]
pub struct Split {
    /// Fraction of examples held out to measure validation loss.
    #[serde(default = "default_validation")]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub validation: f64,
    /// Fraction held out for a final test set (never seen in training).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub test: f64,
    /// Salt of the split hash: change it to draw a different split.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub seed: u64,
}

fn default_validation() -> f64 {
    0.1
}

impl Default for Split {
    fn default() -> Self {
        Self {
            validation: default_validation(),
            test: 0.0,
            seed: 0,
        }
    }
}

/// Lifecycle of a Dataset.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatasetPhase {
    /// Not looked at yet.
    #[default]
    Pending,
    /// The prepare Job is running.
    Preparing,
    /// Prepared splits are available at `preparedUri`.
    Ready,
    /// Preparation failed; see the Ready condition.
    Failed,
}

/// What preparation found and produced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: DatasetPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Counts from the last preparation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DatasetStats>,
    /// SHA-256 of the prepared content, the identity recorded in adapter lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Artifact-store URI of the prepared splits (`train.jsonl`, `validation.jsonl`, `test.jsonl`, `stats.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_uri: Option<String>,
    /// The first few invalid lines, with why each was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_samples: Vec<InvalidSample>,
    /// Name of the prepare Job for the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

/// Counts from preparation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStats {
    /// Valid examples kept (after dedupe).
    pub examples: u64,
    /// Lines rejected as invalid.
    pub invalid: u64,
    /// Examples dropped as duplicates.
    pub duplicates_removed: u64,
    /// Personal-data spans masked.
    pub redactions: u64,
    /// Examples in the train split.
    pub train: u64,
    /// Examples in the validation split.
    pub validation: u64,
    /// Examples in the test split.
    pub test: u64,
    /// Tokens over all kept examples (when a tokenizer was available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// One rejected line.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InvalidSample {
    /// 1-based line number in the source.
    pub line: u64,
    /// What was wrong with it.
    pub reason: String,
}
