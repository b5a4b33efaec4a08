//! `LoraAdapter`: a recorded, verified adapter artifact with its lineage.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ModelRef;
use crate::finetune::Hyperparameters;

/// A LoRA adapter in PEFT format. Created by a FineTuneJob or imported by hand; not owned by
/// its job, so deleting the job keeps the adapter. The artifact is immutable.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tailor.dev",
    version = "v1alpha1",
    kind = "LoraAdapter",
    doc = "A LoRA adapter artifact (PEFT format) for a base model, verified by checksum and shape before it is Ready; made by a FineTuneJob or imported by hand.",
    namespaced,
    status = "LoraAdapterStatus",
    shortname = "lora",
    category = "tailor",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Rank","type":"integer","jsonPath":".spec.rank"}"#,
    printcolumn = r#"{"name":"Val-Loss","type":"number","jsonPath":".status.lineage.validationLoss"}"#,
    printcolumn = r#"{"name":"Base-Loss","type":"number","jsonPath":".status.lineage.baseValidationLoss","priority":1}"#,
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".spec.sourceJob"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(crate::common::FETCHED_ONLY).message(crate::common::FETCHED_ONLY_MESSAGE))]
pub struct LoraAdapterSpec {
    /// The base model the adapter was trained on; serving checks it matches.
    pub base_model: ModelRef,
    /// URI of the PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
    /// Mounted: the artifact volume (`pvc://`) or a node path (`file://`). Fetched by the
    /// serving pods at load time, with the credentials of `credentialsSecretRef`:
    /// `s3://<bucket>/<prefix>` (any S3-compatible endpoint), `gs://`, `az://`/`abfs://`, and
    /// `hf://<org>/<name>[@<revision>][/<subdir>]`. The operator verifies it where it is stored.
    #[schemars(regex(pattern = r"^(pvc|file|s3|gs|az|abfs|hf)://.+"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("uri is immutable: create a new LoraAdapter for a new artifact"))]
    pub uri: String,
    /// A Secret of this namespace with the store's standard variables for a fetched `uri`
    /// (`AWS_*`, `HF_TOKEN`, …; see FineTuneJob `spec.baseModel.credentialsSecretRef`). The
    /// operator verifies the adapter with it, and the serving pods that load the adapter get
    /// it as their server's environment. Only for fetched URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<crate::common::LocalRef>,
    /// LoRA rank.
    #[schemars(range(min = 1, max = 1024))]
    pub rank: u32,
    /// LoRA alpha.
    #[schemars(range(min = 0.0))]
    pub alpha: f64,
    /// Modules the adapter applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_modules: Vec<String>,
    /// Expected SHA-256 of `adapter_model.safetensors` (lowercase hex). Verified before Ready;
    /// when empty, the digest found at first verification is recorded in status and enforced after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sha256 is immutable"))]
    pub sha256: Option<String>,
    /// Size of `adapter_model.safetensors` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub size_bytes: Option<u64>,
    /// The FineTuneJob that produced it (empty when imported by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_job: Option<String>,
    /// What happens to the artifact when this object is deleted. `Delete` removes only files the
    /// operator itself created for this adapter (see `status.producedBy`); an imported
    /// adapter's files are never deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Fate of the artifact on deletion.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the files.
    #[default]
    Retain,
    /// Delete the files with the object.
    Delete,
}

/// Lifecycle of a LoraAdapter.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraAdapterPhase {
    /// Not verified yet.
    #[default]
    Pending,
    /// Verified and usable.
    Ready,
    /// Verification failed; see the Ready condition.
    Failed,
}

/// Observed state of an adapter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoraAdapterStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: LoraAdapterPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Result of the last artifact check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Where the adapter came from, as the operator observed it: copied from the status of the
    /// FineTuneJob that produced it (never from anything a user can edit). Unset for an
    /// imported adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The FineTuneJob whose output this artifact is, recorded when the operator saw that job
    /// record this adapter: the operator created these files, so `deletionPolicy: Delete`
    /// removes them. Unset for an imported adapter, whose files the operator never deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<String>,
}

/// Result of checking the artifact.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Whether every check passed.
    pub verified: bool,
    /// SHA-256 found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size found, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// What was checked, or what failed.
    #[serde(default)]
    pub message: String,
    /// When the check ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
}

/// Everything needed to say where an adapter came from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The Dataset trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Its content hash at training time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_content_hash: Option<String>,
    /// The Hub commit of an `hf://` base model the run trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_revision: Option<String>,
    /// Hyperparameters of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperparameters: Option<Hyperparameters>,
    /// Validation loss of the base model alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_validation_loss: Option<f64>,
    /// Validation loss with the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Tokens trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_tokens: Option<u64>,
    /// The evaluation against the base model on the test split (FineTuneJob
    /// `spec.evaluation`), which a ModelDeployment's `rollout.gate` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<tailor_wire::eval::Evaluation>,
}
