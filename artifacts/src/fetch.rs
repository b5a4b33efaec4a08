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
//!    `sha256` metadata tailor's uploads record) or the caller asks for one. Only a verified
//!    file is renamed from `.part` to its name: nothing that looks complete is ever partial.
//! 5. **publish** — with a cache: the staging directory is renamed to the cache entry
//!    `<cache>/<key>` (key: source identity + version) and its files hard-linked (or copied,
//!    across filesystems) into the destination; a second fetch of the same version finds the
//!    entry and transfers no object bytes. Without a cache: files move into the destination.
//!    Either way `<dest>/.tailor-fetch/complete.json` records what is there.
//!
//! Retryable failures (`Unreachable`, `Changed`) are retried with back-off for up to
//! `retry_for`, resuming each time; others return at once.
//!
//! Size (over 700 lines, on purpose): planning, the parallel ranged transfer and the cache marker
//! share the private `Plan`/`FileTask`/`Marker` types and one lock discipline; progress lines and
//! errors are their own modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::hub::{Hub, Revision, is_commit_sha};
use crate::progress::Progress;
use crate::store::{Context, Store, io_error};
use crate::uri::ArtifactUri;

/// Where fetch bookkeeping lives inside a destination directory.
pub const META_DIR: &str = ".tailor-fetch";
const MARKER: &str = "complete.json";
const CHUNK_ATTEMPTS: u32 = 5;
const WRITE_BUFFER: usize = 1 << 20;

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

/// The marker written when a directory holds a complete, verified fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    identity: String,
    version: String,
    single: bool,
    files: Vec<FetchedFile>,
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

#[derive(Clone)]
enum Source {
    Store(Store),
    Hub(Hub, Arc<Revision>),
}

#[derive(Debug, Clone)]
struct RemoteFile {
    /// The file's own URI (for messages).
    uri: String,
    /// Path in the destination.
    rel: String,
    /// Path in the source (relative to the store's URI, or inside the repository).
    key: String,
    size: u64,
    etag: Option<String>,
    sha256: Option<String>,
}

struct Plan {
    source: Source,
    /// What is fetched, independent of the version (the cache key's first half).
    identity: String,
    version: String,
    single: bool,
    files: Vec<RemoteFile>,
}

/// Resume state of one `.part` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartState {
    size: u64,
    etag: Option<String>,
    chunk_size: u64,
    done: BTreeSet<usize>,
}

struct FileTask {
    remote: RemoteFile,
    file: File,
    part: PathBuf,
    state_path: PathBuf,
    target: PathBuf,
    chunks: Vec<Range<u64>>,
    state: Mutex<PartState>,
    /// The sha256 a read response carried (object metadata), when the listing had none.
    seen_sha256: Mutex<Option<String>>,
    expected: Option<String>,
}

