//! Which adapters each serving pod holds, what to load or unload there, and whether a revision
//! is ready to serve, through the one adapter protocol tailor-server and vLLM both speak:
//! `GET /v1/models` (an adapter is an entry with a `parent`, its `root` the path it was loaded
//! from), vLLM's runtime LoRA API `POST /v1/load_lora_adapter {lora_name, lora_path}` and
//! `POST /v1/unload_lora_adapter {lora_name}`. A load that fails leaves nothing listed (vLLM
//! registers an adapter only once it loaded), so the failure is what the load call answered.

use std::collections::BTreeMap;

use tailor_api::{AdapterLoadFailure, PodAdapters};
use tailor_wire::server::ModelList;

use super::rollout::Readiness;

/// An adapter a server lists: registered and loadable (it may be evicted from memory and
/// reloaded on demand; that is still serving).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerAdapter {
    pub name: String,
    /// Where it was loaded from (`root`): a path in the pod, or the URI tailor-server fetched.
    pub path: String,
}

/// The adapters of a model listing.
pub fn adapters_of(list: &ModelList) -> Vec<ServerAdapter> {
    list.adapters()
        .map(|m| ServerAdapter {
            name: m.id.clone(),
            path: m.root.clone().unwrap_or_default(),
        })
        .collect()
}

/// The adapters in a `GET /v1/models` body.
pub fn parse_adapters(body: &[u8]) -> Result<Vec<ServerAdapter>, String> {
    serde_json::from_slice(body)
        .map(|l| adapters_of(&l))
        .map_err(|e| format!("GET /v1/models: {e}"))
}

/// What to change on one pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadPlan {
    /// (name, path) to load.
    pub load: Vec<(String, String)>,
    /// Names of `load` the pod holds at another path: unloaded right before they are loaded
    /// (every vLLM release can do that; `load_inplace` is newer).
    pub replace: Vec<String>,
    /// Names to unload.
    pub unload: Vec<String>,
}

/// `desired`: adapter name → path in the pod. An adapter is loaded when the pod does not list
/// it (never loaded, failed to load: the retry, or lost with a restart), and re-loaded when it
/// lists it at another path; one the pod lists but no revision serves any more is unloaded.
pub fn load_plan(listed: &[ServerAdapter], desired: &BTreeMap<String, String>) -> LoadPlan {
    let mut plan = LoadPlan::default();
    for (name, path) in desired {
        match listed.iter().find(|a| a.name == *name) {
            Some(a) if a.path == *path => {}
            Some(_) => {
                plan.replace.push(name.clone());
                plan.load.push((name.clone(), path.clone()));
            }
            None => plan.load.push((name.clone(), path.clone())),
        }
    }
    for a in listed {
        if !desired.contains_key(&a.name) {
            plan.unload.push(a.name.clone());
        }
    }
    plan
}

/// A pod's line in status: adapters it lists, and those this pass failed to load with the
/// server's answer.
pub fn pod_status(
    pod: &str,
    revision: &str,
    listed: &[ServerAdapter],
    load_errors: &BTreeMap<String, String>,
) -> PodAdapters {
    let mut loaded: Vec<String> = listed
        .iter()
        .filter(|a| !load_errors.contains_key(&a.name))
        .map(|a| a.name.clone())
        .collect();
    loaded.sort();
    PodAdapters {
        pod: pod.to_string(),
        revision: revision.to_string(),
        loaded,
        failed: load_errors
            .iter()
            .map(|(adapter, message)| AdapterLoadFailure {
                adapter: adapter.clone(),
                message: message.clone(),
            })
            .collect(),
    }
}

