//! A local Hugging Face Hub endpoint (`HF_ENDPOINT`) that serves the Hub's file layout, for
//! the tests of `hf://` (tailor-artifacts) and the operator's revision pinning (e2e).
//!
//! Hub behaviours this endpoint reproduces (from huggingface.co and `huggingface_hub`):
//! - `GET /api/{models|datasets}/{repo}/revision/{rev}` → `{"id", "sha", "siblings":
//!   [{"rfilename"}]}`; a branch or tag resolves to its commit sha, a full sha to itself, a
//!   percent-encoded `refs%2Fpr%2F1` to the PR head; an unknown revision is
//!   `404` with `X-Error-Code: RevisionNotFound`.
//! - `HEAD /{repo}/resolve/{rev}/{file}`: an LFS file (`*.safetensors`, anything over 1 MiB)
//!   answers `302` to a CDN on another host, with `X-Linked-Etag: "<sha256>"`,
//!   `X-Linked-Size`, `X-Repo-Commit`; a regular file answers `200` with a git-blob `ETag` and
//!   `Content-Length`. `GET` does the same with a body; ranges answer `206`.
//! - The CDN is another origin, takes a signed query string, and refuses a request that also
//!   carries an `Authorization` header (`400`, as S3 presigned URLs do) — so a client must drop
//!   the token on the cross-host redirect.
//! - Gated repository: metadata is public; files without a token are `401`, with a token that
//!   was not granted access `403`, both with `X-Error-Code: GatedRepo`.
//! - A repository that does not exist is `401` `RepoNotFound` without a token (the Hub does not
//!   reveal whether a private repository exists) and `404` with one; a missing file is `404`
//!   `EntryNotFound`.
//!
//! Not reproduced: Xet storage (a Xet-backed file is read through the same resolve redirect
//! with the same headers, which is all the client uses), rate limiting, renamed repositories.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, Uri};
use sha2::Digest;

/// One repository: `refs` (branches, tags, `refs/pr/N`) name commits, each commit its files.
#[derive(Default, Clone)]
pub struct Repo {
    /// Files need a granted token (see [`LocalHub::start`]).
    pub gated: bool,
    /// branch/tag → commit sha.
    pub refs: BTreeMap<String, String>,
    /// commit sha → files.
    pub commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Serve LFS bytes that do not match their X-Linked-Etag.
    pub rotten: bool,
}

impl Repo {
    /// A repository of one commit that `main` names.
    pub fn one_commit(sha: &str, files: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            refs: BTreeMap::from([("main".to_string(), sha.to_string())]),
            commits: BTreeMap::from([(sha.to_string(), files)]),
            ..Self::default()
        }
    }
}

struct Hub {
    repos: BTreeMap<String, Repo>,
    cdn: String,
    served: AtomicU64,
    granted: String,
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn is_lfs(path: &str, data: &[u8]) -> bool {
    path.ends_with(".safetensors") || data.len() > (1 << 20)
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("x-error-code", code)
        .header("x-error-message", message)
        .body(Body::from(format!("{{\"error\":\"{message}\"}}")))
        .expect("response")
}

fn token(h: &HeaderMap) -> Option<String> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

/// `bytes=a-b` → the slice and a 206, else the whole body and a 200.
fn ranged(h: &HeaderMap, data: &[u8], head: bool) -> Response<Body> {
    let len = data.len();
    let range = h
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let a: usize = a.parse().ok()?;
            let b: usize = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            (a <= b && b < len).then_some((a, b))
        });
    let (status, body, extra) = match range {
        Some((a, b)) => (206, &data[a..=b], Some(format!("bytes {a}-{b}/{len}"))),
        None => (200, data, None),
    };
    let mut r = Response::builder()
        .status(status)
        .header("content-length", body.len())
        .header("accept-ranges", "bytes");
    if let Some(cr) = extra {
        r = r.header("content-range", cr);
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from(body.to_vec())
    };
    r.body(body).expect("response")
}

impl Hub {
    #[allow(clippy::result_large_err)] // an axum Response is what the handler returns as the error
    fn repo(&self, kind: &str, repo: &str, h: &HeaderMap) -> Result<&Repo, Response<Body>> {
        match self.repos.get(&format!("{kind}/{repo}")) {
            Some(r) => Ok(r),
            None if token(h).is_none() => Err(error(
                401,
                "RepoNotFound",
                "Repository Not Found for url. Please make sure you specified the correct `repo_id` and `repo_type`. If you are trying to access a private or gated repo, make sure you are authenticated.",
            )),
            None => Err(error(404, "RepoNotFound", "Repository Not Found")),
        }
    }

