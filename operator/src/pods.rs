//! What every pod the operator creates (prepare, train, serve, route) carries whatever built it:
//! the `restricted` Pod Security Standard, a writable `/tmp` on a read-only root, and requests
//! and limits for every container.
//!
//! [`finish`] is applied last by each builder, so a container's own resources (from the spec)
//! win over the operator config's defaults resource by resource; the security settings are not
//! negotiable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use tailor_api::PodTemplate;

/// The user and group tailor's images run as (distroless `nonroot`).
pub const UID: i64 = 65532;
/// The scratch volume every container gets at `/tmp` (the root filesystem is read-only).
pub const TMP_VOLUME: &str = "tmp";

/// Requests and limits each container gets for a resource its spec does not set (operator
/// config `defaultResources`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DefaultResources {
    #[serde(default = "default_requests")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default = "default_limits")]
    pub limits: BTreeMap<String, Quantity>,
}

impl Default for DefaultResources {
    fn default() -> Self {
        Self {
            requests: default_requests(),
            limits: default_limits(),
        }
    }
}

fn default_requests() -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".into(), Quantity("100m".into())),
        ("memory".into(), Quantity("256Mi".into())),
    ])
}

fn default_limits() -> BTreeMap<String, Quantity> {
    BTreeMap::from([("memory".into(), Quantity("16Gi".into()))])
}

/// The resource name GPUs of `r` are requested as.
pub fn gpu_resource<'a>(
    r: &'a tailor_api::Resources,
    cfg: &'a crate::config::OperatorConfig,
) -> &'a str {
    r.gpu_resource.as_deref().unwrap_or(&cfg.gpu_resource_name)
}

/// `POD_IP` from the downward API: pods listen on their own IP (on tailor-sim every pod shares
/// the host's network on a loopback IP of its own).
pub fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: "POD_IP".into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod-level part of the `restricted` level.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        fs_group: Some(UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The container-level part of the `restricted` level, with a read-only root filesystem.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

/// `spec` as the operator submits it: hardened, with `/tmp` writable and every container's
/// missing requests and limits filled from `defaults`.
pub fn finish(mut spec: PodSpec, defaults: &DefaultResources) -> PodSpec {
    spec.security_context = Some(pod_security());
    spec.automount_service_account_token = Some(false);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == TMP_VOLUME) {
        volumes.push(Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        finish_container(c, defaults);
    }
    spec
}

fn finish_container(c: &mut Container, defaults: &DefaultResources) {
    c.security_context = Some(container_security());
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    if !mounts.iter().any(|m| m.mount_path == "/tmp") {
        mounts.push(VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        });
    }
    let env = c.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == "HOME") {
        // Libraries that cache under $HOME write to the scratch volume.
        env.push(EnvVar {
            name: "HOME".into(),
            value: Some("/tmp".into()),
            ..EnvVar::default()
        });
    }
    c.resources = Some(with_defaults(
        c.resources.take().unwrap_or_default(),
        defaults,
    ));
}

/// Fills what `r` leaves unset from `defaults`, resource by resource: a request only where
/// neither a request nor a limit is set (Kubernetes takes a lone limit as the request), a limit
/// only where it would not fall below the request.
pub fn with_defaults(
    mut r: ResourceRequirements,
    defaults: &DefaultResources,
) -> ResourceRequirements {
    let mut requests = r.requests.take().unwrap_or_default();
    let mut limits = r.limits.take().unwrap_or_default();
    for (k, q) in &defaults.requests {
        if !requests.contains_key(k) && !limits.contains_key(k) {
            requests.insert(k.clone(), q.clone());
        }
    }
    for (k, q) in &defaults.limits {
        let fits = requests
            .get(k)
            .is_none_or(|req| quantity(req) <= quantity(q));
        if !limits.contains_key(k) && fits {
            limits.insert(k.clone(), q.clone());
        }
    }
    r.requests = (!requests.is_empty()).then_some(requests);
    r.limits = (!limits.is_empty()).then_some(limits);
    r
}

