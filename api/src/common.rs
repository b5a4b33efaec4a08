//! Types shared by several kinds.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to a model checkpoint in the artifact store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Where the Hugging Face checkpoint directory lives: `pvc://<claim>/<path>`, `file:///<path>`,
    /// `s3://…`, `gs://…`, or `hf://<org>/<name>` (downloaded at run time where the cluster has network).
    #[schemars(regex(pattern = r"^(pvc|file|s3|gs|hf)://.+"))]
    pub uri: String,
}

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

/// Compute a pod asks for. GPUs are requested as `nvidia.com/gpu`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Number of `nvidia.com/gpu` devices per pod (0 runs on CPU).
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus: u32,
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
            cpu: None,
            memory: None,
        }
    }
}
