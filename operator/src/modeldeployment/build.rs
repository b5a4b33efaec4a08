//! Pure builders of a ModelDeployment's children.
//!
//! Per pod revision: a `tailor-server` Deployment, its Service, and the ConfigMap holding the
//! server's JSON config (the adapters the pods serve, reloaded without restart). Per
//! ModelDeployment: one `tailor-router` Deployment, its ConfigMap (routes and weights, reloaded
//! by the router) and a Service named like the ModelDeployment (status.endpoint). Per revision:
//! a snapshot ConfigMap with what the revision serves, so the stable revision can still be built
//! after the spec has moved on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    HTTPGetAction, PodSpec as K8sPodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretEnvSource, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tailor_api::ModelDeployment;
use tailor_artifacts::ArtifactUri;

use super::revision::{RevisionSpec, pod_part};
use crate::config::OperatorConfig;
use crate::jobs::{self, PodVolumes};

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

/// Paths the serving pods see the base model and adapters at, with the volumes that make them
/// visible. Errors name the URI that pods cannot mount.
pub struct ServingVolumes {
    pub volumes: PodVolumes,
    pub base_path: String,
    /// Adapter name on the server → directory in the pod.
    pub adapters: BTreeMap<String, String>,
}

/// Resolves the base model and `adapters` (name → artifact URI) to paths in the serving pods.
pub fn serving_volumes(
    cfg: &OperatorConfig,
    ns: &str,
    config_map: &str,
    pods: &super::revision::PodSpec,
    adapters: &BTreeMap<String, String>,
) -> Result<ServingVolumes, String> {
    // Serving pods only read: the namespace's area is mounted read-only.
    let mut vols = PodVolumes::new(ns, config_map, false);
    let base_path = vols
        .input(
            cfg,
            &pods.base_model_fetch_uri(),
            true,
            pods.base_model_credentials.as_deref(),
        )
        .map_err(|e| format!("spec.baseModel.uri: {e}"))?
        .to_string_lossy()
        .into_owned();
    let mut paths = BTreeMap::new();
    for (name, uri) in adapters {
        if ArtifactUri::parse(uri).is_ok_and(|u| !u.is_local()) {
            // Fetched by the servers when loaded (tailor-server's adapters by URI).
            paths.insert(name.clone(), uri.clone());
            continue;
        }
        let p = vols
            .add(cfg, uri, true)
            .map_err(|e| format!("adapter {name}: {e}"))?;
        paths.insert(name.clone(), p.to_string_lossy().into_owned());
    }
    Ok(ServingVolumes {
        volumes: vols,
        base_path,
        adapters: paths,
    })
}

/// The server's `--config` file: the adapters the pods of a pod revision serve (stable and
/// canary adapters alike during an adapter canary).
pub fn server_config(
    spec: &RevisionSpec,
    adapters: &BTreeMap<String, String>,
    fault_injection: Option<&Value>,
) -> Value {
    let mut v = json!({
        "servedModelName": spec.pods.served_name,
        "adapters": adapters,
        "maxLoadedAdapters": spec.pods.max_loaded_adapters,
    });
    if let Some(f) = fault_injection {
        v["faultInjection"] = f.clone();
    }
    v
}

/// The adapters (name → path in the pod) of a server ConfigMap written by [`server_config_map`].
pub fn read_server_adapters(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(SERVER_CONFIG_KEY))
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|v| serde_json::from_value(v["adapters"].clone()).ok())
        .unwrap_or_default()
}

/// The TEST-ONLY fault injection a ModelDeployment asks for by annotation, if valid JSON.
pub fn fault_injection(md: &ModelDeployment) -> Option<Value> {
    md.annotations()
        .get(FAULT_INJECTION_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok())
}

pub fn server_config_map(md: &ModelDeployment, pod_revision: &str, config: &Value) -> ConfigMap {
    let name = serving_name(&md.name_any(), pod_revision);
    ConfigMap {
        metadata: meta(md, name, server_labels(&md.name_any(), pod_revision)),
        data: Some(BTreeMap::from([(
            SERVER_CONFIG_KEY.to_string(),
            serde_json::to_string_pretty(config).unwrap_or_default(),
        )])),
        ..Default::default()
    }
}

