//! The router in process: `app(state)` over a real started server state (tiny checkpoints from
//! `tests/server_reference.py`, the real engine thread), requests through `tower::oneshot`.
//!
//! Size (over 700 lines, on purpose): one suite of the HTTP layer sharing one fixture: the tiny
//! checkpoints are built once per test binary (a Python run), and every case is requests and
//! answers against a server state started over them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Shared, app};
use crate::config::Cli;

fn python() -> PathBuf {
    let has = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import transformers, peft"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut c: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("TAILOR_PYTHON") {
        c.push(p.into());
    }
    c.push("python3".into());
    c.push(
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/tailor/venv/bin/python3"),
    );
    c.into_iter()
        .find(has)
        .expect("no python3 with transformers/peft: run `eval \"$(scripts/setup-libtorch.sh)\"`")
}

/// Tiny checkpoints, built once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // The run's manifest dir, as the integration tests read it: a test binary reused from a
        // shared target directory after the checkout moved keeps the old compile-time path.
        let manifest =
            std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)");
        let script = Path::new(&manifest).join("tests/server_reference.py");
        let out = Command::new(python())
            .arg(script)
            .arg("fixtures")
            .arg(dir.path())
            .output()
            .expect("run server_reference.py");
        assert!(
            out.status.success(),
            "fixtures failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

/// A started server state (engine loaded) with `args` on top of the fixture model.
async fn state(args: &[String]) -> Shared {
    let base = fixtures().join("base");
    let mut argv: Vec<String> = [
        "tailor-server",
        "--model",
        &base.display().to_string(),
        "--served-model-name",
        "base",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !args.iter().any(|a| a == "--max-seq-length") {
        argv.extend(["--max-seq-length".to_string(), "128".to_string()]);
    }
    argv.extend(args.iter().cloned());
    started(Cli::try_parse_from(argv).expect("cli")).await
}

/// The state of a server started with `cli`, once its engine serves.
async fn started(cli: Cli) -> Shared {
    let started = crate::serve::start(&cli).expect("start");
    let s = started.state;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while !s.health.is_serving() {
        assert!(tokio::time::Instant::now() < end, "engine never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

async fn call(
    s: &Shared,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app(s.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn post(s: &Shared, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call(s, "POST", path, Some(body), None).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_openai_parameters_get_a_400_naming_them() {
    let s = state(&[]).await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (endpoint, field, value) in [
        (
            "/v1/chat/completions",
            "tools",
            json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ),
        ("/v1/chat/completions", "tool_choice", json!("required")),
        (
            "/v1/chat/completions",
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
        ),
        ("/v1/chat/completions", "presence_penalty", json!(1.5)),
        ("/v1/chat/completions", "frequency_penalty", json!(0.2)),
        ("/v1/chat/completions", "logit_bias", json!({"7": 10})),
        ("/v1/chat/completions", "n", json!(3)),
        ("/v1/chat/completions", "functions", json!([{"name": "f"}])),
        ("/v1/completions", "n", json!(2)),
        ("/v1/completions", "echo", json!(true)),
        ("/v1/completions", "best_of", json!(2)),
        ("/v1/completions", "presence_penalty", json!(2)),
        ("/v1/completions", "top_k", json!(5)),
    ] {
        let mut body = if endpoint.contains("chat") {
            json!({"model": "base", "messages": msgs, "max_tokens": 2})
        } else {
            json!({"model": "base", "prompt": "hi", "max_tokens": 2})
        };
        body[field] = value;
        let (status, b) = post(&s, endpoint, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint} {field}: {b}");
        assert_eq!(b["error"]["param"], field, "{endpoint} {field}: {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{b}"
        );
    }
    // The same requests without the parameter succeed.
    let (status, b) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "base", "messages": msgs, "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    // Refusals are counted under the model they named... once it is known (`unknown` before).
    let (_, metrics) = call(&s, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("tailor_server_requests_total{model=\"unknown\",status=\"400\"} 13"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_end_the_text_before_them() {
    let s = state(&[]).await;
    let ask = |stop: Value, stream: bool| {
        json!({"model": "base", "prompt": "the quick brown fox", "max_tokens": 24,
               "temperature": 0, "ignore_eos": true, "stop": stop, "stream": stream})
    };
    let (status, b) = post(&s, "/v1/completions", ask(Value::Null, false)).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let full = b["choices"][0]["text"].as_str().expect("text").to_string();
    assert!(full.chars().count() >= 8, "{full:?}");
    // A stop string from the middle of the greedy output, likely spanning tokens.
    let chars: Vec<char> = full.chars().collect();
    let start = chars.len() / 3;
    let stop: String = chars[start..start + 3].iter().collect();
    let cut = &full[..full.find(&stop).expect("in output")];
    let (status, b) = post(&s, "/v1/completions", ask(json!([stop.clone()]), false)).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["choices"][0]["text"], cut, "stop {stop:?} in {full:?}");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    // Streamed: the same text in pieces, and the stop string never shows.
    let (status, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(ask(json!(stop.clone()), true)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut streamed = String::new();
    let mut finish = Value::Null;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(line).expect("chunk");
        streamed.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
        if !v["choices"][0]["finish_reason"].is_null() {
            finish = v["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(streamed, cut);
    assert_eq!(finish, "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lora_api_answers_as_vllm_does() {
    let root = tempfile::tempdir().expect("tempdir");
    for a in ["a0", "a1", "other"] {
        let dst = root.path().join(a);
        std::fs::create_dir_all(&dst).expect("mkdir");
        for f in std::fs::read_dir(fixtures().join(a)).expect("read_dir") {
            let f = f.expect("entry").path();
            if f.is_file() {
                std::fs::copy(&f, dst.join(f.file_name().expect("name"))).expect("copy");
            }
        }
    }
    let outside = fixtures().join("a2");
    let s = state(&["--adapter-root".into(), root.path().display().to_string()]).await;
    let load = |name: &str, path: &Path| json!({"lora_name": name, "lora_path": path.display().to_string()});
    let lora = |s: &Shared, path: &'static str, body: Value| {
        let s = s.clone();
        async move { call(&s, "POST", path, Some(body), None).await }
    };
    // Success: 200, vLLM's text.
    let (status, text) = lora(
        &s,
        "/v1/load_lora_adapter",
        load("sql", &root.path().join("a0")),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::OK,
            "Success: LoRA adapter 'sql' added successfully."
        )
    );
    // Duplicate name: 400 InvalidUserInput.
    let (status, text) = lora(
        &s,
        "/v1/load_lora_adapter",
        load("sql", &root.path().join("a1")),
    )
    .await;
    let b: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        b["error"],
        json!({"message": "The lora adapter 'sql' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.",
               "type": "InvalidUserInput", "param": null, "code": 400})
    );
    // In place: replaced.
    let mut inplace = load("sql", &root.path().join("a1"));
    inplace["load_inplace"] = json!(true);
    let (status, _) = lora(&s, "/v1/load_lora_adapter", inplace).await;
    assert_eq!(status, StatusCode::OK);
    // Missing fields: 400, vLLM's text.
    let (status, text) = lora(&s, "/v1/load_lora_adapter", json!({"lora_name": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("Both 'lora_name' and 'lora_path' must be provided."),
        "{text}"
    );
    // Nothing at the path, or a path outside the roots (existing or not): the same 404.
    for path in [
        root.path().join("nothing"),
        outside.clone(),
        PathBuf::from("/etc"),
    ] {
        let (status, text) = lora(&s, "/v1/load_lora_adapter", load("x", &path)).await;
        let b: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert_eq!(
            b["error"],
            json!({"message": format!("Loading lora x failed: No adapter found for {}", path.display()),
                   "type": "NotFoundError", "param": null, "code": 404})
        );
    }
    // An adapter for another base model: 400, and nothing registered.
    let (status, text) = lora(
        &s,
        "/v1/load_lora_adapter",
        load("other", &root.path().join("other")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("different base model") && text.contains("BadRequestError"),
        "{text}"
    );
    // /v1/models lists the adapter as vLLM does: id, root (its path), parent (the base).
    let (_, text) = call(&s, "GET", "/v1/models", None, None).await;
    let models: tailor_wire::server::ModelList = serde_json::from_str(&text).expect("model list");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["base", "sql"]);
    assert_eq!(models.data[0].parent, None);
    assert_eq!(models.data[0].max_model_len, Some(128));
    assert_eq!(models.data[1].parent.as_deref(), Some("base"));
    assert_eq!(
        models.data[1].root,
        Some(root.path().join("a1").display().to_string())
    );
    let (status, b) = post(
        &s,
        "/v1/completions",
        json!({"model": "sql", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    // Unload: 200, then 404 for the name everywhere.
    let (status, text) = lora(&s, "/v1/unload_lora_adapter", json!({"lora_name": "sql"})).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::OK,
            "Success: LoRA adapter 'sql' removed successfully."
        )
    );
    let (status, text) = lora(&s, "/v1/unload_lora_adapter", json!({"lora_name": "sql"})).await;
    let b: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        b["error"],
        json!({"message": "The lora adapter 'sql' cannot be found.", "type": "NotFoundError", "param": null, "code": 404})
    );
    let (status, _) = lora(&s, "/v1/unload_lora_adapter", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, b) = post(
        &s,
        "/v1/completions",
        json!({"model": "sql", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{b}");
    // The deprecated admin API sees the same registry and the same roots.
    let (status, b) = post(
        &s,
        "/admin/adapters",
        json!({"name": "old", "path": outside}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("No adapter found")),
        "{b}"
    );
    let (status, b) = post(
        &s,
        "/admin/adapters",
        json!({"name": "old", "path": root.path().join("a0")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (_, text) = call(&s, "GET", "/admin/adapters", None, None).await;
    let listed: Vec<tailor_wire::server::AdapterStatus> =
        serde_json::from_str(&text).expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].loaded && listed[0].name == "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_inference_lora_and_admin_apis_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# tenants\nsecret-one\n").expect("write");
    let s = state(&["--api-key-file".into(), keys.display().to_string()]).await;
    for (method, path, body) in [
        ("GET", "/v1/models", None),
        (
            "POST",
            "/v1/completions",
            Some(json!({"model": "base", "prompt": "hi", "max_tokens": 1})),
        ),
        (
            "POST",
            "/v1/load_lora_adapter",
            Some(json!({"lora_name": "a", "lora_path": "/x"})),
        ),
        (
            "POST",
            "/v1/unload_lora_adapter",
            Some(json!({"lora_name": "a"})),
        ),
        ("GET", "/admin/adapters", None),
    ] {
        let (status, text) = call(&s, method, path, body.clone(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {text}");
        assert!(text.contains("invalid_api_key"), "{text}");
        let (status, _) = call(&s, method, path, body.clone(), Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, text) = call(&s, method, path, body, Some("secret-one")).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}: {text}");
    }
    for path in ["/health", "/ready", "/metrics"] {
        let (status, _) = call(&s, "GET", path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_bound_get_a_429() {
    let s = state(&[
        "--max-in-flight".into(),
        "1".into(),
        "--max-seq-length".into(),
        "4096".into(),
    ])
    .await;
    // One long generation holds the only slot.
    let long = tokio::spawn({
        let s = s.clone();
        async move {
            post(
                &s,
                "/v1/completions",
                json!({"model": "base", "prompt": "hello", "max_tokens": 3000,
                                               "ignore_eos": true, "temperature": 0}),
            )
            .await
        }
    });
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while s.stats.running.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < end && !long.is_finished(),
            "the long request never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, b) = post(
        &s,
        "/v1/completions",
        json!({"model": "base", "prompt": "hi", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(b["error"]["code"], "rate_limit_exceeded", "{b}");
    assert_eq!(b["error"]["type"], "requests", "{b}");
    assert!(
        !long.is_finished(),
        "the long request ended before the refusal"
    );
    long.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_choice_answers_exactly_one_of_the_choices() {
    let s = state(&[]).await;
    let prompt = "the quick brown fox";
    let ask = |extra: Value| {
        let mut b = json!({"model": "base", "prompt": prompt, "max_tokens": 24, "temperature": 0,
                           "ignore_eos": true});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    // The model's next-token distribution: among single-token choices, constrained greedy
    // decoding must pick the one the model finds likeliest, wherever it is in the list.
    let (status, b) = post(
        &s,
        "/v1/completions",
        ask(json!({"max_tokens": 1, "logprobs": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let mut ranked: Vec<(String, f64)> = b["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .expect("top logprobs")
        .iter()
        .map(|(t, lp)| (t.clone(), lp.as_f64().expect("logprob")))
        .filter(|(t, _)| {
            // Choices are tokenized on their own: keep the tokens that are one token that way.
            s.tokenizer.encode(t, false).ok().is_some_and(|ids| {
                ids.len() == 1 && s.tokenizer.decode(&ids, false).ok().as_deref() == Some(t)
            })
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert!(
        ranked.len() >= 3,
        "too few clean tokens among the top 20: {b}"
    );
    let (first, second, third) = (&ranked[0].0, &ranked[1].0, &ranked[2].0);
    for (choices, expected) in [
        (vec![third, first, second], first),
        (vec![third, second], second),
    ] {
        let (status, b) = post(
            &s,
            "/v1/completions",
            ask(json!({"structured_outputs": {"choice": choices}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{b}");
        assert_eq!(
            b["choices"][0]["text"],
            expected.as_str(),
            "{ranked:?}: {b}"
        );
        assert_eq!(b["choices"][0]["finish_reason"], "stop", "{b}");
    }
    let verdicts = [
        r#"{"winner": "A"}"#,
        r#"{"winner": "B"}"#,
        r#"{"winner": "tie"}"#,
    ];
    // Without it, the answer is still exactly one of the choices (the model, left alone,
    // writes none of them), on both endpoints, both spellings, greedy or sampled, streamed.
    let chat = json!([{"role": "user", "content": "which answer is better?"}]);
    for (endpoint, extra) in [
        (
            "/v1/completions",
            json!({"structured_outputs": {"choice": verdicts}}),
        ),
        ("/v1/completions", json!({"guided_choice": verdicts})),
        (
            "/v1/chat/completions",
            json!({"messages": chat, "structured_outputs": {"choice": verdicts}}),
        ),
        (
            "/v1/completions",
            json!({"guided_choice": verdicts, "temperature": 1.0, "seed": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": chat, "guided_choice": verdicts, "temperature": 1.0, "seed": 5}),
        ),
    ] {
        let mut body = ask(extra.clone());
        if endpoint.contains("chat") {
            body.as_object_mut().expect("object").remove("prompt");
        }
        let (status, b) = post(&s, endpoint, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{endpoint} {extra}: {b}");
        let choice = &b["choices"][0];
        let text = choice["text"]
            .as_str()
            .or(choice["message"]["content"].as_str())
            .expect("text");
        assert!(verdicts.contains(&text), "{endpoint} {extra}: {text:?}");
        assert_eq!(choice["finish_reason"], "stop", "{b}");
        body["stream"] = json!(true);
        let (status, sse) = call(&s, "POST", endpoint, Some(body), None).await;
        assert_eq!(status, StatusCode::OK, "{sse}");
        let mut streamed = String::new();
        for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(line).expect("chunk");
            let c = &v["choices"][0];
            streamed.push_str(
                c["text"]
                    .as_str()
                    .or(c["delta"]["content"].as_str())
                    .unwrap_or_default(),
            );
        }
        assert_eq!(streamed, text, "{endpoint} {extra} streamed");
    }
    // Kinds it cannot do, and malformed choices, are refused naming the field.
    for (extra, param) in [
        (
            json!({"structured_outputs": {"json": {"type": "object"}}}),
            "structured_outputs.json",
        ),
        (
            json!({"structured_outputs": {"regex": "[a-z]+"}}),
            "structured_outputs.regex",
        ),
        (
            json!({"structured_outputs": {"choice": []}}),
            "structured_outputs.choice",
        ),
        (
            json!({"structured_outputs": {"choice": ["yes", 3]}}),
            "structured_outputs.choice",
        ),
        (json!({"guided_choice": ["yes", ""]}), "guided_choice"),
        (
            json!({"guided_choice": ["a"], "structured_outputs": {"choice": ["b"]}}),
            "guided_choice",
        ),
        (json!({"structured_outputs": "yes"}), "structured_outputs"),
    ] {
        let (status, b) = post(&s, "/v1/completions", ask(extra.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {b}");
        assert_eq!(b["error"]["param"], param, "{extra}: {b}");
    }
}

/// The adapters `GET /v1/models` lists.
async fn listed(s: &Shared, key: Option<&str>) -> Vec<String> {
    let (_, text) = call(s, "GET", "/v1/models", None, key).await;
    let models: tailor_wire::server::ModelList = serde_json::from_str(&text).expect("list");
    models.adapters().map(|m| m.id.clone()).collect()
}

/// Standing in for vLLM (`tailor-server serve`): vLLM's routes, probes, key and LoRA checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_vllm_serve_the_server_answers_as_vllm_does() {
    let base = fixtures().join("base").display().to_string();
    let serve = |extra: &[&str], env: &'static [(&'static str, &'static str)]| {
        let mut args: Vec<std::ffi::OsString> = [
            base.as_str(),
            "--served-model-name",
            "base",
            "--max-model-len",
            "128",
            "--api-key",
            "sk-vllm",
        ]
        .iter()
        .chain(extra)
        .map(Into::into)
        .collect();
        args.extend(["--host".into(), "127.0.0.1".into()]);
        crate::vllm::cli(args, move |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .expect("vllm serve flags")
    };
    let on = &[("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")];
    let s = started(serve(&["--enable-lora", "--max-lora-rank", "8"], on)).await;
    let key = Some("sk-vllm");
    // vLLM's probes and routes: /health once loaded; no /ready, no /admin/adapters; `/v1/*`
    // needs the key (VLLM_API_KEY or --api-key), /metrics does not.
    for (path, with_key, want) in [
        ("/health", None, StatusCode::OK),
        ("/ready", None, StatusCode::NOT_FOUND),
        ("/admin/adapters", key, StatusCode::NOT_FOUND),
        ("/v1/models", None, StatusCode::UNAUTHORIZED),
        ("/metrics", None, StatusCode::OK),
    ] {
        assert_eq!(
            call(&s, "GET", path, None, with_key).await.0,
            want,
            "{path}"
        );
    }
    let load = |name: &str, dir: &str| json!({"lora_name": name, "lora_path": fixtures().join(dir).display().to_string()});
    // Adapters load from wherever they are (no root confinement, as vLLM), up to the rank.
    let (status, text) = call(
        &s,
        "POST",
        "/v1/load_lora_adapter",
        Some(load("sql", "a1")),
        key,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(listed(&s, key).await, ["sql"]);

    // A rank above --max-lora-rank: vLLM's 400, and nothing listed (the caller may retry).
    let s = started(serve(&["--enable-lora", "--max-lora-rank", "1"], on)).await;
    let (status, text) = call(
        &s,
        "POST",
        "/v1/load_lora_adapter",
        Some(load("sql", "a0")),
        key,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("LoRA rank 4 is greater than max_lora_rank 1."),
        "{text}"
    );
    assert!(listed(&s, key).await.is_empty());

    // Without VLLM_ALLOW_RUNTIME_LORA_UPDATING the LoRA API does not exist.
    let s = started(serve(&["--enable-lora"], &[])).await;
    let (status, _) = call(
        &s,
        "POST",
        "/v1/load_lora_adapter",
        Some(load("sql", "a1")),
        key,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
