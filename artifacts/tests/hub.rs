//! `hf://` against a local HTTP endpoint (`HF_ENDPOINT`) that serves the Hub's file layout.
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

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, Uri};
use sha2::Digest;
use support::{assert_no_secret, bytes, files_under};
use tailor_artifacts::{ArtifactUri, Context, Env, ErrorKind, Fetcher};

const TOKEN: &str = "hf_tailorTestTokenGranted0123";
const OTHER_TOKEN: &str = "hf_tailorTestTokenNotGranted9";

#[derive(Default)]
struct Repo {
    gated: bool,
    /// branch/tag → commit sha.
    refs: BTreeMap<String, String>,
    /// commit sha → files.
    commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Serve LFS bytes that do not match their X-Linked-Etag.
    rotten: bool,
}

struct Hub {
    repos: BTreeMap<String, Repo>,
    cdn: String,
    served: AtomicU64,
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
                Some(t) if t != TOKEN => {
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

async fn hub_handler(
    State(hub): State<Arc<Hub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
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

async fn cdn_handler(State(hub): State<Arc<Hub>>, uri: Uri, headers: HeaderMap) -> Response<Body> {
    match uri.path().strip_prefix("/cdn/") {
        Some(key) => hub.cdn_blob(key, &uri, &headers),
        None => error(404, "NotFound", "no such route"),
    }
}

/// A shard as transformers writes it: a valid safetensors file.
fn shard(names: &[&str], rows: usize, seed: u64) -> Vec<u8> {
    let data: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, _)| bytes(seed + i as u64, rows * 64 * 4))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 64], d)
                    .expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

struct Running {
    hub: Arc<Hub>,
    endpoint: String,
    _servers: Vec<tokio::task::JoinHandle<()>>,
}

async fn serve(router: axum::Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    (
        addr,
        tokio::spawn(async move {
            let _ = axum::serve(l, router).await;
        }),
    )
}

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";

fn tiny_commits() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let s1 = shard(
        &[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ],
        4096,
        1,
    );
    let s2 = shard(
        &["model.layers.1.self_attn.q_proj.weight", "lm_head.weight"],
        4096,
        9,
    );
    let index = serde_json::json!({
        "metadata": {"total_size": s1.len() + s2.len()},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
            "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"
        }
    });
    let tokenizer =
        serde_json::json!({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}});
    let mut new = BTreeMap::new();
    new.insert(
        "config.json".to_string(),
        br#"{"model_type":"llama","v":2}"#.to_vec(),
    );
    new.insert("model-00001-of-00002.safetensors".to_string(), s1);
    new.insert("model-00002-of-00002.safetensors".to_string(), s2);
    new.insert(
        "model.safetensors.index.json".to_string(),
        index.to_string().into_bytes(),
    );
    new.insert(
        "tokenizer.json".to_string(),
        tokenizer.to_string().into_bytes(),
    );
    new.insert(
        "tokenizer_config.json".to_string(),
        br#"{"chat_template":"{{ messages }}","eos_token":"</s>"}"#.to_vec(),
    );
    new.insert(
        "special_tokens_map.json".to_string(),
        br#"{"eos_token":"</s>"}"#.to_vec(),
    );
    new.insert("onnx/model.onnx".to_string(), bytes(77, 2 << 20));
    new.insert("onnx/config.json".to_string(), b"{}".to_vec());
    let mut old = BTreeMap::new();
    old.insert(
        "config.json".to_string(),
        br#"{"model_type":"llama","v":1}"#.to_vec(),
    );
    old.insert(
        "tokenizer.json".to_string(),
        tokenizer.to_string().into_bytes(),
    );
    BTreeMap::from([(OLD.to_string(), old), (NEW.to_string(), new)])
}

