//! Artifact URIs, as a tenant may use them, and what the operator reads from the store.
//!
//! The artifact store is one volume shared by every namespace: the operator mounts it whole
//! (the `artifactsClaim` of its own namespace at `artifactsMount`), and each namespace binds
//! its own `artifactsClaim` to the same storage. The store is divided into one **area per
//! namespace** (`<namespace>/` at the store's root), and a tenant's `pvc://<artifactsClaim>/<path>`
//! means `<path>` inside its own area: it cannot name another namespace's files, and the pods the
//! operator creates mount only their namespace's area (a `subPath`). Prefixes the admin lists in
//! `sharedPrefixes` (e.g. `models`, where the platform team puts base models) are the exception:
//! `pvc://<artifactsClaim>/models/...` resolves at the store's root and is read-only for tenants.
//!
//! Other claims of the tenant's own namespace (`pvc://<claim>/<path>`) are mounted read-only into
//! its pods; the operator cannot read them. `file://` (node paths, mounted as hostPath) works only
//! where the admin enables `allowFileUris` (single-node dev clusters, the simulator): a tenant
//! must not be able to mount the node's filesystem without pod rights.
//!
//! Everything the operator reads from the store is bounded ([`read_bounded`]) and must stay
//! inside the area it was resolved in after symlinks are followed ([`contained`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::OperatorConfig;

/// Where the pods the operator creates see the admin's shared prefixes (read-only).
pub const SHARED_MOUNT: &str = "/artifacts-shared";

/// A parsed artifact URI (syntax only; [`resolve`] applies the namespace policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pvc {
        claim: String,
        path: String,
    },
    File(PathBuf),
    /// `s3://`, `gs://`, `az://`, `https://`, `hf://`: fetched into the pod by an init
    /// container (`tailor-fetch`), with credentials from a Secret the spec names.
    Remote(String),
}

pub fn parse(uri: &str) -> Result<Location, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} is not a URI (expected pvc://, file://, s3://, gs://, az://, https:// or hf://)"
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
            if path.split('/').any(|seg| seg == ".." || seg == ".") {
                return Err(format!(
                    "{uri:?}: '.' and '..' are not allowed in artifact paths"
                ));
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
            if rest.split('/').any(|seg| seg == "..") {
                return Err(format!("{uri:?}: '..' is not allowed in artifact paths"));
            }
            Ok(Location::File(PathBuf::from(rest)))
        }
        "s3" | "gs" | "az" | "abfs" | "abfss" | "https" | "hf" => {
            tailor_artifacts::ArtifactUri::parse(uri).map_err(|e| e.to_string())?;
            Ok(Location::Remote(uri.to_string()))
        }
        other => Err(format!("{uri:?}: unsupported scheme {other:?}")),
    }
}

pub fn pvc_uri(claim: &str, path: &str) -> String {
    format!("pvc://{claim}/{}", path.trim_matches('/'))
}

/// What a tenant's URI refers to under the namespace policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// In the namespace's own area of the store: `path` relative to the area.
    Area { path: String },
    /// Under a prefix the admin shares with every namespace (read-only): `path` from the root.
    Shared { path: String },
    /// Another claim of the namespace itself (mounted read-only; the operator cannot read it).
    Claim { claim: String, path: String },
    /// A node path (only where `allowFileUris` is on).
    Host(PathBuf),
    /// An object store or the Hub: fetched into the pod (see [`crate::jobs::PodVolumes`]).
    Remote(String),
}

