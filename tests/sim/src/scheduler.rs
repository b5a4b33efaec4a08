//! The scheduler: requests (cpu, memory, nvidia.com/gpu and other extended resources),
//! nodeSelector, required node affinity, taints and tolerations; binds to the least-loaded
//! feasible node and assigns GPU device ids; otherwise PodScheduled=False/Unschedulable with the
//! real scheduler's message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::cluster::{Cluster, WriteOpts, now};
use crate::selectors::LabelSelector;

pub const GPU_ANNOTATION: &str = "sim.tailor.dev/gpu-ids";

/// A Kubernetes quantity in milli-units.
pub fn parse_quantity(q: &Value) -> i64 {
    let s = match q {
        Value::Number(n) => return (n.as_f64().unwrap_or(0.0) * 1000.0) as i64,
        Value::String(s) => s.trim(),
        _ => return 0,
    };
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("m", 1e-3),
        ("u", 1e-6),
        ("n", 1e-9),
    ];
    for (suf, mul) in suffixes {
        if let Some(num) = s.strip_suffix(suf)
            && let Ok(v) = num.parse::<f64>()
        {
            return (v * mul * 1000.0).round() as i64;
        }
    }
    s.parse::<f64>()
        .map(|v| (v * 1000.0).round() as i64)
        .unwrap_or(0)
}