/// The serving Deployment of a pod revision.
pub fn server_deployment(
    md: &ModelDeployment,
    spec: &RevisionSpec,
    vols: &ServingVolumes,
    cfg: &OperatorConfig,
    replicas: i32,
) -> Deployment {
    let md_name = md.name_any();
    let pod_revision = spec.pod_revision();
    let name = serving_name(&md_name, &pod_revision);
    let l = server_labels(&md_name, &pod_revision);
    let r = &md.spec.resources;
    let mut limits = BTreeMap::new();
    if r.gpus > 0 {
        limits.insert(
            crate::pods::gpu_resource(r, cfg).to_string(),
            Quantity(r.gpus.to_string()),
        );
    }
    if let Some(c) = &r.cpu {
        limits.insert("cpu".to_string(), c.clone());
    }
    if let Some(m) = &r.memory {
        limits.insert("memory".to_string(), m.clone());
    }
    let p = &spec.pods;
    let (token_vol, token_mount) = token_volume(&md_name);
    let mut mounts = vols.volumes.mounts.clone();
    mounts.push(token_mount);
    let mut volumes = vols.volumes.volumes.clone();
    volumes.push(token_vol);
    for (v, m) in super::runtime::runtime_volumes(spec) {
        volumes.push(v);
        mounts.push(m);
    }
    let mut d = Deployment {
        metadata: meta(md, name.clone(), l.clone()),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&l)),
                ..Default::default()
            },
            // GPUs are scarce: replace pods one at a time without a surge pod.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(l),
                    ..Default::default()
                }),
                spec: Some(crate::pods::finish(
                    K8sPodSpec {
                        containers: vec![Container {
                            env_from: p.adapter_credentials.as_ref().map(|s| {
                                vec![EnvFromSource {
                                    secret_ref: Some(SecretEnvSource {
                                        name: s.clone(),
                                        optional: Some(false),
                                    }),
                                    ..Default::default()
                                }]
                            }),
                            resources: Some(ResourceRequirements {
                                requests: (!limits.is_empty()).then(|| limits.clone()),
                                limits: (!limits.is_empty()).then_some(limits),
                                ..Default::default()
                            }),
                            volume_mounts: Some(mounts),
                            ..super::runtime::server_container(
                                &md_name,
                                r.gpus,
                                spec,
                                &vols.base_path,
                                cfg,
                            )
                        }],
                        volumes: Some(volumes),
                        init_containers: (!vols.volumes.fetches.is_empty())
                            .then(|| vols.volumes.fetches.clone()),
                        node_selector: (!md.spec.node_selector.is_empty())
                            .then(|| md.spec.node_selector.clone()),
                        tolerations: (!md.spec.tolerations.is_empty())
                            .then(|| md.spec.tolerations.clone()),
                        // The server drains in-flight requests for up to 30 s on SIGTERM.
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
    crate::pods::customize(&mut d.spec.template, spec.pods.template.as_ref());
    d
}

pub fn server_service(md: &ModelDeployment, pod_revision: &str) -> Service {
    let md_name = md.name_any();
    let l = server_labels(&md_name, pod_revision);
    Service {
        metadata: meta(md, serving_name(&md_name, pod_revision), l.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector(&l)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVER_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
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

// ---------------------------------------------------------------------------------------------
// Router

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

// ---------------------------------------------------------------------------------------------
// Network

fn peer(labels: BTreeMap<String, String>, namespace: Option<&str>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        namespace_selector: namespace.map(|ns| LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(p: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The NetworkPolicies of a deployment: its servers accept only its router and the operator;
/// its router accepts clients on the API port and only the operator on the admin port (`/stats`).
/// Disruption budgets: a node drain takes at most one router pod and one serving pod of the
/// deployment at a time (its servers across revisions count together).
pub fn disruption_budgets(md: &ModelDeployment) -> Vec<PodDisruptionBudget> {
    let md_name = md.name_any();
    ["tailor-router", "tailor-server"]
        .into_iter()
        .map(|component| PodDisruptionBudget {
            metadata: meta(
                md,
                jobs::child_name(&md_name, component.trim_start_matches("tailor-")),
                labels(&md_name, "tailor-disruption"),
            ),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector(&labels(&md_name, component))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        })
        .collect()
}

pub fn network_policies(md: &ModelDeployment, operator_namespace: &str) -> Vec<NetworkPolicy> {
    let md_name = md.name_any();
    let operator = peer(
        BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "tailor-operator".to_string(),
        )]),
        Some(operator_namespace),
    );
    let router_pods = selector(&labels(&md_name, "tailor-router"));
    let server_pods = selector(&labels(&md_name, "tailor-server"));
    let policy =
        |name: String, pods: BTreeMap<String, String>, ingress: Vec<NetworkPolicyIngressRule>| {
            NetworkPolicy {
                metadata: meta(md, name, labels(&md_name, "tailor-network")),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(pods),
                        ..Default::default()
                    }),
                    policy_types: Some(vec!["Ingress".into()]),
                    ingress: Some(ingress),
                    ..Default::default()
                }),
            }
        };
    vec![
        policy(
            jobs::child_name(&md_name, "servers"),
            server_pods,
            vec![NetworkPolicyIngressRule {
                from: Some(vec![peer(router_pods.clone(), None), operator.clone()]),
                ports: Some(vec![port(SERVER_PORT)]),
            }],
        ),
        policy(
            router_name(&md_name),
            router_pods,
            vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(ROUTER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![port(ROUTER_ADMIN_PORT)]),
                },
            ],
        ),
    ]
}

#[cfg(test)]
mod tests;
