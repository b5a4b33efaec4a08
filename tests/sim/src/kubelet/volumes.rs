//! Pod volumes as directories on the host (emptyDir, configMap, secret, PVC, hostPath, projected
//! and the ServiceAccount token), and the shell script that bind-mounts them at their real
//! mountPath inside the pod's own mount namespace.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::cluster::Cluster;

pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

pub fn pod_dir(state: &Path, uid: &str) -> PathBuf {
    state.join("pods").join(uid)
}

fn write_if_changed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("tailor-sim-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Keys of a ConfigMap/Secret as files (honouring `items`); removed keys disappear.
fn sync_keyed(dir: &Path, data: &[(String, Vec<u8>)], items: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut wanted: Vec<(String, &Vec<u8>)> = vec![];
    match items.as_array() {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or("");
                if let Some((_, v)) = data.iter().find(|(k, _)| k == key) {
                    wanted.push((it["path"].as_str().unwrap_or(key).to_string(), v));
                }
            }
        }
        None => wanted.extend(data.iter().map(|(k, v)| (k.clone(), v))),
    }
    for (p, v) in &wanted {
        write_if_changed(&dir.join(p), v)?;
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file()
            && !wanted
                .iter()
                .any(|(p, _)| p.split('/').next() == Some(name.as_str()))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn configmap_data(cm: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = cm["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()))
        .collect();
    for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")) {
            out.push((k.clone(), b));
        }
    }
    out
}

fn secret_data(s: &Value) -> Vec<(String, Vec<u8>)> {
    s["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str()?)
                    .ok()?,
            ))
        })
        .collect()
}

/// Materialise (or refresh) every volume of a pod; returns volume name → host directory, or
/// the reason a required ConfigMap/Secret/PVC is missing.
pub fn sync(cluster: &Cluster, pod: &Value, token: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let base = pod_dir(&cluster.cfg.state_dir, uid).join("volumes");
    let mut out = vec![];
    let io = |e: std::io::Error| e.to_string();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let dir = base.join(&name);
        if v["emptyDir"].is_object() {
            std::fs::create_dir_all(&dir).map_err(io)?;
        } else if let Some(cmv) = v["configMap"].as_object() {
            let cm_name = cmv.get("name").and_then(Value::as_str).unwrap_or("");
            match cluster.store.get("/configmaps", ns, cm_name) {
                Some(cm) => sync_keyed(
                    &dir,
                    &configmap_data(&cm),
                    cmv.get("items").unwrap_or(&Value::Null),
                )
                .map_err(io)?,
                None if cmv.get("optional").and_then(Value::as_bool) == Some(true) => {
                    std::fs::create_dir_all(&dir).map_err(io)?
                }
                None => return Err(format!("configmap \"{cm_name}\" not found")),
            }
        } else if let Some(sv) = v["secret"].as_object() {
            let s_name = sv.get("secretName").and_then(Value::as_str).unwrap_or("");
            match cluster.store.get("/secrets", ns, s_name) {
                Some(s) => sync_keyed(
                    &dir,
                    &secret_data(&s),
                    sv.get("items").unwrap_or(&Value::Null),
                )
                .map_err(io)?,
                None if sv.get("optional").and_then(Value::as_bool) == Some(true) => {
                    std::fs::create_dir_all(&dir).map_err(io)?
                }
                None => return Err(format!("secret \"{s_name}\" not found")),
            }
        } else if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            let pvc = cluster
                .store
                .get("/persistentvolumeclaims", ns, claim)
                .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
            let pv_name = pvc["spec"]["volumeName"]
                .as_str()
                .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
            let pv = cluster
                .store
                .get("/persistentvolumes", "", pv_name)
                .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
            let p = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap_or(""));
            std::fs::create_dir_all(&p).map_err(io)?;
            out.push((name, p));
            continue;
        } else if let Some(hp) = v["hostPath"]["path"].as_str() {
            let p = PathBuf::from(hp);
            if matches!(v["hostPath"]["type"].as_str(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&p).map_err(io)?;
            }
            out.push((name, p));
            continue;
        } else if let Some(sources) = v["projected"]["sources"].as_array() {
            let mut files: Vec<(String, Vec<u8>)> = vec![];
            for s in sources {
                if s["serviceAccountToken"].is_object() {
                    files.push((
                        s["serviceAccountToken"]["path"]
                            .as_str()
                            .unwrap_or("token")
                            .to_string(),
                        token.as_bytes().to_vec(),
                    ));
                } else if let Some(cm) = s["configMap"]["name"]
                    .as_str()
                    .and_then(|n| cluster.store.get("/configmaps", ns, n))
                {
                    let data = configmap_data(&cm);
                    match s["configMap"]["items"].as_array() {
                        Some(items) => {
                            for it in items {
                                if let Some((_, d)) = data
                                    .iter()
                                    .find(|(k, _)| Some(k.as_str()) == it["key"].as_str())
                                {
                                    files.push((
                                        it["path"].as_str().unwrap_or("").to_string(),
                                        d.clone(),
                                    ));
                                }
                            }
                        }
                        None => files.extend(data),
                    }
                } else if let Some(sec) = s["secret"]["name"]
                    .as_str()
                    .and_then(|n| cluster.store.get("/secrets", ns, n))
                {
                    files.extend(secret_data(&sec));
                } else if let Some(items) = s["downwardAPI"]["items"].as_array() {
                    for it in items {
                        let val =
                            field_ref(pod, it["fieldRef"]["fieldPath"].as_str().unwrap_or(""));
                        files.push((
                            it["path"].as_str().unwrap_or("").to_string(),
                            val.into_bytes(),
                        ));
                    }
                }
            }
            sync_keyed(&dir, &files, &Value::Null).map_err(io)?;
        } else if let Some(items) = v["downwardAPI"]["items"].as_array() {
            let files: Vec<(String, Vec<u8>)> = items
                .iter()
                .map(|it| {
                    (
                        it["path"].as_str().unwrap_or("").to_string(),
                        field_ref(pod, it["fieldRef"]["fieldPath"].as_str().unwrap_or(""))
                            .into_bytes(),
                    )
                })
                .collect();
            sync_keyed(&dir, &files, &Value::Null).map_err(io)?;
        } else {
            std::fs::create_dir_all(&dir).map_err(io)?;
        }
        out.push((name, dir));
    }
    Ok(out)
}

