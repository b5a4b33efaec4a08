//! Artifact URIs: which store a URI names and where in it.
//!
//! | URI                                             | Store                                   |
//! |-------------------------------------------------|-----------------------------------------|
//! | `pvc://<claim>/<path>`                          | a PersistentVolumeClaim mounted locally |
//! | `file:///<absolute path>`                       | the local filesystem                    |
//! | `s3://<bucket>/<key>`                           | S3 or any S3-compatible endpoint        |
//! | `gs://<bucket>/<key>`                           | Google Cloud Storage                    |
//! | `az://<container>/<path>`, `abfs[s]://…`        | Azure Blob Storage / ADLS Gen2          |
//! | `https://<host>/<path>` (`http://` too)         | a plain HTTP server                     |
//! | `hf://[datasets/]<org>/<name>[@<rev>][/<dir>]`  | the Hugging Face Hub                    |
//!
//! Parsing is pure and strict: credentials never belong in a URI (they come from the
//! environment, see `credentials`), so a URI with a `user:password@` part is refused, and so is
//! any `..` path segment.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Why a URI was refused (the text says which part and what was expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?}: {reason}")]
pub struct UriError {
    pub uri: String,
    pub reason: String,
}

/// Hub repository kinds (`hf://org/name` is a model, `hf://datasets/org/name` a dataset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    /// The segment the Hub's API uses (`/api/models/…`, `/api/datasets/…`).
    pub fn api_segment(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }

    /// The prefix of the Hub's file URLs (`/{repo}/resolve/…` or `/datasets/{repo}/resolve/…`).
    pub fn url_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
        }
    }
}

/// A parsed artifact URI. Paths inside a store have no leading or trailing `/`; an empty path
/// names the root (a whole bucket, claim or repository).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArtifactUri {
    Pvc {
        claim: String,
        path: String,
    },
    File {
        path: PathBuf,
    },
    S3 {
        bucket: String,
        key: String,
    },
    Gcs {
        bucket: String,
        key: String,
    },
    Azure {
        /// As written: `az`, `abfs` or `abfss` (kept for display).
        scheme: String,
        container: String,
        /// From `abfss://container@account.dfs.core.windows.net/…`; otherwise the
        /// `AZURE_STORAGE_ACCOUNT_NAME` variable names it.
        account: Option<String>,
        path: String,
    },
    Http {
        /// `http://host[:port]` or `https://host[:port]`.
        origin: String,
        path: String,
    },
    Hf {
        repo_type: RepoType,
        /// `org/name`.
        repo: String,
        /// A branch, tag or commit sha; `None` means `main`, resolved to a sha when fetched.
        revision: Option<String>,
        /// A directory (or file) inside the repository.
        path: String,
    },
}

