//! Built-in controllers. Each is level-triggered: it reconciles everything it owns whenever the
//! store changes (and at least once a second), so a missed wake-up only delays it.

pub mod bootstrap;
pub mod crd;
pub mod deployment;
pub mod events_mirror;
pub mod gc;
pub mod job;
pub mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;

pub fn spawn_loop<F>(cluster: Arc<Cluster>, name: &'static str, period: Duration, f: F)
where
    F: Fn(&Arc<Cluster>) + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let notified = cluster.store.changed.notified();
            let c = cluster.clone();
            let f_ref = &f;
            // Reconcilers are synchronous and quick; keep them off the async workers' hot path.
            if !tokio::task::block_in_place(|| c.controller_pass(name, || f_ref(&c))) {
                tracing::debug!(controller = name, "halted");
                return;
            }
            tokio::select! {
                _ = notified => tokio::time::sleep(Duration::from_millis(20)).await,
                _ = tokio::time::sleep(period) => {}
            }
            tracing::trace!(controller = name, "reconciled");
        }
    });
}

pub fn start(cluster: &Arc<Cluster>) {
    spawn_loop(
        cluster.clone(),
        "crd",
        Duration::from_secs(1),
        crd::reconcile_all,
    );
    spawn_loop(
        cluster.clone(),
        "garbage-collector",
        Duration::from_secs(1),
        gc::reconcile,
    );
    spawn_loop(
        cluster.clone(),
        "namespace",
        Duration::from_secs(1),
        gc::namespaces,
    );
    spawn_loop(
        cluster.clone(),
        "job",
        Duration::from_millis(500),
        job::reconcile,
    );
    spawn_loop(
        cluster.clone(),
        "deployment",
        Duration::from_millis(500),
        deployment::reconcile,
    );
    spawn_loop(
        cluster.clone(),
        "replicaset",
        Duration::from_millis(500),
        deployment::reconcile_replicasets,
    );
    spawn_loop(
        cluster.clone(),
        "endpoints",
        Duration::from_millis(500),
        service::reconcile,
    );
    spawn_loop(
        cluster.clone(),
        "serviceaccount",
        Duration::from_secs(1),
        bootstrap::per_namespace,
    );
    spawn_loop(
        cluster.clone(),
        "pvc",
        Duration::from_secs(1),
        bootstrap::bind_pvcs,
    );
    spawn_loop(
        cluster.clone(),
        "event-mirror",
        Duration::from_secs(1),
        events_mirror::reconcile,
    );
}

/// Set a condition the Kubernetes way: lastTransitionTime changes only with status.
pub fn set_condition(
    conds: &mut Vec<Value>,
    ctype: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = crate::cluster::now();
    match conds.iter_mut().find(|c| c["type"].as_str() == Some(ctype)) {
        Some(c) => {
            if c["status"].as_str() != Some(status) {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conds.push(json!({"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": now})),
    }
}

pub fn owner_ref(o: &Value, controller: bool) -> Value {
    json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"], "uid": o["metadata"]["uid"],
        "controller": controller, "blockOwnerDeletion": true})
}

pub fn is_controlled_by(o: &Value, owner_uid: &str) -> bool {
    o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["uid"].as_str() == Some(owner_uid) && r["controller"].as_bool() == Some(true))
}

/// Back-off for a controller whose pod creations are refused (by admission, a quota, a missing
/// ServiceAccount): as the controllers' rate-limited work queues, it retries after 1s, 2s, 4s
/// ... up to a minute instead of on every pass.
pub struct CreateBackoff;

fn backoffs() -> &'static Mutex<HashMap<String, (u32, Instant)>> {
    static B: OnceLock<Mutex<HashMap<String, (u32, Instant)>>> = OnceLock::new();
    B.get_or_init(|| Mutex::new(HashMap::new()))
}

impl CreateBackoff {
    /// Whether the owner `uid` may try to create pods now.
    pub fn ready(uid: &str) -> bool {
        let b = backoffs().lock().unwrap_or_else(|e| e.into_inner());
        b.get(uid).is_none_or(|(_, next)| Instant::now() >= *next)
    }

    pub fn failed(uid: &str) {
        let mut b = backoffs().lock().unwrap_or_else(|e| e.into_inner());
        let n = b.get(uid).map_or(0, |(n, _)| *n);
        let delay = Duration::from_secs((1u64 << n.min(6)).min(60));
        b.insert(uid.to_string(), (n + 1, Instant::now() + delay));
    }

    pub fn succeeded(uid: &str) {
        backoffs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// How creating an owner's pods went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    All,
    /// Refused with this message (the rest of the round was not tried).
    Refused(String),
    /// Not tried: an earlier refusal is being backed off from.
    BackingOff,
}

/// Create the pods an owner wants, as the controllers' pod control does: a refused creation is
/// a `FailedCreate` Warning Event on the owner ("Error creating: ...") and ends this round
/// (the rest would be refused alike), and the owner backs off before trying again.
pub fn create_pods(
    cluster: &Cluster,
    owner: &Value,
    pods: impl IntoIterator<Item = Value>,
    manager: &str,
) -> Created {
    let uid = owner["metadata"]["uid"].as_str().unwrap_or("");
    let Ok(pod_rt) = cluster.rt("", "pods") else {
        return Created::All;
    };
    if !CreateBackoff::ready(uid) {
        return Created::BackingOff;
    }
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or("");
    for pod in pods {
        if let Err(e) = cluster.create(
            &pod_rt,
            ns,
            pod,
            &crate::cluster::WriteOpts::system(manager),
        ) {
            tracing::warn!(owner = ?owner["metadata"]["name"], error = %e, "creating pod");
            crate::events::record_similar(
                cluster,
                owner,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {}", e.message),
                manager,
            );
            CreateBackoff::failed(uid);
            return Created::Refused(e.message);
        }
    }
    CreateBackoff::succeeded(uid);
    Created::All
}
