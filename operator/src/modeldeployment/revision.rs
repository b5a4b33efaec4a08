//! A revision is the hash of what it serves (DESIGN.md §2).
//!
//! Two parts, because GPUs are expensive: the *pod* part hashes what the serving pods run (base
//! model, served name, server settings) and names the Deployment; the *adapter* part hashes the
//! adapter set (served name → LoraAdapter and its artifact). A revision is `<pod>-<adapters>`, so
//! two revisions with the same pod part run on the same pods and a rollout between them is an
//! adapter canary. Replicas, resources and scheduling are not part of either: changing them
//! changes the running Deployment in place and rolls nothing out.
//!
//! The hashed structs are ours, with explicit fields, so a new optional field in the API does
//! not change every revision (and start a canary everywhere) after an operator upgrade.

use serde::{Deserialize, Serialize};
use tailor_api::{Dtype, ModelDeploymentSpec, RolloutKind, Runtime};

use crate::jobs::hash_json;

/// Hex digits of the pod part.
const POD_HASH_LEN: usize = 8;
/// Hex digits of the adapter part.
const ADAPTER_HASH_LEN: usize = 6;

/// An adapter as served: the served name and the LoraAdapter (and artifact) behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAdapter {
    /// The model name clients use.
    pub served_name: String,
    /// The LoraAdapter's name: also the adapter's name on the server and the router target's
    /// model, so responses say which adapter answered.
    pub adapter: String,
    /// The adapter artifact (immutable once the LoraAdapter is Ready).
    pub uri: String,
    /// Its checksum, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its LoRA rank (the LoraAdapter's `rank`): vLLM's `--max-lora-rank` must cover it. Not
    /// hashed: it follows from the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// The Secret a fetched adapter is read with (the LoraAdapter's `credentialsSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// Validation loss of the adapter and of the base model, from the LoraAdapter's lineage
    /// (the optional gate). Not hashed: the same artifact is the same revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_validation_loss: Option<f64>,
    /// Its evaluation against the base model, from the LoraAdapter's lineage (the gate). Not
    /// hashed either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<tailor_wire::eval::Evaluation>,
}

/// What the serving pods run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub base_model_uri: String,
    /// The Secret a fetched base model is read with (absent when none, as `template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_credentials: Option<String>,
    /// The Hub commit an `hf://` base model without one is pinned to when the revision is first
    /// seen (kept in the revision's snapshot). Not hashed: the revision is what the spec asks
    /// for; the pin only says which bytes that was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_revision: Option<String>,
    /// The Secret the servers fetch adapters stored in buckets or on the Hub with (one per
    /// deployment; absent when none, as `template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_credentials: Option<String>,
    pub served_name: String,
    pub max_batch_size: u32,
    pub max_seq_length: u32,
    pub max_loaded_adapters: u32,
    /// The server's `--dtype` value.
    pub dtype: String,
    /// The serving pods' template additions (absent when none, so revisions made before the
    /// field existed keep their names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<tailor_api::PodTemplate>,
    /// The engine (absent for tailor-server, so revisions made before the field existed keep
    /// their names; likewise the fields below).
    #[serde(default, skip_serializing_if = "is_tailor")]
    pub runtime: Runtime,
    /// The image instead of the operator's default for the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// vLLM's `--max-lora-rank` (see [`vllm_max_lora_rank`]): an adapter of a higher rank needs
    /// other pods, so it is part of what the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lora_rank: Option<u32>,
}

fn is_tailor(r: &Runtime) -> bool {
    *r == Runtime::Tailor
}

pub use tailor_wire::server::VLLM_LORA_RANKS;
/// vLLM's default `--max-lora-rank`, also tailor's floor: adapters of rank 16 or below share
/// pods whatever their rank, so an adapter canary between them needs no new pods.
pub const VLLM_DEFAULT_LORA_RANK: u32 = 16;

/// The `--max-lora-rank` that serves adapters of `ranks`: the smallest rank vLLM accepts that
/// covers them all and the default; `None` beyond vLLM's largest (512).
pub fn vllm_max_lora_rank(ranks: impl IntoIterator<Item = u32>) -> Option<u32> {
    let need = ranks.into_iter().fold(VLLM_DEFAULT_LORA_RANK, u32::max);
    VLLM_LORA_RANKS.into_iter().find(|r| *r >= need)
}

/// Everything a revision serves. Stored (as JSON) in the revision's snapshot ConfigMap, so that
/// the stable revision can still be served after the spec has moved on, also across restarts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    pub pods: PodSpec,
    /// Sorted by served name.
    pub adapters: Vec<ResolvedAdapter>,
}

/// The server's `--dtype` spelling of the API's dtype.
pub fn dtype_arg(d: Dtype) -> &'static str {
    match d {
        Dtype::Auto => "auto",
        Dtype::Float32 => "f32",
        Dtype::Bfloat16 => "bf16",
        Dtype::Float16 => "f16",
    }
}

