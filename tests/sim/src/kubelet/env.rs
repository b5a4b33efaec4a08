//! A container's environment as the kubelet builds it: the API server's address, Service
//! links, GPU ids, `envFrom`, `env` with the downward API and ConfigMap/Secret keys, and
//! `$(VAR)` expansion.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::scheduler::GPU_ANNOTATION;

use super::volumes;

/// `$(VAR)` references in command, args and env values, as the kubelet expands them.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of container `c` of `pod` (whose IP is `ip`); an error names the ConfigMap,
/// Secret or key that is missing (`CreateContainerConfigError`).
pub fn build(
    cluster: &Cluster,
    pod: &Value,
    c: &Value,
    ip: &str,
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let mut pod = pod.clone();
    pod["status"]["podIP"] = json!(ip);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let host = cluster.cfg.host.to_string();
    let port = cluster.cfg.port.to_string();
    env.insert("KUBERNETES_SERVICE_HOST".into(), host.clone());
    env.insert("KUBERNETES_SERVICE_PORT".into(), port.clone());
    env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone());
    env.insert("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}"));
    env.insert(
        "KUBERNETES_PORT_443_TCP".into(),
        format!("tcp://{host}:{port}"),
    );
    env.insert("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into());
    env.insert("KUBERNETES_PORT_443_TCP_ADDR".into(), host.clone());
    env.insert("KUBERNETES_PORT_443_TCP_PORT".into(), port.clone());
    env.insert("HOSTNAME".into(), super::hosts::hostname(&pod).to_string());
    if pod["spec"]["enableServiceLinks"].as_bool() != Some(false) {
        let (svcs, _) = cluster.store.list("/services", Some(ns));
        for s in svcs {
            let (Some(n), Some(ip)) = (
                s["metadata"]["name"].as_str(),
                s["spec"]["clusterIP"].as_str(),
            ) else {
                continue;
            };
            if n == "kubernetes" {
                continue;
            }
            let pfx = n.to_uppercase().replace('-', "_");
            env.insert(format!("{pfx}_SERVICE_HOST"), ip.into());
            if let Some(p) = s["spec"]["ports"][0]["port"].as_i64() {
                env.insert(format!("{pfx}_SERVICE_PORT"), p.to_string());
                env.insert(format!("{pfx}_PORT"), format!("tcp://{ip}:{p}"));
            }
        }
    }
    if let Some(ids) = pod["metadata"]["annotations"][GPU_ANNOTATION].as_str() {
        env.insert("NVIDIA_VISIBLE_DEVICES".into(), ids.into());
    }
    for ef in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = ef["prefix"].as_str().unwrap_or("");
        if let Some(n) = ef["configMapRef"]["name"].as_str() {
            match cluster.store.get("/configmaps", ns, n) {
                Some(cm) => {
                    for (k, v) in cm["data"].as_object().into_iter().flatten() {
                        env.insert(format!("{prefix}{k}"), v.as_str().unwrap_or("").into());
                    }
                }
                None if ef["configMapRef"]["optional"].as_bool() == Some(true) => {}
                None => return Err(format!("configmap \"{n}\" not found")),
            }
        }
        if let Some(n) = ef["secretRef"]["name"].as_str() {
            match cluster.store.get("/secrets", ns, n) {
                Some(s) => {
                    for (k, v) in s["data"].as_object().into_iter().flatten() {
                        use base64::Engine;
                        let d = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str().unwrap_or(""))
                            .unwrap_or_default();
                        env.insert(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&d).into_owned(),
                        );
                    }
                }
                None if ef["secretRef"]["optional"].as_bool() == Some(true) => {}
                None => return Err(format!("secret \"{n}\" not found")),
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        let vf = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(fp) = vf["fieldRef"]["fieldPath"].as_str() {
            volumes::field_ref(&pod, fp)
        } else if let Some(r) = vf["resourceFieldRef"]["resource"].as_str() {
            let q = c["resources"][if r.starts_with("limits") {
                "limits"
            } else {
                "requests"
            }][r.split('.').nth(1).unwrap_or("")]
            .clone();
            let milli = crate::scheduler::parse_quantity(&q);
            let div = match r {
                "limits.cpu" | "requests.cpu" => 1000,
                _ => 1000,
            };
            ((milli + div - 1) / div).to_string()
        } else if let Some(k) = vf["configMapKeyRef"].as_object() {
            let n = k.get("name").and_then(Value::as_str).unwrap_or("");
            let key = k.get("key").and_then(Value::as_str).unwrap_or("");
            let optional = k.get("optional").and_then(Value::as_bool) == Some(true);
            match cluster
                .store
                .get("/configmaps", ns, n)
                .and_then(|cm| cm["data"][key].as_str().map(String::from))
            {
                Some(v) => v,
                None if optional => continue,
                None => return Err(format!("couldn't find key {key} in ConfigMap {ns}/{n}")),
            }
        } else if let Some(k) = vf["secretKeyRef"].as_object() {
            let n = k.get("name").and_then(Value::as_str).unwrap_or("");
            let key = k.get("key").and_then(Value::as_str).unwrap_or("");
            let optional = k.get("optional").and_then(Value::as_bool) == Some(true);
            use base64::Engine;
            match cluster
                .store
                .get("/secrets", ns, n)
                .and_then(|s| s["data"][key].as_str().map(String::from))
            {
                Some(v) => String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .unwrap_or_default(),
                )
                .into_owned(),
                None if optional => continue,
                None => return Err(format!("couldn't find key {key} in Secret {ns}/{n}")),
            }
        } else {
            String::new()
        };
        env.insert(name, value);
    }
    Ok(env)
}
