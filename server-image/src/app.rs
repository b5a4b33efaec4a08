//! HTTP API: OpenAI endpoints, admin endpoints, health and metrics.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tailor_model::{ChatMessage, ChatTemplate, LoraAdapter, Tokenizer};
use tokio::sync::mpsc;

use crate::adapters::{LookupError, Registry, Source};
use crate::config::FaultInjection;
use crate::engine::{EngineStats, Event, Finish, GenRequest, Sampling, TokenOut};
use crate::error::ApiError;
use crate::metrics::{Metrics, StatusLabels};

pub struct AppState {
    pub served_name: RwLock<String>,
    pub registry: Arc<Registry>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub engine: mpsc::Sender<GenRequest>,
    pub stats: Arc<EngineStats>,
    pub metrics: Metrics,
    pub max_seq: usize,
    pub max_body: usize,
    pub api_keys: RwLock<Option<HashSet<String>>>,
    pub fault: RwLock<FaultInjection>,
    pub draining: AtomicBool,
    pub created: u64,
}

impl AppState {
    pub fn served_name(&self) -> String {
        self.served_name
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/admin/adapters", get(list_adapters).post(add_adapter))
        .route(
            "/admin/adapters/{name}",
            axum::routing::delete(delete_adapter),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

async fn auth(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let keys = s.api_keys.read().ok().and_then(|k| k.clone());
    if let Some(keys) = keys {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|k| keys.contains(k)) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn ready(State(s): State<Shared>) -> Response {
    if s.stats.ready.load(Ordering::Relaxed) && !s.draining.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    s.metrics
        .loaded_adapters
        .set(s.registry.loaded_count() as i64);
    s.metrics
        .running
        .set(s.stats.running.load(Ordering::Relaxed) as i64);
    s.metrics
        .decode_steps
        .set(s.stats.decode_steps.load(Ordering::Relaxed) as i64);
    s.metrics
        .decoded_rows
        .set(s.stats.decoded_rows.load(Ordering::Relaxed) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// A JSON object body, with every rejection in OpenAI's error shape.
pub struct ApiJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for ApiJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/json") || v.contains("+json"));
        if !json_type {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("request body too large: {}", e.body_text()))
            } else {
                ApiError::BadRequest {
                    message: format!("cannot read the request body: {}", e.body_text()),
                    param: None,
                }
            }
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
            message: format!("We could not parse the JSON body of your request: {e}"),
            param: None,
        })?;
        if !v.is_object() {
            return Err(ApiError::BadRequest {
                message: "the request body must be a JSON object".into(),
                param: None,
            });
        }
        Ok(Self(v))
    }
}

/// Records one API request: in-flight gauge, then status, latency and tokens when dropped.
struct Track {
    state: Shared,
    model: String,
    start: Instant,
    status: Option<StatusCode>,
    first_token: bool,
}

impl Track {
    fn new(state: &Shared) -> Self {
        state.metrics.in_flight.inc();
        Self {
            state: state.clone(),
            model: "unknown".into(),
            start: Instant::now(),
            status: None,
            first_token: false,
        }
    }

    fn token(&mut self) {
        let m = Metrics::model(&self.model);
        if !self.first_token {
            self.first_token = true;
            self.state
                .metrics
                .ttft
                .get_or_create(&m)
                .observe(self.start.elapsed().as_secs_f64());
        }
        self.state.metrics.generation_tokens.get_or_create(&m).inc();
    }