async fn start() -> Running {
    let mut repos = BTreeMap::new();
    repos.insert(
        "models/org/tiny".to_string(),
        Repo {
            refs: BTreeMap::from([
                ("main".to_string(), NEW.to_string()),
                ("v1.0".to_string(), OLD.to_string()),
                ("refs/pr/1".to_string(), OLD.to_string()),
            ]),
            commits: tiny_commits(),
            ..Repo::default()
        },
    );
    let gated_files = BTreeMap::from([(
        "3333333333333333333333333333333333333333".to_string(),
        BTreeMap::from([
            ("config.json".to_string(), b"{}".to_vec()),
            ("model.safetensors".to_string(), shard(&["w"], 16, 3)),
        ]),
    )]);
    repos.insert(
        "models/org/gated".to_string(),
        Repo {
            gated: true,
            refs: BTreeMap::from([(
                "main".to_string(),
                "3333333333333333333333333333333333333333".to_string(),
            )]),
            commits: gated_files,
            ..Repo::default()
        },
    );
    repos.insert(
        "models/org/rotten".to_string(),
        Repo {
            rotten: true,
            refs: BTreeMap::from([("main".to_string(), NEW.to_string())]),
            commits: BTreeMap::from([(
                NEW.to_string(),
                BTreeMap::from([("model.safetensors".to_string(), shard(&["w"], 64, 4))]),
            )]),
            ..Repo::default()
        },
    );
    repos.insert(
        "datasets/org/chat".to_string(),
        Repo {
            refs: BTreeMap::from([("main".to_string(), OLD.to_string())]),
            commits: BTreeMap::from([(
                OLD.to_string(),
                BTreeMap::from([
                    (
                        "data/train.jsonl".to_string(),
                        b"{\"messages\":[]}\n".to_vec(),
                    ),
                    (
                        "data/test.jsonl".to_string(),
                        b"{\"messages\":[]}\n".to_vec(),
                    ),
                    ("README.md".to_string(), b"# chat".to_vec()),
                ]),
            )]),
            ..Repo::default()
        },
    );
    // The CDN is another origin (another port): the client must drop the token there.
    let cdn_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let cdn_addr = cdn_listener.local_addr().expect("addr");
    let hub = Arc::new(Hub {
        repos,
        cdn: format!("http://{cdn_addr}"),
        served: AtomicU64::new(0),
    });
    let cdn = axum::Router::new()
        .fallback(cdn_handler)
        .with_state(hub.clone());
    let cdn_task = tokio::spawn(async move {
        let _ = axum::serve(cdn_listener, cdn).await;
    });
    let (addr, hub_task) = serve(
        axum::Router::new()
            .fallback(hub_handler)
            .with_state(hub.clone()),
    )
    .await;
    Running {
        hub,
        endpoint: format!("http://{addr}"),
        _servers: vec![hub_task, cdn_task],
    }
}

fn ctx(endpoint: &str, token: Option<&str>) -> Context {
    let mut env = Env::from_pairs([("HF_ENDPOINT", endpoint)]);
    if let Some(t) = token {
        env.set("HF_TOKEN", t);
    }
    Context::new(env)
}

