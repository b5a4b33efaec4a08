//! What a fresh cluster has: system namespaces, Ready nodes with GPU capacity, the default
//! ClusterRoles, the `kubernetes` Service; per namespace the `default` ServiceAccount and the
//! `kube-root-ca.crt` ConfigMap; PVCs bound to directories under the state dir.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::cluster::{Cluster, WriteOpts};

fn ensure(cluster: &Cluster, group: &str, plural: &str, ns: &str, obj: Value) {
    let Ok(rt) = cluster.rt(group, plural) else {
        return;
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if cluster
        .store
        .get(&rt.gr(), if rt.namespaced { ns } else { "" }, &name)
        .is_none()
        && let Err(e) = cluster.create(&rt, ns, obj, &WriteOpts::system("tailor-sim"))
    {
        tracing::warn!(plural, name, error = %e, "bootstrap object");
    }
}

pub fn node_name(i: u32) -> String {
    format!("sim-node-{i}")
}

pub fn bootstrap(cluster: &Arc<Cluster>) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            cluster,
            "",
            "namespaces",
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    let gpus = cluster.cfg.gpus_per_node;
    for i in 1..=cluster.cfg.nodes {
        let name = node_name(i);
        let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "tailor-sim", "topology.kubernetes.io/zone": "sim"});
        if gpus > 0 {
            labels["nvidia.com/gpu.present"] = json!("true");
            labels["nvidia.com/gpu.count"] = json!(gpus.to_string());
        }
        let cap = json!({"cpu": cluster.cfg.cpu_per_node, "memory": cluster.cfg.memory_per_node, "pods": "110",
            "ephemeral-storage": "100Gi", "nvidia.com/gpu": gpus.to_string()});
        let now = crate::cluster::now();
        ensure(
            cluster,
            "",
            "nodes",
            "",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": format!("127.{}.{i}.0/24", cluster.cfg.net)},
            "status": {"capacity": cap, "allocatable": cap,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "tailor-sim://1", "osImage": "tailor-sim", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}}),
        );
    }
    let rbac = "rbac.authorization.k8s.io";
    ensure(
        cluster,
        rbac,
        "clusterroles",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cluster-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
    );
    let all_groups = json!([
        "",
        "apps",
        "batch",
        "tailor.dev",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "policy"
    ]);
    ensure(
        cluster,
        rbac,
        "clusterroles",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "admin"},
        "rules": [{"apiGroups": all_groups, "resources": ["*"], "verbs": ["*"]}, {"apiGroups": [rbac], "resources": ["roles", "rolebindings"], "verbs": ["*"]}]}),
    );
    ensure(
        cluster,
        rbac,
        "clusterroles",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "edit"},
        "rules": [{"apiGroups": all_groups, "resources": ["*"], "verbs": ["*"]}]}),
    );
    ensure(
        cluster,
        rbac,
        "clusterroles",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "view"},
        "rules": [{"apiGroups": all_groups, "resources": ["*"], "verbs": ["get", "list", "watch"]}]}),
    );
    ensure(
        cluster,
        rbac,
        "clusterrolebindings",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin"},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:masters"}]}),
    );
    ensure(
        cluster,
        "",
        "services",
        "default",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": cluster.cfg.host.to_string(), "ports": [{"name": "https", "port": cluster.cfg.port, "protocol": "TCP", "targetPort": cluster.cfg.port}]}}),
    );
    for (name, value) in [
        ("system-cluster-critical", 2000000000),
        ("system-node-critical", 2000001000),
    ] {
        ensure(
            cluster,
            "scheduling.k8s.io",
            "priorityclasses",
            "",
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "preemptionPolicy": "PreemptLowerPriority", "description": "Built-in priority class."}),
        );
    }
    // Every authenticated user may ask what it is allowed to do (system:basic-user).
    ensure(
        cluster,
        rbac,
        "clusterroles",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:basic-user"},
        "rules": [{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                  {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]}),
    );
    ensure(
        cluster,
        rbac,
        "clusterrolebindings",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:basic-user"},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:basic-user"}, "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:authenticated"}]}),
    );
    per_namespace(cluster);
}

pub fn per_namespace(cluster: &Arc<Cluster>) {
    let (nss, _) = cluster.store.list("/namespaces", None);
    for n in nss
        .iter()
        .filter(|n| n["metadata"]["deletionTimestamp"].is_null())
    {
        let ns = n["metadata"]["name"].as_str().unwrap_or("");
        ensure(
            cluster,
            "",
            "serviceaccounts",
            ns,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        );
        ensure(
            cluster,
            "",
            "configmaps",
            ns,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt",
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": cluster.ca_pem}}),
        );
    }
}

/// Dynamic provisioning: each pending claim gets a PersistentVolume backed by a directory.
pub fn bind_pvcs(cluster: &Arc<Cluster>) {
    let (pvcs, _) = cluster.store.list("/persistentvolumeclaims", None);
    let (Ok(pvc_rt), Ok(pv_rt)) = (
        cluster.rt("", "persistentvolumeclaims"),
        cluster.rt("", "persistentvolumes"),
    ) else {
        return;
    };
    for c in pvcs {
        if c["status"]["phase"].as_str() == Some("Bound")
            || !c["metadata"]["deletionTimestamp"].is_null()
        {
            continue;
        }
        let ns = c["metadata"]["namespace"].as_str().unwrap_or("");
        let name = c["metadata"]["name"].as_str().unwrap_or("");
        let uid = c["metadata"]["uid"].as_str().unwrap_or("");
        let pv_name = format!("pvc-{uid}");
        let dir = cluster.cfg.state_dir.join("volumes").join(&pv_name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, "creating volume dir");
            continue;
        }
        let size = c["spec"]["resources"]["requests"]["storage"].clone();
        let modes = c["spec"]["accessModes"].clone();
        let sc = c["spec"]["storageClassName"]
            .as_str()
            .unwrap_or("standard")
            .to_string();
        if cluster.store.get(&pv_rt.gr(), "", &pv_name).is_none() {
            let _ = cluster.create(&pv_rt, "", json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": "tailor-sim"}},
                "spec": {"capacity": {"storage": size}, "accessModes": modes, "persistentVolumeReclaimPolicy": "Delete", "storageClassName": sc,
                    "hostPath": {"path": dir.to_string_lossy()}, "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid}},
                "status": {"phase": "Bound"}}), &WriteOpts::system("persistentvolume-binder"));
        }
        let mut n = (*c).clone();
        n["spec"]["volumeName"] = json!(pv_name);
        n["spec"]["storageClassName"] = json!(sc);
        if cluster
            .update(
                &pvc_rt,
                ns,
                name,
                n,
                &WriteOpts::system("persistentvolume-binder"),
            )
            .is_ok()
            && let Some(cur) = cluster.store.get(&pvc_rt.gr(), ns, name)
        {
            let mut s = (*cur).clone();
            s["status"] =
                json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}});
            let _ = cluster.update(
                &pvc_rt,
                ns,
                name,
                s,
                &WriteOpts::status("persistentvolume-binder"),
            );
        }
    }
}
