//! Object stores behind one type: `pvc://`, `file://`, `s3://`, `gs://`, `az://`/`abfs://` and
//! `https://`, all through the `object_store` crate, configured only from the credential
//! environment (see `credentials`). `hf://` is read through `hub` instead.
//!
//! A [`Store`] is opened at a URI; the paths its methods take are relative to that URI (`""`
//! is the URI itself, whether it names one object or a prefix).
//!
//! Size (over 700 lines, on purpose): one type over six URI schemes; each scheme's configuration
//! is a short builder call, and they share the open, read, write and list paths.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};

use crate::credentials::{Env, Redactor};
use crate::error::{Error, ErrorKind, Result, chain, kind_of_io, kind_of_object_store};
use crate::uri::ArtifactUri;

/// The metadata key under which uploads record the sha256 of their bytes
/// (`x-amz-meta-sha256`, `x-goog-meta-sha256`, `x-ms-meta-sha256`); fetches verify it.
pub const SHA256_METADATA: &str = "sha256";

/// Files at or above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
const PART_SIZE: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 8;
const FILES_IN_FLIGHT: usize = 4;

/// What a store access needs besides the URI: credentials and where claims are mounted.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub env: Env,
    /// `pvc://<claim>/…` → this directory (the claim's mount in this pod).
    pub pvc_mounts: BTreeMap<String, PathBuf>,
    /// A claim not in `pvc_mounts` resolves to `<pvc_root>/<claim>` when this is set.
    pub pvc_root: Option<PathBuf>,
}

impl Context {
    pub fn new(env: Env) -> Self {
        Self {
            env,
            ..Self::default()
        }
    }

    /// Where `pvc://claim/` is mounted here, if anywhere.
    pub fn claim_dir(&self, claim: &str) -> Option<PathBuf> {
        self.pvc_mounts
            .get(claim)
            .cloned()
            .or_else(|| self.pvc_root.as_ref().map(|r| r.join(claim)))
    }

    /// The local path of a `pvc://` or `file://` URI; `None` for remote schemes.
    pub fn local_path(&self, uri: &ArtifactUri) -> Result<Option<PathBuf>> {
        match uri {
            ArtifactUri::File { path } => Ok(Some(path.clone())),
            ArtifactUri::Pvc { claim, path } => {
                let dir = self.claim_dir(claim).ok_or_else(|| {
                    Error::plain(
                        ErrorKind::Invalid,
                        uri,
                        format!(
                            "claim {claim:?} is not mounted in this process (known: {:?})",
                            self.pvc_mounts.keys().collect::<Vec<_>>()
                        ),
                    )
                })?;
                Ok(Some(if path.is_empty() { dir } else { dir.join(path) }))
            }
            _ => Ok(None),
        }
    }
}

/// One object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the URI the store was opened at (`""`: that URI itself).
    pub path: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Milliseconds since the epoch.
    pub last_modified_ms: i64,
    /// The sha256 an uploader recorded in the object's metadata (only from `head`; listings do
    /// not carry metadata).
    pub sha256: Option<String>,
}

/// An upload's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// An opened object store at a URI.
#[derive(Clone)]
pub struct Store {
    uri: ArtifactUri,
    inner: Arc<dyn ObjectStore>,
    base: ObjPath,
    redactor: Redactor,
    /// Local filesystem stores keep no user metadata.
    keeps_metadata: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.uri)
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300))
        .with_pool_max_idle_per_host(64)
}

/// Short retries inside object_store; the fetcher's own loop retries longer, with resume.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

/// `AWS_SHARED_CREDENTIALS_FILE` (INI, profile `AWS_PROFILE` or `default`) when no key is given
/// as variables: object_store itself reads no credentials file.
fn aws_profile_credentials(env: &Env) -> Vec<(String, String)> {
    if env.get("AWS_ACCESS_KEY_ID").is_some() {
        return Vec::new();
    }
    let Some(file) = env.get("AWS_SHARED_CREDENTIALS_FILE") else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    parse_aws_profile(&text, env.get("AWS_PROFILE").unwrap_or("default"))
}

