//! Built-in controllers. Each is level-triggered: it reconciles everything it owns whenever the
//! store changes (and at least once a second), so a missed wake-up only delays it.

pub mod bootstrap;
pub mod crd;
pub mod deployment;
pub mod events_mirror;
pub mod gc;
pub mod job;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

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
            if !tokio::task::block_in_place(|| c.controller_pass(|| f_ref(&c))) {
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
