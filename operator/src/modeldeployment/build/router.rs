//! The router's children: the `tailor-router` Deployment, its ConfigMap (routes and weights
//! between the stable and canary revisions, API keys, the `/stats` window) and the Service
//! named like the ModelDeployment that is its endpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodAffinityTerm,
    PodAntiAffinity, PodSpec as K8sPodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use tailor_api::ModelDeployment;

use super::{
    ROUTER_ADMIN_PORT, ROUTER_CONFIG_DIR, ROUTER_CONFIG_KEY, ROUTER_PORT, canary_target,
    endpoint_service_name, http_probe, json_logs, labels, meta, router_name, selector,
    stable_target, token_file, token_volume,
};
use crate::config::OperatorConfig;
use crate::modeldeployment::revision::{RevisionSpec, pod_part};

pub use tailor_wire::router::{
    ApiKey as RouterApiKey, Config as RouterConfig, Route as RouterRoute, Target as RouterTarget,
};
use tailor_wire::router::{Backends, StatsSettings};

/// One revision as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub revision: &'a str,
    pub spec: &'a RevisionSpec,
    /// Base URL of the revision's serving Service.
    pub backend: &'a str,
}

/// Routes for every served name. Without a canary (or at weight 0) each goes to the stable
/// revision. With an adapter canary only the routes whose adapter changed split; with a pod
/// canary every route splits between the two revisions' Services. A served name only one
/// side serves goes to that side alone.
pub fn router_routes(stable: Side<'_>, canary: Option<(Side<'_>, u32)>) -> Vec<RouterRoute> {
    let canary = canary.filter(|(_, w)| *w > 0);
    let served = |s: &RevisionSpec| -> Vec<(String, String)> {
        std::iter::once((s.pods.served_name.clone(), s.pods.served_name.clone()))
            .chain(
                s.adapters
                    .iter()
                    .map(|a| (a.served_name.clone(), a.adapter.clone())),
            )
            .collect()
    };
    let stable_models: BTreeMap<String, String> = served(stable.spec).into_iter().collect();
    let canary_models: BTreeMap<String, String> = canary
        .map(|(c, _)| served(c.spec).into_iter().collect())
        .unwrap_or_default();
    let same_pods = canary.is_some_and(|(c, _)| pod_part(c.revision) == pod_part(stable.revision));
    let mut names: Vec<&String> = stable_models.keys().chain(canary_models.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let target = |side: Side<'_>, model: &str, weight: u32, is_canary: bool| RouterTarget {
                name: Some(if is_canary {
                    canary_target(side.revision)
                } else {
                    stable_target(side.revision)
                }),
                revision: Some(side.revision.to_string()),
                backend: Backends::One(side.backend.to_string()),
                model: model.to_string(),
                weight,
            };
            let targets = match (stable_models.get(name), canary.zip(canary_models.get(name))) {
                (Some(s), None) => vec![target(stable, s, 100, false)],
                (None, Some(((c, _), m))) => vec![target(c, m, 100, true)],
                (Some(s), Some(((c, w), m))) if !same_pods || s != m => {
                    let w = w.min(100);
                    let mut t = vec![];
                    if w < 100 {
                        t.push(target(stable, s, 100 - w, false));
                    }
                    t.push(target(c, m, w, true));
                    t
                }
                (Some(s), Some(_)) => vec![target(stable, s, 100, false)],
                (None, None) => vec![],
            };
            RouterRoute {
                model: name.clone(),
                targets,
            }
        })
        .filter(|r| !r.targets.is_empty())
        .collect()
}

/// The router config: routes, API keys (by SHA-256: the plaintext stays in the Secret), and
/// the `/stats` window the analysis reads.
pub fn router_config(
    routes: Vec<RouterRoute>,
    api_keys: &[String],
    window_secs: u64,
) -> RouterConfig {
    use sha2::{Digest, Sha256};
    let mut keys: Vec<RouterApiKey> = api_keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| {
            let sha256 = hex::encode(Sha256::digest(k.as_bytes()));
            RouterApiKey {
                name: format!("key-{}", &sha256[..8]),
                sha256: Some(sha256),
                ..Default::default()
            }
        })
        .collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    keys.dedup_by(|a, b| a.name == b.name);
    RouterConfig {
        routes,
        api_keys: (!keys.is_empty()).then_some(keys),
        stats: StatsSettings {
            window: Some(std::time::Duration::from_secs(window_secs.max(1)).into()),
        },
        ..Default::default()
    }
}

