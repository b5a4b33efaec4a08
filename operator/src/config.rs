//! The operator's own configuration: the JSON file mounted from the `tailor-operator-config`
//! ConfigMap (`--config /etc/tailor/operator.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `operator.json`, camelCase as in the install manifests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorConfig {
    /// Image of the `tailor-trainer` pods (prepare and train Jobs).
    pub trainer_image: String,
    /// Image of the serving pods (ModelDeployment).
    #[serde(default)]
    pub server_image: String,
    /// Image of the serving pods of ModelDeployments with `runtime: vllm` (a spec's
    /// `server.image` overrides it). The flags tailor passes are those of this release.
    #[serde(default = "default_vllm_image")]
    pub vllm_image: String,
    /// Image of the router pods (ModelDeployment).
    #[serde(default)]
    pub router_image: String,
    /// Image of the init containers that fetch `s3://`, `gs://`, `az://`, `https://` and
    /// `hf://` inputs into a pod before it starts (`tailor-fetch`; no libtorch).
    #[serde(default = "default_fetch_image")]
    pub fetch_image: String,
    /// Where the artifact claim is mounted, in the operator's pod and in every pod it creates.
    #[serde(default = "default_mount")]
    pub artifacts_mount: PathBuf,
    /// Name of the artifact claim in each namespace that prepared data and adapters go to
    /// (without `artifactStore`).
    #[serde(default = "default_claim")]
    pub artifacts_claim: String,
    /// The operator-wide artifact store in a bucket: prepared datasets, checkpoints, adapters
    /// and metrics of namespace `ns` go to `<uri>/<ns>/`, and no namespace needs an artifact
    /// claim. Without it they go to the artifact claim (single-node and local use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_store: Option<ArtifactStore>,
    /// A volume source (a Pod `volumes` entry without its name) every fetch init container
    /// mounts as its cache, each namespace in a subdirectory of its own (`subPath`), so a base
    /// model a pod on the same node fetched before is linked, not downloaded again. Node-local
    /// caching needs a volume that outlives pods on the node: a CSI volume, or `hostPath`
    /// (`{"hostPath": {"path": "/var/cache/tailor", "type": "DirectoryOrCreate"}}`), which the
    /// `restricted` Pod Security Standard forbids — only for namespaces that admit it. Unset:
    /// no cache (each pod fetches its inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_cache: Option<serde_json::Value>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Port the trainer serves `/progress` on, on its pod IP.
    #[serde(default = "default_progress_port")]
    pub progress_port: u16,
    /// Seconds between two `/progress` polls of a running trainer (at most 15).
    #[serde(default = "default_progress_interval")]
    pub progress_interval_seconds: u64,
    /// Reconciles of one kind that run at once (0: no limit). Beyond a few, more only queue
    /// the same requests at the API server and make each reconcile slower: 500 new jobs on
    /// tailor-sim got a status soonest with 4 (2: slower; 8, 16, no limit: slower and a longer
    /// reconcile tail).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_reconciles: u16,
    /// Prefixes of the artifact volume every namespace may read (never write): where the
    /// platform team puts base models, e.g. `["models"]`. Tenants name them as
    /// `pvc://<artifactsClaim>/<prefix>/...`; every other path of that claim is inside the
    /// tenant's own area (see [`crate::artifacts`]).
    #[serde(default)]
    pub shared_prefixes: Vec<String>,
    /// Whether `file://` URIs (node paths, mounted as hostPath) are allowed: only for
    /// single-node development clusters and the simulator. Off, a tenant cannot reach the
    /// node's filesystem through a Dataset or a model URI.
    #[serde(default)]
    pub allow_file_uris: bool,
    /// Whether the test-only fault-injection annotation of ModelDeployments is honoured
    /// (test clusters and the local demo only).
    #[serde(default)]
    pub allow_fault_injection: bool,
    /// Prometheus base URLs a ModelDeployment's `analysis.prometheus.address` may name, exactly
    /// (`http://prometheus.monitoring.svc:9090`). The operator fetches no other address a user
    /// writes.
    #[serde(default)]
    pub prometheus_allow_list: Vec<String>,
    /// Hugging Face Hub endpoints the operator asks to resolve an `hf://` revision to its commit
    /// (a Secret's `HF_ENDPOINT`, exactly; default: the Hub itself). The operator sends no
    /// request to an endpoint a tenant wrote that is not listed.
    #[serde(default = "default_hub_endpoints")]
    pub hub_endpoint_allow_list: Vec<String>,
    /// Object-store endpoints (`AWS_ENDPOINT_URL` and the like in a tenant's Secret, exactly)
    /// the operator may read from when it verifies a LoraAdapter stored in a bucket. Without
    /// an endpoint variable the store's own public endpoint is used; any other endpoint a
    /// tenant writes is refused, so a Secret cannot make the operator send requests where it
    /// likes.
    #[serde(default)]
    pub store_endpoint_allow_list: Vec<String>,
    /// The largest adapter weights (`adapter_model.safetensors`, bytes) the operator reads when
    /// it verifies a LoraAdapter stored in a bucket or on the Hub (default 16 GiB: a rank-64
    /// adapter on every projection of a 70B model is under 2 GiB in bf16). Larger ones are
    /// refused without being read.
    #[serde(default = "default_max_adapter_bytes")]
    pub max_adapter_bytes: u64,
    /// Whether each ModelDeployment gets NetworkPolicies that let only its router reach its
    /// servers and only the operator reach the servers' and router's admin endpoints (needs a
    /// CNI that enforces NetworkPolicy; harmless where none does).
    #[serde(default = "yes")]
    pub network_policies: bool,
    /// The extended resource GPUs are requested as where a spec's `resources.gpuResource` is
    /// unset (`nvidia.com/gpu`; `amd.com/gpu`, a MIG profile such as `nvidia.com/mig-1g.10gb`).
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource_name: String,
    /// Requests and limits for every container the operator creates, resource by resource
    /// where its spec sets none (see [`crate::pods`]).
    #[serde(default)]
    pub default_resources: crate::pods::DefaultResources,
    /// The operator's own namespace (from `POD_NAMESPACE`, not the file): the NetworkPolicies
    /// admit admin calls from the operator's pods there.
    #[serde(skip, default = "default_operator_namespace")]
    pub operator_namespace: String,
}

