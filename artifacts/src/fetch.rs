//! The fetcher: a URI (one object, a prefix, a Hub repository or a directory in one) into a
//! local directory — parallel ranged reads, resume of partial files, checksum verification, a
//! progress line every few seconds and a node-local cache.
//!
//! How a fetch goes:
//! 1. **plan** — resolve the source to a version and a file list: a Hub revision to its commit
//!    sha (one `HEAD` per file gives size and LFS sha256); an object store URI to one object
//!    (`HEAD`) or else everything under the prefix (`LIST`), the version being a digest of the
//!    paths, sizes and ETags.
//! 2. **lock** — a lock file per destination (per cache entry when caching) held for the whole
//!    transfer, so two processes fetching the same thing wait for each other instead of writing
//!    the same files; a process killed mid-fetch releases it, and the next one resumes.
//! 3. **download** into a staging directory: each file is cut into ranges, fetched several at a
//!    time across all files, written in place into `<file>.part`; after each range, a small
//!    state file records the ranges done (and the ETag they came from), which is what a resumed
//!    fetch skips. Each range is pinned to the listed ETag (`If-Match`), so an object overwritten
//!    mid-fetch fails as `Changed` rather than mixing versions. A range cut short is read again
//!    from where it stopped, with back-off.
//! 4. **verify** — size always; sha256 where the source gives one (Hub LFS `X-Linked-Etag`, the
//!    `sha256` metadata tailor's uploads record) or the caller asks for one; the sha256 grows
//!    while the file downloads (each run of ranges done from the start is hashed as it forms),
//!    so a finished file has only its last ranges left to hash. Only a verified file is
//!    renamed from `.part` to its name: nothing that looks complete is ever partial.
//! 5. **publish** — with a cache: the staging directory is renamed to the cache entry
//!    `<cache>/<key>` (key: source identity + version) and its files hard-linked (or copied,
//!    across filesystems) into the destination; a second fetch of the same version finds the
//!    entry and transfers no object bytes. Without a cache: files move into the destination.
//!    Either way `<dest>/.tailor-fetch/complete.json` records what is there.
//!
//! Retryable failures (`Unreachable`, `Changed`) are retried with back-off for up to
//! `retry_for`, resuming each time; others return at once.
//!
//! The stages live in submodules: `plan` (sources to a version and a file list), `transfer`
//! (ranges, resume state, reads into `.part` files), `verify` (size and sha256 of a finished
//! file, or of a copy already here against what the caller expects) and `publish` (the locks,
//! the completion marker, cache entries, linking or moving files into the destination);
//! progress lines and errors are their own modules.

mod plan;
mod publish;
mod transfer;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::hub::is_commit_sha;
use crate::store::{Context, io_error};
use crate::uri::ArtifactUri;
use plan::identity;
use publish::{MARKER, Marker, cache_key, files_present, lock, read_marker};

/// Where fetch bookkeeping lives inside a destination directory.
pub const META_DIR: &str = ".tailor-fetch";

/// One fetched file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchedFile {
    /// Relative to the destination directory.
    pub path: String,
    pub size: u64,
    /// The sha256 it was verified against, if the source or the caller gave one.
    pub sha256: Option<String>,
}

/// What a fetch did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    pub uri: String,
    /// The directory holding the files.
    pub dir: PathBuf,
    /// When the URI named one object: that file.
    pub single: Option<PathBuf>,
    /// The commit sha (hf://) or a digest of the listing (object stores).
    pub version: String,
    pub files: Vec<FetchedFile>,
    /// Object bytes read from the source by this fetch (0 when served from the cache).
    pub bytes_transferred: u64,
    pub from_cache: bool,
    pub seconds: f64,
}

/// The fetcher's settings; [`Fetcher::fetch`] does the work.
#[derive(Debug, Clone)]
pub struct Fetcher {
    ctx: Context,
    cache: Option<PathBuf>,
    concurrency: usize,
    chunk_size: u64,
    retry_for: Duration,
    progress_every: Duration,
    expected: BTreeMap<String, String>,
}

/// Exponential back-off: `base * 2^attempt`, at most `max` (jitter is added by the caller).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max)
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// A short, stable hash of text (cache keys, directory names).
pub fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