/// Effective requests of a pod (extended resources default their request to the limit).
pub fn pod_requests(pod: &Value) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let mut res: BTreeMap<String, i64> = BTreeMap::new();
        for (k, v) in c["resources"]["limits"].as_object().into_iter().flatten() {
            res.insert(k.clone(), parse_quantity(v));
        }
        for (k, v) in c["resources"]["requests"].as_object().into_iter().flatten() {
            res.insert(k.clone(), parse_quantity(v));
        }
        for (k, v) in res {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

fn tolerates(tols: &Value, taint: &Value) -> bool {
    tols.as_array().into_iter().flatten().any(|t| {
        let key_ok = t["key"]
            .as_str()
            .is_none_or(|k| k.is_empty() || Some(k) == taint["key"].as_str());
        let op = t["operator"].as_str().unwrap_or("Equal");
        let val_ok = op == "Exists"
            || t["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("");
        let eff_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
        let any_key = t["key"].as_str().is_none_or(str::is_empty) && op == "Exists";
        (key_ok && val_ok && eff_ok) || any_key
    })
}

fn affinity_ok(pod: &Value, labels: &Value) -> bool {
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let Some(terms) = terms.as_array() else {
        return true;
    };
    terms.iter().any(|t| {
        LabelSelector::from_object(&json!({"matchExpressions": t["matchExpressions"]}))
            .matches(labels)
    })
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    let Ok(pod_rt) = cluster.rt("", "pods") else {
        return;
    };
    let (pods, _) = cluster.store.list(&pod_rt.gr(), None);
    let pending: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| {
            p["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter(|p| {
            p["spec"]["schedulerName"]
                .as_str()
                .is_none_or(|s| s == "default-scheduler")
        })
        .filter(|p| {
            p["spec"]["schedulingGates"]
                .as_array()
                .is_none_or(|g| g.is_empty())
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    let (nodes, _) = cluster.store.list("/nodes", None);
    // Usage per node from bound, non-terminal pods.
    let mut used: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
    let mut gpus_used: HashMap<String, Vec<i64>> = HashMap::new();
    let mut pod_count: HashMap<String, i64> = HashMap::new();
    for p in &pods {
        let Some(n) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            continue;
        };
        if matches!(
            p["status"]["phase"].as_str(),
            Some("Succeeded") | Some("Failed")
        ) {
            continue;
        }
        let u = used.entry(n.to_string()).or_default();
        for (k, v) in pod_requests(p) {
            *u.entry(k).or_default() += v;
        }
        *pod_count.entry(n.to_string()).or_default() += 1;
        if let Some(ids) = p["metadata"]["annotations"][GPU_ANNOTATION].as_str() {
            gpus_used
                .entry(n.to_string())
                .or_default()
                .extend(ids.split(',').filter_map(|s| s.parse::<i64>().ok()));
        }
    }
    for pod in pending {
        let req = pod_requests(pod);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(&Arc<Value>, i64)> = None;
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or("");
            let mut why: Vec<String> = vec![];
            if node["spec"]["unschedulable"].as_bool() == Some(true) {
                why.push("node(s) were unschedulable".into());
            }
            let sel_ok = pod["spec"]["nodeSelector"]
                .as_object()
                .is_none_or(|m| m.iter().all(|(k, v)| node["metadata"]["labels"][k] == *v));
            if !sel_ok || !affinity_ok(pod, &node["metadata"]["labels"]) {
                why.push("node(s) didn't match Pod's node affinity/selector".into());
            }
            for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
                if matches!(
                    taint["effect"].as_str(),
                    Some("NoSchedule") | Some("NoExecute")
                ) && !tolerates(&pod["spec"]["tolerations"], taint)
                {
                    let v = taint["value"]
                        .as_str()
                        .map(|v| format!(": {v}"))
                        .unwrap_or_default();
                    why.push(format!(
                        "node(s) had untolerated taint {{{}{v}}}",
                        taint["key"].as_str().unwrap_or("")
                    ));
                    break;
                }
            }
            let u = used.get(name).cloned().unwrap_or_default();
            for (k, v) in &req {
                if *v == 0 {
                    continue;
                }
                let alloc = parse_quantity(&node["status"]["allocatable"][k]);
                if u.get(k).copied().unwrap_or(0) + v > alloc {
                    why.push(format!("Insufficient {k}"));
                }
            }
            if why.is_empty() {
                let load = pod_count.get(name).copied().unwrap_or(0);
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((node, load));
                }
            } else {
                for w in why {
                    *reasons.entry(w).or_default() += 1;
                }
            }
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let pname = pod["metadata"]["name"].as_str().unwrap_or("");
        match best {
            Some((node, _)) => {
                let nname = node["metadata"]["name"].as_str().unwrap_or("").to_string();
                let gpus = req.get("nvidia.com/gpu").copied().unwrap_or(0) / 1000;
                let mut n = (**pod).clone();
                if gpus > 0 {
                    let taken = gpus_used.entry(nname.clone()).or_default();
                    let ids: Vec<i64> = (0..)
                        .filter(|i| !taken.contains(i))
                        .take(gpus as usize)
                        .collect();
                    taken.extend(&ids);
                    n["metadata"]["annotations"][GPU_ANNOTATION] = json!(
                        ids.iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
                n["spec"]["nodeName"] = json!(nname);
                let u = used.entry(nname.clone()).or_default();
                for (k, v) in &req {
                    *u.entry(k.clone()).or_default() += v;
                }
                *pod_count.entry(nname.clone()).or_default() += 1;
                if let Ok(w) =
                    cluster.update(&pod_rt, ns, pname, n, &WriteOpts::system("kube-scheduler"))
                {
                    let mut s = (*w.obj).clone();
                    let mut conds: Vec<Value> = s["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    conds.retain(|c| c["type"] != "PodScheduled");
                    conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now(), "lastProbeTime": null}));
                    s["status"]["conditions"] = Value::Array(conds);
                    let _ =
                        cluster.update(&pod_rt, ns, pname, s, &WriteOpts::status("kube-scheduler"));
                    crate::events::record(
                        cluster,
                        &w.obj,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{pname} to {nname}"),
                        "default-scheduler",
                    );
                }
            }
            None => {
                let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let msg = format!(
                    "0/{} nodes are available: {}.",
                    nodes.len(),
                    parts.join(", ")
                );
                let cur = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "PodScheduled")
                    .cloned();
                if cur.as_ref().and_then(|c| c["message"].as_str()) == Some(msg.as_str()) {
                    continue;
                }
                let mut s = (**pod).clone();
                let mut conds: Vec<Value> = s["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                conds.retain(|c| c["type"] != "PodScheduled");
                conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastTransitionTime": now(), "lastProbeTime": null}));
                s["status"]["conditions"] = Value::Array(conds);
                s["status"]["phase"] = json!("Pending");
                let _ = cluster.update(&pod_rt, ns, pname, s, &WriteOpts::status("kube-scheduler"));
                crate::events::record(
                    cluster,
                    pod,
                    "Warning",
                    "FailedScheduling",
                    &msg,
                    "default-scheduler",
                );
            }
        }
    }
}