/// `n` bytes cut into ranges of `chunk` bytes.
pub(crate) fn chunk_ranges(n: u64, chunk: u64) -> Vec<Range<u64>> {
    let chunk = chunk.max(1);
    (0..n.div_ceil(chunk))
        .map(|i| i * chunk..((i + 1) * chunk).min(n))
        .collect()
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

/// The digest that versions a listing: any change of path, size or ETag changes it.
fn listing_version(files: &[RemoteFile], mtimes: &[i64]) -> String {
    let mut h = Sha256::new();
    for (f, m) in files.iter().zip(mtimes) {
        h.update(f.key.as_bytes());
        h.update(b"\t");
        h.update(f.size.to_string().as_bytes());
        h.update(b"\t");
        match &f.etag {
            Some(e) => h.update(e.as_bytes()),
            None => h.update(m.to_string().as_bytes()),
        }
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

fn local(uri: &str, what: &str, e: &std::io::Error) -> Error {
    io_error(uri, what, e)
}

fn read_marker(path: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Whether `dir` holds every file of `marker` with its size.
fn files_present(dir: &Path, marker: &Marker) -> bool {
    marker.files.iter().all(|f| {
        std::fs::metadata(dir.join(&f.path)).is_ok_and(|m| m.is_file() && m.len() == f.size)
    })
}

/// Holds an exclusive lock on a file until dropped.
struct LockGuard(#[allow(dead_code)] File);

async fn lock(path: &Path, uri: &str) -> Result<LockGuard> {
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

    async fn fetch_direct(
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

    /// A copy already here, checked against the caller's expected sha256s (`expect_sha256`):
    /// what it was verified against when fetched, or else its bytes hashed now. A mismatch is
    /// `Corrupt` and leaves the copy alone (another caller may expect exactly it).
    async fn as_expected(&self, uri: &ArtifactUri, dir: &Path, mut m: Marker) -> Result<Marker> {
        for (path, want) in &self.expected {
            let Some(f) = m.files.iter_mut().find(|f| &f.path == path) else {
                continue;
            };
            if f.sha256.as_deref() == Some(want.as_str()) {
                continue;
            }
            let file = dir.join(path);
            let (got, _) = tokio::task::spawn_blocking(move || crate::store::sha256_file(&file))
                .await
                .map_err(|e| Error::plain(ErrorKind::Local, uri, e.to_string()))?
                .map_err(|e| local(&uri.to_string(), &format!("hashing {path}"), &e))?;
            if &got != want {
                return Err(Error::plain(
                    ErrorKind::Corrupt,
                    uri.join(path),
                    format!("sha256 is {got}, expected {want}"),
                ));
            }
            f.sha256 = Some(got);
        }
        Ok(m)
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
    fn publish_cached(
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

    /// Resolves the source to a version and its files.
    async fn plan(&self, uri: &ArtifactUri) -> Result<Plan> {
        if let ArtifactUri::Hf { path: sub, .. } = uri {
            return self.plan_hub(uri, sub).await;
        }
        let store = Store::open(uri, &self.ctx)?;
        let (single, listed) = self.object_or_prefix(uri, &store).await?;
        let (files, mtimes, is_single) = match single {
            Some(info) => {
                let name = uri.file_name().unwrap_or_else(|| "object".into());
                let f = RemoteFile {
                    uri: uri.to_string(),
                    rel: name,
                    key: String::new(),
                    size: info.size,
                    etag: info.etag,
                    sha256: info.sha256,
                };
                (vec![f], vec![info.last_modified_ms], true)
            }
            None => {
                let mtimes = listed.iter().map(|o| o.last_modified_ms).collect();
                let files = listed
                    .into_iter()
                    .map(|o| RemoteFile {
                        uri: uri.join(&o.path).to_string(),
                        rel: o.path.clone(),
                        key: o.path,
                        size: o.size,
                        etag: o.etag,
                        sha256: None,
                    })
                    .collect();
                (files, mtimes, false)
            }
        };
        Ok(Plan {
            source: Source::Store(store),
            identity: identity(uri),
            version: listing_version(&files, &mtimes),
            single: is_single,
            files,
        })
    }

    /// Whether a store URI names one object (its metadata) or a prefix (its objects). A
    /// prefix is listed first: a HEAD on a "directory" is a 404 on S3 but an error on some
    /// S3-compatible servers. Plain HTTP cannot list, so its URIs name one object.
    async fn object_or_prefix(
        &self,
        uri: &ArtifactUri,
        store: &Store,
    ) -> Result<(
        Option<crate::store::ObjectInfo>,
        Vec<crate::store::ObjectInfo>,
    )> {
        let is_file = match uri {
            ArtifactUri::Http { .. } => true,
            ArtifactUri::Pvc { .. } | ArtifactUri::File { .. } => {
                self.ctx.local_path(uri)?.is_some_and(|p| p.is_file())
            }
            _ => false,
        };
        if is_file {
            return Ok((Some(store.head("").await?), Vec::new()));
        }
        let listed = store.list("").await?;
        if !listed.is_empty() || uri.path().is_empty() || uri.is_local() {
            if listed.is_empty() {
                return Err(Error::plain(
                    ErrorKind::NotFound,
                    uri,
                    "no object at this path and none under it as a prefix",
                ));
            }
            return Ok((None, listed));
        }
        match store.head("").await {
            Ok(info) => Ok((Some(info), Vec::new())),
            Err(e) if e.kind == ErrorKind::NotFound => Err(Error::plain(
                ErrorKind::NotFound,
                uri,
                "no object at this path and none under it as a prefix",
            )),
            Err(e) => Err(e),
        }
    }

    async fn plan_hub(&self, uri: &ArtifactUri, sub: &str) -> Result<Plan> {
        let hub = Hub::new(&self.ctx.env)?;
        let rev = Arc::new(hub.revision(uri).await?);
        let names: Vec<String> = rev
            .files
            .iter()
            .filter(|f| sub.is_empty() || *f == sub || f.starts_with(&format!("{sub}/")))
            .cloned()
            .collect();
        if names.is_empty() {
            return Err(Error::plain(
                ErrorKind::NotFound,
                uri,
                format!("no file at or under {sub:?} in commit {}", rev.sha),
            ));
        }
        let single = names.len() == 1 && names[0] == sub;
        let infos: Vec<_> = stream::iter(names)
            .map(|n: String| {
                let hub = hub.clone();
                let rev = rev.clone();
                async move { hub.file(&rev, &n).await }
            })
            .buffered(8)
            .try_collect()
            .await?;
        let files = infos
            .into_iter()
            .map(|f| {
                let rel = if single {
                    f.path.rsplit('/').next().unwrap_or(&f.path).to_string()
                } else if sub.is_empty() {
                    f.path.clone()
                } else {
                    f.path[sub.len() + 1..].to_string()
                };
                RemoteFile {
                    uri: hub.display(&rev, &f.path),
                    rel,
                    key: f.path,
                    size: f.size,
                    etag: f.etag,
                    sha256: f.sha256,
                }
            })
            .collect();
        tracing::info!(uri = %uri, commit = %rev.sha, "resolved revision");
        Ok(Plan {
            version: rev.sha.clone(),
            source: Source::Hub(hub, rev),
            identity: identity(uri),
            single,
            files,
        })
    }

    /// Downloads every file of `plan` into `staging` (resuming what an earlier attempt left
    /// there) and returns them verified.
    async fn download(
        &self,
        plan: &Plan,
        staging: &Path,
        counter: &Arc<AtomicU64>,
    ) -> Result<Vec<FetchedFile>> {
        let u = plan.identity.clone();
        let version_file = staging.join(".version");
        let stale = std::fs::read_to_string(&version_file).ok().as_deref() != Some(&plan.version);
        if stale && staging.exists() {
            std::fs::remove_dir_all(staging)
                .map_err(|e| local(&u, "clearing an older partial fetch", &e))?;
        }
        std::fs::create_dir_all(staging)
            .and_then(|()| std::fs::write(&version_file, &plan.version))
            .map_err(|e| local(&u, &format!("creating {}", staging.display()), &e))?;

        let mut tasks = Vec::new();
        let mut done_files = Vec::new();
        for f in &plan.files {
            let target = staging.join(&f.rel);
            let expected = self.expected.get(&f.rel).cloned();
            if std::fs::metadata(&target).is_ok_and(|m| m.len() == f.size) {
                done_files.push(FetchedFile {
                    path: f.rel.clone(),
                    size: f.size,
                    sha256: expected.or_else(|| f.sha256.clone()),
                });
                continue;
            }
            tasks.push(Arc::new(self.open_task(plan, f, &target, expected)?));
        }
        let remaining: u64 = tasks
            .iter()
            .map(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                t.chunks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !st.done.contains(i))
                    .map(|(_, r)| r.end - r.start)
                    .sum::<u64>()
            })
            .sum();
        let progress = Progress::start(&u, remaining, counter.clone(), self.progress_every);

        let jobs: Vec<(Arc<FileTask>, usize)> = tasks
            .iter()
            .flat_map(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                (0..t.chunks.len())
                    .filter(|i| !st.done.contains(i))
                    .map(|i| (t.clone(), i))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Files whose ranges are all done already (or that are empty) only need verifying.
        let ready: Vec<Arc<FileTask>> = tasks
            .iter()
            .filter(|t| {
                let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                st.done.len() == t.chunks.len()
            })
            .cloned()
            .collect();
        let source = &plan.source;
        let results: Vec<Option<FetchedFile>> = stream::iter(jobs)
            .map(|(task, i)| async move { self.run_chunk(source, &task, i, counter).await })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .inspect_err(|_| progress.stop())?;
        progress.stop();
        done_files.extend(results.into_iter().flatten());
        for t in ready {
            done_files.push(finalize(t).await?);
        }
        done_files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(done_files)
    }

    fn open_task(
        &self,
        plan: &Plan,
        f: &RemoteFile,
        target: &Path,
        expected: Option<String>,
    ) -> Result<FileTask> {
        let u = plan.identity.as_str();
        let part = target.with_file_name(format!(
            "{}.part",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file")
        ));
        let state_path = part.with_file_name(format!(
            "{}.json",
            part.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file.part")
        ));
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| local(u, &format!("creating {}", p.display()), &e))?;
        }
        let fresh = PartState {
            size: f.size,
            etag: f.etag.clone(),
            chunk_size: self.chunk_size,
            done: BTreeSet::new(),
        };
        let saved: Option<PartState> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let resumable = saved.as_ref().is_some_and(|s| {
            s.size == fresh.size
                && s.etag == fresh.etag
                && s.chunk_size == fresh.chunk_size
                && std::fs::metadata(&part).is_ok_and(|m| m.len() == f.size)
        });
        let state = match saved {
            Some(s) if resumable => {
                tracing::info!(file = %f.rel, ranges_done = s.done.len(), "resuming a partial file");
                s
            }
            _ => fresh,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(|e| local(u, &format!("opening {}", part.display()), &e))?;
        if !resumable {
            file.set_len(0)
                .and_then(|()| file.set_len(f.size))
                .map_err(|e| local(u, &format!("sizing {}", part.display()), &e))?;
            write_atomically(&state_path, &serde_json::to_vec(&state).unwrap_or_default())
                .map_err(|e| local(u, "writing resume state", &e))?;
        }
        Ok(FileTask {
            remote: f.clone(),
            file,
            part,
            state_path,
            target: target.to_path_buf(),
            chunks: chunk_ranges(f.size, self.chunk_size),
            state: Mutex::new(state),
            seen_sha256: Mutex::new(None),
            expected,
        })
    }

    /// Fetches one range (retrying a cut or failed read from where it stopped); when it was the
    /// file's last, verifies and publishes the file.
    async fn run_chunk(
        &self,
        source: &Source,
        task: &Arc<FileTask>,
        index: usize,
        counter: &Arc<AtomicU64>,
    ) -> Result<Option<FetchedFile>> {
        let range = task.chunks[index].clone();
        let mut written = 0u64;
        let mut attempt = 0u32;
        loop {
            match read_range(
                source,
                task,
                range.start + written..range.end,
                &mut written,
                counter,
            )
            .await
            {
                Ok(()) => break,
                Err(e) if e.kind == ErrorKind::Unreachable && attempt + 1 < CHUNK_ATTEMPTS => {
                    attempt += 1;
                    let wait = jitter(backoff(
                        attempt,
                        Duration::from_millis(200),
                        Duration::from_secs(5),
                    ));
                    tracing::warn!(file = %task.remote.rel, range_start = range.start, error = %e, attempt, "range read failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        let all_done = {
            let mut st = task.state.lock().unwrap_or_else(|e| e.into_inner());
            st.done.insert(index);
            write_atomically(
                &task.state_path,
                &serde_json::to_vec(&*st).unwrap_or_default(),
            )
            .map_err(|e| local(&task.remote.uri, "writing resume state", &e))?;
            st.done.len() == task.chunks.len()
        };
        if all_done {
            Ok(Some(finalize(task.clone()).await?))
        } else {
            Ok(None)
        }
    }
}

fn identity(uri: &ArtifactUri) -> String {
    uri.with_revision(None).to_string()
}

fn cache_key(identity: &str, version: &str) -> String {
    short_hash(&format!("{identity}\n{version}"))
}

/// Reads `range` of a file into its `.part` at the same offsets, counting bytes into
/// `written`; a response that ends early is an `Unreachable` error (the caller resumes).
async fn read_range(
    source: &Source,
    task: &FileTask,
    range: Range<u64>,
    written: &mut u64,
    counter: &AtomicU64,
) -> Result<()> {
    let want = range.end - range.start;
    let mut s = match source {
        Source::Store(store) => {
            let (s, sha) = store
                .read_pinned(
                    &task.remote.key,
                    Some(range.clone()),
                    task.remote.etag.as_deref(),
                )
                .await?;
            if sha.is_some() {
                *task.seen_sha256.lock().unwrap_or_else(|e| e.into_inner()) = sha;
            }
            s
        }
        Source::Hub(hub, rev) => hub.read(rev, &task.remote.key, Some(range.clone())).await?,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER.min(want as usize));
    let mut got = 0u64;
    // `end`: the offset just after the buffered bytes.
    let flush = |buf: &mut Vec<u8>, end: u64| -> Result<()> {
        let at = end - buf.len() as u64;
        task.file.write_all_at(buf, at).map_err(|e| {
            local(
                &task.remote.uri,
                &format!("writing {}", task.part.display()),
                &e,
            )
        })?;
        buf.clear();
        Ok(())
    };
    while let Some(piece) = s.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                // Keep what arrived: the retry continues after it.
                flush(&mut buf, range.start + got)?;
                *written += got;
                return Err(e);
            }
        };
        if got + piece.len() as u64 > want {
            return Err(Error::plain(
                ErrorKind::Corrupt,
                &task.remote.uri,
                format!(
                    "the source sent more than the {want} bytes asked for at offset {}",
                    range.start
                ),
            ));
        }
        counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
        got += piece.len() as u64;
        buf.extend_from_slice(&piece);
        if buf.len() >= WRITE_BUFFER {
            flush(&mut buf, range.start + got)?;
        }
    }
    flush(&mut buf, range.start + got)?;
    *written += got;
    if got < want {
        return Err(Error::plain(
            ErrorKind::Unreachable,
            &task.remote.uri,
            format!(
                "the response ended after {got} of {want} bytes (offset {}): truncated",
                range.start
            ),
        ));
    }
    Ok(())
}

/// Checks size and sha256 of a completed `.part` and renames it to its name.
async fn finalize(task: Arc<FileTask>) -> Result<FetchedFile> {
    tokio::task::spawn_blocking(move || {
        let rel = &task.remote.rel;
        let uri = &task.remote.uri;
        let len = task
            .file
            .metadata()
            .map_err(|e| local(uri, "reading the downloaded file", &e))?
            .len();
        if len != task.remote.size {
            return Err(Error::plain(
                ErrorKind::Corrupt,
                uri,
                format!("{len} bytes on disk, the source has {}", task.remote.size),
            ));
        }
        let seen = task
            .seen_sha256
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut wants: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &task.expected {
            wants.push(("the caller expects", s.clone()));
        }
        if let Some(s) = task.remote.sha256.clone().or(seen) {
            wants.push(("the source records", s));
        }
        if !wants.is_empty() {
            let (got, _) = crate::store::sha256_file(&task.part)
                .map_err(|e| local(uri, "hashing the downloaded file", &e))?;
            if let Some((who, want)) = wants.iter().find(|(_, w)| *w != got) {
                let _ = std::fs::remove_file(&task.part);
                let _ = std::fs::remove_file(&task.state_path);
                return Err(Error::plain(
                    ErrorKind::Corrupt,
                    uri,
                    format!("sha256 of the downloaded bytes is {got}, {who} {want}; the file was discarded"),
                ));
            }
        }
        std::fs::rename(&task.part, &task.target)
            .map_err(|e| local(uri, "renaming the verified file into place", &e))?;
        let _ = std::fs::remove_file(&task.state_path);
        Ok(FetchedFile {
            path: rel.clone(),
            size: task.remote.size,
            sha256: wants.into_iter().next().map(|(_, s)| s),
        })
    })
    .await
    .map_err(|e| Error::plain(ErrorKind::Local, "fetch", e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_file_exactly() {
        assert_eq!(chunk_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_ranges(8, 4), vec![0..4, 4..8]);
        assert!(chunk_ranges(0, 4).is_empty());
        assert_eq!(chunk_ranges(3, 0), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = |a| backoff(a, Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b(0), Duration::from_secs(1));
        assert_eq!(b(3), Duration::from_secs(8));
        assert_eq!(b(10), Duration::from_secs(30));
        assert_eq!(b(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn versions_change_with_any_etag_or_size() {
        let f = |etag: &str, size| RemoteFile {
            uri: "s3://b/a".into(),
            rel: "a".into(),
            key: "a".into(),
            size,
            etag: Some(etag.into()),
            sha256: None,
        };
        let v = listing_version(&[f("x", 1)], &[0]);
        assert_eq!(v, listing_version(&[f("x", 1)], &[5]));
        assert_ne!(v, listing_version(&[f("y", 1)], &[0]));
        assert_ne!(v, listing_version(&[f("x", 2)], &[0]));
        // One cache entry per source and version; the revision as written does not matter.
        let a = ArtifactUri::parse("hf://org/m@main").expect("uri");
        let b = ArtifactUri::parse("hf://org/m").expect("uri");
        assert_eq!(identity(&a), identity(&b));
    }
}