/// The name of the `fetchCache` volume in pods.
pub const FETCH_CACHE_VOLUME: &str = "fetch-cache";

/// `artifactStore` of the operator config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStore {
    /// `s3://bucket/prefix` (any S3-compatible endpoint), `gs://`, `az://` or `abfs://`.
    pub uri: String,
    /// The Secret, in each tenant namespace, with that namespace's credentials for its area
    /// `<uri>/<namespace>/` (the store's standard variables: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...). The platform team creates it with
    /// credentials scoped to that prefix, so a tenant's pods reach no other tenant's data; the
    /// operator reads a namespace's artifacts with the same Secret (its endpoint must be in
    /// `storeEndpointAllowList`).
    pub credentials_secret: String,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}

fn yes() -> bool {
    true
}
fn default_operator_namespace() -> String {
    "tailor-system".into()
}

fn default_fetch_image() -> String {
    format!(
        "ghcr.io/tailor-dev/tailor-fetch:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The vLLM release whose `vllm serve` flags and runtime LoRA API tailor renders and speaks.
pub const VLLM_IMAGE: &str = "vllm/vllm-openai:v0.12.0";

fn default_vllm_image() -> String {
    VLLM_IMAGE.into()
}

fn default_max_adapter_bytes() -> u64 {
    16 << 30
}

fn default_hub_endpoints() -> Vec<String> {
    vec![tailor_artifacts::hub::DEFAULT_ENDPOINT.to_string()]
}

fn default_mount() -> PathBuf {
    PathBuf::from("/artifacts")
}
fn default_claim() -> String {
    "tailor-artifacts".into()
}
fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_progress_port() -> u16 {
    9090
}
fn default_progress_interval() -> u64 {
    5
}
fn default_concurrency() -> u16 {
    4
}

impl OperatorConfig {
    /// Reads and checks the JSON file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid operator config", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.trainer_image.is_empty() {
            anyhow::bail!("trainerImage must be set");
        }
        if !self.artifacts_mount.is_absolute() {
            anyhow::bail!(
                "artifactsMount must be an absolute path, got {}",
                self.artifacts_mount.display()
            );
        }
        if let Some(p) = self
            .shared_prefixes
            .iter()
            .find(|p| p.trim_matches('/').is_empty() || p.split('/').any(|s| s == ".."))
        {
            anyhow::bail!(
                "sharedPrefixes: {p:?} is not a path prefix of the artifact volume (e.g. \"models\")"
            );
        }
        if let Some(store) = &self.artifact_store {
            let uri = tailor_artifacts::ArtifactUri::parse(&store.uri)
                .map_err(|e| anyhow::anyhow!("artifactStore.uri: {e}"))?;
            if uri.is_local() || !matches!(uri.scheme(), "s3" | "gs" | "az" | "abfs" | "abfss") {
                anyhow::bail!(
                    "artifactStore.uri {:?}: the artifact store is a bucket (s3://, gs://, az://, abfs://); without artifactStore the artifact claim is the store",
                    store.uri
                );
            }
            if store.credentials_secret.is_empty() {
                anyhow::bail!("artifactStore.credentialsSecret must name a Secret");
            }
        }
        if self.fetch_cache.is_some() {
            self.fetch_cache_volume()?;
        }
        if !(1..=15).contains(&self.progress_interval_seconds) {
            anyhow::bail!(
                "progressIntervalSeconds must be between 1 and 15, got {}",
                self.progress_interval_seconds
            );
        }
        Ok(())
    }

    /// `fetchCache` as the Pod volume `fetch-cache`.
    pub fn fetch_cache_volume(&self) -> anyhow::Result<Option<k8s_openapi::api::core::v1::Volume>> {
        let Some(source) = &self.fetch_cache else {
            return Ok(None);
        };
        let mut v = source.clone();
        let Some(o) = v.as_object_mut() else {
            anyhow::bail!(
                "fetchCache must be a volume source, e.g. {{\"hostPath\": {{\"path\": \"/var/cache/tailor\"}}}}"
            );
        };
        o.insert("name".into(), serde_json::json!(FETCH_CACHE_VOLUME));
        let vol: k8s_openapi::api::core::v1::Volume = serde_json::from_value(v)
            .map_err(|e| anyhow::anyhow!("fetchCache is not a volume source: {e}"))?;
        Ok(Some(vol))
    }

    /// A config for unit tests.
    pub fn for_tests() -> Self {
        serde_json::from_value(serde_json::json!({"trainerImage": "tailor-trainer:test"}))
            .unwrap_or_else(|_| unreachable!("static config parses"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_config_parses_with_defaults() {
        let cfg: OperatorConfig = serde_json::from_str(
            r#"{"trainerImage":"t:1","serverImage":"s:1","routerImage":"r:1","artifactsMount":"/artifacts","listen":"0.0.0.0:8080"}"#,
        )
        .expect("parses");
        assert_eq!(cfg.artifacts_claim, "tailor-artifacts");
        assert_eq!(cfg.progress_port, 9090);
        assert!(cfg.check().is_ok());
    }

    #[test]
    fn the_artifact_store_is_a_bucket_with_a_secret() {
        let with = |uri: &str, secret: &str| {
            let mut cfg = OperatorConfig::for_tests();
            cfg.artifact_store = Some(ArtifactStore {
                uri: uri.into(),
                credentials_secret: secret.into(),
            });
            cfg.check().map_err(|e| e.to_string())
        };
        for ok in [
            "s3://ml-artifacts/tailor",
            "gs://ml-artifacts/tailor",
            "az://mlstore/tailor",
        ] {
            with(ok, "tailor-store").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "pvc://tailor-artifacts/x",
            "hf://org/name",
            "https://example.com/x",
            "file:///x",
        ] {
            let e = with(bad, "tailor-store").expect_err(bad);
            assert!(e.contains("artifactStore.uri"), "{e}");
        }
        let e = with("s3://ml-artifacts/tailor", "").expect_err("no Secret");
        assert!(e.contains("credentialsSecret"), "{e}");
    }

    #[test]
    fn relative_mount_is_rejected() {
        let mut cfg = OperatorConfig::for_tests();
        cfg.artifacts_mount = "artifacts".into();
        assert!(cfg.check().is_err());
    }
}
