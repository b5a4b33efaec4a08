//! Garbage collection by owner references (background and foreground) and namespace deletion.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use crate::cluster::{Cluster, DeleteOpts, WriteOpts};

fn all_objects(cluster: &Cluster) -> Vec<(String, Arc<Value>)> {
    let mut out = vec![];
    for gr in cluster.store.types() {
        let (items, _) = cluster.store.list(&gr, None);
        out.extend(items.into_iter().map(|o| (gr.clone(), o)));
    }
    out
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    let objs = all_objects(cluster);
    let uids: HashSet<&str> = objs
        .iter()
        .filter_map(|(_, o)| o["metadata"]["uid"].as_str())
        .collect();
    for (gr, o) in &objs {
        let refs = o["metadata"]["ownerReferences"].as_array();
        let Some(refs) = refs.filter(|r| !r.is_empty()) else {
            continue;
        };
        if refs
            .iter()
            .any(|r| r["uid"].as_str().is_some_and(|u| uids.contains(u)))
        {
            continue;
        }
        if !o["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let Some((g, p)) = gr.split_once('/') else {
            continue;
        };
        let Some(rt) = cluster.registry.find_gr(g, p) else {
            continue;
        };
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
        let name = o["metadata"]["name"].as_str().unwrap_or("");
        tracing::debug!(resource = %gr, ns, name, "garbage collecting orphaned dependent");
        let _ = cluster.delete(
            &rt,
            ns,
            name,
            &DeleteOpts {
                propagation: Some("Background".into()),
                precondition_uid: o["metadata"]["uid"].as_str().map(String::from),
                ..Default::default()
            },
        );
    }
    // Foreground deletion: dependents go first, then the owner's finalizer is removed.
    for (gr, o) in &objs {
        if o["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let fins = o["metadata"]["finalizers"].as_array();
        if !fins
            .into_iter()
            .flatten()
            .any(|f| f.as_str() == Some("foregroundDeletion"))
        {
            continue;
        }
        let uid = o["metadata"]["uid"].as_str().unwrap_or("");
        let deps = cluster.dependents(uid);
        for (rt, d) in &deps {
            if d["metadata"]["deletionTimestamp"].is_null() {
                let _ = cluster.delete(
                    rt,
                    d["metadata"]["namespace"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or(""),
                    &DeleteOpts {
                        propagation: Some("Foreground".into()),
                        ..Default::default()
                    },
                );
            }
        }
        if deps.is_empty() {
            let Some((g, p)) = gr.split_once('/') else {
                continue;
            };
            let Some(rt) = cluster.registry.find_gr(g, p) else {
                continue;
            };
            let mut n = (**o).clone();
            if let Some(f) = n["metadata"]["finalizers"].as_array_mut() {
                f.retain(|x| x.as_str() != Some("foregroundDeletion"));
            }
            let _ = cluster.update(
                &rt,
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or(""),
                n,
                &WriteOpts::system("garbage-collector"),
            );
        }
    }
}

/// Terminating namespaces: delete their content, then finalize and remove them.
pub fn namespaces(cluster: &Arc<Cluster>) {
    let (nss, _) = cluster.store.list("/namespaces", None);
    for n in nss
        .iter()
        .filter(|n| !n["metadata"]["deletionTimestamp"].is_null())
    {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut remaining = 0;
        for gr in cluster.store.types() {
            let Some((g, p)) = gr.split_once('/') else {
                continue;
            };
            let Some(rt) = cluster.registry.find_gr(g, p) else {
                continue;
            };
            if !rt.namespaced {
                continue;
            }
            let (items, _) = cluster.store.list(&gr, Some(&name));
            remaining += items.len();
            for o in items {
                if o["metadata"]["deletionTimestamp"].is_null() {
                    let _ = cluster.delete(
                        &rt,
                        &name,
                        o["metadata"]["name"].as_str().unwrap_or(""),
                        &DeleteOpts {
                            propagation: Some("Background".into()),
                            ..Default::default()
                        },
                    );
                }
            }
        }
        if remaining > 0 {
            continue;
        }
        let Ok(rt) = cluster.rt("", "namespaces") else {
            return;
        };
        let mut o = (**n).clone();
        o["spec"]["finalizers"] = serde_json::json!([]);
        if o["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
        {
            cluster.force_remove(&rt, "", &name, n["metadata"]["uid"].as_str());
        } else if o != **n {
            let _ = cluster.update(
                &rt,
                "",
                &name,
                o,
                &WriteOpts::system("namespace-controller"),
            );
        }
    }
}