    fn fail(&mut self, e: ApiError) -> ApiError {
        self.status = Some(e.status());
        e
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let m = &self.state.metrics;
        m.in_flight.dec();
        // No status: the client went away before the response was ready.
        let status = self.status.map_or(499, |s| s.as_u16());
        m.requests
            .get_or_create(&StatusLabels {
                model: self.model.clone(),
                status: status.to_string(),
            })
            .inc();
        m.duration
            .get_or_create(&Metrics::model(&self.model))
            .observe(self.start.elapsed().as_secs_f64());
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::rng().random::<u128>())
}

async fn models(State(s): State<Shared>) -> Response {
    let served = s.served_name();
    let created = s.created;
    let mut data = vec![
        json!({"id": served, "object": "model", "created": created, "owned_by": "tailor", "root": served, "parent": null}),
    ];
    for name in s.registry.names() {
        data.push(json!({"id": name, "object": "model", "created": created, "owned_by": "tailor", "root": name, "parent": served}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn list_adapters(State(s): State<Shared>) -> Response {
    axum::Json(s.registry.status()).into_response()
}

#[derive(Deserialize)]
struct AddAdapter {
    name: String,
    path: PathBuf,
}

async fn add_adapter(
    State(s): State<Shared>,
    ApiJson(body): ApiJson,
) -> Result<Response, ApiError> {
    let req: AddAdapter = serde_json::from_value(body)
        .map_err(|e| ApiError::bad(format!("expected {{name, path}}: {e}"), "name"))?;
    if req.name.is_empty() || req.name == s.served_name() {
        return Err(ApiError::bad(
            format!("invalid adapter name {:?}", req.name),
            "name",
        ));
    }
    let previous = s.registry.status().into_iter().find(|a| a.name == req.name);
    s.registry
        .register(&req.name, req.path.clone(), Source::Admin);
    match s.registry.get(&req.name).await {
        Ok(_) => {
            s.metrics
                .loaded_adapters
                .set(s.registry.loaded_count() as i64);
            Ok(
                axum::Json(json!({"name": req.name, "path": req.path, "loaded": true}))
                    .into_response(),
            )
        }
        Err(e) => {
            // A failed load leaves nothing behind (or the previous registration).
            s.registry.remove(&req.name);
            if let Some(p) = previous {
                s.registry
                    .register(&p.name, PathBuf::from(p.path), Source::Admin);
            }
            Err(ApiError::AdapterLoad(e.to_string()))
        }
    }
}

async fn delete_adapter(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    if s.registry.remove(&name) {
        Ok(axum::Json(json!({"name": name, "deleted": true})).into_response())
    } else {
        Err(ApiError::ModelNotFound(name))
    }
}

/// The requested model: the base model or a known adapter (loaded now if need be).
async fn resolve(
    s: &Shared,
    body: &Value,
    track: &mut Track,
) -> Result<Option<(u64, LoraAdapter)>, ApiError> {
    if !s.stats.ready.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the model is still loading".into()));
    }
    if s.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Err(ApiError::bad("you must provide a model parameter", "model"));
    };
    let adapter = if model == s.served_name() {
        track.model = model.to_string();
        None
    } else {
        match s.registry.get(model).await {
            Ok(a) => {
                track.model = model.to_string();
                Some(a)
            }
            Err(LookupError::Unknown(_)) => return Err(ApiError::ModelNotFound(model.into())),
            Err(LookupError::Load(e)) => {
                track.model = model.to_string();
                return Err(ApiError::Internal(e));
            }
        }
    };
    let fault = s.fault.read().map(|f| f.clone()).unwrap_or_default();
    if fault.applies(model) && rand::rng().random::<f64>() < fault.error_rate {
        return Err(ApiError::FaultInjected);
    }
    Ok(adapter)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Deserialize)]
struct Common {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stop: Option<StopSpec>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    /// vLLM's extension: generate exactly `max_tokens` (benchmarks).
    #[serde(default)]
    ignore_eos: Option<bool>,
}

struct Job {
    prompt: Vec<i64>,
    max_tokens: usize,
    sampling: Sampling,
    stops: Vec<String>,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
}

fn parse_common(c: &Common, prompt_len: usize, max_seq: usize) -> Result<Job, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            format!("temperature must be between 0 and 2, got {temperature}"),
            "temperature",
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            format!("top_p must be in (0, 1], got {top_p}"),
            "top_p",
        ));
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("only n = 1 is supported", "n"));
    }
    if prompt_len == 0 {
        return Err(ApiError::bad("the prompt is empty", "prompt"));
    }
    if prompt_len >= max_seq {
        return Err(ApiError::ContextLength(format!(
            "This model's maximum context length is {max_seq} tokens. However, your prompt has {prompt_len} tokens, leaving no room for a completion."
        )));
    }
    let room = max_seq - prompt_len;
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => room,
        Some(m) if m <= 0 => {
            return Err(ApiError::bad(
                format!("max_tokens must be at least 1, got {m}"),
                "max_tokens",
            ));
        }
        Some(m) if m as usize > room => {
            return Err(ApiError::ContextLength(format!(
                "This model's maximum context length is {max_seq} tokens. However, you requested {} tokens ({prompt_len} in the prompt, {m} for the completion). Please reduce the prompt or max_tokens.",
                prompt_len as i64 + m
            )));
        }
        Some(m) => m as usize,
    };
    let stops = match &c.stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "stop must be up to 4 non-empty strings",
            "stop",
        ));
    }
    Ok(Job {
        prompt: Vec::new(),
        max_tokens,
        sampling: Sampling {
            temperature,
            top_p,
            seed: c.seed.map(|s| s as u64),
        },
        stops,
        logprobs: None,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        ignore_eos: c.ignore_eos.unwrap_or(false),
    })
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Value) -> Result<T, ApiError> {
    T::deserialize(body).map_err(|e| ApiError::BadRequest {
        message: format!("invalid request: {e}"),
        param: None,
    })
}