/// Whether the pods of a revision serve `adapters`: `ready_pods` of `replicas` ready, each
/// listing every adapter.
pub fn readiness(
    ready_pods: &[(&str, &[ServerAdapter])],
    replicas: i32,
    adapters: &[String],
) -> Readiness {
    let want = usize::try_from(replicas.max(1)).unwrap_or(1);
    if ready_pods.len() < want {
        return Readiness::pods_not_ready(format!("{}/{want} pods ready", ready_pods.len()));
    }
    let mut missing = vec![];
    for (pod, listed) in ready_pods {
        for a in adapters {
            if !listed.iter().any(|l| l.name == *a) {
                missing.push(format!("{a} not loaded on {pod}"));
            }
        }
    }
    if missing.is_empty() {
        let what = if adapters.is_empty() {
            String::new()
        } else {
            format!(", adapters {} loaded", adapters.join(", "))
        };
        Readiness::ready(format!("{}/{want} pods ready{what}", ready_pods.len()))
    } else {
        missing.truncate(3);
        Readiness::not_ready(missing.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, path: &str) -> ServerAdapter {
        ServerAdapter {
            name: name.into(),
            path: path.into(),
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_adapters_of_a_model_listing_as_vllm_writes_it() {
        // vLLM's /v1/models with one runtime-loaded adapter (its ModelCard fields, permission
        // list included): the base model has no parent, the adapter's root is its lora_path.
        let body = br#"{"object":"list","data":[
            {"id":"base","object":"model","created":1733000000,"owned_by":"vllm","root":"/artifacts/models/base","parent":null,"max_model_len":2048,"permission":[{"id":"modelperm-1","object":"model_permission","created":1733000000,"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]},
            {"id":"support-v1","object":"model","created":1733000000,"owned_by":"vllm","root":"/artifacts/adapters/support-v1","parent":"base","max_model_len":null,"permission":[]}]}"#;
        let l = parse_adapters(body).expect("parse");
        assert_eq!(l, [listed("support-v1", "/artifacts/adapters/support-v1")]);
        let e = parse_adapters(b"[]").expect_err("not a model list");
        assert!(e.starts_with("GET /v1/models: "), "{e}");
    }

    #[test]
    fn loads_missing_adapters_replaces_moved_ones_and_unloads_stale_ones() {
        let have = [
            listed("support-v1", "/a/support-v1"),
            listed("support-v2", "/old/support-v2"),
            listed("old", "/a/old"),
        ];
        let want = desired(&[
            ("support-v1", "/a/support-v1"),
            ("support-v2", "/a/support-v2"),
            ("support-v3", "/a/support-v3"),
        ]);
        let plan = load_plan(&have, &want);
        assert_eq!(
            plan.load,
            [
                ("support-v2".to_string(), "/a/support-v2".to_string()),
                ("support-v3".to_string(), "/a/support-v3".to_string())
            ]
        );
        assert_eq!(plan.replace, ["support-v2"]);
        assert_eq!(plan.unload, ["old"]);
        // Nothing to do once everything is in place.
        let have = [
            listed("support-v1", "/a/support-v1"),
            listed("support-v2", "/a/support-v2"),
        ];
        let want = desired(&[
            ("support-v1", "/a/support-v1"),
            ("support-v2", "/a/support-v2"),
        ]);
        assert_eq!(load_plan(&have, &want), LoadPlan::default());
    }

    #[test]
    fn status_names_loaded_and_failed_adapters() {
        let have = [
            listed("support-v1", "/a/support-v1"),
            listed("faq-v1", "/a/faq-v1"),
        ];
        let errors = BTreeMap::from([("support-v2".to_string(), "no such file".to_string())]);
        let s = pod_status("support-aaaaaaaa-x1", "aaaaaaaa", &have, &errors);
        assert_eq!(s.loaded, ["faq-v1", "support-v1"]);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.failed[0].adapter, "support-v2");
        assert_eq!(s.failed[0].message, "no such file");
    }

    #[test]
    fn readiness_needs_every_pod_and_every_adapter() {
        let good = [listed("support-v1", "/a")];
        let want = vec!["support-v1".to_string()];
        let r = readiness(&[("p1", &good[..])], 2, &want);
        assert_eq!(r, Readiness::pods_not_ready("1/2 pods ready"));
        assert!(r.waits_for_pods, "a pod event changes this");
        let r = readiness(&[("p1", &good[..]), ("p2", &[][..])], 2, &want);
        assert!(
            !r.ready && !r.waits_for_pods,
            "what a server holds is polled"
        );
        assert_eq!(r.message, "support-v1 not loaded on p2");
        let r = readiness(&[("p1", &good[..]), ("p2", &good[..])], 2, &want);
        assert_eq!(
            r,
            Readiness::ready("2/2 pods ready, adapters support-v1 loaded")
        );
    }
}
