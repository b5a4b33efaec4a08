//! Adapters by URI (`s3://`, `gs://`, `az://`, `https://`, `hf://`) for the LoRA API: the URI
//! must lie under one of `--adapter-uri-prefix` (none: loads by URI are refused, so an API
//! caller cannot make the server fetch from anywhere), credentials come from the process's
//! standard variables (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_*`, `HF_TOKEN`,
//! `HF_ENDPOINT`), and the files are fetched by `tailor-artifacts` into `--adapter-cache`
//! (resumable, verified against the source's checksums and the caller's `sha256`, one
//! download per URI and version however many loads ask for it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tailor_artifacts::adapter;
use tailor_artifacts::credentials::Env;
use tailor_artifacts::error::ErrorKind;
use tailor_artifacts::fetch::{Fetcher, short_hash};
use tailor_artifacts::store::Context;
use tailor_artifacts::uri::ArtifactUri;

/// Why an adapter URI gave no directory.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RemoteError {
    /// Loads by URI are off, or the URI is outside every allowed prefix.
    #[error("{0}")]
    NotAllowed(String),
    /// No adapter at the URI.
    #[error("{0}")]
    NotFound(String),
    /// Any other failure (credentials, checksum, endpoint, a bad URI), named with its URI.
    #[error("{0}")]
    Failed(String),
}

pub struct RemoteAdapters {
    prefixes: Vec<String>,
    cache: PathBuf,
    fetcher: Fetcher,
    timeout: Duration,
    /// Fetched directory → the URI it holds (what `/v1/models` shows as the adapter's root).
    origins: Mutex<BTreeMap<PathBuf, String>>,
}

/// Whether a `lora_path` is a URI (`scheme://…`) rather than a directory.
pub fn is_uri(path: &str) -> bool {
    path.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    })
}

/// Whether `uri` (normalised) is `prefix` or lies under it, segment-wise: `s3://b/adapters`
/// allows `s3://b/adapters/x`, not `s3://b/adapters-old/x`; `hf://org/name` allows its
/// revisions (`hf://org/name@sha`).
pub fn allowed(uri: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        let p = p.trim_end_matches('/');
        let Some(rest) = uri.strip_prefix(p) else {
            return false;
        };
        !p.is_empty()
            && (rest.is_empty()
                || rest.starts_with('/')
                || p.ends_with(':')
                || (p.starts_with("hf://") && rest.starts_with('@')))
    })
}

impl RemoteAdapters {
    /// `timeout` bounds one fetch (retries of a flaky endpoint included).
    pub fn new(prefixes: Vec<String>, cache: PathBuf, timeout: Duration) -> Self {
        let fetcher = Fetcher::new(Context::new(Env::from_process()))
            .with_cache(Some(cache.join("by-version")))
            .with_retry_for(timeout / 2);
        Self {
            prefixes,
            cache,
            fetcher,
            timeout,
            origins: Mutex::default(),
        }
    }

    /// The URI a fetched adapter directory came from.
    pub fn origin(&self, dir: &Path) -> Option<String> {
        let origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        origins.get(dir).cloned()
    }

    /// The directory fetched adapters are kept under (an adapter root of the registry).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The local, verified directory of the adapter at `uri`.
    pub async fn localize(&self, uri: &str, sha256: Option<&str>) -> Result<PathBuf, RemoteError> {
        if self.prefixes.is_empty() {
            return Err(RemoteError::NotAllowed(format!(
                "{uri}: loading adapters by URI is not enabled on this server (--adapter-uri-prefix)"
            )));
        }
        let parsed = ArtifactUri::parse(uri).map_err(|e| RemoteError::Failed(e.to_string()))?;
        if matches!(parsed, ArtifactUri::File { .. } | ArtifactUri::Pvc { .. }) {
            return Err(RemoteError::Failed(format!(
                "{uri}: give a local adapter as a directory path, not a {} URI",
                parsed.scheme()
            )));
        }
        let normal = parsed.to_string();
        if !allowed(&normal, &self.prefixes) {
            return Err(RemoteError::NotAllowed(format!(
                "{normal}: not under an allowed adapter URI prefix ({})",
                self.prefixes.join(", ")
            )));
        }
        let dest = self.cache.join("adapters").join(short_hash(&normal));
        let fetch = adapter::localize(&self.fetcher, &parsed, &dest, sha256);
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(dir)) => {
                let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
                // As the caller wrote it: what a listing is compared with.
                origins.insert(dir.clone(), uri.to_string());
                Ok(dir)
            }
            Ok(Err(e)) if e.kind == ErrorKind::NotFound => {
                Err(RemoteError::NotFound(e.to_string()))
            }
            Ok(Err(e)) => Err(RemoteError::Failed(e.to_string())),
            Err(_) => Err(RemoteError::Failed(format!(
                "{normal}: fetching the adapter took longer than {:?}",
                self.timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_told_from_paths() {
        for uri in [
            "s3://b/k",
            "hf://org/name",
            "https://h/x",
            "az://c/p",
            "gs://b/k",
        ] {
            assert!(is_uri(uri), "{uri}");
        }
        for path in ["/models/a", "rel/a", "/x/s3://y", "", "://x"] {
            assert!(!is_uri(path), "{path}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = vec!["s3://bucket/adapters/".to_string(), "hf://acme".to_string()];
        assert!(allowed("s3://bucket/adapters/x", &p));
        assert!(allowed("s3://bucket/adapters", &p));
        assert!(!allowed("s3://bucket/adapters-old/x", &p));
        assert!(!allowed("s3://other/adapters/x", &p));
        assert!(allowed("hf://acme/support@abc", &p));
        assert!(allowed(
            "hf://acme/support@abc",
            &["hf://acme/support".to_string()]
        ));
        assert!(!allowed("s3://b/a@x", &["s3://b/a".to_string()]));
        assert!(!allowed("hf://acmecorp/support", &p));
        assert!(allowed("s3://anything/x", &["s3://".to_string()]));
        assert!(!allowed("gs://anything/x", &["s3://".to_string()]));
        assert!(!allowed("s3://b/x", &[]));
    }
}
