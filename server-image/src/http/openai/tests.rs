use serde_json::json;

use super::*;
use crate::http::extract::parse;

fn chat(body: Value) -> Result<Job, ApiError> {
    parse::<ChatCompletionRequest>(body.to_string().as_bytes())?.validate()
}

fn completion(body: Value) -> Result<Job, ApiError> {
    parse::<CompletionRequest>(body.to_string().as_bytes())?.validate(100)
}

fn param(e: &ApiError) -> Option<String> {
    e.body().error.param
}

#[test]
fn a_plain_chat_request_becomes_a_job() {
    let j = chat(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "temperature": 0, "max_completion_tokens": 5, "stop": "\n",
                        "stream": true, "stream_options": {"include_usage": true},
                        "logprobs": true, "top_logprobs": 2, "seed": 7, "user": "u",
                        "n": 1, "presence_penalty": 0, "response_format": {"type": "text"},
                        "tools": [], "tool_choice": "none", "parallel_tool_calls": true}),
    )
    .expect("valid");
    assert_eq!(j.model, "m");
    assert_eq!(j.prompt, Prompt::Chat(vec![ChatMessage::new("user", "hi")]));
    assert_eq!(j.max_tokens, Some(5));
    assert_eq!(j.stops, vec!["\n".to_string()]);
    assert_eq!(j.logprobs, Some(2));
    assert!(j.stream && j.include_usage);
    assert_eq!(
        j.sampling,
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(7)
        }
    );
}

#[test]
fn unsupported_chat_parameters_are_refused_by_name() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let cases = [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("tool_choice", json!("auto")),
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!({"name": "f"})),
        ("response_format", json!({"type": "json_object"})),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("logit_bias", json!({"50256": -100})),
        ("n", json!(2)),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("reasoning_effort", json!("high")),
        ("web_search_options", json!({"search_context_size": "low"})),
        ("store", json!(true)),
        ("service_tier", json!("flex")),
        ("top_k", json!(40)),
    ];
    for (name, value) in cases {
        let mut body = base();
        body[name] = value;
        let e = chat(body).expect_err(name);
        assert_eq!(e.status().as_u16(), 400, "{name}: {e:?}");
        assert_eq!(param(&e).as_deref(), Some(name), "{name}: {e:?}");
        assert_eq!(
            e.body().error.code,
            Some(tailor_wire::server::ErrorCode::Name(
                "unsupported_parameter".into()
            )),
            "{name}"
        );
    }
    let e = chat(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}),
    )
    .expect_err("image");
    assert_eq!(param(&e).as_deref(), Some("messages[0].content[1].type"));
    let e = chat(
        json!({"model": "m", "messages": [{"role": "tool", "content": "r", "tool_call_id": "1"}]}),
    )
    .expect_err("tool role");
    assert_eq!(param(&e).as_deref(), Some("messages[0].role"));
}

#[test]
fn unsupported_completion_parameters_are_refused_by_name() {
    for (name, value) in [
        ("echo", json!(true)),
        ("best_of", json!(3)),
        ("suffix", json!("end")),
        ("n", json!(4)),
        ("frequency_penalty", json!(1)),
        ("logit_bias", json!({"1": 5})),
        ("prompt", json!(["a", "b"])),
        ("mystery", json!(1)),
    ] {
        let mut body = json!({"model": "m", "prompt": "hi"});
        body[name] = value;
        let e = completion(body).expect_err(name);
        assert_eq!(param(&e).as_deref(), Some(name), "{name}: {e:?}");
    }
    // Neutral values ask for nothing and pass.
    completion(
        json!({"model": "m", "prompt": "hi", "echo": false, "best_of": 1,
                      "suffix": null, "presence_penalty": 0.0, "logit_bias": {}}),
    )
    .expect("neutral values");
}

#[test]
fn invalid_values_name_their_field() {
    let msg = json!([{"role": "user", "content": "hi"}]);
    for (body, want) in [
        (json!({"messages": msg}), "model"),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": []}), "messages"),
        (json!({"model": "m", "messages": "hi"}), "messages"),
        (
            json!({"model": "m", "messages": msg, "temperature": 7}),
            "temperature",
        ),
        (
            json!({"model": "m", "messages": msg, "temperature": "hot"}),
            "temperature",
        ),
        (json!({"model": "m", "messages": msg, "top_p": 0}), "top_p"),
        (
            json!({"model": "m", "messages": msg, "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": msg, "max_completion_tokens": -1}),
            "max_completion_tokens",
        ),
        (
            json!({"model": "m", "messages": msg, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (json!({"model": "m", "messages": msg, "stop": [""]}), "stop"),
        (json!({"model": "m", "messages": msg, "n": 0}), "n"),
        (
            json!({"model": "m", "messages": msg, "top_logprobs": 3}),
            "top_logprobs",
        ),
        (
            json!({"model": "m", "messages": msg, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"model": "m", "messages": msg, "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
    ] {
        let e = chat(body.clone()).expect_err("invalid");
        assert_eq!(e.status().as_u16(), 400, "{body}");
        assert_eq!(param(&e).as_deref(), Some(want), "{body}: {e:?}");
    }
    let e = completion(json!({"model": "m", "prompt": [1, 100]})).expect_err("token range");
    assert_eq!(param(&e).as_deref(), Some("prompt"));
    let e = completion(json!({"model": "m"})).expect_err("no prompt");
    assert_eq!(param(&e).as_deref(), Some("prompt"));
}

#[test]
fn the_context_fits_or_the_error_names_the_limit() {
    assert_eq!(fit_context(10, None, 64, "prompt"), Ok(54));
    assert_eq!(fit_context(10, Some(4), 64, "prompt"), Ok(4));
    for (len, max) in [(64, None), (10, Some(60))] {
        let e = fit_context(len, max, 64, "messages").expect_err("too long");
        assert!(e.to_string().contains("64 tokens"), "{e}");
        assert_eq!(param(&e).as_deref(), Some("messages"));
    }
    assert!(fit_context(0, None, 64, "prompt").is_err());
}
