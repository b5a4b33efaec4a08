//! The lock and publish stages: a lock file per destination (per cache entry when caching)
//! held for the whole transfer; the completion marker; the cache entry renamed into place and
//! linked (or copied) into the destination, or, without a cache, files moved into it.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::{Fetched, FetchedFile, Fetcher, META_DIR, local, short_hash, write_atomically};
use crate::error::{Error, ErrorKind, Result};
use crate::uri::ArtifactUri;

pub(super) const MARKER: &str = "complete.json";

/// The marker written when a directory holds a complete, verified fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Marker {
    pub(super) identity: String,
    pub(super) version: String,
    pub(super) single: bool,
    pub(super) files: Vec<FetchedFile>,
}

pub(super) fn read_marker(path: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Whether `dir` holds every file of `marker` with its size.
pub(super) fn files_present(dir: &Path, marker: &Marker) -> bool {
    marker.files.iter().all(|f| {
        std::fs::metadata(dir.join(&f.path)).is_ok_and(|m| m.is_file() && m.len() == f.size)
    })
}

/// Holds an exclusive lock on a file until dropped.
pub(super) struct LockGuard(#[allow(dead_code)] File);

pub(super) async fn lock(path: &Path, uri: &str) -> Result<LockGuard> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| local(uri, &format!("creating {}", parent.display()), &e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| local(uri, &format!("opening lock {}", path.display()), &e))?;
    match f.try_lock() {
        Ok(()) => return Ok(LockGuard(f)),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(uri, lock = %path.display(), "another process is fetching the same source: waiting for it");
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(local(uri, &format!("locking {}", path.display()), &e));
        }
    }
    let p = path.to_path_buf();
    let u = uri.to_string();
    tokio::task::spawn_blocking(move || {
        f.lock()
            .map_err(|e| local(&u, &format!("locking {}", p.display()), &e))?;
        Ok(LockGuard(f))
    })
    .await
    .map_err(|e| Error::plain(ErrorKind::Local, uri, e.to_string()))?
}

impl Fetcher {
    pub(super) async fn fetch_direct(
        &self,
        plan: &Plan,
        uri: &ArtifactUri,
        dest: &Path,
        counter: &Arc<AtomicU64>,
    ) -> Result<Fetched> {
        let u = uri.to_string();
        let meta = dest.join(META_DIR);
        let _guard = lock(&meta.join("lock"), &u).await?;
        let marker_path = meta.join(MARKER);
        let old = read_marker(&marker_path);
        if let Some(m) = &old
            && m.identity == plan.identity
            && m.version == plan.version
            && files_present(dest, m)
        {
            let m = self.as_expected(uri, dest, m.clone()).await?;
            return Ok(self.fetched(uri, dest, m, true));
        }
        let _ = std::fs::remove_file(&marker_path);
        let staging = meta.join("partial");
        let files = self.download(plan, &staging, counter).await?;
        for f in &files {
            let to = dest.join(&f.path);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .map_err(|e| local(&u, &format!("creating {}", p.display()), &e))?;
            }
            std::fs::rename(staging.join(&f.path), &to)
                .map_err(|e| local(&u, &format!("moving {} into place", to.display()), &e))?;
        }
        // Files of an older version that the new one no longer has.
        if let Some(m) = old {
            let keep: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            for f in m.files.iter().filter(|f| !keep.contains(f.path.as_str())) {
                let _ = std::fs::remove_file(dest.join(&f.path));
            }
        }
        let marker = Marker {
            identity: plan.identity.clone(),
            version: plan.version.clone(),
            single: plan.single,
            files,
        };
        write_atomically(
            &marker_path,
            &serde_json::to_vec_pretty(&marker).unwrap_or_default(),
        )
        .map_err(|e| local(&u, "writing the completion marker", &e))?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(self.fetched(uri, dest, marker, false))
    }

    fn fetched(&self, uri: &ArtifactUri, dir: &Path, m: Marker, from_cache: bool) -> Fetched {
        Fetched {
            uri: uri.to_string(),
            dir: dir.to_path_buf(),
            single: m
                .single
                .then(|| m.files.first().map(|f| dir.join(&f.path)))
                .flatten(),
            version: m.version,
            files: m.files,
            bytes_transferred: 0,
            from_cache,
            seconds: 0.0,
        }
    }

    /// Links (or copies) a complete cache entry into `dest`.
    pub(super) fn publish_cached(
        &self,
        uri: &ArtifactUri,
        entry: &Path,
        marker: Marker,
        dest: Option<&Path>,
        from_cache: bool,
    ) -> Result<Fetched> {
        let Some(dest) = dest else {
            return Ok(self.fetched(uri, entry, marker, from_cache));
        };
        let u = uri.to_string();
        for f in &marker.files {
            let from = entry.join(&f.path);
            let to = dest.join(&f.path);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .map_err(|e| local(&u, &format!("creating {}", p.display()), &e))?;
            }
            let _ = std::fs::remove_file(&to);
            if std::fs::hard_link(&from, &to).is_err() {
                // Another filesystem: copy beside the target, then rename into place.
                let tmp = to.with_file_name(format!(
                    ".{}.copy",
                    to.file_name().and_then(|n| n.to_str()).unwrap_or("file")
                ));
                std::fs::copy(&from, &tmp)
                    .and_then(|_| std::fs::rename(&tmp, &to))
                    .map_err(|e| local(&u, &format!("copying into {}", to.display()), &e))?;
            }
        }
        let meta = dest.join(META_DIR);
        std::fs::create_dir_all(&meta)
            .and_then(|()| {
                write_atomically(&meta.join(MARKER), &serde_json::to_vec_pretty(&marker)?)
            })
            .map_err(|e| local(&u, "writing the completion marker", &e))?;
        Ok(self.fetched(uri, dest, marker, from_cache))
    }
}

pub(super) fn cache_key(identity: &str, version: &str) -> String {
    short_hash(&format!("{identity}\n{version}"))
}
