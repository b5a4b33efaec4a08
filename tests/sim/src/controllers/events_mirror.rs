//! core/v1 Events and events.k8s.io/v1 Events are one resource in Kubernetes, served in two
//! shapes. Here they are two stores kept in step: each event written in one shape appears in
//! the other (marked as a mirror), updates follow, and a mirror goes when its source goes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::cluster::{Cluster, DeleteOpts, WriteOpts};

const MIRROR: &str = "sim.tailor.dev/mirror-of";

fn micro(ts: &Value) -> Value {
    match ts
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => json!(
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
        ),
        None => Value::Null,
    }
}

fn seconds(ts: &Value) -> Value {
    match ts
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => json!(
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => Value::Null,
    }
}

fn meta(src: &Value, source_api: &str) -> Value {
    let mut m = json!({"name": src["metadata"]["name"], "namespace": src["metadata"]["namespace"]});
    if src["metadata"]["labels"].is_object() {
        m["labels"] = src["metadata"]["labels"].clone();
    }
    m["annotations"] = src["metadata"]["annotations"].clone();
    if !m["annotations"].is_object() {
        m["annotations"] = json!({});
    }
    m["annotations"][MIRROR] = json!(source_api);
    m
}

fn strip_nulls(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
}

fn core_to_new(e: &Value) -> Value {
    let event_time = if e["eventTime"].is_null() {
        micro(&e["firstTimestamp"])
    } else {
        e["eventTime"].clone()
    };
    let mut v = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta(e, "v1"),
        "eventTime": event_time, "regarding": e["involvedObject"], "note": e["message"], "reason": e["reason"], "type": e["type"],
        "action": e["action"], "related": e["related"], "series": e["series"],
        "reportingController": e["reportingComponent"].as_str().filter(|s| !s.is_empty()).map(|s| json!(s)).unwrap_or_else(|| e["source"]["component"].clone()),
        "reportingInstance": e["reportingInstance"].as_str().filter(|s| !s.is_empty()).map(|s| json!(s)).unwrap_or_else(|| e["source"]["host"].clone()),
        "deprecatedCount": e["count"], "deprecatedFirstTimestamp": e["firstTimestamp"], "deprecatedLastTimestamp": e["lastTimestamp"], "deprecatedSource": e["source"],
    });
    strip_nulls(&mut v);
    v
}

fn new_to_core(e: &Value) -> Value {
    let count = e["series"]["count"]
        .as_i64()
        .or(e["deprecatedCount"].as_i64())
        .unwrap_or(1);
    let first = if e["deprecatedFirstTimestamp"].is_null() {
        seconds(&e["eventTime"])
    } else {
        e["deprecatedFirstTimestamp"].clone()
    };
    let last = if !e["series"]["lastObservedTime"].is_null() {
        seconds(&e["series"]["lastObservedTime"])
    } else if !e["deprecatedLastTimestamp"].is_null() {
        e["deprecatedLastTimestamp"].clone()
    } else {
        seconds(&e["eventTime"])
    };
    let mut v = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": meta(e, "events.k8s.io/v1"),
        "involvedObject": e["regarding"], "message": e["note"], "reason": e["reason"], "type": e["type"], "action": e["action"],
        "related": e["related"], "series": e["series"], "eventTime": e["eventTime"],
        "reportingComponent": e["reportingController"], "reportingInstance": e["reportingInstance"],
        "source": {"component": e["reportingController"], "host": e["reportingInstance"]},
        "count": count, "firstTimestamp": first, "lastTimestamp": last,
    });
    strip_nulls(&mut v);
    v
}

/// The fields a mirror carries (metadata aside), to decide whether it must be rewritten.
fn body(v: &Value) -> Value {
    let mut b = v.clone();
    if let Some(m) = b.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
    }
    b
}

fn sync(cluster: &Cluster, from_gr: &str, to_group: &str, convert: fn(&Value) -> Value) {
    let Ok(to_rt) = cluster.rt(to_group, "events") else {
        return;
    };
    let (sources, _) = cluster.store.list(from_gr, None);
    let (targets, _) = cluster.store.list(&to_rt.gr(), None);
    let by_key: HashMap<(String, String), &Arc<Value>> = targets
        .iter()
        .map(|t| {
            (
                (
                    t["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    t["metadata"]["name"].as_str().unwrap_or("").to_string(),
                ),
                t,
            )
        })
        .collect();
    for s in sources
        .iter()
        .filter(|s| s["metadata"]["annotations"][MIRROR].is_null())
    {
        let ns = s["metadata"]["namespace"].as_str().unwrap_or("");
        let name = s["metadata"]["name"].as_str().unwrap_or("");
        let want = convert(s);
        match by_key.get(&(ns.to_string(), name.to_string())) {
            None => {
                let _ = cluster.create(&to_rt, ns, want, &WriteOpts::system("event-mirror"));
            }
            Some(cur)
                if !cur["metadata"]["annotations"][MIRROR].is_null()
                    && body(cur) != body(&want) =>
            {
                let mut n = want;
                n["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                let _ = cluster.update(&to_rt, ns, name, n, &WriteOpts::system("event-mirror"));
            }
            Some(_) => {}
        }
    }
    // Mirrors whose source is gone.
    let (sources_now, _) = cluster.store.list(from_gr, None);
    let live: HashSet<(&str, &str)> = sources_now
        .iter()
        .map(|s| {
            (
                s["metadata"]["namespace"].as_str().unwrap_or(""),
                s["metadata"]["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for t in targets
        .iter()
        .filter(|t| !t["metadata"]["annotations"][MIRROR].is_null())
    {
        let ns = t["metadata"]["namespace"].as_str().unwrap_or("");
        let name = t["metadata"]["name"].as_str().unwrap_or("");
        let from_here = t["metadata"]["annotations"][MIRROR].as_str()
            == Some(if from_gr == "/events" {
                "v1"
            } else {
                "events.k8s.io/v1"
            });
        if from_here && !live.contains(&(ns, name)) {
            let _ = cluster.delete(&to_rt, ns, name, &DeleteOpts::default());
        }
    }
}

/// Events live an hour (the apiserver's default --event-ttl).
fn expire(cluster: &Cluster, group: &str) {
    let Ok(rt) = cluster.rt(group, "events") else {
        return;
    };
    let (events, _) = cluster.store.list(&rt.gr(), None);
    let now = chrono::Utc::now();
    for e in events {
        let ts = e["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        if ts.is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() > 3600) {
            let ns = e["metadata"]["namespace"].as_str().unwrap_or("");
            let name = e["metadata"]["name"].as_str().unwrap_or("");
            let _ = cluster.delete(&rt, ns, name, &DeleteOpts::default());
        }
    }
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    expire(cluster, "");
    expire(cluster, "events.k8s.io");
    sync(cluster, "/events", "events.k8s.io", core_to_new);
    sync(cluster, "events.k8s.io/events", "", new_to_core);
}
