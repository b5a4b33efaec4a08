//! Pure builders of a ModelDeployment's children.
//!
//! Per pod revision: a `tailor-server` Deployment, its Service, and the ConfigMap holding the
//! server's JSON config (the adapters the pods serve, reloaded without restart). Per
//! ModelDeployment: one `tailor-router` Deployment, its ConfigMap (routes and weights, reloaded
//! by the router) and a Service named like the ModelDeployment (status.endpoint). Per revision:
//! a snapshot ConfigMap with what the revision serves, so the stable revision can still be built
//! after the spec has moved on.
//!
//! Here: the names, labels and constants all children share, the serving token's Secret and the
//! revision snapshots. The server children (per pod revision) are built in `server`, the
//! router's in `router`, NetworkPolicies and disruption budgets in `policies`; all are
//! re-exported here.

mod policies;
mod router;
mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, HTTPGetAction, Probe, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use tailor_api::ModelDeployment;

use super::revision::RevisionSpec;
use crate::jobs;

pub use policies::{disruption_budgets, network_policies};
pub use router::{
    MAX_ROUTER_REPLICAS, ROUTER_REPLICAS, RouterApiKey, RouterConfig, RouterRoute, RouterTarget,
    SERVERS_PER_ROUTER, Side, router_config, router_config_map, router_deployment, router_replicas,
    router_routes, router_service,
};
pub use server::{
    ServingVolumes, fault_injection, read_server_adapters, server_config, server_config_map,
    server_deployment, server_service, serving_volumes,
};

/// Label naming the ModelDeployment a child belongs to.
pub const MDEP_LABEL: &str = "tailor.dev/modeldeployment";
/// Label naming the pod revision of serving pods (and the revision of snapshots).
pub const REVISION_LABEL: &str = "tailor.dev/revision";
/// Label marking revision snapshot ConfigMaps.
pub const SNAPSHOT_LABEL: &str = "tailor.dev/revision-snapshot";
/// TEST-ONLY: JSON copied into every server's config as `faultInjection` (see tailor-server).
pub const FAULT_INJECTION_ANNOTATION: &str = "tailor.dev/test-fault-injection";

pub const SERVER_PORT: i32 = 8000;
pub const ROUTER_PORT: i32 = 8080;
pub const ROUTER_ADMIN_PORT: i32 = 9090;
/// The server's config file, in the ConfigMap mounted at [`CONFIG_DIR`].
pub const SERVER_CONFIG_KEY: &str = "server.json";
pub const ROUTER_CONFIG_DIR: &str = "/etc/tailor-router";
pub const ROUTER_CONFIG_KEY: &str = "config.yaml";
pub const SNAPSHOT_KEY: &str = "revision.json";
/// Where server and router pods find the deployment's serving token.
pub const TOKEN_DIR: &str = "/etc/tailor-token";
/// The key of the token in its Secret (and the file name in [`TOKEN_DIR`]).
pub const TOKEN_KEY: &str = "token";

/// The Secret with the deployment's serving token.
pub fn token_secret_name(md: &str) -> String {
    jobs::child_name(md, "token")
}

/// The serving token's Secret, owned by the deployment (made once; never re-applied, so the
/// token does not change under running pods).
pub fn token_secret(md: &ModelDeployment, token: &str) -> Secret {
    let md_name = md.name_any();
    Secret {
        metadata: meta(
            md,
            token_secret_name(&md_name),
            labels(&md_name, "tailor-token"),
        ),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token.to_string())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

fn token_volume(md: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token_secret_name(md)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    )
}

fn token_file() -> String {
    format!("{TOKEN_DIR}/{TOKEN_KEY}")
}

/// Deployment, Service and server ConfigMap of a pod revision.
pub fn serving_name(md: &str, pod_revision: &str) -> String {
    jobs::child_name(md, pod_revision)
}
/// Router Deployment and ConfigMap.
pub fn router_name(md: &str) -> String {
    jobs::child_name(md, "router")
}
/// The router's Service is named like the ModelDeployment: it is the endpoint users see.
pub fn endpoint_service_name(md: &str) -> String {
    md.chars().take(63).collect()
}
pub fn snapshot_name(md: &str, revision: &str) -> String {
    jobs::child_name(md, &format!("rev-{revision}"))
}

/// Target names in the router: fresh per revision, so a window never mixes two canaries.
pub fn stable_target(revision: &str) -> String {
    format!("stable-{revision}")
}
pub fn canary_target(revision: &str) -> String {
    format!("canary-{revision}")
}

fn labels(md: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = jobs::managed_labels(MDEP_LABEL, md);
    l.insert("app.kubernetes.io/name".into(), component.into());
    l.insert("app.kubernetes.io/instance".into(), md.into());
    l.insert("app.kubernetes.io/part-of".into(), "tailor".into());
    l
}

fn server_labels(md: &str, pod_revision: &str) -> BTreeMap<String, String> {
    let mut l = labels(md, "tailor-server");
    l.insert(REVISION_LABEL.into(), pod_revision.into());
    l
}

/// The stable revision's serving pods as a label selector string (the scale subresource's).
pub fn server_selector(md: &str, pod_revision: &str) -> String {
    selector(&server_labels(md, pod_revision))
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector(l: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    l.iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "app.kubernetes.io/name" | MDEP_LABEL | REVISION_LABEL
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn meta(md: &ModelDeployment, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: md.namespace(),
        labels: Some(labels),
        owner_references: md.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Pods log JSON lines (every tailor binary reads `TAILOR_LOG_FORMAT`).
pub fn json_logs() -> EnvVar {
    EnvVar {
        name: "TAILOR_LOG_FORMAT".into(),
        value: Some("json".into()),
        ..Default::default()
    }
}

pub(super) fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// A revision's snapshot: what it serves, readable after the spec has moved on.
pub fn snapshot_config_map(md: &ModelDeployment, spec: &RevisionSpec) -> ConfigMap {
    let md_name = md.name_any();
    let revision = spec.revision();
    let mut l = labels(&md_name, "tailor-revision");
    l.insert(REVISION_LABEL.into(), revision.clone());
    l.insert(SNAPSHOT_LABEL.into(), "true".into());
    ConfigMap {
        metadata: meta(md, snapshot_name(&md_name, &revision), l),
        data: Some(BTreeMap::from([(
            SNAPSHOT_KEY.to_string(),
            serde_json::to_string_pretty(spec).unwrap_or_default(),
        )])),
        ..Default::default()
    }
}

/// Reads a snapshot back.
pub fn read_snapshot(cm: &ConfigMap) -> Option<RevisionSpec> {
    let text = cm.data.as_ref()?.get(SNAPSHOT_KEY)?;
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests;
