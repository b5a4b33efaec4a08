//! `hf://` through the Hugging Face Hub's plain HTTP file API, the same requests
//! `huggingface_hub`'s `hf_hub_download` makes:
//!
//! - `GET  {endpoint}/api/{models|datasets}/{repo}/revision/{rev}` → `{sha, siblings}`: a branch,
//!   tag or sha resolved to the commit sha (recorded, so a rerun reads the same bytes);
//! - `HEAD {endpoint}/{repo}/resolve/{sha}/{file}` (redirects not followed) → size
//!   (`X-Linked-Size` or `Content-Length`) and, for LFS/Xet files, the sha256 of the content
//!   (`X-Linked-Etag`), which the fetcher verifies;
//! - `GET  {endpoint}/{repo}/resolve/{sha}/{file}` with `Range`, following the redirect to the
//!   CDN (reqwest drops the `Authorization` header when a redirect leaves the host).
//!
//! `HF_ENDPOINT` replaces `https://huggingface.co` and `HF_TOKEN` is sent as a bearer token.
//! The Hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
//! `GatedRepo`) decides the error kind where the status alone would mislead (the Hub answers
//! 401 for a repository that does not exist when no token is sent).
//!
//! Why not the `hf-hub` crate (1.0): it reads its endpoint and token from the process
//! environment and its own cache layout, downloads each file in one stream with no resume of a
//! partial file and no sha256 check, and pulls in the Xet client; the fetcher here needs ranged
//! reads it can resume and verify, from a given environment.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, ETAG, HeaderMap, LOCATION, RANGE};
use serde::Deserialize;

use crate::credentials::{Env, Redactor, Secret};
use crate::error::{Error, ErrorKind, Result, kind_of_reqwest, kind_of_status};
use crate::uri::{ArtifactUri, RepoType};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Characters a file path segment must escape in a resolve URL.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// One file of a resolved revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// The path inside the repository.
    pub path: String,
    pub size: u64,
    /// The sha256 of the content (LFS and Xet files: `X-Linked-Etag`).
    pub sha256: Option<String>,
    pub etag: Option<String>,
}

/// A repository at a resolved commit.
#[derive(Debug, Clone)]
pub struct Revision {
    pub repo_type: RepoType,
    pub repo: String,
    pub sha: String,
    /// Every file of the commit (paths inside the repository), sorted.
    pub files: Vec<String>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// A Hub client for one credential environment.
#[derive(Clone)]
pub struct Hub {
    endpoint: String,
    token: Option<Secret>,
    client: reqwest::Client,
    no_redirect: reqwest::Client,
    redactor: Redactor,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hub({}, token: {})", self.endpoint, self.token.is_some())
    }
}

