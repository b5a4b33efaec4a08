//! Test harness: real OpenAI-like backends (axum servers in the test process), the real
//! `tailor-router` binary started as a child process, and a small HTTP client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// How a fake backend behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Every request answers 500.
    Fail500,
    /// Never answers.
    Hang,
}

/// One OpenAI-like backend: answers chat and text completions (JSON or SSE), echoing which
/// backend served the request and the `model` it received.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub shared: Arc<BackendShared>,
}

pub struct BackendShared {
    pub name: String,
    pub mode: Mode,
    pub requests: AtomicU64,
    /// `model` values received.
    pub models: Mutex<HashMap<String, u64>>,
    /// When set, a stream stops after its first chunk until `release` is notified.
    pub hold_streams: AtomicBool,
    pub release: Notify,
    /// Set once a held stream has sent its last chunk.
    pub stream_finished: AtomicBool,
    /// Authorization headers seen (to check the router strips client keys).
    pub saw_authorization: AtomicU64,
    /// Their values, in arrival order.
    pub authorizations: Mutex<Vec<String>>,
}

impl Backend {
    pub async fn start(name: &str, mode: Mode) -> Backend {
        let shared = Arc::new(BackendShared {
            name: name.to_string(),
            mode,
            requests: AtomicU64::new(0),
            models: Mutex::new(HashMap::new()),
            hold_streams: AtomicBool::new(false),
            release: Notify::new(),
            stream_finished: AtomicBool::new(false),
            saw_authorization: AtomicU64::new(0),
            authorizations: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .route("/v1/completions", axum::routing::post(completion))
            .route("/v1/models", axum::routing::get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            name: name.to_string(),
            addr,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn models_seen(&self) -> HashMap<String, u64> {
        self.shared.models.lock().expect("lock").clone()
    }
}

async fn models(State(s): State<Arc<BackendShared>>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "test"}]}))
        .into_response()
}

async fn begin(s: &BackendShared, headers: &HeaderMap, body: &Value) -> Option<Response> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers.get("authorization") {
        s.saw_authorization.fetch_add(1, Ordering::SeqCst);
        s.authorizations
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(auth.as_bytes()).into_owned());
    }
    let model = body["model"].as_str().unwrap_or("<none>").to_string();
    *s.models.lock().expect("lock").entry(model).or_default() += 1;
    // A test asks for a status by header: the backend answers it, OpenAI-shaped.
    if let Some(status) = headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
    {
        return Some(
            (
                status,
                axum::Json(json!({"error": {"message": format!("test status {status}"), "type": "invalid_request_error", "param": null, "code": null}})),
            )
                .into_response(),
        );
    }
    match s.mode {
        Mode::Ok => None,
        Mode::Fail500 => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})),
            )
                .into_response(),
        ),
        Mode::Hang => {
            std::future::pending::<()>().await;
            None
        }
    }
}

fn sse(s: Arc<BackendShared>, chunks: Vec<Value>) -> Response {
    let stream = async_stream(s, chunks);
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from_stream(stream))
        .expect("sse response")
}

fn async_stream(
    s: Arc<BackendShared>,
    chunks: Vec<Value>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold((0usize, s, chunks), |(i, s, chunks)| async move {
        if i > chunks.len() {
            return None;
        }
        if i == 1 && s.hold_streams.load(Ordering::SeqCst) {
            s.release.notified().await;
        }
        let data = if i == chunks.len() {
            s.stream_finished.store(true, Ordering::SeqCst);
            "data: [DONE]\n\n".to_string()
        } else {
            format!("data: {}\n\n", chunks[i])
        };
        Some((Ok(Bytes::from(data)), (i + 1, s, chunks)))
    })
}

async fn chat(
    State(s): State<Arc<BackendShared>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = begin(&s, &headers, &body).await {
        return r;
    }
    let model = body["model"].clone();
    let text = format!("served by {}", s.name);
    if body["stream"].as_bool() == Some(true) {
        let words: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
        let mut chunks = vec![json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]
        })];
        for w in words {
            chunks.push(json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]
            }));
        }
        chunks.push(json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        }));
        return sse(s, chunks);
    }
    axum::Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    }))
    .into_response()
}

