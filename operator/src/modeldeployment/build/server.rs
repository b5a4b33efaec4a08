//! The children of a pod revision: the `tailor-server` Deployment, its Service and the
//! ConfigMap with the server's JSON config (the adapters its pods serve), and the volumes that
//! make the base model and adapters visible in its pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, PodSpec as K8sPodSpec, PodTemplateSpec,
    ResourceRequirements, SecretEnvSource, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};
use tailor_api::ModelDeployment;
use tailor_artifacts::ArtifactUri;

use super::{
    FAULT_INJECTION_ANNOTATION, SERVER_CONFIG_KEY, SERVER_PORT, meta, selector, server_labels,
    serving_name, token_volume,
};
use crate::config::OperatorConfig;
use crate::jobs::PodVolumes;
use crate::modeldeployment::revision::{self, RevisionSpec};
use crate::modeldeployment::runtime;

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
    pods: &revision::PodSpec,
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
    for (v, m) in runtime::runtime_volumes(spec) {
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
                            ..runtime::server_container(
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
