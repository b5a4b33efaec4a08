//! Deployments (a ReplicaSet per pod-template hash, rolling replacement within maxSurge and
//! maxUnavailable, status and conditions) and ReplicaSets (pods per replica count).

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::{Cluster, DeleteOpts, WriteOpts};
use crate::controllers::job::pod_from_template;
use crate::controllers::{Created, create_pods, is_controlled_by, owner_ref, set_condition};

/// Kubernetes' pod-template-hash alphabet (no vowels, no ambiguous characters).
fn template_hash(template: &Value) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let d = Sha256::digest(template.to_string().as_bytes());
    let mut n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    let mut s = String::new();
    for _ in 0..10 {
        s.push(ALPHA[(n % ALPHA.len() as u64) as usize] as char);
        n /= ALPHA.len() as u64;
    }
    s
}

fn resolve(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s.ends_with('%') => {
            let p: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = p * total as f64 / 100.0;
            if round_up {
                x.ceil() as i64
            } else {
                x.floor() as i64
            }
        }
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    let (Ok(d_rt), Ok(rs_rt)) = (
        cluster.rt("apps", "deployments"),
        cluster.rt("apps", "replicasets"),
    ) else {
        return;
    };
    let (deps, _) = cluster.store.list(&d_rt.gr(), None);
    if deps.is_empty() {
        return;
    }
    let (all_rs, _) = cluster.store.list(&rs_rt.gr(), None);
    for d in deps {
        if !d["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = d["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let spec = &d["spec"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1);
        let mut template = spec["template"].clone();
        let hash = template_hash(&template);
        template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut rss: Vec<Arc<Value>> = all_rs
            .iter()
            .filter(|r| r["metadata"]["namespace"] == json!(ns) && is_controlled_by(r, &uid))
            .cloned()
            .collect();
        rss.sort_by_key(|r| {
            r["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        });
        let new_name = format!("{name}-{hash}");
        let max_rev = rss
            .iter()
            .filter_map(|r| {
                r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok())
            })
            .max()
            .unwrap_or(0);
        let new_rs = rss
            .iter()
            .find(|r| r["metadata"]["name"].as_str() == Some(new_name.as_str()))
            .cloned();
        let paused = spec["paused"].as_bool() == Some(true);
        let recreate = spec["strategy"]["type"].as_str() == Some("Recreate");
        let surge = resolve(
            &spec["strategy"]["rollingUpdate"]["maxSurge"],
            replicas,
            true,
        );
        let mut unavailable = resolve(
            &spec["strategy"]["rollingUpdate"]["maxUnavailable"],
            replicas,
            false,
        );
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let olds: Vec<&Arc<Value>> = rss
            .iter()
            .filter(|r| r["metadata"]["name"].as_str() != Some(new_name.as_str()))
            .collect();
        let old_total: i64 = olds.iter().map(|r| i(&r["spec"]["replicas"])).sum();
        let old_pods_running: i64 = olds.iter().map(|r| i(&r["status"]["replicas"])).sum();
        let revision = match &new_rs {
            Some(r) => r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(max_rev),
            None => max_rev + 1,
        };
        let new_rs = match new_rs {
            Some(r) => r,
            None if !paused => {
                let initial = if recreate {
                    if old_pods_running == 0 { replicas } else { 0 }
                } else if rss.is_empty() {
                    replicas
                } else {
                    (replicas + surge - old_total).clamp(0, replicas)
                };
                let mut sel = spec["selector"].clone();
                sel["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut labels = template["metadata"]["labels"].clone();
                labels["pod-template-hash"] = json!(hash);
                let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": new_name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(&d, true)],
                        "annotations": {"deployment.kubernetes.io/revision": revision.to_string(), "deployment.kubernetes.io/desired-replicas": replicas.to_string(), "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()}},
                    "spec": {"replicas": initial, "minReadySeconds": spec["minReadySeconds"].as_i64().unwrap_or(0), "selector": sel, "template": template}});
                match cluster.create(&rs_rt, &ns, rs, &WriteOpts::system("deployment-controller")) {
                    Ok(w) => w.obj,
                    Err(e) => {
                        tracing::warn!(deployment = %name, error = %e, "creating replicaset");
                        continue;
                    }
                }
            }
            None => continue,
        };
        let scale = |rs: &Value, n: i64| {
            if i(&rs["spec"]["replicas"]) != n {
                let mut r = rs.clone();
                r["spec"]["replicas"] = json!(n);
                r["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                    json!(replicas.to_string());
                let _ = cluster.update(
                    &rs_rt,
                    &ns,
                    rs["metadata"]["name"].as_str().unwrap_or(""),
                    r,
                    &WriteOpts::system("deployment-controller"),
                );
            }
        };
        if !paused {
            let new_cur = i(&new_rs["spec"]["replicas"]);
            if recreate {
                for o in &olds {
                    scale(o, 0);
                }
                if old_pods_running == 0 {
                    scale(&new_rs, replicas);
                }
            } else {
                // Scale up the new ReplicaSet within the surge budget.
                let total = old_total + new_cur;
                let target = if new_cur < replicas {
                    (new_cur + (replicas + surge - total).max(0)).min(replicas)
                } else {
                    replicas
                };
                scale(&new_rs, target);
                // Scale down old ones while keeping the minimum available.
                let min_available = replicas - unavailable;
                let new_available = i(&new_rs["status"]["availableReplicas"]);
                let old_available: i64 = olds
                    .iter()
                    .map(|r| i(&r["status"]["availableReplicas"]))
                    .sum();
                let mut can_remove = (new_available + old_available - min_available).max(0);
                for o in &olds {
                    let cur = i(&o["spec"]["replicas"]);
                    // Unavailable old pods can always go.
                    let unhealthy = (cur - i(&o["status"]["availableReplicas"])).max(0);
                    let remove = (unhealthy + can_remove).min(cur);
                    can_remove -= (remove - unhealthy).max(0);
                    scale(o, cur - remove);
                }
            }
        }
        // Old ReplicaSets beyond the history limit are deleted once scaled down.
        let limit = spec["revisionHistoryLimit"].as_i64().unwrap_or(10);
        let empty_olds: Vec<&&Arc<Value>> = olds
            .iter()
            .filter(|r| i(&r["spec"]["replicas"]) == 0 && i(&r["status"]["replicas"]) == 0)
            .collect();
        if empty_olds.len() as i64 > limit {
            for r in &empty_olds[..empty_olds.len() - limit as usize] {
                let _ = cluster.delete(
                    &rs_rt,
                    &ns,
                    r["metadata"]["name"].as_str().unwrap_or(""),
                    &DeleteOpts::default(),
                );
            }
        }
        // Status from the ReplicaSets as they are now.
        let (now_rs, _) = cluster.store.list(&rs_rt.gr(), Some(&ns));
        let mine: Vec<&Arc<Value>> = now_rs
            .iter()
            .filter(|r| is_controlled_by(r, &uid))
            .collect();
        let total: i64 = mine.iter().map(|r| i(&r["status"]["replicas"])).sum();
        let ready: i64 = mine.iter().map(|r| i(&r["status"]["readyReplicas"])).sum();
        let available: i64 = mine
            .iter()
            .map(|r| i(&r["status"]["availableReplicas"]))
            .sum();
        let new_now = mine
            .iter()
            .find(|r| r["metadata"]["name"].as_str() == Some(new_name.as_str()));
        let updated = new_now.map(|r| i(&r["status"]["replicas"])).unwrap_or(0);
        let new_avail = new_now
            .map(|r| i(&r["status"]["availableReplicas"]))
            .unwrap_or(0);
        let mut status = d["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        if available >= replicas - unavailable {
            set_condition(
                &mut conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            );
        } else {
            set_condition(
                &mut conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            );
        }
        let complete = updated == replicas && total == replicas && new_avail == replicas;
        if complete {
            set_condition(
                &mut conds,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            );
        } else if paused {
            set_condition(
                &mut conds,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
            );
        } else {
            set_condition(
                &mut conds,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{new_name}\" is progressing."),
            );
        }
        // A ReplicaSet's ReplicaFailure shows on its Deployment, as the deployment controller
        // copies it.
        match mine
            .iter()
            .flat_map(|r| r["status"]["conditions"].as_array().into_iter().flatten())
            .find(|c| c["type"] == "ReplicaFailure" && c["status"] == "True")
        {
            Some(f) => set_condition(
                &mut conds,
                "ReplicaFailure",
                "True",
                f["reason"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or(""),
            ),
            None => conds.retain(|c| c["type"] != "ReplicaFailure"),
        }
        status["conditions"] = Value::Array(conds);
        status["observedGeneration"] = d["metadata"]["generation"].clone();
        status["replicas"] = json!(total);
        status["updatedReplicas"] = json!(updated);
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(available);
        status["unavailableReplicas"] = json!((total.max(replicas) - available).max(0));
        for k in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ] {
            if status[k] == json!(0)
                && let Some(m) = status.as_object_mut()
            {
                m.remove(k);
            }
        }
        let mut n = (*d).clone();
        n["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
            json!(revision.to_string());
        if n != *d {
            let _ = cluster.update(
                &d_rt,
                &ns,
                &name,
                n,
                &WriteOpts::system("deployment-controller"),
            );
        }
        if status != d["status"]
            && let Some(cur) = cluster.store.get(&d_rt.gr(), &ns, &name)
        {
            let mut n = (*cur).clone();
            n["status"] = status;
            let _ = cluster.update(
                &d_rt,
                &ns,
                &name,
                n,
                &WriteOpts::status("deployment-controller"),
            );
        }
    }
}

pub fn reconcile_replicasets(cluster: &Arc<Cluster>) {
    let (Ok(rs_rt), Ok(pod_rt)) = (cluster.rt("apps", "replicasets"), cluster.rt("", "pods"))
    else {
        return;
    };
    let (rss, _) = cluster.store.list(&rs_rt.gr(), None);
    if rss.is_empty() {
        return;
    }
    let (pods, _) = cluster.store.list(&pod_rt.gr(), None);
    for rs in rss {
        let ns = rs["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = rs["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let mut mine: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == json!(ns) && is_controlled_by(p, &uid))
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Succeeded") | Some("Failed")
                    )
            })
            .collect();
        let want = if rs["metadata"]["deletionTimestamp"].is_null() {
            rs["spec"]["replicas"].as_i64().unwrap_or(1)
        } else {
            0
        };
        let have = mine.len() as i64;
        let mut created = Created::All;
        if have < want {
            let pods = (0..(want - have))
                .map(|_| pod_from_template(&rs["spec"]["template"], &ns, &format!("{name}-"), &rs));
            created = create_pods(cluster, &rs, pods, "replicaset-controller");
        } else if have > want {
            // Delete the least useful first: unscheduled, then not ready, then newest.
            mine.sort_by_key(|p| {
                (
                    p["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty()),
                    is_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    ),
                )
            });
            for p in mine.iter().take((have - want) as usize) {
                let _ = cluster.delete(
                    &pod_rt,
                    &ns,
                    p["metadata"]["name"].as_str().unwrap_or(""),
                    &DeleteOpts::default(),
                );
            }
        }
        let all_mine: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| {
                p["metadata"]["namespace"] == json!(ns)
                    && is_controlled_by(p, &uid)
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Succeeded") | Some("Failed")
                    )
            })
            .collect();
        let ready = all_mine
            .iter()
            .filter(|p| is_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
            .count();
        let mut status = json!({"replicas": all_mine.len(), "fullyLabeledReplicas": all_mine.len(), "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"]});
        // ReplicaFailure while pods are refused, as the ReplicaSet controller reports it.
        let mut conds: Vec<Value> = rs["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match &created {
            Created::Refused(msg) => {
                set_condition(&mut conds, "ReplicaFailure", "True", "FailedCreate", msg)
            }
            Created::All => conds.retain(|c| c["type"] != "ReplicaFailure"),
            Created::BackingOff => {}
        }
        if !conds.is_empty() {
            status["conditions"] = Value::Array(conds);
        }
        for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
            if status[k] == json!(0)
                && let Some(m) = status.as_object_mut()
            {
                m.remove(k);
            }
        }
        if status != rs["status"] {
            let mut n = (*rs).clone();
            n["status"] = status;
            let _ = cluster.update(
                &rs_rt,
                &ns,
                &name,
                n,
                &WriteOpts::status("replicaset-controller"),
            );
        }
    }
}