/// The `aws_*` keys of one `[profile]` section of an AWS credentials file.
pub(crate) fn parse_aws_profile(text: &str, profile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section = name == profile || name == format!("profile {profile}");
            continue;
        }
        if in_section && let Some((k, v)) = line.split_once('=') {
            let k = k.trim().to_ascii_lowercase();
            if matches!(
                k.as_str(),
                "aws_access_key_id" | "aws_secret_access_key" | "aws_session_token"
            ) {
                out.push((k, v.trim().to_string()));
            }
        }
    }
    out
}

/// Every `PREFIX*` variable the builder knows, as object_store's own `from_env` would take
/// it, but from `env` rather than the process.
fn configure<B, K>(mut builder: B, env: &Env, prefix: &str, set: impl Fn(B, K, &str) -> B) -> B
where
    K: std::str::FromStr,
{
    for (key, value) in env.with_prefix(prefix) {
        if let Ok(k) = key.to_ascii_lowercase().parse::<K>() {
            builder = set(builder, k, value);
        }
    }
    builder
}

pub(crate) fn s3_builder(bucket: &str, env: &Env) -> object_store::aws::AmazonS3Builder {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let b = AmazonS3Builder::new()
        .with_client_options(client_options())
        .with_retry(retry_config())
        .with_bucket_name(bucket);
    let mut b = configure(b, env, "AWS_", |b, k: AmazonS3ConfigKey, v| {
        b.with_config(k, v)
    });
    for (k, v) in aws_profile_credentials(env) {
        if let Ok(k) = k.parse::<AmazonS3ConfigKey>() {
            b = b.with_config(k, v);
        }
    }
    b
}

pub(crate) fn gcs_builder(bucket: &str, env: &Env) -> object_store::gcp::GoogleCloudStorageBuilder {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let b = GoogleCloudStorageBuilder::new()
        .with_client_options(client_options())
        .with_retry(retry_config())
        .with_bucket_name(bucket);
    configure(b, env, "GOOGLE_", |b, k: GoogleConfigKey, v| {
        b.with_config(k, v)
    })
}

pub(crate) fn azure_builder(
    container: &str,
    account: Option<&str>,
    env: &Env,
) -> object_store::azure::MicrosoftAzureBuilder {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let b = MicrosoftAzureBuilder::new()
        .with_client_options(client_options())
        .with_retry(retry_config())
        .with_container_name(container);
    let mut b = configure(b, env, "AZURE_", |b, k: AzureConfigKey, v| {
        b.with_config(k, v)
    });
    if let Some(a) = account {
        b = b.with_account(a);
    }
    b
}

fn obj_path(uri: &ArtifactUri, p: &str) -> Result<ObjPath> {
    ObjPath::parse(p).map_err(|e| {
        Error::plain(
            ErrorKind::Invalid,
            uri,
            format!("invalid object path {p:?}: {e}"),
        )
    })
}

