//! Artifact-store URIs and what the operator reads from the store.
//!
//! `pvc://<claim>/<path>` names a file on a PersistentVolumeClaim. Pods the operator creates
//! mount the namespace's artifact claim at `artifactsMount`, other claims under `/mnt/<claim>`.
//! The operator itself mounts the artifact claim of its own namespace at `artifactsMount` and
//! resolves `pvc://<artifacts claim>/<path>` there: for it to verify adapters and read
//! checkpoints of other namespaces, their artifact claims must be backed by the same storage (an
//! RWX share bound in each namespace). `file://` URIs are local paths (single-node clusters,
//! the simulator), mounted into pods as hostPath volumes.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::OperatorConfig;

/// A parsed artifact URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pvc {
        claim: String,
        path: String,
    },
    File(PathBuf),
    /// `s3://`, `gs://`, `hf://`: not readable by the operator or mountable into pods here.
    Remote(String),
}

pub fn parse(uri: &str) -> Result<Location, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} is not a URI (expected pvc://, file://, s3://, gs:// or hf://)"
        ));
    };
    match scheme {
        "pvc" => {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            if claim.is_empty() {
                return Err(format!(
                    "{uri:?} names no claim (expected pvc://<claim>/<path>)"
                ));
            }
            let path = path.trim_matches('/');
            if path.split('/').any(|seg| seg == "..") {
                return Err(format!("{uri:?}: '..' is not allowed in artifact paths"));
            }
            Ok(Location::Pvc {
                claim: claim.to_string(),
                path: path.to_string(),
            })
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{uri:?}: file:// URIs need an absolute path (file:///...)"
                ));
            }
            Ok(Location::File(PathBuf::from(rest)))
        }
        "s3" | "gs" | "hf" => Ok(Location::Remote(uri.to_string())),
        other => Err(format!("{uri:?}: unsupported scheme {other:?}")),
    }
}

pub fn pvc_uri(claim: &str, path: &str) -> String {
    format!("pvc://{claim}/{}", path.trim_matches('/'))
}

/// Where a pod the operator creates sees `loc`.
pub fn pod_path(cfg: &OperatorConfig, loc: &Location) -> Option<PathBuf> {
    match loc {
        Location::Pvc { claim, path } if *claim == cfg.artifacts_claim => {
            Some(join(&cfg.artifacts_mount, path))
        }
        Location::Pvc { claim, path } => Some(join(&PathBuf::from(format!("/mnt/{claim}")), path)),
        Location::File(p) => Some(p.clone()),
        Location::Remote(_) => None,
    }
}

fn join(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Where the operator itself reads `uri`, or why it cannot.
pub fn operator_path(cfg: &OperatorConfig, uri: &str) -> Result<PathBuf, String> {
    match parse(uri)? {
        Location::Pvc { claim, path } if claim == cfg.artifacts_claim => {
            Ok(join(&cfg.artifacts_mount, &path))
        }
        Location::Pvc { claim, .. } => Err(format!(
            "the operator mounts only the artifact claim {:?}, not {claim:?}",
            cfg.artifacts_claim
        )),
        Location::File(p) => Ok(p),
        Location::Remote(u) => Err(format!(
            "{u}: object stores are not readable by the operator yet"
        )),
    }
}

/// SHA-256 (lowercase hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The newest complete trainer checkpoint (`checkpoints/step-N/state.json`) under `output`.
pub fn latest_checkpoint(output: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(output.join("checkpoints"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let step = p
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            p.join("state.json").exists().then_some((step, p))
        })
        .max_by_key(|(s, _)| *s)
}

/// The path part of a model reference, for comparing a declared base with the one an
/// adapter_config.json names: `pvc://claim/models/base` → `models/base`, `hf://org/m` → `org/m`.
fn model_tail(s: &str) -> String {
    let rest = match s.split_once("://") {
        Some(("pvc", r)) => r.split_once('/').map_or("", |(_, p)| p),
        Some((_, r)) => r,
        None => s,
    };
    rest.trim_matches('/').to_string()
}

/// Whether an adapter's `base_model_name_or_path` refers to the declared base model: the same
/// URI, or a path that ends with the declared URI's path (the trainer records where the pod saw it).
pub fn same_base(declared_uri: &str, recorded: &str) -> bool {
    if declared_uri == recorded {
        return true;
    }
    let want = model_tail(declared_uri);
    let got = model_tail(recorded);
    !want.is_empty()
        && (got == want || got.ends_with(&format!("/{want}")) || want.ends_with(&format!("/{got}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_schemes() {
        assert_eq!(
            parse("pvc://tailor-artifacts/models/base").expect("ok"),
            Location::Pvc {
                claim: "tailor-artifacts".into(),
                path: "models/base".into()
            }
        );
        assert_eq!(
            parse("file:///data/x").expect("ok"),
            Location::File("/data/x".into())
        );
        assert!(matches!(parse("hf://org/m"), Ok(Location::Remote(_))));
        assert!(parse("ftp://x").is_err());
        assert!(parse("pvc://c/../etc").is_err());
        assert!(parse("file://relative").is_err());
    }

    #[test]
    fn resolves_paths_for_pods_and_operator() {
        let cfg = OperatorConfig::for_tests();
        let loc = parse("pvc://tailor-artifacts/models/base").expect("ok");
        assert_eq!(
            pod_path(&cfg, &loc),
            Some(PathBuf::from("/artifacts/models/base"))
        );
        let other = parse("pvc://data/raw.jsonl").expect("ok");
        assert_eq!(
            pod_path(&cfg, &other),
            Some(PathBuf::from("/mnt/data/raw.jsonl"))
        );
        assert_eq!(
            operator_path(&cfg, "pvc://tailor-artifacts/a/b").expect("ok"),
            PathBuf::from("/artifacts/a/b")
        );
        assert!(operator_path(&cfg, "pvc://other/a").is_err());
        assert!(operator_path(&cfg, "s3://b/k").is_err());
    }

    #[test]
    fn base_model_comparison_accepts_the_pod_path() {
        assert!(same_base(
            "pvc://tailor-artifacts/models/base",
            "/artifacts/models/base"
        ));
        assert!(same_base("hf://org/m", "org/m"));
        assert!(!same_base(
            "pvc://tailor-artifacts/models/base",
            "/artifacts/models/other"
        ));
    }

    #[test]
    fn hashes_files_and_finds_checkpoints() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("f"), b"abc").expect("write");
        let (h, n) = sha256_file(&dir.path().join("f")).expect("hash");
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for (step, complete) in [(10, true), (20, true), (30, false)] {
            let d = dir.path().join(format!("checkpoints/step-{step:08}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            if complete {
                std::fs::write(d.join("state.json"), b"{}").expect("write");
            }
        }
        assert_eq!(latest_checkpoint(dir.path()).map(|(s, _)| s), Some(20));
    }
}
