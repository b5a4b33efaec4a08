//! Which adapters each serving pod holds (tailor-server's `GET /admin/adapters`), what to load
//! or unload there (`POST /admin/adapters {name, path}`, `DELETE /admin/adapters/NAME`), and
//! whether a revision is ready to serve.

use std::collections::BTreeMap;

use serde::Deserialize;
use tailor_api::{AdapterLoadFailure, PodAdapters};

use super::rollout::Readiness;

/// One entry of `GET /admin/adapters`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct ServerAdapter {
    pub name: String,
    pub path: String,
    pub loaded: bool,
    #[serde(default)]
    pub error: Option<String>,
}

pub fn parse_adapters(body: &[u8]) -> Result<Vec<ServerAdapter>, String> {
    serde_json::from_slice(body).map_err(|e| format!("GET /admin/adapters: {e}"))
}

/// What to change on one pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadPlan {
    /// (name, path) to `POST`.
    pub load: Vec<(String, String)>,
    /// Names to `DELETE`.
    pub unload: Vec<String>,
}

/// `desired`: adapter name → path in the pod. An adapter is (re)loaded when the pod does not
/// know it, knows it at another path, or failed to load it (the retry); one the pod knows
/// but no revision serves any more is unloaded.
pub fn load_plan(listed: &[ServerAdapter], desired: &BTreeMap<String, String>) -> LoadPlan {
    let mut plan = LoadPlan::default();
    for (name, path) in desired {
        let ok = listed
            .iter()
            .any(|a| a.name == *name && a.path == *path && a.error.is_none());
        if !ok {
            plan.load.push((name.clone(), path.clone()));
        }
    }
    for a in listed {
        if !desired.contains_key(&a.name) {
            plan.unload.push(a.name.clone());
        }
    }
    plan
}

/// A pod's line in status: adapters it has loaded, and those that failed (from the listing
/// or from this pass's load attempts), with the server's error.
pub fn pod_status(
    pod: &str,
    revision: &str,
    listed: &[ServerAdapter],
    load_errors: &BTreeMap<String, String>,
) -> PodAdapters {
    let mut loaded: Vec<String> = listed
        .iter()
        .filter(|a| a.loaded && a.error.is_none() && !load_errors.contains_key(&a.name))
        .map(|a| a.name.clone())
        .collect();
    loaded.sort();
    let mut failed: BTreeMap<String, String> = listed
        .iter()
        .filter_map(|a| a.error.clone().map(|e| (a.name.clone(), e)))
        .collect();
    failed.extend(load_errors.clone());
    PodAdapters {
        pod: pod.to_string(),
        revision: revision.to_string(),
        loaded,
        failed: failed
            .into_iter()
            .map(|(adapter, message)| AdapterLoadFailure { adapter, message })
            .collect(),
    }
}

/// Whether the pods of a revision serve `adapters`: `ready_pods` of `replicas` ready, and on
/// every ready pod each adapter registered without error (it may be evicted by the LRU and
/// reloaded on demand; that is still serving).
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
            match listed.iter().find(|l| l.name == *a) {
                Some(l) if l.error.is_none() => {}
                Some(l) => missing.push(format!(
                    "{a} failed to load on {pod}: {}",
                    l.error.clone().unwrap_or_default()
                )),
                None => missing.push(format!("{a} not loaded on {pod}")),
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

    fn listed(name: &str, path: &str, loaded: bool, error: Option<&str>) -> ServerAdapter {
        ServerAdapter {
            name: name.into(),
            path: path.into(),
            loaded,
            error: error.map(String::from),
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_servers_listing() {
        let body = br#"[{"name":"support-v1","path":"/artifacts/adapters/support-v1","loaded":true},
                        {"name":"support-v2","path":"/artifacts/adapters/support-v2","loaded":false,"error":"adapter_config.json: base model mismatch"}]"#;
        let l = parse_adapters(body).expect("parse");
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[1].error.as_deref(),
            Some("adapter_config.json: base model mismatch")
        );
    }

    #[test]
    fn loads_missing_and_failed_adapters_and_unloads_stale_ones() {
        let have = [
            listed("support-v1", "/a/support-v1", true, None),
            listed("support-v2", "/a/support-v2", false, Some("truncated file")),
            listed("old", "/a/old", true, None),
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
        assert_eq!(plan.unload, ["old"]);
        // Nothing to do once everything is in place.
        let have = [
            listed("support-v1", "/a/support-v1", true, None),
            listed("support-v2", "/a/support-v2", false, None),
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
            listed("support-v1", "/a/support-v1", true, None),
            listed("faq-v1", "/a/faq-v1", false, None),
        ];
        let errors = BTreeMap::from([("support-v2".to_string(), "no such file".to_string())]);
        let s = pod_status("support-aaaaaaaa-x1", "aaaaaaaa", &have, &errors);
        assert_eq!(s.loaded, ["support-v1"]);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.failed[0].adapter, "support-v2");
        assert_eq!(s.failed[0].message, "no such file");
    }

    #[test]
    fn readiness_needs_every_pod_and_every_adapter() {
        let good = [listed("support-v1", "/a", true, None)];
        let bad = [listed(
            "support-v1",
            "/a",
            false,
            Some("CUDA out of memory"),
        )];
        let want = vec!["support-v1".to_string()];
        let r = readiness(&[("p1", &good[..])], 2, &want);
        assert_eq!(r, Readiness::pods_not_ready("1/2 pods ready"));
        assert!(r.waits_for_pods, "a pod event changes this");
        let r = readiness(&[("p1", &good[..]), ("p2", &bad[..])], 2, &want);
        assert!(
            !r.ready && !r.waits_for_pods,
            "what a server holds is polled"
        );
        assert_eq!(
            r.message,
            "support-v1 failed to load on p2: CUDA out of memory"
        );
        let r = readiness(&[("p1", &good[..]), ("p2", &[][..])], 2, &want);
        assert_eq!(r.message, "support-v1 not loaded on p2");
        let r = readiness(&[("p1", &good[..]), ("p2", &good[..])], 2, &want);
        assert_eq!(
            r,
            Readiness::ready("2/2 pods ready, adapters support-v1 loaded")
        );
    }
}