fn encode(s: &Shared, text: &str, special: bool) -> Result<Vec<i64>, ApiError> {
    s.tokenizer
        .encode(text, special)
        .map(|ids| ids.into_iter().map(i64::from).collect())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A piece of generated output.
struct Piece {
    text: String,
    tokens: Vec<TokenOut>,
    finish: Option<&'static str>,
}

/// A running generation: engine events turned into text pieces, honouring stop strings.
struct Generation {
    state: Shared,
    rx: Option<mpsc::UnboundedReceiver<Event>>,
    ids: Vec<u32>,
    emitted: usize,
    pending: Vec<TokenOut>,
    stops: Vec<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    track: Track,
}

impl Generation {
    async fn start(
        s: &Shared,
        job: &Job,
        adapter: Option<(u64, LoraAdapter)>,
        track: Track,
    ) -> Result<Self, (ApiError, Track)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let req = GenRequest {
            prompt: job.prompt.clone(),
            adapter,
            max_tokens: job.max_tokens,
            sampling: job.sampling,
            logprobs: job.logprobs,
            ignore_eos: job.ignore_eos,
            tx,
        };
        if s.engine.send(req).await.is_err() {
            return Err((
                ApiError::Unavailable("the engine has stopped".into()),
                track,
            ));
        }
        s.metrics
            .prompt_tokens
            .get_or_create(&Metrics::model(&track.model))
            .inc_by(job.prompt.len() as u64);
        Ok(Self {
            state: s.clone(),
            rx: Some(rx),
            ids: Vec::new(),
            emitted: 0,
            pending: Vec::new(),
            stops: job.stops.clone(),
            prompt_tokens: job.prompt.len(),
            completion_tokens: 0,
            track,
        })
    }

    fn decode(&self) -> String {
        self.state
            .tokenizer
            .decode(&self.ids, true)
            .unwrap_or_default()
    }

    fn take(&mut self, text: &str, end: usize, finish: Option<&'static str>) -> Piece {
        let start = self.emitted.min(end);
        let piece = Piece {
            text: text.get(start..end).unwrap_or_default().to_string(),
            tokens: std::mem::take(&mut self.pending),
            finish,
        };
        self.emitted = end;
        if finish.is_some() {
            self.rx = None;
        }
        piece
    }

    async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        loop {
            let rx = self.rx.as_mut()?;
            let ev = rx.recv().await;
            match ev {
                None => {
                    self.rx = None;
                    return Some(Err(ApiError::Internal(
                        "generation stopped unexpectedly".into(),
                    )));
                }
                Some(Event::Error(e)) => {
                    self.rx = None;
                    return Some(Err(ApiError::Internal(format!("generation failed: {e}"))));
                }
                Some(Event::Done(f)) => {
                    let text = self.decode();
                    let reason = match f {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    };
                    return Some(Ok(self.take(&text, text.len(), Some(reason))));
                }
                Some(Event::Token(t)) => {
                    self.track.token();
                    self.completion_tokens += 1;
                    self.ids.push(t.id);
                    self.pending.push(t);
                    let text = self.decode();
                    let hit = self
                        .stops
                        .iter()
                        .filter_map(|s| text.find(s.as_str()))
                        .min();
                    if let Some(pos) = hit {
                        return Some(Ok(self.take(&text, pos, Some("stop"))));
                    }
                    let hold = self
                        .stops
                        .iter()
                        .map(|s| s.len().saturating_sub(1))
                        .max()
                        .unwrap_or(0);
                    let mut end = text.len().saturating_sub(hold);
                    while end > 0 && !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    let mut visible = &text[..end];
                    // An incomplete UTF-8 sequence decodes as U+FFFD until its last byte arrives.
                    while let Some(v) = visible.strip_suffix('\u{FFFD}') {
                        visible = v;
                    }
                    let end = visible.len();
                    if end > self.emitted {
                        return Some(Ok(self.take(&text, end, None)));
                    }
                }
            }
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.state
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------- chat

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<MessageIn>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<i64>,
}

async fn chat(
    State(s): State<Shared>,
    _headers: HeaderMap,
    ApiJson(body): ApiJson,
) -> Result<Response, ApiError> {
    let mut track = Track::new(&s);
    match chat_inner(&s, body, &mut track).await {
        Ok(job) => Ok(job.respond(s, track, true).await),
        Err(e) => Err(track.fail(e)),
    }
}

struct Prepared {
    job: Job,
    adapter: Option<(u64, LoraAdapter)>,
    model: String,
}

async fn chat_inner(s: &Shared, body: Value, track: &mut Track) -> Result<Prepared, ApiError> {
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(ApiError::bad("messages must not be empty", "messages"));
        }
        Some(_) => return Err(ApiError::bad("messages must be an array", "messages")),
        None => {
            return Err(ApiError::bad(
                "'messages' is a required property",
                "messages",
            ));
        }
    }
    let adapter = resolve(s, &body, track).await?;
    let common: Common = parse(&body)?;
    let chat: ChatBody = parse(&body)?;
    let mut messages = Vec::with_capacity(chat.messages.len());
    for m in chat.messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::bad(
                            format!("content part type {:?} is not supported", p.kind),
                            "messages",
                        ));
                    }
                    out.push_str(p.text.as_deref().unwrap_or_default());
                }
                out
            }
        };
        messages.push(ChatMessage::new(m.role, content));
    }
    let text = match &s.template {
        Some(t) => t
            .render(&messages, true)
            .map_err(|e| ApiError::bad(e.to_string(), "messages"))?,
        None => {
            let mut t = String::new();
            for m in &messages {
                t.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            t.push_str("assistant: ");
            t
        }
    };
    let prompt = encode(s, &text, false)?;
    let mut job = parse_common(&common, prompt.len(), s.max_seq)?;
    job.prompt = prompt;
    if chat.logprobs == Some(true) {
        let k = chat.top_logprobs.unwrap_or(0);
        if !(0..=20).contains(&k) {
            return Err(ApiError::bad(
                "top_logprobs must be between 0 and 20",
                "top_logprobs",
            ));
        }
        job.logprobs = Some(k as usize);
    } else if chat.top_logprobs.is_some_and(|k| k > 0) {
        return Err(ApiError::bad(
            "top_logprobs requires logprobs: true",
            "top_logprobs",
        ));
    }
    Ok(Prepared {
        job,
        adapter,
        model: track.model.clone(),
    })
}