/// A quantity's value (enough of the Kubernetes grammar for CPU and memory: decimal and binary
/// suffixes, `m`); unparseable ones compare as infinite, so no limit is set below them.
fn quantity(q: &Quantity) -> f64 {
    let s = q.0.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return f64::INFINITY,
    };
    num.parse::<f64>().map_or(f64::INFINITY, |n| n * scale)
}

/// Why `spec` breaks the `restricted` Pod Security Standard (the rules of
/// <https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted>), if it
/// does: the check the unit tests apply to every pod the operator builds.
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut why = vec![];
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        why.push("host namespaces".to_string());
    }
    for v in spec.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.secret.is_some()
            || v.empty_dir.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
            || v.csi.is_some()
            || v.ephemeral.is_some();
        if !allowed {
            why.push(format!("volume {:?} has a restricted type", v.name));
        }
    }
    let seccomp_ok = |p: &Option<SeccompProfile>| {
        p.as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.allow_privilege_escalation != Some(false) {
            why.push(format!("{name}: allowPrivilegeEscalation != false"));
        }
        if sc.privileged == Some(true) {
            why.push(format!("{name}: privileged"));
        }
        let drops_all = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        let adds = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_some_and(|a| a.iter().any(|x| x != "NET_BIND_SERVICE"));
        if !drops_all || adds {
            why.push(format!("{name}: capabilities must drop ALL"));
        }
        if sc.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
            why.push(format!("{name}: runAsNonRoot != true"));
        }
        if sc.run_as_user.or(pod.run_as_user) == Some(0) {
            why.push(format!("{name}: runAsUser 0"));
        }
        if !seccomp_ok(&sc.seccomp_profile) && !seccomp_ok(&pod.seccomp_profile) {
            why.push(format!(
                "{name}: seccompProfile not RuntimeDefault or Localhost"
            ));
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some()) {
            why.push(format!("{name}: hostPort"));
        }
    }
    why
}

