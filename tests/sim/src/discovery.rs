//! Discovery documents: /api, /apis, group and group/version resource lists, /version.

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::resources::ResourceType;

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "status" | "scale" => vec!["get", "patch", "update"],
        "log" => vec!["get"],
        "token" | "binding" | "eviction" => vec!["create"],
        "finalize" => vec!["update"],
        _ => vec!["get"],
    }
}

fn sub_kind(rt: &ResourceType, sub: &str) -> (String, String, String) {
    match sub {
        "scale" => ("autoscaling".into(), "v1".into(), "Scale".into()),
        "token" => (
            "authentication.k8s.io".into(),
            "v1".into(),
            "TokenRequest".into(),
        ),
        "binding" => (String::new(), "v1".into(), "Binding".into()),
        "eviction" => ("policy".into(), "v1".into(), "Eviction".into()),
        "log" => (String::new(), "v1".into(), "Pod".into()),
        _ => (String::new(), String::new(), rt.kind.clone()),
    }
}

pub fn resource_list(cluster: &Cluster, group: &str, version: &str) -> Option<Value> {
    let types: Vec<_> = cluster
        .registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = vec![];
    for t in &types {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
            "kind": t.kind, "verbs": t.verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for s in &t.subresources {
            let (g, v, k) = sub_kind(t, s);
            let mut r = json!({"name": format!("{}/{}", t.plural, s), "singularName": "", "namespaced": t.namespaced, "kind": k, "verbs": sub_verbs(s)});
            if !g.is_empty() {
                r["group"] = json!(g);
            }
            if !v.is_empty() {
                r["version"] = json!(v);
            }
            resources.push(r);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(cluster: &Cluster) -> Value {
    let groups: Vec<Value> = cluster
        .registry
        .groups()
        .iter()
        .map(|(g, vs)| {
            let mut d = group_doc(g, vs);
            if let Some(m) = d.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            d
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(cluster: &Cluster, group: &str) -> Option<Value> {
    cluster
        .registry
        .groups()
        .get(group)
        .map(|vs| group_doc(group, vs))
}

pub fn api_versions(cluster: &Cluster) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": format!("{}:{}", cluster.cfg.host, cluster.cfg.port)}]})
}

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-tailor-sim", "gitCommit": "tailor-sim",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
        "compiler": "gc", "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "32",
    })
}
