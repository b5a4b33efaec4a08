//! The resource types the simulator serves: built-in kinds and those defined by CRDs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::admission::CrdSchema;

/// Everything the API machinery needs to know about one resource type.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served besides the object itself ("status", "log", "token", "scale").
    pub subresources: Vec<&'static str>,
    /// Verbs on the main resource; reads-only kinds drop the writes.
    pub verbs: Vec<&'static str>,
    /// Set for kinds defined by a CRD.
    pub crd: Option<Arc<CrdSchema>>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key of this type (group and plural; the served version does not matter).
    pub fn gr(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    pub fn is_builtin(&self) -> bool {
        self.crd.is_none()
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    cats: &[&str],
    sub: &[&'static str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: cats.iter().map(|s| s.to_string()).collect(),
        subresources: sub.to_vec(),
        verbs: ALL_VERBS.to_vec(),
        crd: None,
    }
}

pub fn builtin_types() -> Vec<ResourceType> {
    let all = &["all"];
    let mut v = vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            &[],
            &["status", "finalize"],
        ),
        builtin(
            "",
            "v1",
            "Pod",
            "pods",
            true,
            &["po"],
            all,
            &["status", "log", "binding", "eviction"],
        ),
        builtin(
            "",
            "v1",
            "Service",
            "services",
            true,
            &["svc"],
            all,
            &["status"],
        ),
        builtin("", "v1", "Endpoints", "endpoints", true, &["ep"], &[], &[]),
        builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"], &[], &[]),
        builtin("", "v1", "Secret", "secrets", true, &[], &[], &[]),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            &[],
            &["token"],
        ),
        builtin("", "v1", "Event", "events", true, &["ev"], &[], &[]),
        builtin("", "v1", "Node", "nodes", false, &["no"], &[], &["status"]),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            &["pvc"],
            &[],
            &["status"],
        ),
        builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            false,
            &["pv"],
            &[],
            &["status"],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            &[],
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            &[],
            &[],
        ),
        builtin("batch", "v1", "Job", "jobs", true, &[], all, &["status"]),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            all,
            &["status", "scale"],
        ),
        builtin(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            true,
            &["rs"],
            all,
            &["status", "scale"],
        ),
        builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            &[],
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            &[],
            &[],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            &["status"],
        ),
        builtin(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            false,
            &["pc"],
            &[],
            &[],
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            &[],
            &["status"],
        ),
        // Stored and served; not enforced (the simulator has no network isolation).
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            &[],
            &[],
        ),
        // Stored and served, their scaleTargetRef resolvable through `scale` subresources; no
        // controller acts on them.
        builtin(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["hpa"],
            all,
            &["status"],
        ),
    ];
    // Review kinds exist only as create-only endpoints.
    for (g, kind, plural, ns) in [
        (
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        ),
        (
            "authorization.k8s.io",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
        ),
        (
            "authentication.k8s.io",
            "TokenReview",
            "tokenreviews",
            false,
        ),
        (
            "authentication.k8s.io",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        ),
    ] {
        let mut t = builtin(g, "v1", kind, plural, ns, &[], &[], &[]);
        t.verbs = vec!["create"];
        v.push(t);
    }
    v
}

/// All served types, built-in plus the established CRDs, behind a lock since CRDs come and go.
#[derive(Default)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
}

impl Registry {
    pub fn new() -> Self {
        let r = Self::default();
        {
            let mut t = r.types.write().unwrap_or_else(|e| e.into_inner());
            for b in builtin_types() {
                t.push(Arc::new(b));
            }
        }
        r
    }

    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Any version of the group/plural (store-level lookups).
    pub fn find_gr(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Replace the types contributed by one CRD (all its served versions).
    pub fn set_crd(&self, crd_name: &str, types: Vec<ResourceType>) {
        let mut t = self.types.write().unwrap_or_else(|e| e.into_inner());
        t.retain(|x| x.crd.as_ref().is_none_or(|c| c.crd_name != crd_name));
        for n in types {
            t.push(Arc::new(n));
        }
    }

    /// Groups with their versions, in a stable order (core excluded).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.all() {
            if t.group.is_empty() {
                continue;
            }
            let vs = m.entry(t.group.clone()).or_default();
            if !vs.contains(&t.version) {
                vs.push(t.version.clone());
            }
        }
        m
    }
}

/// Read a string at a dotted path of a JSON object.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}
