//! Pod volumes as directories on the host (emptyDir, configMap, secret, PVC, hostPath, projected
//! and the ServiceAccount token), and the shell script that bind-mounts them at their real
//! mountPath inside the pod's own mount namespace.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::cluster::Cluster;

pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The pseudo-volume holding the pod's ServiceAccount token, CA and namespace.
pub const SA_VOLUME: &str = "__sa";

#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// Placed if it can be, else the container runs without it (the termination-message file).
    pub optional: bool,
}

/// A pod volume as the kubelet set it up: its host directory, and whether the volume itself is
/// read-only (ConfigMap, Secret, downward API and projected volumes always are, as the kubelet
/// mounts them since 1.10; a PVC or hostPath volume when its source says `readOnly: true`).
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
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

/// Materialise (or refresh) every volume of a pod; returns its volumes, or the reason a
/// required ConfigMap/Secret/PVC is missing.
pub fn sync(cluster: &Cluster, pod: &Value, token: &str) -> Result<Vec<Volume>, String> {
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
            out.push(Volume {
                name,
                path: p,
                read_only: v["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true),
            });
            continue;
        } else if let Some(hp) = v["hostPath"]["path"].as_str() {
            let p = PathBuf::from(hp);
            if matches!(v["hostPath"]["type"].as_str(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&p).map_err(io)?;
            }
            out.push(Volume {
                name,
                path: p,
                read_only: false,
            });
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
        let api_data = ["configMap", "secret", "projected", "downwardAPI"]
            .iter()
            .any(|k| v[*k].is_object());
        out.push(Volume {
            name,
            path: dir,
            read_only: api_data,
        });
    }
    Ok(out)
}

/// A container's mounts: its volumeMounts (subPath and subPathExpr resolved, read-only where the
/// mount or the volume says so), the ServiceAccount token unless a volume already sits at its
/// path, the pod's hosts file (when the kubelet manages it), and the termination-message file. An error is the kubelet's message for a container
/// that cannot be created (`CreateContainerConfigError`).
pub fn container_mounts(
    container: &Value,
    vols: &[Volume],
    env: &std::collections::BTreeMap<String, String>,
    automount: bool,
    term_file: &Path,
    hosts_file: Option<&Path>,
) -> Result<Vec<Mount>, String> {
    let cname = container["name"].as_str().unwrap_or("");
    let mut mounts = vec![];
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or("");
        let Some(vol) = vols.iter().find(|v| v.name == vname) else {
            return Err(format!(
                "cannot find volume {vname:?} to mount into container {cname:?}"
            ));
        };
        let sub_path = match m["subPathExpr"].as_str().filter(|s| !s.is_empty()) {
            Some(expr) => expand_subpath_expr(expr, env)?,
            None => m["subPath"].as_str().unwrap_or("").to_string(),
        };
        let source = if sub_path.is_empty() {
            vol.path.clone()
        } else {
            prepare_subpath(&vol.path, &sub_path, vname, cname)?
        };
        mounts.push(Mount {
            source,
            target: m["mountPath"].as_str().unwrap_or("").into(),
            read_only: vol.read_only || m["readOnly"].as_bool() == Some(true),
            optional: false,
        });
    }
    if automount
        && !mounts
            .iter()
            .any(|m| m.target.trim_end_matches('/') == SA_DIR)
        && let Some(sa) = vols.iter().find(|v| v.name == SA_VOLUME)
    {
        mounts.push(Mount {
            source: sa.path.clone(),
            target: SA_DIR.into(),
            read_only: true,
            optional: false,
        });
    }
    if let Some(h) = hosts_file {
        mounts.push(Mount {
            source: h.to_path_buf(),
            target: "/etc/hosts".into(),
            read_only: false,
            optional: false,
        });
    }
    mounts.push(Mount {
        source: term_file.to_path_buf(),
        target: container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_string(),
        read_only: false,
        optional: true,
    });
    Ok(mounts)
}

/// The host path a volumeMount's `subPath` names, prepared as the kubelet does: an absolute
/// path or a `..` component is refused, a missing path is created (as a directory, whatever the
/// volume, so a ConfigMap key that does not exist becomes an empty directory there too), and a
/// path that resolves outside the volume (through a symlink) is refused. The errors are the
/// kubelet's words; like the kubelet it keeps host paths out of them.
pub fn prepare_subpath(
    volume: &Path,
    sub_path: &str,
    mount_name: &str,
    container: &str,
) -> Result<PathBuf, String> {
    if Path::new(sub_path).is_absolute() {
        return Err(format!(
            "error SubPath `{sub_path}` must not be an absolute path"
        ));
    }
    if sub_path.split('/').any(|c| c == "..") {
        return Err(format!(
            "unable to provision SubPath `{sub_path}`: must not contain '..'"
        ));
    }
    let base = volume.canonicalize().map_err(|e| e.to_string())?;
    let full = base.join(sub_path);
    if std::fs::symlink_metadata(&full).is_err() && safe_make_dir(&base, sub_path).is_err() {
        return Err(format!(
            "failed to create subPath directory for volumeMount {mount_name:?} of container {container:?}"
        ));
    }
    match full.canonicalize() {
        Ok(p) if p.starts_with(&base) => Ok(p),
        _ => Err(format!(
            "failed to prepare subPath for volumeMount {mount_name:?} of container {container:?}"
        )),
    }
}