/// The downward API's fieldRef values.
pub fn field_ref(pod: &Value, path: &str) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    if let Some(k) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return s(&pod["metadata"]["labels"][k]);
    }
    if let Some(k) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return s(&pod["metadata"]["annotations"][k]);
    }
    match path {
        "metadata.name" => s(&pod["metadata"]["name"]),
        "metadata.namespace" => s(&pod["metadata"]["namespace"]),
        "metadata.uid" => s(&pod["metadata"]["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.podIP" | "status.podIPs" => s(&pod["status"]["podIP"]),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        "metadata.labels" => pod["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        "metadata.annotations" => pod["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A `sh` script that mounts everything and then execs the container command ("$@").
pub fn mount_script(mounts: &[Mount], workdir: Option<&str>) -> String {
    let mut s = String::from("set -e\n");
    for m in mounts {
        let src = sh_quote(&m.source.to_string_lossy());
        let dst = sh_quote(&m.target);
        if m.source.is_file() {
            // A file target (the termination-message file) that cannot be placed is reported,
            // not fatal: the container still runs, as its message is optional.
            s.push_str(&format!(
                "if mkdir -p \"$(dirname {dst})\" 2>/dev/null && {{ [ -e {dst} ] || touch {dst}; }} 2>/dev/null; then mount --bind {src} {dst}; else echo \"tailor-sim: cannot place {dst}\" >&2; fi\n"
            ));
        } else {
            s.push_str(&format!("mkdir -p {dst}\n"));
            s.push_str(&format!("mount --bind {src} {dst}\n"));
        }
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {dst} || true\n"));
        }
    }
    if let Some(w) = workdir {
        s.push_str(&format!("mkdir -p {w}; cd {w}\n", w = sh_quote(w)));
    }
    s.push_str("exec \"$@\"\n");
    s
}
