//! Streamed responses (`stream: true`): OpenAI's SSE chunks, `data: [DONE]` at the end, a usage
//! chunk with `stream_options.include_usage`. Status 200 is committed with the first byte, so a
//! failure after it (the engine died, a forward pass failed) is sent as an SSE event carrying the
//! error body, then `[DONE]`.

use std::convert::Infallible;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::completions::{Endpoint, chat_logprobs, completion_logprobs, now, request_id, usage};
use super::openai::Job;
use super::track::Track;
use crate::generation::Generation;

#[derive(Clone, Copy)]
enum Phase {
    /// Chat opens with the assistant role.
    Role,
    Body,
    Usage,
    Done,
    End,
}

struct State {
    g: Generation,
    track: Track,
    phase: Phase,
    /// Bytes of text sent so far (completions' `text_offset`).
    offset: usize,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

pub fn respond(job: Job, endpoint: Endpoint, g: Generation, mut track: Track) -> Response {
    track.status = Some(StatusCode::OK);
    let id = request_id(endpoint);
    let created = now();
    let model = job.model.clone();
    let logprobs = job.logprobs.is_some();
    let include_usage = job.include_usage;
    let chunk = move |choices: Value| -> Value {
        let object = match endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        json!({"id": id, "object": object, "created": created, "model": model, "choices": choices})
    };
    let after_body = if include_usage {
        Phase::Usage
    } else {
        Phase::Done
    };
    let st = State {
        g,
        track,
        phase: match endpoint {
            Endpoint::Chat => Phase::Role,
            Endpoint::Completions => Phase::Body,
        },
        offset: 0,
    };
    let stream = futures::stream::unfold((st, after_body), move |(mut st, after_body)| {
        let chunk = chunk.clone();
        async move {
            let ev = match st.phase {
                Phase::Role => {
                    st.phase = Phase::Body;
                    data(&chunk(
                        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": null, "finish_reason": null}]),
                    ))
                }
                Phase::Body => match st.g.next().await {
                    None => {
                        st.phase = after_body;
                        // Nothing to send: a comment keeps the stream moving.
                        SseEvent::default().comment("")
                    }
                    Some(Ok(p)) => {
                        st.track.tokens(p.tokens.len());
                        if p.finish.is_some() {
                            st.phase = after_body;
                        }
                        let choice = match endpoint {
                            Endpoint::Chat => {
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
                            }
                            Endpoint::Completions => {
                                let lp = if logprobs {
                                    completion_logprobs(&st.g, &p.tokens, st.offset)
                                } else {
                                    Value::Null
                                };
                                json!({"index": 0, "text": p.text, "logprobs": lp, "finish_reason": p.finish})
                            }
                        };
                        st.offset += p.text.len();
                        data(&chunk(json!([choice])))
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "generation failed mid-stream");
                        // The response status is already 200: the metric records the failure.
                        st.track.status = Some(e.status());
                        st.phase = Phase::Done;
                        data(&serde_json::to_value(e.body()).unwrap_or(Value::Null))
                    }
                },
                Phase::Usage => {
                    st.phase = Phase::Done;
                    let mut v = chunk(json!([]));
                    v["usage"] = usage(&st.g);
                    data(&v)
                }
                Phase::Done => {
                    st.phase = Phase::End;
                    SseEvent::default().data("[DONE]")
                }
                Phase::End => return None,
            };
            Some((Ok::<_, Infallible>(ev), (st, after_body)))
        }
    });
    Sse::new(stream).into_response()
}