/// Create `rel` under `base` one component at a time, never following a symlink out of `base`
/// (the kubelet's SafeMakeDir).
fn safe_make_dir(base: &Path, rel: &str) -> std::io::Result<()> {
    let mut cur = base.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        cur.push(part);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = cur.canonicalize()?;
                if !target.starts_with(base) {
                    return Err(std::io::Error::other("symlink points outside the volume"));
                }
                cur = target;
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&cur)?,
        }
    }
    Ok(())
}

/// `subPathExpr` with `$(VAR)` replaced from the container's environment, as the kubelet
/// expands it; a reference to an unset or empty variable is an error naming it.
pub fn expand_subpath_expr(
    expr: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let mut missing = std::collections::BTreeSet::new();
    let mut out = String::new();
    let mut rest = expr;
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
            match env.get(name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(v),
                None => {
                    missing.insert(name.to_string());
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "missing value for {}",
            missing.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
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

/// A `sh` script that sets the pod's hostname (in its own UTS namespace), mounts everything and
/// then execs the container command ("$@").
pub fn mount_script(
    mounts: &[Mount],
    workdir: Option<&str>,
    hostname: Option<&str>,
    program: &Path,
) -> String {
    let mut s = String::from("set -e\n");
    // A container's program lives in its image, which no volume can hide. Here it is a host path
    // (the --image mapping), and a volume mounted over a directory above it (a scratch `/tmp`
    // with the build under /tmp) would hide it: it is opened before the mounts and bound back at
    // its own path after them.
    let hidden = program.is_absolute() && mounts.iter().any(|m| program.starts_with(&m.target));
    let program = sh_quote(&program.to_string_lossy());
    if hidden {
        s.push_str(&format!("exec 9< {program}\n"));
    }
    if let Some(h) = hostname {
        s.push_str(&format!(
            "echo {} > /proc/sys/kernel/hostname\n",
            sh_quote(h)
        ));
    }
    // A real kubelet resolves every host path outside the container, so a mount at `/tmp` (a
    // read-only root's scratch volume) cannot hide a source that lies under the host's `/tmp`.
    // Here the mounts are made one after another inside the pod's namespace: mounts whose target
    // covers another mount's source go last (stably, so nested targets keep their order).
    let covers_a_source = |m: &Mount| {
        mounts
            .iter()
            .any(|o| !std::ptr::eq(o, m) && o.source.starts_with(&m.target))
    };
    let mut ordered: Vec<&Mount> = mounts.iter().collect();
    ordered.sort_by_key(|m| covers_a_source(m));
    for m in ordered {
        let src = sh_quote(&m.source.to_string_lossy());
        let dst = sh_quote(&m.target);
        if m.optional {
            // The termination-message file: one that cannot be placed is reported, not fatal,
            // as the container's message is optional.
            s.push_str(&format!(
                "if mkdir -p \"$(dirname {dst})\" 2>/dev/null && {{ [ -e {dst} ] || touch {dst}; }} 2>/dev/null; then mount --bind {src} {dst}; else echo \"tailor-sim: cannot place {dst}\" >&2; fi\n"
            ));
            continue;
        }
        if m.source.is_file() {
            s.push_str(&format!("mkdir -p \"$(dirname {dst})\"\n"));
            s.push_str(&format!("[ -e {dst} ] || touch {dst}\n"));
        } else {
            s.push_str(&format!("mkdir -p {dst}\n"));
        }
        s.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            // Fatal under `set -e`: a read-only mount must not run read-write.
            s.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    if hidden {
        s.push_str(&format!(
            "mkdir -p \"$(dirname {program})\"\n[ -e {program} ] || touch {program}\n\
             mount --no-canonicalize --bind /proc/self/fd/9 {program}\nexec 9<&-\n"
        ));
    }
    if let Some(w) = workdir {
        s.push_str(&format!("mkdir -p {w}; cd {w}\n", w = sh_quote(w)));
    }
    s.push_str("exec \"$@\"\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_over_tmp_comes_after_the_sources_it_would_hide() {
        let m = |source: &str, target: &str| Mount {
            source: PathBuf::from(source),
            target: target.into(),
            read_only: false,
            optional: false,
        };
        let script = mount_script(
            &[
                m("/tmp/sim/pods/u/volumes/tmp", "/tmp"),
                m("/tmp/sim/pvs/artifacts", "/artifacts"),
                m("/tmp/sim/pods/u/hosts", "/etc/hosts"),
            ],
            None,
            None,
            Path::new("/opt/bin/prog"),
        );
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(at("'/artifacts'") < at("'/tmp'"), "{script}");
        assert!(at("'/etc/hosts'") < at("'/tmp'"), "{script}");
    }
}