/// The volume sources a pod template may add: those the `restricted` Pod Security Standard
/// allows. A node path (`hostPath`) or a node-mounted network volume would give a namespace user
/// what only pod rights should.
pub const TEMPLATE_VOLUME_SOURCES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Why a pod template may not be used (a volume of a kind outside
/// [`TEMPLATE_VOLUME_SOURCES`]), as the message of an invalid spec.
pub fn check_template(field: &str, t: Option<&PodTemplate>) -> Result<(), String> {
    for v in t.map(|t| t.volumes.as_slice()).unwrap_or_default() {
        let json = serde_json::to_value(v).unwrap_or_default();
        let sources: Vec<&String> = json
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        if let Some(bad) = sources
            .iter()
            .find(|k| !TEMPLATE_VOLUME_SOURCES.contains(&k.as_str()))
        {
            return Err(format!(
                "{field}.volumes: volume {:?} is a {bad} volume; a pod template may add only {} volumes",
                v.name,
                TEMPLATE_VOLUME_SOURCES.join(", ")
            ));
        }
    }
    Ok(())
}

/// Merges a user's [`PodTemplate`] into a pod the operator built (the precedence is
/// documented on [`PodTemplate`]): the operator's names, keys and scalar fields win, lists are
/// appended, `affinity` replaces.
pub fn customize(t: &mut PodTemplateSpec, o: Option<&PodTemplate>) {
    let Some(o) = o else { return };
    let meta = t.metadata.get_or_insert_with(Default::default);
    merge_map(&mut meta.labels, &o.labels);
    merge_map(&mut meta.annotations, &o.annotations);
    let Some(spec) = t.spec.as_mut() else { return };
    extend(
        &mut spec.image_pull_secrets,
        &o.image_pull_secrets,
        |a, b| a.name == b.name,
    );
    if o.service_account_name.is_some() {
        // A chosen service account is there for its identity (e.g. workload identity for a
        // bucket): its token is mounted as Kubernetes does by default.
        spec.service_account_name = o.service_account_name.clone();
        spec.automount_service_account_token = None;
    }
    merge_map(&mut spec.node_selector, &o.node_selector);
    if o.affinity.is_some() {
        spec.affinity = o.affinity.clone();
    }
    extend(&mut spec.tolerations, &o.tolerations, |a, b| a == b);
    extend(
        &mut spec.topology_spread_constraints,
        &o.topology_spread_constraints,
        |a, b| a == b,
    );
    if spec.runtime_class_name.is_none() {
        spec.runtime_class_name = o.runtime_class_name.clone();
    }
    if spec.priority_class_name.is_none() {
        spec.priority_class_name = o.priority_class_name.clone();
    }
    // Only the volume kinds check_template allows (validation refuses the rest first).
    let volumes: Vec<Volume> = o
        .volumes
        .iter()
        .filter(|v| {
            let t = PodTemplate {
                volumes: vec![(*v).clone()],
                ..PodTemplate::default()
            };
            check_template("", Some(&t)).is_ok()
        })
        .cloned()
        .collect();
    extend(&mut spec.volumes, &volumes, |a, b| a.name == b.name);
    if let Some(c) = spec.containers.first_mut() {
        extend(&mut c.env, &o.env, |a, b| a.name == b.name);
        extend(&mut c.volume_mounts, &o.volume_mounts, |a, b| {
            a.mount_path == b.mount_path
        });
    }
}

fn merge_map(into: &mut Option<BTreeMap<String, String>>, add: &BTreeMap<String, String>) {
    if add.is_empty() {
        return;
    }
    let m = into.get_or_insert_with(BTreeMap::new);
    for (k, v) in add {
        m.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Appends what `add` has that `into` lacks (`same` says which entries clash: the operator's
/// stays).
fn extend<T: Clone>(into: &mut Option<Vec<T>>, add: &[T], same: impl Fn(&T, &T) -> bool) {
    if add.is_empty() {
        return;
    }
    let v = into.get_or_insert_with(Vec::new);
    for a in add {
        if !v.iter().any(|b| same(a, b)) {
            v.push(a.clone());
        }
    }
}

/// For the builders' tests: `spec` meets the `restricted` level and every container has CPU and
/// memory requests.
#[cfg(test)]
pub fn assert_hardened(spec: &PodSpec) {
    assert_eq!(restricted_violations(spec), Vec::<String>::new());
    for c in &spec.containers {
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        for k in ["cpu", "memory"] {
            let limited = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key(k));
            assert!(
                requests.contains_key(k) || limited,
                "{}: no {k} request",
                c.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn defaults_fill_only_what_the_spec_leaves_unset() {
        let d = DefaultResources::default();
        let r = with_defaults(ResourceRequirements::default(), &d);
        assert_eq!(r.requests.as_ref().expect("set")["cpu"], q("100m"));
        assert_eq!(r.requests.as_ref().expect("set")["memory"], q("256Mi"));
        assert_eq!(r.limits.as_ref().expect("set")["memory"], q("16Gi"));

        // The spec's own request and limit win; a lone limit is also the request.
        let own = ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("cpu".into(), q("4")),
                ("nvidia.com/gpu".into(), q("1")),
            ])),
            ..Default::default()
        };
        let r = with_defaults(own, &d);
        assert!(!r.requests.as_ref().expect("set").contains_key("cpu"));
        assert_eq!(r.limits.as_ref().expect("set")["cpu"], q("4"));
        assert_eq!(r.requests.as_ref().expect("set")["memory"], q("256Mi"));

        // A request above the default limit gets no limit below it.
        let big = ResourceRequirements {
            requests: Some(BTreeMap::from([("memory".into(), q("64Gi"))])),
            ..Default::default()
        };
        let r = with_defaults(big, &d);
        assert!(r.limits.is_none(), "{r:?}");
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        assert!(quantity(&q("256Mi")) < quantity(&q("1G")));
        assert!(quantity(&q("1500m")) < quantity(&q("2")));
        assert_eq!(quantity(&q("1Ki")), 1024.0);
        assert!(quantity(&q("lots")).is_infinite());
    }

    #[test]
    fn a_finished_pod_meets_the_restricted_level_and_a_bare_one_does_not() {
        let bare = PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        };
        assert_eq!(
            restricted_violations(&bare).len(),
            4,
            "{:?}",
            restricted_violations(&bare)
        );
        let done = finish(bare, &DefaultResources::default());
        assert_eq!(restricted_violations(&done), Vec::<String>::new());
        let c = &done.containers[0];
        assert_eq!(
            c.volume_mounts.as_ref().expect("set")[0].mount_path,
            "/tmp",
            "a writable /tmp on the read-only root"
        );
        // Applying it twice changes nothing.
        assert_eq!(finish(done.clone(), &DefaultResources::default()), done);
    }

    #[test]
    fn a_pod_template_adds_to_the_operators_pod_and_never_replaces_its_parts() {
        let built = finish(
            PodSpec {
                containers: vec![Container {
                    name: "train".into(),
                    env: Some(vec![EnvVar {
                        name: "POD_IP".into(),
                        ..EnvVar::default()
                    }]),
                    ..Container::default()
                }],
                priority_class_name: Some("from-spec".into()),
                ..PodSpec::default()
            },
            &DefaultResources::default(),
        );
        let mut t = PodTemplateSpec {
            metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                labels: Some(BTreeMap::from([("app".into(), "tailor".into())])),
                ..Default::default()
            }),
            spec: Some(built),
        };
        let o: PodTemplate = serde_json::from_value(serde_json::json!({
            "labels": {"app": "mine", "team": "a"},
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "trainer",
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "runtimeClassName": "nvidia",
            "priorityClassName": "from-template",
            "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "POD_IP", "value": "x"}],
            "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]
        }))
        .expect("template");
        customize(&mut t, Some(&o));
        let labels = t
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        assert_eq!(labels["app"], "tailor", "the operator's label stays");
        assert_eq!(labels["team"], "a");
        let spec = t.spec.as_ref().expect("spec");
        assert_eq!(
            spec.image_pull_secrets.as_ref().expect("set")[0].name,
            "regcred"
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("trainer"));
        assert_eq!(spec.automount_service_account_token, None);
        assert_eq!(spec.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("from-spec"));
        assert_eq!(spec.tolerations.as_ref().expect("set").len(), 1);
        let vols: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            vols,
            ["tmp", "cache"],
            "the operator's tmp volume stays its own"
        );
        let c = &spec.containers[0];
        let env: Vec<_> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert!(env.contains(&("POD_IP", None)), "{env:?}");
        assert!(
            env.contains(&("HTTPS_PROXY", Some("http://proxy:3128"))),
            "{env:?}"
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/cache")
        );
        assert_eq!(restricted_violations(spec), Vec::<String>::new());
    }

    #[test]
    fn a_pod_template_cannot_add_a_node_path() {
        let t: PodTemplate = serde_json::from_value(serde_json::json!({
            "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}],
            "volumeMounts": [{"name": "root", "mountPath": "/host"}]
        }))
        .expect("template");
        let err = check_template("spec.podTemplate", Some(&t)).expect_err("hostPath");
        assert!(err.contains("\"root\" is a hostPath volume"), "{err}");
        assert!(check_template("spec.podTemplate", None).is_ok());
        // Should one get past validation, it is still not added.
        let mut pod = PodTemplateSpec {
            spec: Some(finish(PodSpec::default(), &DefaultResources::default())),
            ..PodTemplateSpec::default()
        };
        customize(&mut pod, Some(&t));
        let names: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["tmp", "cache"]);
    }
}