fn err(uri: &str, reason: impl Into<String>) -> UriError {
    UriError {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

/// `a/b/` → `a/b`; refuses `..`, `.` and empty segments in the middle.
fn clean_path(uri: &str, raw: &str) -> Result<String, UriError> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for seg in trimmed.split('/') {
        match seg {
            "" => return Err(err(uri, "empty path segment ('//') in the path")),
            "." | ".." => {
                return Err(err(
                    uri,
                    format!("'{seg}' is not allowed as a path segment"),
                ));
            }
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// The authority (before the first `/`) and the rest.
fn split_authority(rest: &str) -> (&str, &str) {
    rest.split_once('/').unwrap_or((rest, ""))
}

fn no_userinfo(uri: &str, authority: &str) -> Result<(), UriError> {
    if authority.contains('@') {
        return Err(err(
            uri,
            "credentials do not belong in a URI: put them in the Secret named by credentialsSecretRef",
        ));
    }
    Ok(())
}

fn bucket_name(uri: &str, what: &str, name: &str) -> Result<String, UriError> {
    if name.is_empty() {
        return Err(err(uri, format!("names no {what}")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(err(
            uri,
            format!("{what} {name:?} may contain only letters, digits, '-', '.' and '_'"),
        ));
    }
    Ok(name.to_string())
}

fn is_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

fn parse_hf(uri: &str, rest: &str) -> Result<ArtifactUri, UriError> {
    let (repo_type, rest) = match rest.strip_prefix("datasets/") {
        Some(r) => (RepoType::Dataset, r),
        None => (RepoType::Model, rest),
    };
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or_default();
    let name_rev = parts.next().unwrap_or_default();
    let tail = parts.next().unwrap_or_default();
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (name_rev, None),
    };
    if !is_repo_part(org) || !is_repo_part(name) {
        return Err(err(
            uri,
            "expected hf://<org>/<name>[@<revision>][/<path>] (letters, digits, '-', '_', '.')",
        ));
    }
    let revision = match revision {
        None => None,
        Some("") => return Err(err(uri, "empty revision after '@'")),
        Some(r) => {
            // A revision with '/' (refs/pr/1) is written percent-encoded: @refs%2Fpr%2F1.
            let decoded = percent_decode_str(r)
                .decode_utf8()
                .map_err(|_| err(uri, "revision is not valid UTF-8 once percent-decoded"))?;
            Some(decoded.into_owned())
        }
    };
    Ok(ArtifactUri::Hf {
        repo_type,
        repo: format!("{org}/{name}"),
        revision,
        path: clean_path(uri, tail)?,
    })
}

fn parse_azure(uri: &str, scheme: &str, rest: &str) -> Result<ArtifactUri, UriError> {
    let (authority, path) = split_authority(rest);
    // abfss://<container>@<account>.dfs.core.windows.net/<path> (the Hadoop form) or
    // az://<container>/<path> with the account from AZURE_STORAGE_ACCOUNT_NAME.
    let (container, account) = match authority.split_once('@') {
        Some((c, host)) if scheme != "az" => {
            let account = host.split('.').next().unwrap_or_default();
            (c, Some(bucket_name(uri, "storage account", account)?))
        }
        _ => {
            no_userinfo(uri, authority)?;
            (authority, None)
        }
    };
    Ok(ArtifactUri::Azure {
        scheme: scheme.to_string(),
        container: bucket_name(uri, "container", container)?,
        account,
        path: clean_path(uri, path)?,
    })
}

impl ArtifactUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(err(
                uri,
                "not a URI: expected pvc://, file://, s3://, gs://, az://, abfs://, https:// or hf://",
            ));
        };
        if rest.contains(['?', '#']) {
            return Err(err(uri, "query strings and fragments are not supported"));
        }
        match scheme {
            "pvc" => {
                let (claim, path) = split_authority(rest);
                no_userinfo(uri, claim)?;
                Ok(Self::Pvc {
                    claim: bucket_name(uri, "claim", claim)?,
                    path: clean_path(uri, path)?,
                })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(err(uri, "file:// URIs need an absolute path (file:///...)"));
                }
                let path = clean_path(uri, rest)?;
                Ok(Self::File {
                    path: PathBuf::from(format!("/{path}")),
                })
            }
            "s3" | "s3a" | "gs" => {
                let (bucket, key) = split_authority(rest);
                no_userinfo(uri, bucket)?;
                let bucket = bucket_name(uri, "bucket", bucket)?;
                if !(3..=63).contains(&bucket.len()) {
                    return Err(err(
                        uri,
                        format!("bucket {bucket:?}: bucket names are 3 to 63 characters long"),
                    ));
                }
                let key = clean_path(uri, key)?;
                Ok(if scheme == "gs" {
                    Self::Gcs { bucket, key }
                } else {
                    Self::S3 { bucket, key }
                })
            }
            "az" | "abfs" | "abfss" => parse_azure(uri, scheme, rest),
            "http" | "https" => {
                let (authority, path) = split_authority(rest);
                no_userinfo(uri, authority)?;
                if authority.is_empty() {
                    return Err(err(uri, "names no host"));
                }
                Ok(Self::Http {
                    origin: format!("{scheme}://{authority}"),
                    path: clean_path(uri, path)?,
                })
            }
            "hf" => parse_hf(uri, rest),
            other => Err(err(
                uri,
                format!(
                    "unsupported scheme {other:?} (expected pvc, file, s3, gs, az, abfs, abfss, http, https or hf)"
                ),
            )),
        }
    }

    /// The same `hf://` reference at `revision` (`None`: unpinned); any other URI as it is.
    pub fn with_revision(&self, revision: Option<String>) -> Self {
        match self {
            Self::Hf {
                repo_type,
                repo,
                path,
                ..
            } => Self::Hf {
                repo_type: *repo_type,
                repo: repo.clone(),
                revision,
                path: path.clone(),
            },
            other => other.clone(),
        }
    }

    /// The path inside the store (empty for a bucket, claim or repository root).
    pub fn path(&self) -> String {
        match self {
            Self::Pvc { path, .. }
            | Self::S3 { key: path, .. }
            | Self::Gcs { key: path, .. }
            | Self::Azure { path, .. }
            | Self::Http { path, .. }
            | Self::Hf { path, .. } => path.clone(),
            Self::File { path } => path.display().to_string(),
        }
    }

    /// The same store with `rel` appended to the path.
    pub fn join(&self, rel: &str) -> Self {
        let rel = rel.trim_matches('/');
        let joined = |p: &str| match (p.is_empty(), rel.is_empty()) {
            (_, true) => p.to_string(),
            (true, false) => rel.to_string(),
            (false, false) => format!("{p}/{rel}"),
        };
        let mut out = self.clone();
        match &mut out {
            Self::Pvc { path, .. }
            | Self::S3 { key: path, .. }
            | Self::Gcs { key: path, .. }
            | Self::Azure { path, .. }
            | Self::Http { path, .. }
            | Self::Hf { path, .. } => *path = joined(path),
            Self::File { path } => {
                if !rel.is_empty() {
                    *path = path.join(rel);
                }
            }
        }
        out
    }

    /// The last path segment (the file name a single object gets locally).
    pub fn file_name(&self) -> Option<String> {
        let p = self.path();
        p.rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Whether the bytes live on this machine (no transfer needed to read them).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Pvc { .. } | Self::File { .. })
    }

    pub fn scheme(&self) -> &str {
        match self {
            Self::Pvc { .. } => "pvc",
            Self::File { .. } => "file",
            Self::S3 { .. } => "s3",
            Self::Gcs { .. } => "gs",
            Self::Azure { scheme, .. } => scheme,
            Self::Http { origin, .. } => origin.split_once("://").map_or("https", |(s, _)| s),
            Self::Hf { .. } => "hf",
        }
    }
}

