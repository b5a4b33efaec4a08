//! Core v1 Events recorded by the built-in components (deduplicated by count, as the
//! apiserver's event recorder does).

use serde_json::{Value, json};

use crate::cluster::{Cluster, WriteOpts, now};

pub fn record(
    cluster: &Cluster,
    obj: &Value,
    etype: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    record_keyed(cluster, obj, etype, reason, message, component, message);
}

/// An Event whose message varies between occurrences (a generated pod name in it): one Event
/// per object and reason, its message the latest and its count the number of occurrences, as
/// the apiserver's event correlator combines similar events.
pub fn record_similar(
    cluster: &Cluster,
    obj: &Value,
    etype: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    record_keyed(cluster, obj, etype, reason, message, component, "");
}

fn record_keyed(
    cluster: &Cluster,
    obj: &Value,
    etype: &str,
    reason: &str,
    message: &str,
    component: &str,
    key_message: &str,
) {
    let Ok(rt) = cluster.rt("", "events") else {
        return;
    };
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    let key = {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(format!("{uid}/{reason}/{key_message}").as_bytes())[..6])
    };
    let name = format!(
        "{}.{key}",
        obj["metadata"]["name"].as_str().unwrap_or("object")
    );
    let ts = now();
    if let Some(cur) = cluster.store.get(&rt.gr(), &ns, &name) {
        let mut n = (*cur).clone();
        n["count"] = json!(cur["count"].as_i64().unwrap_or(1) + 1);
        n["lastTimestamp"] = json!(ts);
        n["message"] = json!(message);
        let _ = cluster.update(&rt, &ns, &name, n, &WriteOpts::system(component));
        return;
    }
    let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"], "uid": uid, "resourceVersion": obj["metadata"]["resourceVersion"]},
        "type": etype, "reason": reason, "message": message, "count": 1, "firstTimestamp": ts, "lastTimestamp": ts,
        "source": {"component": component}, "reportingComponent": component, "reportingInstance": "tailor-sim"});
    let _ = cluster.create(&rt, &ns, ev, &WriteOpts::system(component));
}
