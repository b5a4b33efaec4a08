//! The plan stage: a source resolved to a version and the files to fetch — a Hub revision to
//! its commit sha (one `HEAD` per file for size and LFS sha256), an object store URI to one
//! object or everything under a prefix (the version being a digest of the listing).

use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::Fetcher;
use crate::error::{Error, ErrorKind, Result};
use crate::hub::{Hub, Revision};
use crate::store::Store;
use crate::uri::ArtifactUri;

#[derive(Clone)]
pub(super) enum Source {
    Store(Store),
    Hub(Hub, Arc<Revision>),
}

#[derive(Debug, Clone)]
pub(super) struct RemoteFile {
    /// The file's own URI (for messages).
    pub(super) uri: String,
    /// Path in the destination.
    pub(super) rel: String,
    /// Path in the source (relative to the store's URI, or inside the repository).
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    pub(super) sha256: Option<String>,
}

pub(super) struct Plan {
    pub(super) source: Source,
    /// What is fetched, independent of the version (the cache key's first half).
    pub(super) identity: String,
    pub(super) version: String,
    pub(super) single: bool,
    pub(super) files: Vec<RemoteFile>,
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

impl Fetcher {
    /// Resolves the source to a version and its files.
    pub(super) async fn plan(&self, uri: &ArtifactUri) -> Result<Plan> {
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
}

pub(super) fn identity(uri: &ArtifactUri) -> String {
    uri.with_revision(None).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