impl RevisionSpec {
    /// The revision the spec asks for, given its adapters resolved to LoraAdapters.
    pub fn new(spec: &ModelDeploymentSpec, mut adapters: Vec<ResolvedAdapter>) -> Self {
        adapters.sort_by(|a, b| (&a.served_name, &a.adapter).cmp(&(&b.served_name, &b.adapter)));
        Self {
            pods: PodSpec {
                base_model_uri: spec.base_model.uri.clone(),
                base_model_credentials: spec
                    .base_model
                    .credentials_secret_ref
                    .as_ref()
                    .map(|r| r.name.clone()),
                base_model_revision: None,
                adapter_credentials: adapters.iter().find_map(|a| a.credentials.clone()),
                served_name: spec.base_model.served_name.clone(),
                max_batch_size: spec.server.max_batch_size,
                max_seq_length: spec.server.max_seq_length,
                max_loaded_adapters: spec.server.max_loaded_adapters,
                dtype: dtype_arg(spec.server.dtype).to_string(),
                template: spec.server.pod_template.clone(),
                runtime: spec.runtime,
                image: spec.server.image.clone(),
                extra_args: spec.server.extra_args.clone(),
                max_lora_rank: match spec.runtime {
                    Runtime::Tailor => None,
                    // Beyond 512 the spec is refused (see `runtime::check`); 512 names the pods
                    // meanwhile.
                    Runtime::Vllm => Some(
                        vllm_max_lora_rank(adapters.iter().filter_map(|a| a.rank)).unwrap_or(512),
                    ),
                },
            },
            adapters,
        }
    }

    /// Hash of what the pods run; names the revision's Deployment, Service and server config.
    pub fn pod_revision(&self) -> String {
        let pods = PodSpec {
            base_model_revision: None,
            ..self.pods.clone()
        };
        let v = serde_json::to_value(&pods).unwrap_or_default();
        hash_json(&v)[..POD_HASH_LEN].to_string()
    }

    /// Hash of the adapter set (served name, LoraAdapter, artifact and checksum).
    pub fn adapter_revision(&self) -> String {
        let set: Vec<_> = self
            .adapters
            .iter()
            .map(|a| (&a.served_name, &a.adapter, &a.uri, &a.sha256))
            .collect();
        let v = serde_json::to_value(set).unwrap_or_default();
        hash_json(&v)[..ADAPTER_HASH_LEN].to_string()
    }

    /// `<pod>-<adapters>`.
    pub fn revision(&self) -> String {
        format!("{}-{}", self.pod_revision(), self.adapter_revision())
    }

    /// The adapter served under `served_name`, if any.
    pub fn adapter_for(&self, served_name: &str) -> Option<&ResolvedAdapter> {
        self.adapters.iter().find(|a| a.served_name == served_name)
    }
}

impl PodSpec {
    /// The URI the pods fetch the base model from: pinned to its Hub commit when there is one.
    /// The pin is read back from a snapshot ConfigMap in the tenant's namespace, so only a commit
    /// sha is taken as one.
    pub fn base_model_fetch_uri(&self) -> String {
        match (
            &self.base_model_revision,
            tailor_artifacts::ArtifactUri::parse(&self.base_model_uri),
        ) {
            (Some(sha), Ok(u @ tailor_artifacts::ArtifactUri::Hf { .. }))
                if tailor_artifacts::hub::is_commit_sha(sha) =>
            {
                u.with_revision(Some(sha.clone())).to_string()
            }
            _ => self.base_model_uri.clone(),
        }
    }
}

/// The pod part of a revision.
pub fn pod_part(revision: &str) -> &str {
    revision.split_once('-').map_or(revision, |(p, _)| p)
}

/// How `canary` rolls out over `stable`: on the same pods when only adapters changed.
pub fn rollout_kind(stable: &str, canary: &str) -> RolloutKind {
    if pod_part(stable) == pod_part(canary) {
        RolloutKind::Adapter
    } else {
        RolloutKind::Pod
    }
}