// ---------------------------------------------------------------- completions

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: PromptSpec,
    #[serde(default)]
    logprobs: Option<i64>,
    #[serde(default)]
    echo: Option<bool>,
}

async fn completions(
    State(s): State<Shared>,
    ApiJson(body): ApiJson,
) -> Result<Response, ApiError> {
    let mut track = Track::new(&s);
    match completions_inner(&s, body, &mut track).await {
        Ok(job) => Ok(job.respond(s, track, false).await),
        Err(e) => Err(track.fail(e)),
    }
}

async fn completions_inner(
    s: &Shared,
    body: Value,
    track: &mut Track,
) -> Result<Prepared, ApiError> {
    if body.get("prompt").is_none() {
        return Err(ApiError::bad("'prompt' is a required property", "prompt"));
    }
    let adapter = resolve(s, &body, track).await?;
    let common: Common = parse(&body)?;
    let c: CompletionBody = parse(&body)?;
    if c.echo == Some(true) {
        return Err(ApiError::bad("echo is not supported", "echo"));
    }
    let prompt = match c.prompt {
        PromptSpec::Text(t) => encode(s, &t, true)?,
        PromptSpec::Texts(v) if v.len() == 1 => encode(s, &v[0], true)?,
        PromptSpec::Texts(_) => {
            return Err(ApiError::bad(
                "only one prompt per request is supported",
                "prompt",
            ));
        }
        PromptSpec::Tokens(ids) => {
            let vocab = s.tokenizer.vocab_size() as i64;
            if ids.iter().any(|&i| i < 0 || i >= vocab) {
                return Err(ApiError::bad("prompt token id out of range", "prompt"));
            }
            ids
        }
    };
    let mut job = parse_common(&common, prompt.len(), s.max_seq)?;
    job.prompt = prompt;
    if let Some(k) = c.logprobs {
        if !(0..=20).contains(&k) {
            return Err(ApiError::bad(
                "logprobs must be between 0 and 20",
                "logprobs",
            ));
        }
        job.logprobs = Some(k as usize);
    }
    Ok(Prepared {
        job,
        adapter,
        model: track.model.clone(),
    })
}

// ---------------------------------------------------------------- responses

fn chat_logprobs(g: &Generation, tokens: &[TokenOut]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = g.token_text(id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = Value::Array(t.top.iter().map(|&(i, l)| entry(i, l)).collect());
            e
        })
        .collect();
    json!({"content": content})
}