impl Store {
    /// Opens the store a URI names. Fails (`Invalid`) for `hf://`, for an unmounted claim and
    /// for configuration the store's builder refuses.
    pub fn open(uri: &ArtifactUri, ctx: &Context) -> Result<Self> {
        let redactor = ctx.env.redactor();
        let invalid = |e: object_store::Error| {
            Error::new(
                ErrorKind::Invalid,
                uri,
                format!("configuring the store: {}", chain(&e)),
                &redactor,
            )
        };
        let (inner, base, keeps_metadata): (Arc<dyn ObjectStore>, String, bool) = match uri {
            ArtifactUri::Pvc { .. } | ArtifactUri::File { .. } => {
                let local = ctx.local_path(uri)?.unwrap_or_default();
                let text = local.to_str().ok_or_else(|| {
                    Error::plain(ErrorKind::Invalid, uri, "the local path is not UTF-8")
                })?;
                (
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    text.trim_matches('/').to_string(),
                    false,
                )
            }
            ArtifactUri::S3 { bucket, key } => (
                Arc::new(s3_builder(bucket, &ctx.env).build().map_err(invalid)?),
                key.clone(),
                true,
            ),
            ArtifactUri::Gcs { bucket, key } => (
                Arc::new(gcs_builder(bucket, &ctx.env).build().map_err(invalid)?),
                key.clone(),
                true,
            ),
            ArtifactUri::Azure {
                container,
                account,
                path,
                ..
            } => (
                Arc::new(
                    azure_builder(container, account.as_deref(), &ctx.env)
                        .build()
                        .map_err(invalid)?,
                ),
                path.clone(),
                true,
            ),
            ArtifactUri::Http { origin, path } => {
                let options = client_options().with_allow_http(origin.starts_with("http://"));
                (
                    Arc::new(
                        object_store::http::HttpBuilder::new()
                            .with_url(origin.clone())
                            .with_client_options(options)
                            .with_retry(retry_config())
                            .build()
                            .map_err(invalid)?,
                    ),
                    path.clone(),
                    false,
                )
            }
            ArtifactUri::Hf { .. } => {
                return Err(Error::plain(
                    ErrorKind::Invalid,
                    uri,
                    "hf:// is read through the Hub API (fetch it), not opened as an object store",
                ));
            }
        };
        Ok(Self {
            uri: uri.clone(),
            base: obj_path(uri, &base)?,
            inner,
            redactor,
            keeps_metadata,
        })
    }

    pub fn uri(&self) -> &ArtifactUri {
        &self.uri
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn location(&self, rel: &str) -> Result<ObjPath> {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            return Ok(self.base.clone());
        }
        let mut p = self.base.clone();
        for part in obj_path(&self.uri.join(rel), rel)?.parts() {
            p = p.join(part);
        }
        Ok(p)
    }