    fn commit(&self, r: &Repo, rev: &str) -> Option<String> {
        if r.commits.contains_key(rev) {
            return Some(rev.to_string());
        }
        r.refs.get(rev).cloned()
    }

    fn api(&self, kind: &str, repo: &str, rev: &str, h: &HeaderMap) -> Response<Body> {
        let r = match self.repo(kind, repo, h) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Some(sha) = self.commit(r, rev) else {
            return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let siblings: Vec<_> = r.commits[&sha]
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body =
            serde_json::json!({"id": repo, "sha": sha, "siblings": siblings, "gated": r.gated});
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("response")
    }

    fn resolve(
        &self,
        kind: &str,
        repo: &str,
        rev: &str,
        file: &str,
        h: &HeaderMap,
        head: bool,
    ) -> Response<Body> {
        let r = match self.repo(kind, repo, h) {
            Ok(r) => r,
            Err(e) => return e,
        };
        if r.gated {
            match token(h).as_deref() {
                None => {
                    return error(
                        401,
                        "GatedRepo",
                        &format!(
                            "Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
                        ),
                    );
                }
                Some(t) if t != self.granted => {
                    return error(
                        403,
                        "GatedRepo",
                        &format!(
                            "Access to model {repo} is restricted and you are not in the authorized list."
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        let Some(sha) = self.commit(r, rev) else {
            return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let Some(data) = r.commits[&sha].get(file) else {
            return error(
                404,
                "EntryNotFound",
                &format!("{file} does not exist on \"{rev}\""),
            );
        };
        if is_lfs(file, data) {
            let oid = sha256(data);
            let key = if r.rotten {
                format!("rotten-{oid}")
            } else {
                oid.clone()
            };
            return Response::builder()
                .status(302)
                .header(
                    "location",
                    format!("{}/cdn/{key}?Expires=9999999999&Signature=abc", self.cdn),
                )
                .header("x-linked-etag", format!("\"{oid}\""))
                .header("x-linked-size", data.len())
                .header("x-repo-commit", &sha)
                .header("etag", format!("\"{}\"", &sha256(file.as_bytes())[..40]))
                .body(Body::empty())
                .expect("response");
        }
        self.served
            .fetch_add(if head { 0 } else { data.len() as u64 }, Ordering::SeqCst);
        let mut resp = ranged(h, data, head);
        let hv = |s: String| HeaderValue::from_str(&s).expect("header");
        resp.headers_mut()
            .insert("etag", hv(format!("\"{}\"", &sha256(data)[..40])));
        resp.headers_mut().insert("x-repo-commit", hv(sha));
        resp
    }

    fn cdn_blob(&self, key: &str, uri: &Uri, h: &HeaderMap) -> Response<Body> {
        if h.contains_key("authorization") {
            return error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
            );
        }
        if !uri.query().is_some_and(|q| q.contains("Signature=")) {
            return error(403, "AccessDenied", "missing signature");
        }
        let (rotten, oid) = match key.strip_prefix("rotten-") {
            Some(o) => (true, o),
            None => (false, key),
        };
        for r in self.repos.values() {
            for files in r.commits.values() {
                for data in files.values() {
                    if sha256(data) == oid {
                        let mut d = data.clone();
                        if rotten {
                            d[0] ^= 0xff;
                        }
                        let resp = ranged(h, &d, false);
                        let n: u64 = resp
                            .headers()
                            .get("content-length")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0);
                        self.served.fetch_add(n, Ordering::SeqCst);
                        return resp;
                    }
                }
            }
        }
        error(404, "NoSuchKey", "no such blob")
    }
}

type Shared = Arc<RwLock<Arc<Hub>>>;

fn now(shared: &Shared) -> Arc<Hub> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn hub_handler(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let hub = now(&shared);
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    let head = method == Method::HEAD;
    match parts.as_slice() {
        ["api", kind @ ("models" | "datasets"), rest] => {
            // {org}/{name}/revision/{rev}: the revision was one encoded segment.
            let raw = uri.path().trim_start_matches('/');
            let Some(enc_rev) = raw.rsplit('/').next() else {
                return error(400, "BadRequest", "no revision");
            };
            let rev = percent_encoding::percent_decode_str(enc_rev)
                .decode_utf8_lossy()
                .into_owned();
            let repo = rest
                .split("/revision/")
                .next()
                .unwrap_or_default()
                .to_string();
            hub.api(kind, &repo, &rev, &headers)
        }
        ["datasets", org, rest] => resolve_path(&hub, "datasets", org, rest, &headers, head),
        [org, name, rest] => resolve_path(
            &hub,
            "models",
            org,
            &format!("{name}/{rest}"),
            &headers,
            head,
        ),
        _ => error(404, "NotFound", "no such route"),
    }
}

fn resolve_path(
    hub: &Hub,
    kind: &str,
    org: &str,
    rest: &str,
    h: &HeaderMap,
    head: bool,
) -> Response<Body> {
    // {name}/resolve/{rev}/{file...}
    let mut it = rest.splitn(4, '/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(name), Some("resolve"), Some(rev), Some(file)) => {
            hub.resolve(kind, &format!("{org}/{name}"), rev, file, h, head)
        }
        _ => error(404, "NotFound", "no such route"),
    }
}

async fn cdn_handler(State(shared): State<Shared>, uri: Uri, headers: HeaderMap) -> Response<Body> {
    let hub = now(&shared);
    match uri.path().strip_prefix("/cdn/") {
        Some(key) => hub.cdn_blob(key, &uri, &headers),
        None => error(404, "NotFound", "no such route"),
    }
}

/// A running Hub and its CDN, on loopback ports of their own thread; stopped when dropped.
pub struct LocalHub {
    /// `http://127.0.0.1:<port>`: the `HF_ENDPOINT`.
    pub endpoint: String,
    hub: Arc<RwLock<Arc<Hub>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalHub {
    /// Serves `repos` (keyed `models/<org>/<name>` or `datasets/<org>/<name>`); `granted` is the
    /// token that may read gated repositories.
    pub fn start(repos: BTreeMap<String, Repo>, granted: &str) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, repos, granted)
    }

    /// As [`LocalHub::start`], the Hub on `addr` (a fixed port an operator config can list).
    pub fn start_on(
        addr: SocketAddr,
        repos: BTreeMap<String, Repo>,
        granted: &str,
    ) -> anyhow::Result<Self> {
        let hub_listener = std::net::TcpListener::bind(addr)?;
        let cdn_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        for l in [&hub_listener, &cdn_listener] {
            l.set_nonblocking(true)?;
        }
        let endpoint = format!("http://{}", hub_listener.local_addr()?);
        let cdn_addr: SocketAddr = cdn_listener.local_addr()?;
        let hub = Arc::new(RwLock::new(Arc::new(Hub {
            repos,
            cdn: format!("http://{cdn_addr}"),
            served: AtomicU64::new(0),
            granted: granted.to_string(),
        })));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let shared = hub.clone();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let (h, c) = match (
                    tokio::net::TcpListener::from_std(hub_listener),
                    tokio::net::TcpListener::from_std(cdn_listener),
                ) {
                    (Ok(h), Ok(c)) => (h, c),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let hub_app = axum::Router::new()
                    .fallback(hub_handler)
                    .with_state(shared.clone());
                let cdn_app = axum::Router::new()
                    .fallback(cdn_handler)
                    .with_state(shared.clone());
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = axum::serve(h, hub_app) => {}
                    _ = axum::serve(c, cdn_app) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        ready_rx.recv()??;
        Ok(Self {
            endpoint,
            hub,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Object bytes the Hub and its CDN have served (GET bodies).
    pub fn served(&self) -> u64 {
        self.current().served.load(Ordering::SeqCst)
    }

    /// A copy of repository `key` as served now.
    pub fn repo(&self, key: &str) -> Option<Repo> {
        self.current().repos.get(key).cloned()
    }

    /// Points `reference` of repository `key` at `sha` (a commit it has): "main moved".
    pub fn set_ref(&self, key: &str, reference: &str, sha: &str) {
        let mut slot = self.hub.write().unwrap_or_else(|e| e.into_inner());
        let old = slot.clone();
        let mut repos = old.repos.clone();
        if let Some(r) = repos.get_mut(key) {
            r.refs.insert(reference.to_string(), sha.to_string());
        }
        *slot = Arc::new(Hub {
            repos,
            cdn: old.cdn.clone(),
            served: AtomicU64::new(old.served.load(Ordering::SeqCst)),
            granted: old.granted.clone(),
        });
    }

    fn current(&self) -> Arc<Hub> {
        self.hub.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for LocalHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
