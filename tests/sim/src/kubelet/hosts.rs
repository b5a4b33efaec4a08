//! Each pod's `/etc/hosts`, standing in for cluster DNS (tailor-sim has no DNS server): the
//! kubelet's own lines (localhost, the pod's hostname, and `<hostname>.<subdomain>.<ns>.svc.
//! cluster.local` when the pod has a subdomain) plus what CoreDNS would answer from Services and
//! their endpoints: `<svc>.<ns>.svc.cluster.local` (and the shorter forms the pod's DNS search
//! path resolves: `<svc>.<ns>.svc`, `<svc>.<ns>`, and `<svc>` in the pod's own namespace) to the
//! ClusterIP, or for a headless Service to each endpoint, and `<hostname>.<svc>...` to the
//! endpoint of a pod whose hostname and subdomain name it (Indexed Jobs behind a headless
//! Service). The kubelet rewrites the file in place as endpoints change; it is bind mounted at
//! `/etc/hosts` in every container of the pod (not for `hostNetwork` pods, which see the node's).

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The pod's hostname: `spec.hostname`, else its name (as the kubelet sets it).
pub fn hostname(pod: &Value) -> &str {
    pod["spec"]["hostname"]
        .as_str()
        .filter(|h| !h.is_empty())
        .or_else(|| pod["metadata"]["name"].as_str())
        .unwrap_or("")
}

/// The names a pod in namespace `from` resolves for `name` (a Service, or `host.service`) of
/// namespace `ns`: the FQDN, the forms its search path completes, and the bare name in its own
/// namespace.
fn names(name: &str, ns: &str, from: &str) -> Vec<String> {
    let mut v = vec![
        format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}"),
    ];
    if ns == from {
        v.push(name.to_string());
    }
    v
}

/// The hosts file of `pod` (whose IP is `ip`) given the cluster's Services and Endpoints.
pub fn render(pod: &Value, ip: &str, services: &[Arc<Value>], endpoints: &[Arc<Value>]) -> String {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let host = hostname(pod);
    let mut out = String::from(
        "# Kubernetes-managed hosts file (tailor-sim: also the cluster's DNS names).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    match pod["spec"]["subdomain"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => {
            let _ = writeln!(out, "{ip}\t{host}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}\t{host}");
        }
        None => {
            let _ = writeln!(out, "{ip}\t{host}");
        }
    }
    let mut lines: Vec<(String, Vec<String>)> = vec![];
    for svc in services {
        let (Some(name), Some(sns)) = (
            svc["metadata"]["name"].as_str(),
            svc["metadata"]["namespace"].as_str(),
        ) else {
            continue;
        };
        let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
        if !cluster_ip.is_empty() && cluster_ip != "None" {
            lines.push((cluster_ip.to_string(), names(name, sns, ns)));
            continue;
        }
        // Headless: the endpoints themselves.
        let Some(ep) = endpoints.iter().find(|e| {
            e["metadata"]["name"].as_str() == Some(name)
                && e["metadata"]["namespace"].as_str() == Some(sns)
        }) else {
            continue;
        };
        for addr in ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        {
            let Some(aip) = addr["ip"].as_str() else {
                continue;
            };
            let mut n = vec![];
            if let Some(h) = addr["hostname"].as_str().filter(|h| !h.is_empty()) {
                n.extend(names(&format!("{h}.{name}"), sns, ns));
            }
            n.extend(names(name, sns, ns));
            lines.push((aip.to_string(), n));
        }
    }
    lines.sort();
    for (ip, names) in lines {
        let _ = writeln!(out, "{ip}\t{}", names.join(" "));
    }
    out
}

/// Whether the kubelet manages `/etc/hosts` of this pod and container.
pub fn managed(pod: &Value, container: &Value) -> bool {
    pod["spec"]["hostNetwork"].as_bool() != Some(true)
        && !container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some("/etc/hosts"))
}

/// Write the hosts file if it changed, in place: the containers bind mount this very inode, so
/// a rename would leave them with the old file.
pub fn write(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indexed_pods_behind_a_headless_service_and_cluster_ips_resolve() {
        let pod = json!({"metadata": {"name": "train-0-abcde", "namespace": "ml"},
            "spec": {"hostname": "train-0", "subdomain": "train"}});
        let services = vec![
            Arc::new(
                json!({"metadata": {"name": "train", "namespace": "ml"}, "spec": {"clusterIP": "None"}}),
            ),
            Arc::new(
                json!({"metadata": {"name": "api", "namespace": "other"}, "spec": {"clusterIP": "127.9.200.1"}}),
            ),
        ];
        let endpoints = vec![Arc::new(
            json!({"metadata": {"name": "train", "namespace": "ml"},
            "subsets": [{"addresses": [{"ip": "127.9.1.2", "hostname": "train-0"}, {"ip": "127.9.1.3", "hostname": "train-1"}]}]}),
        )];
        let hosts = render(&pod, "127.9.1.2", &services, &endpoints);
        let lines: Vec<&str> = hosts.lines().collect();
        assert!(
            lines.contains(&"127.9.1.2\ttrain-0.train.ml.svc.cluster.local\ttrain-0"),
            "{hosts}"
        );
        assert!(
            lines.contains(
                &"127.9.1.3\ttrain-1.train.ml.svc.cluster.local train-1.train.ml.svc train-1.train.ml train-1.train train.ml.svc.cluster.local train.ml.svc train.ml train"
            ),
            "{hosts}"
        );
        assert!(
            lines.contains(&"127.9.200.1\tapi.other.svc.cluster.local api.other.svc api.other"),
            "another namespace's Service has no short name: {hosts}"
        );
    }

    #[test]
    fn the_hostname_is_spec_hostname_else_the_pod_name() {
        assert_eq!(
            hostname(&json!({"metadata": {"name": "p"}, "spec": {"hostname": "h"}})),
            "h"
        );
        assert_eq!(
            hostname(&json!({"metadata": {"name": "p"}, "spec": {}})),
            "p"
        );
    }
}