    fn relative(&self, loc: &ObjPath) -> String {
        match loc.prefix_match(&self.base) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => loc.to_string(),
        }
    }

    /// An error about `rel` from an object_store error: classified and redacted.
    pub(crate) fn error(&self, rel: &str, e: &object_store::Error) -> Error {
        Error::new(
            kind_of_object_store(e),
            self.uri.join(rel),
            chain(e),
            &self.redactor,
        )
    }

    fn info(&self, meta: &object_store::ObjectMeta, sha256: Option<String>) -> ObjectInfo {
        ObjectInfo {
            path: self.relative(&meta.location),
            size: meta.size,
            etag: meta.e_tag.clone(),
            last_modified_ms: meta.last_modified.timestamp_millis(),
            sha256,
        }
    }

    /// Size, ETag and recorded sha256 of one object.
    pub async fn head(&self, rel: &str) -> Result<ObjectInfo> {
        let loc = self.location(rel)?;
        let r = self
            .inner
            .get_opts(&loc, GetOptions::new().with_head(true))
            .await
            .map_err(|e| self.error(rel, &e))?;
        Ok(self.info(&r.meta, sha256_attribute(&r.attributes)))
    }

    /// Every object under `rel` (recursively), sorted by path.
    pub async fn list(&self, rel: &str) -> Result<Vec<ObjectInfo>> {
        self.list_at_most(rel, usize::MAX).await
    }

    /// [`Store::list`], refusing a listing of more than `max` objects (read no further).
    pub async fn list_at_most(&self, rel: &str, max: usize) -> Result<Vec<ObjectInfo>> {
        let loc = self.location(rel)?;
        let prefix = (!loc.as_ref().is_empty()).then_some(&loc);
        let mut listing = self.inner.list(prefix);
        let mut metas = Vec::new();
        while let Some(m) = listing.next().await {
            metas.push(m.map_err(|e| self.error(rel, &e))?);
            if metas.len() > max {
                return Err(Error::plain(
                    ErrorKind::Invalid,
                    self.uri.join(rel),
                    format!("more than the {max} objects allowed here"),
                ));
            }
        }
        let mut out: Vec<ObjectInfo> = metas.iter().map(|m| self.info(m, None)).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The bytes of one object (a range of it, if given), as a stream.
    pub async fn read(
        &self,
        rel: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        Ok(self.read_pinned(rel, range, None).await?.0)
    }

    /// A read pinned to an ETag (a changed object fails with `Changed`), with the object's
    /// recorded sha256 if its response carried one.
    pub(crate) async fn read_pinned(
        &self,
        rel: &str,
        range: Option<Range<u64>>,
        etag: Option<&str>,
    ) -> Result<(BoxStream<'static, Result<Bytes>>, Option<String>)> {
        let loc = self.location(rel)?;
        let opts = GetOptions::new()
            .with_range(range.map(GetRange::Bounded))
            .with_if_match(etag);
        let r = self
            .inner
            .get_opts(&loc, opts)
            .await
            .map_err(|e| self.error(rel, &e))?;
        let sha = sha256_attribute(&r.attributes);
        let this = self.clone();
        let rel = rel.to_string();
        let stream = r
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| this.error(&rel, &e)))
            .boxed();
        Ok((stream, sha))
    }

    /// A small object whole, refusing one larger than `limit` bytes (configs, manifests).
    pub async fn read_bytes(&self, rel: &str, limit: u64) -> Result<Bytes> {
        let info = self.head(rel).await?;
        if info.size > limit {
            return Err(Error::plain(
                ErrorKind::Invalid,
                self.uri.join(rel),
                format!("{} bytes, more than the {limit} allowed here", info.size),
            ));
        }
        let mut s = self.read(rel, None).await?;
        let mut buf = Vec::with_capacity(info.size as usize);
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
            if buf.len() as u64 > limit {
                return Err(Error::plain(
                    ErrorKind::Invalid,
                    self.uri.join(rel),
                    format!("more than the {limit} bytes allowed here"),
                ));
            }
        }
        Ok(Bytes::from(buf))
    }

    /// SHA-256 (lowercase hex) and size of an object's bytes, streamed (for verifying an
    /// artifact where it is stored, without a local copy).
    pub async fn sha256(&self, rel: &str) -> Result<(String, u64)> {
        self.sha256_within(rel, u64::MAX).await
    }

    /// [`Store::sha256`], refusing an object that streams more than `limit` bytes.
    pub async fn sha256_within(&self, rel: &str, limit: u64) -> Result<(String, u64)> {
        let mut s = self.read(rel, None).await?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            if n > limit {
                return Err(Error::plain(
                    ErrorKind::Invalid,
                    self.uri.join(rel),
                    format!("more than the {limit} bytes allowed here"),
                ));
            }
            h.update(&chunk);
        }
        Ok((hex::encode(h.finalize()), n))
    }

    fn attributes(&self, sha256: &str) -> Attributes {
        let mut a = Attributes::new();
        if self.keeps_metadata {
            a.insert(
                Attribute::Metadata(SHA256_METADATA.into()),
                AttributeValue::from(sha256.to_string()),
            );
        }
        a
    }

    /// Writes one object from memory (atomically: readers see the old or the new object).
    pub async fn put_bytes(&self, rel: &str, bytes: Bytes) -> Result<Uploaded> {
        let sha = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let loc = self.location(rel)?;
        self.inner
            .put_opts(
                &loc,
                PutPayload::from(bytes),
                PutOptions::from(self.attributes(&sha)),
            )
            .await
            .map_err(|e| self.error(rel, &e))?;
        Ok(Uploaded {
            path: rel.to_string(),
            size,
            sha256: sha,
        })
    }

    /// Uploads one local file; files of [`MULTIPART_THRESHOLD`] bytes or more go up in parts,
    /// several at a time. The object's metadata records the file's sha256.
    pub async fn put_file(&self, rel: &str, local: &Path) -> Result<Uploaded> {
        let local_err = |e: std::io::Error| {
            Error::plain(
                ErrorKind::Local,
                self.uri.join(rel),
                format!("reading {}: {e}", local.display()),
            )
        };
        let path = local.to_path_buf();
        let (sha, size) = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| Error::plain(ErrorKind::Local, self.uri.join(rel), e.to_string()))?
            .map_err(local_err)?;
        if size < MULTIPART_THRESHOLD {
            let bytes = tokio::fs::read(local).await.map_err(local_err)?;
            let up = self.put_bytes(rel, Bytes::from(bytes)).await?;
            if up.sha256 != sha {
                return Err(Error::plain(
                    ErrorKind::Local,
                    self.uri.join(rel),
                    format!("{} changed while it was uploaded", local.display()),
                ));
            }
            return Ok(up);
        }
        let loc = self.location(rel)?;
        let upload = self
            .inner
            .put_multipart_opts(
                &loc,
                PutMultipartOptions {
                    attributes: self.attributes(&sha),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(rel, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut h = Sha256::new();
        let result: Result<()> = async {
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                    .await
                    .map_err(local_err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.error(rel, &e))?;
                writer.write(&buf[..n]);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            return Err(e);
        }
        if hex::encode(h.finalize()) != sha {
            let _ = writer.abort().await;
            return Err(Error::plain(
                ErrorKind::Local,
                self.uri.join(rel),
                format!("{} changed while it was uploaded", local.display()),
            ));
        }
        writer.finish().await.map_err(|e| self.error(rel, &e))?;
        Ok(Uploaded {
            path: rel.to_string(),
            size,
            sha256: sha,
        })
    }

    /// Uploads every file under `dir` to `rel/<relative path>`, a few files at a time.
    pub async fn upload_dir(&self, dir: &Path, rel: &str) -> Result<Vec<Uploaded>> {
        let files = local_files(dir).map_err(|e| {
            Error::plain(
                ErrorKind::Local,
                self.uri.join(rel),
                format!("listing {}: {e}", dir.display()),
            )
        })?;
        let rel = rel.trim_matches('/').to_string();
        let mut out: Vec<Uploaded> = futures::stream::iter(files)
            .map(|f| {
                let target = if rel.is_empty() {
                    f.clone()
                } else {
                    format!("{rel}/{f}")
                };
                let local = dir.join(&f);
                async move { self.put_file(&target, &local).await }
            })
            .buffer_unordered(FILES_IN_FLIGHT)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        let loc = self.location(rel)?;
        match self.inner.delete(&loc).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel, &e)),
        }
    }

    /// Deletes every object under `rel`; returns how many there were.
    pub async fn delete_prefix(&self, rel: &str) -> Result<usize> {
        let objects = self.list(rel).await?;
        let n = objects.len();
        let locs: Vec<object_store::Result<ObjPath>> = objects
            .iter()
            .map(|o| {
                self.location(&o.path)
                    .map_err(|e| object_store::Error::Generic {
                        store: "tailor",
                        source: Box::new(e),
                    })
            })
            .collect();
        let mut results = self
            .inner
            .delete_stream(futures::stream::iter(locs).boxed());
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(rel, &e)),
            }
        }
        Ok(n)
    }
}

fn sha256_attribute(a: &Attributes) -> Option<String> {
    a.get(&Attribute::Metadata(SHA256_METADATA.into()))
        .map(|v| v.as_ref().to_ascii_lowercase())
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Relative paths (with `/`) of every regular file under `dir`, sorted.
pub fn local_files(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let t = e.file_type()?;
            if t.is_dir() {
                walk(root, &p, out)?;
            } else if t.is_file()
                && let Ok(rel) = p.strip_prefix(root)
            {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// SHA-256 (lowercase hex) and size of a local file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
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

pub(crate) fn io_error(uri: impl std::fmt::Display, what: &str, e: &std::io::Error) -> Error {
    let kind = match kind_of_io(e) {
        // A local file that is missing or unreadable is a local problem, not the source's.
        ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::Unreachable => {
            ErrorKind::Local
        }
        k => k,
    };
    Error::plain(kind, uri, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests;