impl std::str::FromStr for ArtifactUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn with_path(f: &mut fmt::Formatter<'_>, head: &str, path: &str) -> fmt::Result {
    if path.is_empty() {
        write!(f, "{head}")
    } else {
        write!(f, "{head}/{path}")
    }
}

impl fmt::Display for ArtifactUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pvc { claim, path } => with_path(f, &format!("pvc://{claim}"), path),
            Self::File { path } => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, key } => with_path(f, &format!("s3://{bucket}"), key),
            Self::Gcs { bucket, key } => with_path(f, &format!("gs://{bucket}"), key),
            Self::Azure {
                scheme,
                container,
                account: Some(account),
                path,
            } => with_path(
                f,
                &format!("{scheme}://{container}@{account}.dfs.core.windows.net"),
                path,
            ),
            Self::Azure {
                scheme,
                container,
                account: None,
                path,
            } => with_path(f, &format!("{scheme}://{container}"), path),
            Self::Http { origin, path } => with_path(f, origin, path),
            Self::Hf {
                repo_type,
                repo,
                revision,
                path,
            } => {
                let prefix = match repo_type {
                    RepoType::Model => "",
                    RepoType::Dataset => "datasets/",
                };
                let rev = revision
                    .as_ref()
                    .map(|r| {
                        format!(
                            "@{}",
                            percent_encoding::utf8_percent_encode(r, REVISION_ESCAPES)
                        )
                    })
                    .unwrap_or_default();
                with_path(f, &format!("hf://{prefix}{repo}{rev}"), path)
            }
        }
    }
}