/// Served names whose adapter differs between two revisions (added, removed or re-pointed):
/// what an adapter canary splits.
pub fn changed_routes(stable: &RevisionSpec, canary: &RevisionSpec) -> Vec<String> {
    let mut names: Vec<String> = stable
        .adapters
        .iter()
        .chain(&canary.adapters)
        .map(|a| a.served_name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| {
            let key = |s: &RevisionSpec| {
                s.adapter_for(n)
                    .map(|a| (a.adapter.clone(), a.uri.clone(), a.sha256.clone()))
            };
            key(stable) != key(canary)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailor_api::ModelDeployment;

    fn spec() -> ModelDeploymentSpec {
        let md: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "tailor.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "support"},
            "spec": {
                "baseModel": {"uri": "pvc://tailor-artifacts/models/base", "servedName": "base"},
                "adapters": [{"name": "support", "adapterRef": {"name": "support-v1"}}],
                "replicas": 2
            }
        }))
        .expect("spec");
        md.spec
    }

    fn adapter(served: &str, name: &str) -> ResolvedAdapter {
        ResolvedAdapter {
            served_name: served.into(),
            adapter: name.into(),
            uri: format!("pvc://tailor-artifacts/adapters/{name}"),
            sha256: Some("ab".repeat(32)),
            rank: Some(8),
            credentials: None,
            validation_loss: Some(0.9),
            base_validation_loss: Some(2.0),
            evaluation: None,
        }
    }

    #[test]
    fn replicas_resources_and_scheduling_do_not_change_the_revision() {
        let base = RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]);
        let mut s = spec();
        s.replicas = 7;
        s.resources.gpus = 4;
        s.node_selector.insert("gpu".into(), "a100".into());
        s.rollout.steps.truncate(1);
        let other = RevisionSpec::new(&s, vec![adapter("support", "support-v1")]);
        assert_eq!(base.revision(), other.revision());
    }

    #[test]
    fn a_hub_pin_changes_what_pods_fetch_but_not_the_revision() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let mut s = spec();
        s.base_model.uri = "hf://org/base/weights".into();
        let mut r = RevisionSpec::new(&s, vec![adapter("support", "support-v1")]);
        let name = r.revision();
        assert_eq!(r.pods.base_model_fetch_uri(), "hf://org/base/weights");
        r.pods.base_model_revision = Some(sha.into());
        assert_eq!(r.revision(), name, "the revision is what the spec asks for");
        assert_eq!(
            r.pods.base_model_fetch_uri(),
            format!("hf://org/base@{sha}/weights")
        );
        // The snapshot keeps the pin (a restart or a new replica fetches the same commit).
        let back: RevisionSpec =
            serde_json::from_value(serde_json::to_value(&r).expect("json")).expect("snapshot");
        assert_eq!(back.pods.base_model_revision.as_deref(), Some(sha));
        // A pin that is not a commit (an edited snapshot) is not used.
        r.pods.base_model_revision = Some("../../other".into());
        assert_eq!(r.pods.base_model_fetch_uri(), "hf://org/base/weights");
        // A URI that is not the Hub's fetches as written.
        let mut p = RevisionSpec::new(&spec(), vec![]);
        p.pods.base_model_revision = Some(sha.into());
        assert_eq!(
            p.pods.base_model_fetch_uri(),
            "pvc://tailor-artifacts/models/base"
        );
    }

    #[test]
    fn a_new_adapter_changes_only_the_adapter_part() {
        let v1 = RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]);
        let v2 = RevisionSpec::new(&spec(), vec![adapter("support", "support-v2")]);
        assert_ne!(v1.revision(), v2.revision());
        assert_eq!(v1.pod_revision(), v2.pod_revision());
        assert_eq!(
            rollout_kind(&v1.revision(), &v2.revision()),
            RolloutKind::Adapter
        );
        assert_eq!(changed_routes(&v1, &v2), ["support"]);
    }

    #[test]
    fn server_settings_or_base_model_make_a_pod_canary() {
        let v1 = RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]);
        let mut s = spec();
        s.server.max_batch_size = 32;
        let batch = RevisionSpec::new(&s, vec![adapter("support", "support-v1")]);
        let mut s = spec();
        s.base_model.uri = "pvc://tailor-artifacts/models/bigger".into();
        let base = RevisionSpec::new(&s, vec![adapter("support", "support-v1")]);
        for other in [batch, base] {
            assert_ne!(v1.pod_revision(), other.pod_revision());
            assert_eq!(v1.adapter_revision(), other.adapter_revision());
            assert_eq!(
                rollout_kind(&v1.revision(), &other.revision()),
                RolloutKind::Pod
            );
        }
    }

    #[test]
    fn adapter_order_and_lineage_do_not_matter() {
        let a = RevisionSpec::new(
            &spec(),
            vec![adapter("support", "support-v1"), adapter("faq", "faq-v3")],
        );
        let mut faq = adapter("faq", "faq-v3");
        faq.validation_loss = Some(0.1);
        let b = RevisionSpec::new(&spec(), vec![faq, adapter("support", "support-v1")]);
        assert_eq!(a.revision(), b.revision());
        assert!(changed_routes(&a, &b).is_empty());
    }

    #[test]
    fn revisions_are_short_stable_names() {
        let v1 = RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]);
        let r = v1.revision();
        assert_eq!(r.len(), POD_HASH_LEN + 1 + ADAPTER_HASH_LEN);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_eq!(pod_part(&r), v1.pod_revision());
        // Same input, same name: across operator restarts and replicas.
        assert_eq!(
            r,
            RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]).revision()
        );
    }

    #[test]
    fn adding_or_removing_a_served_name_is_a_changed_route() {
        let one = RevisionSpec::new(&spec(), vec![adapter("support", "support-v1")]);
        let two = RevisionSpec::new(
            &spec(),
            vec![adapter("support", "support-v1"), adapter("faq", "faq-v1")],
        );
        assert_eq!(changed_routes(&one, &two), ["faq"]);
        assert_eq!(changed_routes(&two, &one), ["faq"]);
    }
}