/// Resolves `uri` as a tenant of `ns` may use it, or says why it may not.
pub fn resolve(cfg: &OperatorConfig, uri: &str) -> Result<Resolved, String> {
    match parse(uri)? {
        Location::Pvc { claim, path } if claim == cfg.artifacts_claim => {
            if is_shared(cfg, &path) {
                Ok(Resolved::Shared { path })
            } else if path.is_empty() {
                Err(format!(
                    "{uri:?} names the whole artifact volume; name a path in it (pvc://{claim}/<path>)"
                ))
            } else {
                Ok(Resolved::Area { path })
            }
        }
        Location::Pvc { claim, path } => Ok(Resolved::Claim { claim, path }),
        Location::File(p) if cfg.allow_file_uris => Ok(Resolved::Host(p)),
        Location::File(_) => Err(format!(
            "{uri:?}: file:// URIs are disabled on this cluster (the operator config's allowFileUris); put the data on the artifact volume (pvc://{}/...)",
            cfg.artifacts_claim
        )),
        Location::Remote(u) => Ok(Resolved::Remote(u)),
    }
}

fn is_shared(cfg: &OperatorConfig, path: &str) -> bool {
    cfg.shared_prefixes.iter().any(|p| {
        let p = p.trim_matches('/');
        !p.is_empty() && (path == p || path.starts_with(&format!("{p}/")))
    })
}

/// Where a pod of `ns` sees `r` (see [`crate::jobs::PodVolumes`] for the mounts).
pub fn pod_path(cfg: &OperatorConfig, r: &Resolved) -> PathBuf {
    match r {
        Resolved::Area { path } => join(&cfg.artifacts_mount, path),
        Resolved::Shared { path } => join(Path::new(SHARED_MOUNT), path),
        Resolved::Claim { claim, path } => join(&PathBuf::from(format!("/mnt/{claim}")), path),
        Resolved::Host(p) => p.clone(),
        Resolved::Remote(_) => PathBuf::from(INPUTS_DIR),
    }
}

/// Where the init containers put fetched inputs in a pod (an emptyDir).
pub const INPUTS_DIR: &str = "/inputs";

fn join(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Where the operator reads what `uri` names for a tenant of `ns`, and the directory it must
/// stay inside (the namespace's area, or the shared prefix's root), or why it cannot.
pub fn operator_path(cfg: &OperatorConfig, ns: &str, uri: &str) -> Result<StorePath, String> {
    if ns.is_empty() || ns.contains('/') || ns == ".." {
        return Err(format!("{uri}: no namespace to resolve it in"));
    }
    match resolve(cfg, uri)? {
        Resolved::Area { path } => {
            let area = cfg.artifacts_mount.join(ns);
            Ok(StorePath {
                path: join(&area, &path),
                within: area,
            })
        }
        Resolved::Shared { path } => Ok(StorePath {
            path: join(&cfg.artifacts_mount, &path),
            within: cfg.artifacts_mount.clone(),
        }),
        Resolved::Claim { claim, .. } => Err(format!(
            "{uri}: the operator reads only the artifact volume ({}), not the claim {claim:?}",
            cfg.artifacts_claim
        )),
        Resolved::Host(p) => Ok(StorePath {
            within: p.clone(),
            path: p,
        }),
        Resolved::Remote(u) => Err(format!(
            "{u}: fetched into the pods that use it; the operator does not read it"
        )),
    }
}

/// A path of the store, with the directory that reads through it must stay inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePath {
    pub path: PathBuf,
    pub within: PathBuf,
}

impl StorePath {
    pub fn join(&self, rel: &str) -> StorePath {
        StorePath {
            path: self.path.join(rel),
            within: self.within.clone(),
        }
    }
}

/// `p` with symlinks followed, if it stays inside `sp.within` (a tenant with pod rights could
/// plant a symlink in its area that points into another namespace's).
pub fn contained(sp: &StorePath) -> std::io::Result<PathBuf> {
    let real = std::fs::canonicalize(&sp.path)?;
    let root = std::fs::canonicalize(&sp.within)?;
    if real.starts_with(&root) {
        Ok(real)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} leads outside {} (a symlink?)",
                sp.path.display(),
                sp.within.display()
            ),
        ))
    }
}

