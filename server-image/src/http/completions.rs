//! `POST /v1/chat/completions` and `POST /v1/completions`: a validated job is resolved to the
//! base model or an adapter, tokenized, fitted to the context, handed to the engine, and
//! answered as one JSON body or (with `stream`) as SSE.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::extract::ApiJson;
use super::openai::{ChatCompletionRequest, CompletionRequest, Job, Prompt, fit_context};
use super::track::Track;
use crate::adapters::LookupError;
use crate::engine::{AdapterRef, GenRequest, TokenOut};
use crate::error::ApiError;
use crate::generation::Generation;

/// Which endpoint a job came from: it shapes the prompt and the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

pub async fn chat(
    State(s): State<Shared>,
    body: Result<ApiJson<ChatCompletionRequest>, ApiError>,
) -> Response {
    let job = body.and_then(|ApiJson(r)| r.validate());
    handle(s, job, Endpoint::Chat).await
}

pub async fn completions(
    State(s): State<Shared>,
    body: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Response {
    let vocab = s.tokenizer.vocab_size();
    let job = body.and_then(|ApiJson(r)| r.validate(vocab));
    handle(s, job, Endpoint::Completions).await
}

async fn handle(s: Shared, job: Result<Job, ApiError>, endpoint: Endpoint) -> Response {
    let mut track = match Track::start(&s) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let job = match job {
        Ok(j) => j,
        Err(e) => return track.fail(e).into_response(),
    };
    if let Some(content) = fixed_response(&s, &job, endpoint) {
        track.model = job.model.clone();
        return Json(json!({
            "id": request_id(endpoint),
            "object": "chat.completion",
            "created": now(),
            "model": job.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }))
        .into_response();
    }
    match start(&s, &job, endpoint, &mut track).await {
        Ok(generation) => respond(job, endpoint, generation, track).await,
        Err(e) => track.fail(e).into_response(),
    }
}

/// TEST-ONLY: the next fixed answer, where fault injection gives fixed responses for this
/// model and the request is a non-streamed chat completion.
fn fixed_response(s: &Shared, job: &Job, endpoint: Endpoint) -> Option<String> {
    let fault = s.fault();
    if fault.fixed_responses.is_empty()
        || endpoint != Endpoint::Chat
        || job.stream
        || !fault.targets(&job.model)
    {
        return None;
    }
    let n = s
        .fixed_served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fault
        .fixed_responses
        .get(n % fault.fixed_responses.len())
        .cloned()
}

/// The adapter `model` names (`None`: the base model), loaded if need be.
async fn resolve(
    s: &Shared,
    model: &str,
    track: &mut Track,
) -> Result<Option<AdapterRef>, ApiError> {
    if model == s.served_name() {
        track.model = model.to_string();
        return Ok(None);
    }
    match s.registry.get(model).await {
        Ok(a) => {
            track.model = model.to_string();
            Ok(Some(a))
        }
        Err(LookupError::Unknown(_)) => Err(ApiError::ModelNotFound(model.into())),
        Err(LookupError::Load(e)) => {
            track.model = model.to_string();
            Err(ApiError::Internal(format!(
                "adapter {model} cannot be loaded: {e}"
            )))
        }
    }
}

fn tokenize(s: &Shared, prompt: &Prompt) -> Result<Vec<i64>, ApiError> {
    let (text, special) = match prompt {
        Prompt::Tokens(ids) => return Ok(ids.clone()),
        Prompt::Text(t) => (t.clone(), true),
        Prompt::Chat(messages) => {
            let text = match &s.template {
                Some(t) => t
                    .render(messages, true)
                    .map_err(|e| ApiError::bad(e.to_string(), "messages"))?,
                None => {
                    let mut t = String::new();
                    for m in messages {
                        t.push_str(&format!("{}: {}\n", m.role, m.content));
                    }
                    t.push_str("assistant: ");
                    t
                }
            };
            (text, false)
        }
    };
    s.tokenizer
        .encode(&text, special)
        .map(|ids| ids.into_iter().map(i64::from).collect())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Each choice as the tokens the answer must be (the choice's own tokenization, without
/// special tokens).
fn choice_tokens(s: &Shared, choices: &[String]) -> Result<Vec<Vec<i64>>, ApiError> {
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ids: Vec<i64> = s
                .tokenizer
                .encode(c, false)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .into_iter()
                .map(i64::from)
                .collect();
            if ids.is_empty() {
                return Err(ApiError::bad(
                    format!("choice {i} ({c:?}) has no tokens in this model's vocabulary"),
                    "structured_outputs.choice",
                ));
            }
            Ok(ids)
        })
        .collect()
}

/// Everything between a valid job and the first token: availability, model, fault injection,
/// tokenization, context, and the hand-over to the engine.
async fn start(
    s: &Shared,
    job: &Job,
    endpoint: Endpoint,
    track: &mut Track,
) -> Result<Generation, ApiError> {
    if let Some(why) = s.health.unavailable() {
        return Err(ApiError::Unavailable(why));
    }
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let adapter = resolve(s, &job.model, track).await?;
    let fault = s.fault();
    if fault.applies(&job.model) && rand::rng().random::<f64>() < fault.error_rate {
        return Err(ApiError::FaultInjected);
    }
    let prompt = tokenize(s, &job.prompt)?;
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    let max_tokens = fit_context(prompt.len(), job.max_tokens, s.max_seq, param)?;
    let choices = match &job.choices {
        Some(c) => Some(choice_tokens(s, c)?),
        None => None,
    };
    let prompt_tokens = prompt.len();
    let (tx, rx) = mpsc::unbounded_channel();
    let adapter_name = adapter.as_ref().map(|a| a.name.clone());
    let req = GenRequest {
        prompt,
        adapter,
        max_tokens,
        sampling: job.sampling,
        logprobs: job.logprobs,
        ignore_eos: job.ignore_eos,
        choices,
        tx,
    };
    s.stats.submitted(adapter_name.as_deref());
    if s.engine.send(req).await.is_err() {
        s.stats.dequeued(adapter_name.as_deref());
        let why = s
            .health
            .unavailable()
            .unwrap_or_else(|| "the inference engine has stopped".into());
        return Err(ApiError::Unavailable(why));
    }
    track.prompt_tokens(prompt_tokens);
    Ok(Generation::new(
        s.tokenizer.clone(),
        s.health.clone(),
        rx,
        job.stops.clone(),
        prompt_tokens,
    ))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn request_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    format!("{prefix}-{:032x}", rand::rng().random::<u128>())
}

pub fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    })
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(g: &Generation, tokens: &[TokenOut]) -> Value {
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

/// Completions logprobs: parallel lists, the alternatives keyed by token text.
pub fn completion_logprobs(g: &Generation, tokens: &[TokenOut], offset: usize) -> Value {
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

async fn respond(job: Job, endpoint: Endpoint, mut g: Generation, mut track: Track) -> Response {
    if job.stream {
        return super::stream::respond(job, endpoint, g, track);
    }
    let id = request_id(endpoint);
    let created = now();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish = "stop";
    while let Some(p) = g.next().await {
        match p {
            Ok(p) => {
                track.tokens(p.tokens.len());
                text.push_str(&p.text);
                tokens.extend(p.tokens);
                if let Some(f) = p.finish {
                    finish = f;
                }
            }
            Err(e) => return track.fail(e).into_response(),
        }
    }
    track.status = Some(StatusCode::OK);
    let body = match endpoint {
        Endpoint::Chat => {
            let lp = match job.logprobs {
                Some(_) => chat_logprobs(&g, &tokens),
                None => Value::Null,
            };
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": job.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": lp, "finish_reason": finish}],
                "usage": usage(&g),
            })
        }
        Endpoint::Completions => {
            let lp = match job.logprobs {
                Some(_) => completion_logprobs(&g, &tokens, 0),
                None => Value::Null,
            };
            json!({
                "id": id, "object": "text_completion", "created": created, "model": job.model,
                "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
                "usage": usage(&g),
            })
        }
    };
    axum::Json(body).into_response()
}
