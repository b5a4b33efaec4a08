//! Types shared by several kinds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to a model checkpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(FETCHED_ONLY).message(FETCHED_ONLY_MESSAGE))]
pub struct ModelRef {
    /// Where the Hugging Face checkpoint directory lives. Mounted: `pvc://<claim>/<path>`,
    /// `file:///<path>` (where the admin allows it). Fetched into the pod before it starts, with
    /// the credentials of `credentialsSecretRef`: `s3://<bucket>/<prefix>` (any S3-compatible
    /// endpoint), `gs://<bucket>/<prefix>`, `az://<container>/<prefix>`, `https://…`, and
    /// `hf://<org>/<name>[@<revision>][/<subdir>]` (the Hugging Face Hub).
    #[schemars(regex(pattern = r"^(pvc|file|s3|gs|az|abfs|https|hf)://.+"))]
    pub uri: String,
    /// A Secret of this namespace whose keys are the store's standard variables, given to the
    /// fetch as its environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`; `GOOGLE_APPLICATION_CREDENTIALS` (a key holding the
    /// JSON); `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`; `HF_TOKEN`,
    /// `HF_ENDPOINT`. Only for fetched URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
}

/// CEL: credentials go only with a URI that is fetched (a mounted one has none to use).
pub const FETCHED_ONLY: &str = "!has(self.credentialsSecretRef) || !(self.uri.startsWith('pvc://') || self.uri.startsWith('file://'))";
pub const FETCHED_ONLY_MESSAGE: &str = "credentialsSecretRef is for fetched URIs (s3, gs, az, https, hf); pvc:// and file:// are mounted";

/// A reference to another object in the same namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret or ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the object (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the object's data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Compute a pod asks for. GPUs are requested as `gpuResource` (the operator's default,
/// `nvidia.com/gpu` unless the admin changed it).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Number of GPU devices per pod (0 runs on CPU).
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
    /// CPU request (and limit), e.g. `4` or `500m`. Unset: no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request (and limit), e.g. `32Gi`. Unset: no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

fn default_gpus() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_resource: None,
            cpu: None,
            memory: None,
        }
    }
}

/// Volume names the operator gives the volumes of the pods it builds (and the prefixes of those
/// it numbers): a pod template's extra volumes may not take them.
pub const RESERVED_VOLUME_NAMES: [&str; 6] =
    ["config", "artifacts", "tmp", "token", "source", "inputs"];
/// Environment variables the operator sets in the containers it builds.
pub const RESERVED_ENV_NAMES: [&str; 2] = ["POD_IP", "HOME"];

/// What a platform adds to the pods the operator builds for an object: registries, service
/// accounts, placement, runtime classes, sidecar-free extras. It is merged into the operator's
/// pod, which keeps what the pod needs to work:
///
/// - `labels`, `annotations`, `nodeSelector`: added; the operator's own keys win.
/// - `imagePullSecrets`, `tolerations`, `topologySpreadConstraints`, `env`, `volumes`,
///   `volumeMounts`: appended to the operator's.
/// - `serviceAccountName`, `runtimeClassName`, `priorityClassName`: set (a spec field of the
///   same name, e.g. a FineTuneJob's `priorityClassName`, wins); `affinity` replaces the
///   operator's (the router's spreading preference).
///
/// Image, command, arguments, probes, ports, resources and the security context are the
/// operator's: they are not fields here, and admission refuses unknown fields. Extra volumes,
/// mounts and variables may not take the operator's names or paths (refused at admission).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.volumes) || self.volumes.all(v, !(v.name in ['config', 'artifacts', 'tmp', 'token', 'source', 'inputs']) && !v.name.matches('^(shared|claim|host|key)-[0-9a-f]+$'))").message("volumes: config, artifacts, tmp, token, source, inputs and shared-N, claim-N, host-N, key-N are the operator's volume names"))]
#[x_kube(validation = Rule::new("!has(self.volumeMounts) || self.volumeMounts.all(m, m.mountPath != '/tmp' && !m.mountPath.startsWith('/etc/tailor') && !m.mountPath.startsWith('/artifacts') && !m.mountPath.startsWith('/data/source') && !m.mountPath.startsWith('/inputs'))").message("volumeMounts: /tmp, /etc/tailor*, /artifacts*, /data/source and /inputs* are where the operator mounts its volumes"))]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(e, !(e.name in ['POD_IP', 'HOME']))").message("env: POD_IP and HOME are set by the operator"))]
pub struct PodTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// A Pod `affinity` (validated when the pod is created; kept open here so the CRD stays
    /// small enough for client-side `kubectl apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Pod `topologySpreadConstraints` (validated when the pod is created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra environment of the main container (e.g. proxies, `HF_HUB_OFFLINE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Extra volumes of the pod (mounted by `volumeMounts`): Pod `volumes` entries, validated
    /// when the pod is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "named_objects")]
    pub volumes: Vec<Volume>,
    /// Extra mounts of the main container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub volume_mounts: Vec<VolumeMount>,
}

/// An object kept as written (`x-kubernetes-preserve-unknown-fields`): a Kubernetes type whose
/// full schema would make the CRD too large for `kubectl apply`'s last-applied annotation.
fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A list of [`open_object`]s.
fn open_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 8,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A list of [`open_object`]s that have a `name` (which CEL rules check).
fn named_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 63}},
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}