fn uri(s: &str) -> ArtifactUri {
    ArtifactUri::parse(s).expect("uri")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolves_revisions_and_fetches_a_sharded_checkpoint() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let fetcher = Fetcher::new(ctx(&hub.endpoint, None))
        .with_chunk_size(256 * 1024)
        .with_retry_for(Duration::ZERO);

    let f = fetcher
        .fetch(&uri("hf://org/tiny"), Some(&dir.path().join("main")))
        .await
        .expect("fetch main");
    assert_eq!(f.version, NEW, "main resolves to its commit sha");
    let commit = &hub.hub.repos["models/org/tiny"].commits[NEW];
    let mut want: Vec<String> = commit.keys().cloned().collect();
    want.sort();
    assert_eq!(files_under(&dir.path().join("main")), want);
    for (name, data) in commit {
        assert_eq!(
            &std::fs::read(dir.path().join("main").join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    // LFS files were verified against X-Linked-Etag; regular files have no sha256 to check.
    for file in &f.files {
        let lfs = file.path.ends_with(".safetensors") || file.path.ends_with(".onnx");
        assert_eq!(file.sha256.is_some(), lfs, "{file:?}");
    }
    // The sharded checkpoint is whole: every tensor of the index is in the shard it names.
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("main/model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    for (tensor, shard_file) in index["weight_map"].as_object().expect("map") {
        let bytes = std::fs::read(
            dir.path()
                .join("main")
                .join(shard_file.as_str().expect("name")),
        )
        .expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(
            st.tensor(tensor).expect("tensor").shape(),
            [4096, 64],
            "{tensor}"
        );
    }

    for (rev, sha, v) in [("v1.0", OLD, 1), (OLD, OLD, 1), ("refs%2Fpr%2F1", OLD, 1)] {
        let dest = dir.path().join(format!("rev-{}", &rev[..4]));
        let f = fetcher
            .fetch(&uri(&format!("hf://org/tiny@{rev}")), Some(&dest))
            .await
            .expect(rev);
        assert_eq!(f.version, sha, "{rev}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).expect("cfg"))
                .expect("json");
        assert_eq!(cfg["v"], v, "{rev}");
    }

    // A directory inside the repository, and one file by its path.
    let f = fetcher
        .fetch(&uri("hf://org/tiny/onnx"), Some(&dir.path().join("onnx")))
        .await
        .expect("subdir");
    assert_eq!(
        files_under(&dir.path().join("onnx")),
        ["config.json", "model.onnx"]
    );
    assert!(f.single.is_none());
    let f = fetcher
        .fetch(
            &uri("hf://org/tiny/tokenizer.json"),
            Some(&dir.path().join("tok")),
        )
        .await
        .expect("one file");
    assert_eq!(f.single, Some(dir.path().join("tok/tokenizer.json")));

    // A dataset repository.
    let f = fetcher
        .fetch(
            &uri("hf://datasets/org/chat/data"),
            Some(&dir.path().join("chat")),
        )
        .await
        .expect("dataset");
    assert_eq!(files_under(&f.dir), ["test.jsonl", "train.jsonl"]);

    for (u, kind, needle) in [
        (
            "hf://org/tiny@nope",
            ErrorKind::NotFound,
            "revision not found",
        ),
        (
            "hf://org/tiny/missing-dir",
            ErrorKind::NotFound,
            "no file at or under",
        ),
        (
            "hf://org/does-not-exist",
            ErrorKind::NotFound,
            "repository not found",
        ),
    ] {
        let e = fetcher
            .fetch(&uri(u), Some(&dir.path().join("err")))
            .await
            .expect_err(u);
        assert_eq!(e.kind, kind, "{e}");
        assert!(
            e.to_string().contains(needle) && e.to_string().contains(u),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gated_repository_needs_a_granted_token() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    for (token, needle) in [(None, "HTTP 401"), (Some(OTHER_TOKEN), "HTTP 403")] {
        let e = Fetcher::new(ctx(&hub.endpoint, token))
            .with_retry_for(Duration::ZERO)
            .fetch(&uri("hf://org/gated"), Some(&dir.path().join("no")))
            .await
            .expect_err("no access");
        let text = e.to_string();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{text}");
        assert!(text.contains("gated") && text.contains(needle), "{text}");
        assert!(text.contains("hf://org/gated"), "{text}");
        assert_no_secret(&text, &[TOKEN, OTHER_TOKEN]);
        if token.is_none() {
            assert!(text.contains("set HF_TOKEN"), "{text}");
        }
    }
    let f = Fetcher::new(ctx(&hub.endpoint, Some(TOKEN)))
        .fetch(&uri("hf://org/gated"), Some(&dir.path().join("yes")))
        .await
        .expect("granted token (dropped on the CDN redirect, which refuses it)");
    assert_eq!(files_under(&f.dir), ["config.json", "model.safetensors"]);

    // The binary reads HF_TOKEN and HF_ENDPOINT from its environment and never prints them.
    let bin = env!("CARGO_BIN_EXE_tailor-fetch");
    for (token, code) in [(OTHER_TOKEN, 5), (TOKEN, 0)] {
        let out = tokio::process::Command::new(bin)
            .args([
                "hf://org/gated",
                dir.path().join("bin").to_str().expect("utf8"),
                "--retry-for",
                "0",
            ])
            .env_clear()
            .env("HF_ENDPOINT", &hub.endpoint)
            .env("HF_TOKEN", token)
            .env("RUST_LOG", "debug")
            .output()
            .await
            .expect("run");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{all}");
        assert_no_secret(&all, &[TOKEN, OTHER_TOKEN]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lfs_bytes_that_do_not_match_their_sha256_are_refused() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let e = Fetcher::new(ctx(&hub.endpoint, None))
        .with_retry_for(Duration::ZERO)
        .fetch(&uri("hf://org/rotten"), Some(&dir.path().join("r")))
        .await
        .expect_err("rotten bytes");
    assert_eq!(e.kind, ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("hf://org/rotten@{NEW}/model.safetensors")),
        "{e}"
    );
    assert!(files_under(&dir.path().join("r")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_commit_is_served_without_the_hub() {
    let hub = start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let fetcher = Fetcher::new(ctx(&hub.endpoint, None))
        .with_cache(Some(cache))
        .with_retry_for(Duration::ZERO);
    let first = fetcher
        .fetch(&uri("hf://org/tiny"), Some(&dir.path().join("a")))
        .await
        .expect("first");
    let served = hub.hub.served.load(Ordering::SeqCst);
    assert!(served >= first.bytes_transferred && first.bytes_transferred > 0);

    // The same commit named by branch: resolved (one API call), then linked from the cache.
    let second = fetcher
        .fetch(&uri("hf://org/tiny@main"), Some(&dir.path().join("b")))
        .await
        .expect("second");
    assert!(second.from_cache);
    assert_eq!(second.bytes_transferred, 0);
    assert_eq!(
        hub.hub.served.load(Ordering::SeqCst),
        served,
        "no file bytes served"
    );

    // Pinned to the sha, it needs no Hub at all.
    drop(hub);
    let offline = Fetcher::new(ctx("http://127.0.0.1:9", None))
        .with_cache(Some(dir.path().join("cache")))
        .with_retry_for(Duration::ZERO)
        .fetch(
            &uri(&format!("hf://org/tiny@{NEW}")),
            Some(&dir.path().join("c")),
        )
        .await
        .expect("offline from cache");
    assert!(offline.from_cache);
    assert_eq!(
        files_under(&dir.path().join("c")),
        files_under(&dir.path().join("a"))
    );
}