/// A full commit sha (what a revision resolves to).
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn unquote(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Hub {
    pub fn new(env: &Env) -> Result<Self> {
        let endpoint = env
            .get("HF_ENDPOINT")
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .user_agent(concat!("tailor-artifacts/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .redirect(redirects)
                .build()
                .map_err(|e| Error::plain(ErrorKind::Invalid, &endpoint, e.to_string()))
        };
        Ok(Self {
            client: build(reqwest::redirect::Policy::limited(10))?,
            no_redirect: build(reqwest::redirect::Policy::none())?,
            token: env.hf_token(),
            redactor: env.redactor(),
            endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {}", t.expose())),
            None => req,
        }
    }

    fn transport_error(&self, uri: &str, e: &reqwest::Error) -> Error {
        Error::new(
            kind_of_reqwest(e),
            uri,
            crate::error::chain(e),
            &self.redactor,
        )
    }

    /// An error from a non-success Hub answer, classified by `X-Error-Code` first.
    fn status_error(&self, uri: &str, status: u16, headers: &HeaderMap) -> Error {
        let code = header(headers, "x-error-code").unwrap_or_default();
        let said = header(headers, "x-error-message").unwrap_or_default();
        let hint = if self.token.is_some() {
            "the token (HF_TOKEN) was sent"
        } else {
            "no token was sent: set HF_TOKEN"
        };
        let (kind, what) = match code {
            "RepoNotFound" => (
                ErrorKind::NotFound,
                format!("repository not found, or private and not visible ({hint})"),
            ),
            "RevisionNotFound" => (ErrorKind::NotFound, "revision not found".to_string()),
            "EntryNotFound" => (ErrorKind::NotFound, "file not found".to_string()),
            "GatedRepo" => (
                ErrorKind::PermissionDenied,
                format!("gated repository: accept its conditions on the Hub ({hint})"),
            ),
            _ => (kind_of_status(status), format!("the Hub answered {status}")),
        };
        let message = if said.is_empty() {
            format!("{what} (HTTP {status})")
        } else {
            format!("{what} (HTTP {status}: {said})")
        };
        Error::new(kind, uri, message, &self.redactor)
    }

    fn api_url(&self, repo_type: RepoType, repo: &str, revision: &str) -> String {
        format!(
            "{}/api/{}/{repo}/revision/{}",
            self.endpoint,
            repo_type.api_segment(),
            utf8_percent_encode(revision, SEGMENT)
        )
    }

    /// The resolve URL of one file at a revision.
    pub fn file_url(&self, repo_type: RepoType, repo: &str, revision: &str, file: &str) -> String {
        let path: Vec<String> = file
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!(
            "{}/{}{repo}/resolve/{}/{}",
            self.endpoint,
            repo_type.url_prefix(),
            utf8_percent_encode(revision, SEGMENT),
            path.join("/")
        )
    }

    /// Resolves a branch, tag or sha to the commit sha and its file list.
    pub async fn revision(&self, uri: &ArtifactUri) -> Result<Revision> {
        let ArtifactUri::Hf {
            repo_type,
            repo,
            revision,
            ..
        } = uri
        else {
            return Err(Error::plain(ErrorKind::Invalid, uri, "not an hf:// URI"));
        };
        let rev = revision.as_deref().unwrap_or("main");
        let u = uri.to_string();
        let resp = self
            .authorize(self.client.get(self.api_url(*repo_type, repo, rev)))
            .send()
            .await
            .map_err(|e| self.transport_error(&u, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(&u, status.as_u16(), resp.headers()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&u, &e))?;
        let info: RevisionInfo = serde_json::from_slice(&body).map_err(|e| {
            Error::plain(
                ErrorKind::Invalid,
                &u,
                format!("the Hub's revision answer is not the expected JSON: {e}"),
            )
        })?;
        if !is_commit_sha(&info.sha) {
            return Err(Error::plain(
                ErrorKind::Invalid,
                &u,
                format!(
                    "the Hub resolved {rev:?} to {:?}, not a commit sha",
                    info.sha
                ),
            ));
        }
        let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        files.sort();
        Ok(Revision {
            repo_type: *repo_type,
            repo: repo.clone(),
            sha: info.sha.to_ascii_lowercase(),
            files,
        })
    }

    /// Size and checksum of one file (a HEAD on its resolve URL, redirects not followed).
    pub async fn file(&self, rev: &Revision, path: &str) -> Result<HubFile> {
        let url = self.file_url(rev.repo_type, &rev.repo, &rev.sha, path);
        let u = self.display(rev, path);
        let resp = self
            .authorize(self.no_redirect.head(&url))
            .send()
            .await
            .map_err(|e| self.transport_error(&u, &e))?;
        let status = resp.status();
        let h = resp.headers();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.status_error(&u, status.as_u16(), h));
        }
        let linked_size = header(h, "x-linked-size").and_then(|v| v.trim().parse::<u64>().ok());
        if status.is_redirection() && linked_size.is_none() {
            return Err(Error::plain(
                ErrorKind::Invalid,
                &u,
                format!(
                    "the Hub redirected ({status}) to {:?} without X-Linked-Size (a renamed repository? use its new name)",
                    header(h, LOCATION.as_str()).unwrap_or_default()
                ),
            ));
        }
        let size = linked_size
            .or_else(|| header(h, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok()))
            .ok_or_else(|| Error::plain(ErrorKind::Invalid, &u, "the Hub gave no file size"))?;
        let linked = header(h, "x-linked-etag").map(unquote);
        let sha256 = linked
            .clone()
            .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
            .map(|v| v.to_ascii_lowercase());
        Ok(HubFile {
            path: path.to_string(),
            size,
            sha256,
            etag: linked.or_else(|| header(h, ETAG.as_str()).map(unquote)),
        })
    }

    /// `hf://repo@sha/path` for messages.
    pub fn display(&self, rev: &Revision, path: &str) -> String {
        let prefix = match rev.repo_type {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        };
        format!("hf://{prefix}{}@{}/{path}", rev.repo, rev.sha)
    }

    /// Bytes `range` of a file (the whole file when `None`).
    pub async fn read(
        &self,
        rev: &Revision,
        path: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let url = self.file_url(rev.repo_type, &rev.repo, &rev.sha, path);
        let u = self.display(rev, path);
        let mut req = self.authorize(self.client.get(&url));
        if let Some(r) = &range {
            if r.is_empty() {
                return Ok(futures::stream::empty().boxed());
            }
            req = req.header(RANGE, format!("bytes={}-{}", r.start, r.end - 1));
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&u, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(&u, status.as_u16(), resp.headers()));
        }
        if let Some(r) = &range
            && status.as_u16() != 206
            && r.start != 0
        {
            return Err(Error::plain(
                ErrorKind::Invalid,
                &u,
                format!(
                    "asked for bytes {}-{}, the server answered {status} (no range support)",
                    r.start,
                    r.end - 1
                ),
            ));
        }
        let this = self.clone();
        Ok(resp
            .bytes_stream()
            .map(move |c| c.map_err(|e| this.transport_error(&u, &e)))
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_hub_layout() {
        let hub =
            Hub::new(&Env::from_pairs([("HF_ENDPOINT", "http://127.0.0.1:1/")])).expect("hub");
        assert_eq!(
            hub.api_url(RepoType::Model, "org/m", "refs/pr/1"),
            "http://127.0.0.1:1/api/models/org/m/revision/refs%2Fpr%2F1"
        );
        assert_eq!(
            hub.file_url(RepoType::Dataset, "org/d", "abc", "data/train 1.jsonl"),
            "http://127.0.0.1:1/datasets/org/d/resolve/abc/data/train%201.jsonl"
        );
        assert!(is_commit_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_sha("main"));
        assert_eq!(unquote("W/\"abc\""), "abc");
    }
}