/// The contained path of a regular file: checked before opening, since opening a FIFO for
/// reading blocks until someone writes to it.
fn regular_file(sp: &StorePath) -> std::io::Result<PathBuf> {
    let real = contained(sp)?;
    if !std::fs::metadata(&real)?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            sp.path.display()
        )));
    }
    Ok(real)
}

/// The whole of a small file, refusing more than `max` bytes and anything but a regular file
/// (a FIFO would block the reader for good).
pub fn read_bounded(sp: &StorePath, max: u64) -> std::io::Result<Vec<u8>> {
    let real = regular_file(sp)?;
    let f = std::fs::File::open(&real)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "{} is larger than {max} bytes",
            sp.path.display()
        )));
    }
    Ok(buf)
}

/// SHA-256 (lowercase hex) and size of a regular file, streamed.
pub fn sha256_file(sp: &StorePath) -> std::io::Result<(String, u64)> {
    let real = regular_file(sp)?;
    let mut f = std::fs::File::open(&real)?;
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
            let step = tailor_wire::train::checkpoint_step(p.file_name()?.to_str()?)? as u64;
            p.join(tailor_wire::train::CHECKPOINT_MARKER)
                .exists()
                .then_some((step, p))
        })
        .max_by_key(|(s, _)| *s)
}

/// What a trainer records as `base_model_name_or_path` for a fetched base model (the pod only
/// sees a local copy): the Hub's `org/name`, as PEFT writes it, or the URI itself. `None` for a
/// mounted base, whose pod path already names it.
pub fn recorded_base_name(uri: &str) -> Option<String> {
    match tailor_artifacts::ArtifactUri::parse(uri).ok()? {
        u if u.is_local() => None,
        tailor_artifacts::ArtifactUri::Hf { repo, .. } => Some(repo),
        _ => Some(uri.to_string()),
    }
}