fn local(uri: &str, what: &str, e: &std::io::Error) -> Error {
    io_error(uri, what, e)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Fetcher {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            cache: None,
            concurrency: 16,
            chunk_size: 16 << 20,
            retry_for: Duration::from_secs(600),
            progress_every: Duration::from_secs(5),
            expected: BTreeMap::new(),
        }
    }

    /// A node-local cache directory shared by fetches (and processes) on this machine.
    pub fn with_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.cache = dir;
        self
    }

    /// Ranged requests in flight at once (across all files).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The size of each ranged request.
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// How long retryable failures are retried (with back-off and resume); zero: never.
    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    pub fn with_progress_every(mut self, d: Duration) -> Self {
        self.progress_every = d;
        self
    }

    /// Requires the file at `path` (relative to the destination) to have this sha256.
    pub fn expect_sha256(mut self, path: impl Into<String>, sha256: impl Into<String>) -> Self {
        self.expected
            .insert(path.into(), sha256.into().to_ascii_lowercase());
        self
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Fetches `uri` into `dest` (a directory; created). Without `dest` the files stay in the
    /// cache entry, which then must be configured.
    pub async fn fetch(&self, uri: &ArtifactUri, dest: Option<&Path>) -> Result<Fetched> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut transferred = 0u64;
        loop {
            let counter = Arc::new(AtomicU64::new(0));
            match self.fetch_once(uri, dest, &counter).await {
                Ok(mut f) => {
                    f.bytes_transferred = transferred + counter.load(Ordering::Relaxed);
                    f.seconds = started.elapsed().as_secs_f64();
                    tracing::info!(
                        uri = %uri,
                        dir = %f.dir.display(),
                        files = f.files.len(),
                        version = %f.version,
                        bytes_transferred = f.bytes_transferred,
                        from_cache = f.from_cache,
                        seconds = f.seconds,
                        "fetched"
                    );
                    return Ok(f);
                }
                Err(e) => {
                    transferred += counter.load(Ordering::Relaxed);
                    let wait = jitter(backoff(
                        attempt,
                        Duration::from_secs(1),
                        Duration::from_secs(30),
                    ));
                    if !e.is_retryable() || started.elapsed() + wait > self.retry_for {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::warn!(uri = %uri, error = %e, attempt, retry_in_seconds = wait.as_secs_f64(), "fetch failed, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A local path holding `uri`'s bytes: `pvc://` and `file://` are read in place; anything
    /// else is fetched under `work` (through the cache when there is one). For a single object
    /// the path is the file, otherwise the directory.
    pub async fn localize(&self, uri: &ArtifactUri, work: &Path) -> Result<PathBuf> {
        if let Some(p) = self.ctx.local_path(uri)? {
            return Ok(p);
        }
        let dest = work.join(short_hash(&uri.to_string()));
        let f = self.fetch(uri, Some(&dest)).await?;
        Ok(f.single.unwrap_or(f.dir))
    }

    async fn fetch_once(
        &self,
        uri: &ArtifactUri,
        dest: Option<&Path>,
        counter: &Arc<AtomicU64>,
    ) -> Result<Fetched> {
        let u = uri.to_string();
        if let (
            Some(cache),
            ArtifactUri::Hf {
                revision: Some(rev),
                ..
            },
        ) = (&self.cache, uri)
            && is_commit_sha(rev)
        {
            // A pinned commit needs no network when the cache has it.
            let entry = cache.join(cache_key(&identity(uri), &rev.to_ascii_lowercase()));
            if let Some(m) = read_marker(&entry.join(META_DIR).join(MARKER))
                && files_present(&entry, &m)
            {
                let m = self.as_expected(uri, &entry, m).await?;
                return self.publish_cached(uri, &entry, m, dest, true);
            }
        }
        let plan = self.plan(uri).await?;
        match (&self.cache, dest) {
            (Some(cache), _) => {
                let key = cache_key(&plan.identity, &plan.version);
                let entry = cache.join(&key);
                let _guard = lock(&cache.join(format!("{key}.lock")), &u).await?;
                let marker_path = entry.join(META_DIR).join(MARKER);
                if let Some(m) = read_marker(&marker_path).filter(|m| files_present(&entry, m)) {
                    let m = self.as_expected(uri, &entry, m).await?;
                    return self.publish_cached(uri, &entry, m, dest, true);
                }
                let staging = cache.join(format!("{key}.partial"));
                let files = self.download(&plan, &staging, counter).await?;
                let marker = Marker {
                    identity: plan.identity.clone(),
                    version: plan.version.clone(),
                    single: plan.single,
                    files,
                };
                let meta = staging.join(META_DIR);
                std::fs::create_dir_all(&meta)
                    .and_then(|()| {
                        write_atomically(&meta.join(MARKER), &serde_json::to_vec_pretty(&marker)?)
                    })
                    .map_err(|e| local(&u, "writing the cache marker", &e))?;
                if entry.exists() {
                    std::fs::remove_dir_all(&entry)
                        .map_err(|e| local(&u, "replacing a broken cache entry", &e))?;
                }
                std::fs::rename(&staging, &entry)
                    .map_err(|e| local(&u, "publishing the cache entry", &e))?;
                self.publish_cached(uri, &entry, marker, dest, false)
            }
            (None, Some(dest)) => self.fetch_direct(&plan, uri, dest, counter).await,
            (None, None) => Err(Error::plain(
                ErrorKind::Invalid,
                uri,
                "a fetch needs a destination directory or a cache",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = |a| backoff(a, Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b(0), Duration::from_secs(1));
        assert_eq!(b(3), Duration::from_secs(8));
        assert_eq!(b(10), Duration::from_secs(30));
        assert_eq!(b(u32::MAX), Duration::from_secs(30));
    }
}