pub fn router_config_map(md: &ModelDeployment, config: &RouterConfig) -> ConfigMap {
    let md_name = md.name_any();
    ConfigMap {
        metadata: meta(md, router_name(&md_name), labels(&md_name, "tailor-router")),
        data: Some(BTreeMap::from([(
            ROUTER_CONFIG_KEY.to_string(),
            serde_json::to_string_pretty(config).unwrap_or_default(),
        )])),
        ..Default::default()
    }
}

/// Router pods run at once: two, so a node drain or a crash never leaves the endpoint without
/// a router. The split is a hash of the user, so every pod sends a user to the same target;
/// `/stats` is per pod, and the analysis sums the pods' answers. The fewest router pods.
pub const ROUTER_REPLICAS: i32 = 2;
/// Serving pods per router pod beyond the first [`ROUTER_REPLICAS`].
pub const SERVERS_PER_ROUTER: i32 = 4;
/// The most router pods.
pub const MAX_ROUTER_REPLICAS: i32 = 16;

/// Router pods for `serving` pods per revision: one per [`SERVERS_PER_ROUTER`], at least two.
/// More router pods move no user: each computes the same split, and a revision's Service
/// spreads each target's requests over its pods.
pub fn router_replicas(serving: i32) -> i32 {
    let wanted = (serving.max(0) + SERVERS_PER_ROUTER - 1) / SERVERS_PER_ROUTER;
    wanted.clamp(ROUTER_REPLICAS, MAX_ROUTER_REPLICAS)
}

/// Prefer spreading `labels`' pods over nodes (never refuse to schedule for it).
fn spread_over_nodes(labels: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector(labels)),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn router_deployment(md: &ModelDeployment, cfg: &OperatorConfig, serving: i32) -> Deployment {
    let md_name = md.name_any();
    let l = labels(&md_name, "tailor-router");
    let name = router_name(&md_name);
    let mut d = Deployment {
        metadata: meta(md, name.clone(), l.clone()),
        spec: DeploymentSpec {
            replicas: Some(router_replicas(serving)),
            selector: LabelSelector {
                match_labels: Some(selector(&l)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(l.clone()),
                    ..Default::default()
                }),
                spec: Some(crate::pods::finish(
                    K8sPodSpec {
                        containers: vec![Container {
                            name: "router".into(),
                            image: Some(cfg.router_image.clone()),
                            args: Some(vec![
                                "--config".into(),
                                format!("{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_KEY}"),
                                "--listen".into(),
                                format!("$(POD_IP):{ROUTER_PORT}"),
                                "--admin-listen".into(),
                                format!("$(POD_IP):{ROUTER_ADMIN_PORT}"),
                                // Sent to the servers; required of /stats (the operator).
                                "--backend-token-file".into(),
                                token_file(),
                                "--admin-token-file".into(),
                                token_file(),
                            ]),
                            env: Some(vec![crate::pods::pod_ip_env(), json_logs()]),
                            ports: Some(vec![
                                ContainerPort {
                                    name: Some("http".into()),
                                    container_port: ROUTER_PORT,
                                    ..Default::default()
                                },
                                ContainerPort {
                                    name: Some("admin".into()),
                                    container_port: ROUTER_ADMIN_PORT,
                                    ..Default::default()
                                },
                            ]),
                            readiness_probe: Some(http_probe("/readyz", "http", 2, 3)),
                            liveness_probe: Some(http_probe("/healthz", "http", 10, 3)),
                            volume_mounts: Some(vec![
                                VolumeMount {
                                    name: "config".into(),
                                    mount_path: ROUTER_CONFIG_DIR.into(),
                                    read_only: Some(true),
                                    ..Default::default()
                                },
                                token_volume(&md_name).1,
                            ]),
                            ..Default::default()
                        }],
                        volumes: Some(vec![
                            Volume {
                                name: "config".into(),
                                config_map: Some(ConfigMapVolumeSource {
                                    name: name.clone(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                            token_volume(&md_name).0,
                        ]),
                        affinity: Some(spread_over_nodes(&l)),
                        termination_grace_period_seconds: Some(45),
                        ..Default::default()
                    },
                    &cfg.default_resources,
                )),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    crate::pods::customize(&mut d.spec.template, md.spec.router.pod_template.as_ref());
    d
}

pub fn router_service(md: &ModelDeployment) -> Service {
    let md_name = md.name_any();
    let l = labels(&md_name, "tailor-router");
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..Default::default()
    };
    Service {
        metadata: meta(md, endpoint_service_name(&md_name), l.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector(&l)),
            ports: Some(vec![
                port("http", ROUTER_PORT),
                port("admin", ROUTER_ADMIN_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