async fn completion(
    State(s): State<Arc<BackendShared>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = begin(&s, &headers, &body).await {
        return r;
    }
    axum::Json(json!({
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "text": format!("served by {}", s.name), "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    }))
    .into_response()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `tailor-router` child process; killed when dropped. Its stdout and stderr (the logs) go to
/// `DIR/router.log`.
pub struct RouterProc {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Sent to `/stats` when set (the router runs with `--admin-token-file`).
    pub admin_token: Option<String>,
}

/// How to start a router beyond its config.
#[derive(Default, Clone)]
pub struct Start {
    /// A separate admin listener.
    pub admin: bool,
    /// More command-line arguments.
    pub args: Vec<String>,
    /// The admin token `/stats` needs (the test also passes `--admin-token-file`).
    pub admin_token: Option<String>,
    /// `RUST_LOG`; default `warn`.
    pub log: Option<String>,
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RouterProc {
    /// Starts the router with `config` written to `DIR/config.yaml`.
    pub async fn start(config: &str) -> RouterProc {
        Self::start_with(config, false).await
    }

    pub async fn start_with(config: &str, admin: bool) -> RouterProc {
        Self::start_opts(
            config,
            Start {
                admin,
                ..Start::default()
            },
        )
        .await
    }

    pub async fn start_opts(config: &str, opts: Start) -> RouterProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        Self::spawn_opts(dir, config_path, opts).await
    }

    /// Starts the router on an existing config file inside `dir`.
    pub async fn spawn(dir: tempfile::TempDir, config_path: PathBuf, admin: bool) -> RouterProc {
        Self::spawn_opts(
            dir,
            config_path,
            Start {
                admin,
                ..Start::default()
            },
        )
        .await
    }

    pub async fn spawn_opts(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        opts: Start,
    ) -> RouterProc {
        use sha2::Digest;
        let admin = opts.admin;
        let expected_sha = hex::encode(sha2::Sha256::digest(
            std::fs::read(&config_path).expect("read config"),
        ));
        let client = http_client();
        let (mut dir, mut config_path) = (dir, config_path);
        // A port picked free may be taken again before the router binds it: then the router
        // exits (or another process answers with another config) and we try fresh ports.
        for _attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let admin_addr: Option<SocketAddr> =
                admin.then(|| format!("127.0.0.1:{}", free_port()).parse().expect("addr"));
            let log = std::fs::File::create(dir.path().join("router.log")).expect("log file");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailor-router"));
            cmd.arg("--config")
                .arg(&config_path)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--reload-interval")
                .arg("100ms")
                .args(&opts.args)
                .env("RUST_LOG", opts.log.as_deref().unwrap_or("warn"))
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            if let Some(a) = admin_addr {
                cmd.arg("--admin-listen").arg(a.to_string());
            }
            let child = cmd.spawn().expect("spawn tailor-router");
            let mut router = RouterProc {
                child,
                addr,
                admin: admin_addr,
                dir,
                config_path,
                admin_token: opts.admin_token.clone(),
            };
            let stats = format!("{}/stats", router.ops_url());
            let end = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut ours = false;
            while tokio::time::Instant::now() < end && router.exited().is_none() {
                if let Ok((200, body)) = get_with(&client, &stats, &router.admin_headers()).await {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    ours = v["config"]["sha256"] == json!(expected_sha);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if ours && router.exited().is_none() {
                return router;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "tailor-router did not become ready:\n{}",
                router.logs()
            );
            (dir, config_path) = router.take_parts();
        }
        panic!("tailor-router could not start on a free port");
    }

    /// Kills the process and hands back its directory and config path.
    fn take_parts(mut self) -> (tempfile::TempDir, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.config_path.clone())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("router.log")).unwrap_or_default()
    }

    fn admin_headers(&self) -> Vec<(String, String)> {
        self.admin_token
            .iter()
            .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Where /metrics and /stats live.
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.admin.unwrap_or(self.addr))
    }

    pub async fn stats(&self) -> Value {
        let url = format!("{}/stats", self.ops_url());
        let (status, body) = get_with(&http_client(), &url, &self.admin_headers())
            .await
            .expect("GET /stats");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("stats JSON")
    }

    /// Writes a new config in place (atomically, by rename) and waits until the router has
    /// loaded it.
    pub async fn rewrite_config(&self, config: &str) {
        let before = self.stats().await["config"]["generation"]
            .as_u64()
            .expect("generation");
        let tmp = self.dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, config).expect("write");
        std::fs::rename(&tmp, &self.config_path).expect("rename");
        self.wait_generation(before + 1).await;
    }

    pub async fn wait_generation(&self, generation: u64) {
        poll_until(Duration::from_secs(30), "config reload", || async {
            self.stats().await["config"]["generation"].as_u64() >= Some(generation)
        })
        .await;
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn get(client: &TestClient, url: &str) -> Result<(u16, Bytes), String> {
    get_with(client, url, &[]).await
}

pub async fn get_with(
    client: &TestClient,
    url: &str,
    headers: &[(String, String)],
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// For the fake backends' chat answers: which backend served it.
    pub fn served_by(&self) -> String {
        let v = self.json();
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .or(v["choices"][0]["text"].as_str())
            .unwrap_or_else(|| panic!("no content in {v}"));
        text.trim_start_matches("served by ").to_string()
    }
}

pub async fn post(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A chat completion request body.
pub fn chat_body(model: &str, user: Option<&str>) -> String {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(u) = user {
        v["user"] = json!(u);
    }
    v.to_string()
}

/// Polls `check` until it is true, panicking after `deadline`.
pub async fn poll_until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config with one route `bot` split over the given (name, backend URLs, weight) targets.
pub fn route_config(targets: &[(&str, &[String], u32)], extra: &str) -> String {
    let mut s = String::from("routes:\n  - model: bot\n    targets:\n");
    for (name, urls, weight) in targets {
        let list = urls
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "      - name: {name}\n        revision: {name}\n        backend: [{list}]\n        model: bot-{name}\n        weight: {weight}\n"
        ));
    }
    s.push_str(extra);
    s
}

pub fn target_stats<'a>(stats: &'a Value, route: &str, target: &str) -> &'a Value {
    &stats["routes"][route]["targets"][target]
}

pub fn dir_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}