/// The path part of a model reference, for comparing a declared base with the one an
/// adapter_config.json names: `pvc://claim/models/base` → `models/base`, `hf://org/m@rev` →
/// `org/m`.
fn model_tail(s: &str) -> String {
    if let Ok(tailor_artifacts::ArtifactUri::Hf { repo, .. }) =
        tailor_artifacts::ArtifactUri::parse(s)
    {
        return repo;
    }
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

    fn cfg() -> OperatorConfig {
        let mut c = OperatorConfig::for_tests();
        c.shared_prefixes = vec!["models".into()];
        c
    }

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
        assert!(parse("pvc://c/a/./b").is_err());
        assert!(parse("file://relative").is_err());
        assert!(parse("file:///a/../etc").is_err());
    }

    #[test]
    fn tenant_uris_resolve_in_their_own_area_or_a_shared_prefix() {
        let c = cfg();
        assert_eq!(
            resolve(&c, "pvc://tailor-artifacts/finetune/x").expect("ok"),
            Resolved::Area {
                path: "finetune/x".into()
            }
        );
        assert_eq!(
            resolve(&c, "pvc://tailor-artifacts/models/base").expect("ok"),
            Resolved::Shared {
                path: "models/base".into()
            }
        );
        // A prefix is a whole path segment.
        assert_eq!(
            resolve(&c, "pvc://tailor-artifacts/models2/x").expect("ok"),
            Resolved::Area {
                path: "models2/x".into()
            }
        );
        // The whole volume is nobody's area.
        let e = resolve(&c, "pvc://tailor-artifacts").expect_err("whole volume");
        assert!(e.contains("whole artifact volume"), "{e}");
        let e = resolve(&c, "pvc://tailor-artifacts/").expect_err("whole volume");
        assert!(e.contains("whole artifact volume"), "{e}");
        // file:// is off unless the admin turns it on.
        let e = resolve(&c, "file:///etc").expect_err("off");
        assert!(e.contains("allowFileUris"), "{e}");
        let mut on = cfg();
        on.allow_file_uris = true;
        assert_eq!(
            resolve(&on, "file:///data/x").expect("on"),
            Resolved::Host("/data/x".into())
        );
    }

    #[test]
    fn the_operator_reads_only_inside_the_namespace_area() {
        let c = cfg();
        let sp = operator_path(&c, "team-a", "pvc://tailor-artifacts/finetune/x").expect("ok");
        assert_eq!(sp.path, PathBuf::from("/artifacts/team-a/finetune/x"));
        assert_eq!(sp.within, PathBuf::from("/artifacts/team-a"));
        let shared = operator_path(&c, "team-a", "pvc://tailor-artifacts/models/b").expect("ok");
        assert_eq!(shared.path, PathBuf::from("/artifacts/models/b"));
        assert!(operator_path(&c, "team-a", "pvc://other/a").is_err());
        assert!(operator_path(&c, "team-a", "s3://b/k").is_err());
        assert!(operator_path(&c, "", "pvc://tailor-artifacts/a").is_err());
        assert_eq!(
            pod_path(
                &c,
                &resolve(&c, "pvc://tailor-artifacts/models/b").expect("ok")
            ),
            PathBuf::from("/artifacts-shared/models/b")
        );
        assert_eq!(
            pod_path(&c, &resolve(&c, "pvc://data/raw.jsonl").expect("ok")),
            PathBuf::from("/mnt/data/raw.jsonl")
        );
    }

    #[test]
    fn reads_refuse_symlinks_out_of_the_area_big_files_and_fifos() {
        let dir = tempfile::tempdir().expect("tmp");
        let area = dir.path().join("team-a");
        let other = dir.path().join("team-b");
        std::fs::create_dir_all(&area).expect("mkdir");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::fs::write(other.join("secret"), b"theirs").expect("write");
        std::fs::write(area.join("small"), b"abc").expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(other.join("secret"), area.join("link")).expect("symlink");
        let sp = |name: &str| StorePath {
            path: area.join(name),
            within: area.clone(),
        };
        assert_eq!(read_bounded(&sp("small"), 3).expect("fits"), b"abc");
        let e = read_bounded(&sp("small"), 2).expect_err("too big");
        assert!(e.to_string().contains("larger than 2 bytes"), "{e}");
        let e = read_bounded(&sp("link"), 100).expect_err("escapes");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(sha256_file(&sp("link")).is_err());
        let fifo = area.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let e = read_bounded(&sp("fifo"), 100).expect_err("fifo");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn base_model_comparison_accepts_the_pod_path() {
        assert!(same_base(
            "pvc://tailor-artifacts/models/base",
            "/artifacts-shared/models/base"
        ));
        assert!(same_base(
            "pvc://tailor-artifacts/models/base",
            "/artifacts/models/base"
        ));
        assert!(same_base("hf://org/m", "org/m"));
        assert!(same_base("hf://org/m@v1.0", "org/m"));
        assert!(!same_base("hf://org/m@v1.0", "org/other"));
        assert!(same_base(
            "s3://bucket/models/base",
            "s3://bucket/models/base"
        ));
        // What the trainer records for a fetched base (the pod sees only `/inputs/N`).
        assert_eq!(
            recorded_base_name("hf://org/m@v1.0/sub").as_deref(),
            Some("org/m")
        );
        assert_eq!(
            recorded_base_name("s3://bucket/models/base").as_deref(),
            Some("s3://bucket/models/base")
        );
        assert_eq!(
            recorded_base_name("pvc://tailor-artifacts/models/base"),
            None
        );
        assert!(!same_base(
            "pvc://tailor-artifacts/models/base",
            "/artifacts/models/other"
        ));
    }

    #[test]
    fn hashes_files_and_finds_checkpoints() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("f"), b"abc").expect("write");
        let sp = StorePath {
            path: dir.path().join("f"),
            within: dir.path().to_path_buf(),
        };
        let (h, n) = sha256_file(&sp).expect("hash");
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