fn completion_logprobs(g: &Generation, tokens: &[TokenOut], offset: usize) -> Value {
    let mut off = offset;
    let mut toks = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offs = Vec::new();
    for t in tokens {
        let text = g.token_text(t.id);
        offs.push(off);
        off += text.len();
        toks.push(text);
        lps.push(t.logprob);
        let mut m = serde_json::Map::new();
        for &(i, l) in &t.top {
            // Distinct tokens can share a text (partial UTF-8): keep the most likely.
            m.entry(g.token_text(i)).or_insert(json!(l));
        }
        tops.push(Value::Object(m));
    }
    json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

impl Prepared {
    async fn respond(self, s: Shared, track: Track, chat: bool) -> Response {
        let model = self.model.clone();
        let mut g = match Generation::start(&s, &self.job, self.adapter, track).await {
            Ok(g) => g,
            Err((e, mut track)) => return track.fail(e).into_response(),
        };
        let logprobs = self.job.logprobs.is_some();
        let id = request_id(if chat { "chatcmpl" } else { "cmpl" });
        let created = now();
        if !self.job.stream {
            let mut text = String::new();
            let mut tokens = Vec::new();
            let mut finish = "stop";
            while let Some(p) = g.next().await {
                match p {
                    Ok(p) => {
                        text.push_str(&p.text);
                        tokens.extend(p.tokens);
                        if let Some(f) = p.finish {
                            finish = f;
                        }
                    }
                    Err(e) => {
                        g.track.status = Some(e.status());
                        return e.into_response();
                    }
                }
            }
            g.track.status = Some(StatusCode::OK);
            let body = if chat {
                let lp = if logprobs {
                    chat_logprobs(&g, &tokens)
                } else {
                    Value::Null
                };
                json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": lp, "finish_reason": finish}],
                    "usage": g.usage(),
                })
            } else {
                let lp = if logprobs {
                    completion_logprobs(&g, &tokens, 0)
                } else {
                    Value::Null
                };
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
                    "usage": g.usage(),
                })
            };
            return axum::Json(body).into_response();
        }
        // Streaming: status 200 is committed now; a later failure is an SSE error event.
        g.track.status = Some(StatusCode::OK);
        let include_usage = self.job.include_usage;
        let chunk = move |choice: Value, usage: Option<Value>| -> Value {
            let mut v = if chat {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]})
            } else {
                json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [choice]})
            };
            if let Some(u) = usage {
                v["choices"] = json!([]);
                v["usage"] = u;
            }
            v
        };
        enum Phase {
            Start,
            Body,
            Usage,
            Done,
            End,
        }
        struct St<F> {
            g: Generation,
            phase: Phase,
            chunk: F,
            offset: usize,
        }
        let st = St {
            g,
            phase: if chat { Phase::Start } else { Phase::Body },
            chunk,
            offset: 0,
        };
        let data = |v: Value| SseEvent::default().data(v.to_string());
        let stream = futures::stream::unfold(st, move |mut st| async move {
            let ev = match st.phase {
                Phase::Start => {
                    st.phase = Phase::Body;
                    data((st.chunk)(
                        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
                        None,
                    ))
                }
                Phase::Body => match st.g.next().await {
                    None => {
                        st.phase = if include_usage {
                            Phase::Usage
                        } else {
                            Phase::Done
                        };
                        return Some((Ok::<_, Infallible>(SseEvent::default().comment("")), st));
                    }
                    Some(Ok(p)) => {
                        if p.finish.is_some() {
                            st.phase = if include_usage {
                                Phase::Usage
                            } else {
                                Phase::Done
                            };
                        }
                        let choice = if chat {
                            let lp = if logprobs {
                                chat_logprobs(&st.g, &p.tokens)
                            } else {
                                Value::Null
                            };
                            let delta = if p.text.is_empty() && p.finish.is_some() {
                                json!({})
                            } else {
                                json!({"content": p.text})
                            };
                            json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": p.finish})
                        } else {
                            let lp = if logprobs {
                                completion_logprobs(&st.g, &p.tokens, st.offset)
                            } else {
                                Value::Null
                            };
                            json!({"index": 0, "text": p.text, "logprobs": lp, "finish_reason": p.finish})
                        };
                        st.offset += p.text.len();
                        data((st.chunk)(choice, None))
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "generation failed mid-stream");
                        st.phase = Phase::Done;
                        data(e.body())
                    }
                },
                Phase::Usage => {
                    st.phase = Phase::Done;
                    let usage = st.g.usage();
                    data((st.chunk)(Value::Null, Some(usage)))
                }
                Phase::Done => {
                    st.phase = Phase::End;
                    SseEvent::default().data("[DONE]")
                }
                Phase::End => return None,
            };
            Some((Ok(ev), st))
        });
        Sse::new(stream).into_response()
    }
}