/// What a revision must escape to stay one URI segment (`/` mainly: `refs/pr/1`).
pub(crate) const REVISION_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b'/')
    .add(b'%')
    .add(b' ')
    .add(b'?')
    .add(b'#');

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ArtifactUri {
        ArtifactUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_scheme_and_prints_it_back() {
        let cases = [
            (
                "pvc://tailor-artifacts/models/base",
                ArtifactUri::Pvc {
                    claim: "tailor-artifacts".into(),
                    path: "models/base".into(),
                },
            ),
            (
                "file:///data/x",
                ArtifactUri::File {
                    path: "/data/x".into(),
                },
            ),
            (
                "s3://bucket/a/b.jsonl",
                ArtifactUri::S3 {
                    bucket: "bucket".into(),
                    key: "a/b.jsonl".into(),
                },
            ),
            (
                "gs://bucket/models",
                ArtifactUri::Gcs {
                    bucket: "bucket".into(),
                    key: "models".into(),
                },
            ),
            (
                "az://container/p",
                ArtifactUri::Azure {
                    scheme: "az".into(),
                    container: "container".into(),
                    account: None,
                    path: "p".into(),
                },
            ),
            (
                "abfss://fs@acct.dfs.core.windows.net/p/q",
                ArtifactUri::Azure {
                    scheme: "abfss".into(),
                    container: "fs".into(),
                    account: Some("acct".into()),
                    path: "p/q".into(),
                },
            ),
            (
                "https://example.com:8443/a/model.bin",
                ArtifactUri::Http {
                    origin: "https://example.com:8443".into(),
                    path: "a/model.bin".into(),
                },
            ),
            (
                "hf://Qwen/Qwen2.5-0.5B",
                ArtifactUri::Hf {
                    repo_type: RepoType::Model,
                    repo: "Qwen/Qwen2.5-0.5B".into(),
                    revision: None,
                    path: String::new(),
                },
            ),
            (
                "hf://org/m@v1.0/onnx",
                ArtifactUri::Hf {
                    repo_type: RepoType::Model,
                    repo: "org/m".into(),
                    revision: Some("v1.0".into()),
                    path: "onnx".into(),
                },
            ),
            (
                "hf://datasets/org/d@refs%2Fpr%2F1",
                ArtifactUri::Hf {
                    repo_type: RepoType::Dataset,
                    repo: "org/d".into(),
                    revision: Some("refs/pr/1".into()),
                    path: String::new(),
                },
            ),
        ];
        for (text, want) in cases {
            let got = ok(text);
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text, "display of {text}");
        }
        // Trailing slashes name the same place.
        assert_eq!(ok("s3://bkt/dir/"), ok("s3://bkt/dir"));
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for (bad, needle) in [
            ("bucket/key", "not a URI"),
            ("ftp://x/y", "unsupported scheme \"ftp\""),
            ("s3:///key", "names no bucket"),
            ("s3://AKIA:secret@bucket/key", "credentials do not belong"),
            ("https://user:pw@host/f", "credentials do not belong"),
            ("pvc://c/../etc", "'..' is not allowed"),
            ("s3://bkt/a//c", "empty path segment"),
            ("file://relative/x", "absolute path"),
            ("hf://justname", "expected hf://<org>/<name>"),
            ("hf://org/m@", "empty revision"),
            ("s3://bkt/k?versionId=1", "query strings"),
            ("s3://bad bucket/k", "may contain only"),
            ("s3://b/k", "3 to 63 characters"),
        ] {
            let e = ArtifactUri::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(needle), "{bad}: {e}");
            assert!(!e.to_string().contains("secret@") || needle.contains("credentials"));
        }
    }

    #[test]
    fn joins_and_names_files() {
        let u = ok("s3://bkt/run/checkpoints");
        assert_eq!(
            u.join("step-00000004/state.json").to_string(),
            "s3://bkt/run/checkpoints/step-00000004/state.json"
        );
        assert_eq!(ok("s3://bkt").join("x").to_string(), "s3://bkt/x");
        assert_eq!(ok("file:///a").join("b/c").to_string(), "file:///a/b/c");
        assert_eq!(
            ok("s3://bkt/k/data.jsonl").file_name().as_deref(),
            Some("data.jsonl")
        );
        assert_eq!(ok("s3://bkt").file_name(), None);
        assert!(ok("pvc://c/p").is_local() && !ok("hf://a/b").is_local());
    }
}
