//! The real `tailor-server` binary on tiny random checkpoints (tests/server_reference.py), with
//! real clients: the official `openai` Python client, Hugging Face `transformers` + `peft` as the
//! numerical reference, and a real Prometheus server.
//!
//! Size (over 700 lines, on purpose): one suite, so the tiny checkpoints, the reference outputs and
//! Prometheus are made once per test process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

// ------------------------------------------------------------------ harness

fn python() -> PathBuf {
    let has = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import openai, transformers, peft"])
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
    c.into_iter().find(has).expect(
        "no python3 with openai/transformers/peft: run `eval \"$(scripts/setup-libtorch.sh)\"`",
    )
}

fn script(name: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"))
        .join("tests")
        .join(name)
}

/// Tiny checkpoints, built once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(python())
            .arg(script("server_reference.py"))
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

fn adapter_arg(name: &str) -> String {
    format!("{name}={}", fixtures().join(name).display())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Server {
    child: Option<Child>,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    async fn start(args: &[String]) -> Server {
        Self::start_with(args, &[], None).await
    }

    /// With extra environment variables, and stderr (the log) into `log` when given.
    async fn start_with(args: &[String], env: &[(String, String)], log: Option<&Path>) -> Server {
        let port = free_port();
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tailor-server"))
            .arg("--model")
            .arg(fixtures().join("base"))
            .args([
                "--served-model-name",
                "base",
                "--device",
                "cpu",
                "--threads",
                "1",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start tailor-server");
        let mut server = Server {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", server.url)).send().await
                && r.status() == 200
            {
                return server;
            }
            if let Some(c) = &mut server.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("tailor-server exited during startup: {status}");
            }
            assert!(
                tokio::time::Instant::now() < end,
                "tailor-server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Polls `f` until it returns Some, or panics after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() {
    let server = Server::start(&["--adapter".into(), adapter_arg("a0")]).await;
    let base = format!("{}/v1", server.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script("openai_client.py"))
            .args([base.as_str(), "base", "a0"])
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("JSON line");
    assert_eq!(seen["models"], json!(["a0", "base"]));
}

/// Greedy generations and top logprobs against transformers (+ peft), chat and completions,
/// base model and two adapters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_and_logprobs_match_transformers() {
    let server = Server::start(&[
        "--adapter".into(),
        adapter_arg("a0"),
        "--adapter".into(),
        adapter_arg("a1"),
    ])
    .await;
    let requests = json!([
        {"chat": true, "prompt": "hello world", "max_tokens": 12, "top_logprobs": 5},
        {"chat": false, "prompt": "the quick brown fox", "max_tokens": 12, "top_logprobs": 5},
        {"chat": false, "prompt": "How do I reset", "max_tokens": 8, "top_logprobs": 3},
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let req_path = dir.path().join("requests.json");
    std::fs::write(&req_path, requests.to_string()).expect("write");
    for model in ["base", "a0", "a1"] {
        let adapter = if model == "base" {
            "-".to_string()
        } else {
            fixtures().join(model).display().to_string()
        };
        let out = Command::new(python())
            .arg(script("server_reference.py"))
            .arg("generate")
            .arg(fixtures().join("base"))
            .arg(&adapter)
            .arg(&req_path)
            .output()
            .expect("run reference");
        assert!(
            out.status.success(),
            "reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference JSON");
        for (req, exp) in requests.as_array().expect("array").iter().zip(&expected) {
            let k = req["top_logprobs"].as_u64().unwrap_or(0) as usize;
            let (got_text, got_lps, got_tops, usage) = if req["chat"] == true {
                let (status, body) = server
                    .post(
                        "/v1/chat/completions",
                        &json!({"model": model, "messages": [{"role": "user", "content": req["prompt"]}],
                                "temperature": 0, "max_tokens": req["max_tokens"], "logprobs": true, "top_logprobs": k}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                let c = &body["choices"][0];
                let content = c["logprobs"]["content"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let lps: Vec<f64> = content
                    .iter()
                    .map(|t| t["logprob"].as_f64().unwrap_or(1.0))
                    .collect();
                let tops: Vec<Vec<f64>> = content
                    .iter()
                    .map(|t| {
                        t["top_logprobs"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| x["logprob"].as_f64().unwrap_or(1.0))
                                    .collect()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                (
                    c["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    lps,
                    tops,
                    body["usage"].clone(),
                )
            } else {
                let (status, body) = server
                    .post(
                        "/v1/completions",
                        &json!({"model": model, "prompt": req["prompt"], "temperature": 0,
                                "max_tokens": req["max_tokens"], "logprobs": k}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                let c = &body["choices"][0];
                let lps: Vec<f64> = c["logprobs"]["token_logprobs"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(1.0)).collect())
                    .unwrap_or_default();
                let tops: Vec<Vec<f64>> = c["logprobs"]["top_logprobs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| {
                                let mut v: Vec<f64> = m
                                    .as_object()
                                    .map(|o| o.values().filter_map(Value::as_f64).collect())
                                    .unwrap_or_default();
                                v.sort_by(|a, b| b.total_cmp(a));
                                v
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    c["text"].as_str().unwrap_or_default().to_string(),
                    lps,
                    tops,
                    body["usage"].clone(),
                )
            };
            let ctx = format!("model {model}, request {req}");
            assert_eq!(got_text, exp["text"].as_str().unwrap_or_default(), "{ctx}");
            let exp_ids = exp["ids"].as_array().map_or(0, Vec::len);
            assert_eq!(
                usage["completion_tokens"].as_u64(),
                Some(exp_ids as u64),
                "{ctx}"
            );
            assert_eq!(usage["prompt_tokens"], exp["prompt_tokens"], "{ctx}");
            let exp_lps: Vec<f64> = exp["logprobs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            assert_eq!(got_lps.len(), exp_lps.len(), "{ctx}");
            for (g, e) in got_lps.iter().zip(&exp_lps) {
                assert!(close(*g, *e, 1e-3), "{ctx}: logprob {g} vs {e}");
            }
            for (step, (g, e)) in got_tops
                .iter()
                .zip(exp["top"].as_array().expect("top"))
                .enumerate()
            {
                let e: Vec<f64> = e
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p[1].as_f64()).collect())
                    .unwrap_or_default();
                if req["chat"] == true {
                    assert_eq!(g.len(), k, "{ctx} step {step}");
                    for (gv, ev) in g.iter().zip(&e) {
                        assert!(
                            close(*gv, *ev, 1e-3),
                            "{ctx} step {step}: top {g:?} vs {e:?}"
                        );
                    }
                } else {
                    // Completions key top logprobs by token text, and byte tokens of partial
                    // UTF-8 all read U+FFFD: colliding entries collapse into one.
                    assert!(!g.is_empty() && g.len() <= k, "{ctx} step {step}");
                    assert!(
                        close(g[0], e[0], 1e-3),
                        "{ctx} step {step}: top {g:?} vs {e:?}"
                    );
                    for gv in g {
                        assert!(
                            e.iter().any(|ev| close(*gv, *ev, 1e-3)),
                            "{ctx} step {step}: top {g:?} vs {e:?}"
                        );
                    }
                }
            }
        }
    }
}

async fn greedy(server: &Server, model: &str, prompt: &str, max_tokens: u64) -> (String, Vec<f64>) {
    let (status, body) = server
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens, "logprobs": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let c = &body["choices"][0];
    let lps = c["logprobs"]["token_logprobs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    (c["text"].as_str().unwrap_or_default().to_string(), lps)
}

/// 16 concurrent requests across 4 adapters (plus rows of different lengths) return exactly what
/// each returns alone, and were really decoded together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_adapters_equal_alone() {
    let mut args = Vec::new();
    for a in ["a0", "a1", "a2", "a3"] {
        args.push("--adapter".to_string());
        args.push(adapter_arg(a));
    }
    let server = Server::start(&args).await;
    let prompts = [
        "hello world",
        "the quick brown fox jumps over",
        "How do I reset my password? Go to",
        "Thank you!",
    ];
    let jobs: Vec<(String, String, u64)> = (0..16)
        .map(|i| {
            (
                format!("a{}", i % 4),
                prompts[(i / 4 + i) % 4].to_string(),
                12 + (i as u64 % 5) * 3,
            )
        })
        .collect();
    let mut alone = Vec::new();
    for (m, p, n) in &jobs {
        alone.push(greedy(&server, m, p, *n).await);
    }
    let steps0 = server.metric("tailor_server_decode_steps").await;
    let rows0 = server.metric("tailor_server_decoded_rows").await;
    let together =
        futures::future::join_all(jobs.iter().map(|(m, p, n)| greedy(&server, m, p, *n))).await;
    let steps = server.metric("tailor_server_decode_steps").await - steps0;
    let rows = server.metric("tailor_server_decoded_rows").await - rows0;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.0, t.0, "request {i} ({:?}) text differs", jobs[i]);
        assert_eq!(a.1.len(), t.1.len(), "request {i}");
        for (x, y) in a.1.iter().zip(&t.1) {
            assert!(close(*x, *y, 1e-4), "request {i}: logprob {x} vs {y}");
        }
    }
    // The adapters differ from each other (else the test proves little).
    let distinct: std::collections::HashSet<&String> = alone.iter().map(|a| &a.0).collect();
    assert!(distinct.len() >= 8, "{alone:?}");
    assert!(
        steps > 0.0 && rows / steps > 2.0,
        "mean decode batch {rows}/{steps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_in_openai_shape() {
    let server = Server::start(&[
        "--max-seq-length".into(),
        "64".into(),
        "--max-body-bytes".into(),
        "4096".into(),
        "--adapter-root".into(),
        fixtures().display().to_string(),
    ])
    .await;
    let client = reqwest::Client::new();
    let raw = |path: &str, body: String, ct: &str| {
        client
            .post(format!("{}{path}", server.url))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let check = |status: u16, body: &Value, want: u16, param: Option<&str>, code: Option<&str>| {
        assert_eq!(status, want, "{body}");
        let e = &body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(e["type"].is_string(), "{body}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{body}"
        );
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body}");
        }
        if let Some(c) = code {
            assert_eq!(e["code"], c, "{body}");
        }
    };
    let r = raw(
        "/v1/chat/completions",
        "{not json".into(),
        "application/json",
    )
    .await
    .expect("send");
    let status = r.status().as_u16();
    check(status, &r.json().await.expect("json"), 400, None, None);

    let (s, b) = server
        .post("/v1/chat/completions", &json!({"model": "base"}))
        .await;
    check(s, &b, 400, Some("messages"), None);
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "base", "messages": "hi"}),
        )
        .await;
    check(s, &b, 400, Some("messages"), None);

    let long = "the quick brown fox jumps over the lazy dog. ".repeat(20);
    let (s, b) = server
        .post(
            "/v1/completions",
            &json!({"model": "base", "prompt": long, "max_tokens": 4}),
        )
        .await;
    check(s, &b, 400, None, Some("context_length_exceeded"));
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("64")),
        "{b}"
    );
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "base", "messages": [{"role": "user", "content": long}]}),
        )
        .await;
    check(s, &b, 400, None, Some("context_length_exceeded"));

    for m in [0, -3] {
        let (s, b) = server
            .post(
                "/v1/chat/completions",
                &json!({"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": m}),
            )
            .await;
        check(s, &b, 400, Some("max_tokens"), None);
    }
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
        )
        .await;
    check(s, &b, 400, Some("temperature"), None);

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    check(s, &b, 404, Some("model"), Some("model_not_found"));

    // An adapter trained for another base model is refused at load, and stays unknown.
    let (s, b) = server
        .post(
            "/admin/adapters",
            &json!({"name": "other", "path": fixtures().join("other")}),
        )
        .await;
    check(s, &b, 400, None, Some("adapter_load_failed"));
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("different base model")),
        "{b}"
    );
    let (_, list) = server.get("/admin/adapters").await;
    assert_eq!(list.trim(), "[]");

    let big = json!({"model": "base", "prompt": "x".repeat(10_000)}).to_string();
    let r = raw("/v1/completions", big, "application/json")
        .await
        .expect("send");
    let status = r.status().as_u16();
    check(
        status,
        &r.json().await.expect("json"),
        413,
        None,
        Some("request_too_large"),
    );

    let r = raw("/v1/completions", "{}".into(), "text/plain")
        .await
        .expect("send");
    let status = r.status().as_u16();
    check(status, &r.json().await.expect("json"), 415, None, None);

    let (s, b) = server.post("/v1/nothing", &json!({})).await;
    check(s, &b, 404, None, None);

    // The failures are counted by model and status code.
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("tailor_server_requests_total{model=\"base\",status=\"400\"}"),
        "{metrics}"
    );
}

/// Adapters: on-demand loading from the config file, LRU eviction, admin load/unload, and a
/// config change (ConfigMap-style `..data` symlink swap) picked up without restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_evict_and_follow_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write_version = |v: &str, adapters: &[&str]| {
        let d = dir.path().join(v);
        std::fs::create_dir_all(&d).expect("mkdir");
        let map: serde_json::Map<String, Value> = adapters
            .iter()
            .map(|a| (a.to_string(), json!(fixtures().join(a))))
            .collect();
        std::fs::write(
            d.join("config.json"),
            json!({"adapters": map, "maxLoadedAdapters": 2}).to_string(),
        )
        .expect("write");
        let tmp = dir.path().join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(v, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.path().join("..data")).expect("swap");
    };
    write_version("v1", &["a0"]);
    std::os::unix::fs::symlink("..data/config.json", dir.path().join("config.json")).expect("link");
    let config = dir.path().join("config.json");
    let server = Server::start(&[
        "--config".into(),
        config.display().to_string(),
        "--config-poll-interval".into(),
        "100ms".into(),
    ])
    .await;
    let status = |server: &Server| {
        let url = format!("{}/admin/adapters", server.url);
        async move {
            let v: Value = reqwest::get(url)
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            v
        }
    };
    let v = eventually(60, "a0 preloaded", || async {
        let v = status(&server).await;
        (v[0]["loaded"] == true).then_some(v)
    })
    .await;
    assert_eq!(v[0]["name"], "a0");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    let hi = |m: &str| json!({"model": m, "prompt": "hello", "max_tokens": 2, "temperature": 0});
    assert_eq!(server.post("/v1/completions", &hi("a1")).await.0, 404);

    write_version("v2", &["a0", "a1", "a2"]);
    // The new config's adapters are preloaded up to the limit (a0 already, then a1).
    eventually(60, "config v2 preloaded", || async {
        let v = status(&server).await;
        let a1 = v.as_array()?.iter().find(|a| a["name"] == "a1")?.clone();
        (a1["loaded"] == true && v.as_array()?.len() == 3).then_some(())
    })
    .await;
    for m in ["a1", "a2", "a0"] {
        let (s, b) = server.post("/v1/completions", &hi(m)).await;
        assert_eq!(s, 200, "{m}: {b}");
        assert_eq!(b["model"], m);
    }
    let v = status(&server).await;
    let loaded: Vec<&str> = v
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["loaded"] == true)
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(loaded, ["a0", "a2"], "a1 is least recently used: {v}");
    assert_eq!(server.metric("tailor_server_loaded_adapters").await, 2.0);

    // Admin API.
    let (s, b) = server
        .post(
            "/admin/adapters",
            &json!({"name": "extra", "path": fixtures().join("a3")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["loaded"], true);
    let (s, _) = server.post("/v1/completions", &hi("extra")).await;
    assert_eq!(s, 200);
    let client = reqwest::Client::new();
    let del = |name: &str| {
        client
            .delete(format!("{}/admin/adapters/{name}", server.url))
            .send()
    };
    assert_eq!(del("extra").await.expect("delete").status(), 200);
    assert_eq!(del("extra").await.expect("delete").status(), 404);
    assert_eq!(server.post("/v1/completions", &hi("extra")).await.0, 404);

    // Dropping an adapter from the config unloads it; an invalid file keeps the last good config.
    write_version("v3", &["a2"]);
    eventually(60, "config v3", || async {
        let (_, m) = server.get("/v1/models").await;
        (!m.contains("\"a0\"")).then_some(())
    })
    .await;
    std::fs::create_dir_all(dir.path().join("v4")).expect("mkdir");
    std::fs::write(dir.path().join("v4/config.json"), "{broken").expect("write");
    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("v4", &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.path().join("..data")).expect("swap");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = server.post("/v1/completions", &hi("a2")).await;
    assert_eq!(s, 200);
}

/// TEST-ONLY fault injection fails about the configured fraction of one adapter's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_fails_a_fraction_of_one_adapters_requests() {
    let server = Server::start(&[
        "--adapter".into(),
        adapter_arg("a0"),
        "--adapter".into(),
        adapter_arg("a1"),
        "--fault-error-rate".into(),
        "0.5".into(),
        "--fault-adapters".into(),
        "a1".into(),
    ])
    .await;
    let hi = |m: &str| json!({"model": m, "prompt": "hello", "max_tokens": 1, "temperature": 0});
    let mut failed = 0;
    for _ in 0..60 {
        let (s, b) = server.post("/v1/completions", &hi("a1")).await;
        if s == 500 {
            assert_eq!(b["error"]["code"], "fault_injected");
            failed += 1;
        } else {
            assert_eq!(s, 200, "{b}");
        }
        let (s, b) = server.post("/v1/completions", &hi("a0")).await;
        assert_eq!(s, 200, "{b}");
    }
    assert!((10..=50).contains(&failed), "{failed} of 60 failed");
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "tailor_server_requests_total{{model=\"a1\",status=\"500\"}} {failed}"
        )),
        "{metrics}"
    );
}

async fn open_stream(server: &Server, max_tokens: u64) -> reqwest::Response {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(
            &json!({"model": "base", "messages": [{"role": "user", "content": "hello world"}],
                      "max_tokens": max_tokens, "stream": true, "temperature": 1.0, "seed": 5,
                      "ignore_eos": true}),
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    r
}

/// A client that goes away stops its generation; SIGTERM lets in-flight streams finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_stops_generation_and_sigterm_drains() {
    let mut server = Server::start(&["--max-seq-length".into(), "4096".into()]).await;
    let r = open_stream(&server, 3000).await;
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("first chunk").expect("chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(body);
    eventually(30, "generation stopped", || async {
        let running = server.metric("tailor_server_running_sequences").await;
        let in_flight = server.metric("tailor_server_in_flight_requests").await;
        (running == 0.0 && in_flight == 0.0).then_some(())
    })
    .await;
    let rows = server.metric("tailor_server_decoded_rows").await;
    assert!(
        rows < 2900.0,
        "generation ran on after the client left: {rows} rows"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.metric("tailor_server_decoded_rows").await, rows);

    // SIGTERM mid-stream: the stream still completes with [DONE], then the process exits 0.
    let r = open_stream(&server, 60).await;
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("first chunk").expect("chunk");
    let mut text = String::from_utf8_lossy(&first).to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let mut child = server.child.take().expect("child");
    let status = eventually(30, "exit", || {
        let s = child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status}");
}

fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An instant-query result: (labels, value) per series.
async fn prom_query(port: u16, expr: &str) -> Option<Vec<(Value, f64)>> {
    let url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{port}/api/v1/query"),
        &[("query", expr)],
    )
    .ok()?;
    let v: Value = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
        .collect()
}

/// tailor's metrics and the Gateway API Inference Extension's (vLLM's names), scraped by a real
/// Prometheus, moving as requests queue and run: with a batch of one, of two long requests one
/// runs and one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_server_and_inference_extension_metrics() {
    let prometheus = prometheus_binary().expect(
        "no `prometheus` binary on PATH: install the Debian package `prometheus` (scripts/test.sh does)",
    );
    let server = Server::start(&[
        "--adapter".into(),
        adapter_arg("a0"),
        "--adapter".into(),
        adapter_arg("a1"),
        "--max-batch-size".into(),
        "1".into(),
        "--max-seq-length".into(),
        "4096".into(),
    ])
    .await;
    for _ in 0..3 {
        let (s, _) = server
            .post(
                "/v1/completions",
                &json!({"model": "a0", "prompt": "hello", "max_tokens": 2}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let target = server.url.trim_start_matches("http://").to_string();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tailor-server\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus config");
    let port = free_port();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Killed(child);
    let (metric, value) = eventually(120, "series in prometheus", || async {
        let r = prom_query(
            port,
            "tailor_server_requests_total{model=\"a0\",status=\"200\"}",
        )
        .await?;
        r.into_iter().next()
    })
    .await;
    assert_eq!(value, 3.0);
    assert_eq!(metric["job"], "tailor-server");

    let gauge = |name: &'static str| async move {
        let r = prom_query(port, name).await?;
        let (labels, v) = r.into_iter().next()?;
        assert_eq!(labels["model_name"], "base", "{labels}");
        Some(v)
    };
    eventually(60, "idle engine", || async {
        let running = gauge("vllm:num_requests_running").await?;
        let waiting = gauge("vllm:num_requests_waiting").await?;
        (running == 0.0 && waiting == 0.0).then_some(())
    })
    .await;

    let long = |model: &'static str| {
        let url = format!("{}/v1/completions", server.url);
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(
                    &json!({"model": model, "prompt": "hello world", "max_tokens": 3000,
                              "ignore_eos": true, "temperature": 0}),
                )
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let first = long("a0");
    let second = long("a1");
    let lora = eventually(120, "one request running, one waiting", || async {
        let running = gauge("vllm:num_requests_running").await?;
        let waiting = gauge("vllm:num_requests_waiting").await?;
        let kv = gauge("vllm:gpu_cache_usage_perc").await?;
        let kv_new = gauge("vllm:kv_cache_usage_perc").await?;
        if !(running == 1.0 && waiting == 1.0 && kv > 0.0 && kv < 1.0 && kv_new == kv) {
            return None;
        }
        let (labels, when) = prom_query(port, "vllm:lora_requests_info")
            .await?
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        (labels["running_lora_adapters"] != "").then_some((labels, when))
    })
    .await;
    let (labels, when) = lora;
    let running = labels["running_lora_adapters"].as_str().unwrap_or_default();
    let waiting = labels["waiting_lora_adapters"].as_str().unwrap_or_default();
    let mut both = [running, waiting];
    both.sort();
    assert_eq!(both, ["a0", "a1"], "{labels}");
    assert_eq!(labels["max_lora"], "8", "{labels}");
    assert!(when > 1.7e9, "the value is the time of the sample: {when}");
    assert_eq!(first.await.expect("join").expect("first"), 200);
    assert_eq!(second.await.expect("join").expect("second"), 200);
    eventually(60, "idle engine again", || async {
        let running = gauge("vllm:num_requests_running").await?;
        let waiting = gauge("vllm:num_requests_waiting").await?;
        let kv = gauge("vllm:gpu_cache_usage_perc").await?;
        (running == 0.0 && waiting == 0.0 && kv == 0.0).then_some(())
    })
    .await;
}

/// Writes `config` as the server's config file (atomically, as a ConfigMap update does).
fn write_config(path: &Path, config: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, config.to_string()).expect("write config");
    std::fs::rename(&tmp, path).expect("swap config");
}

/// An engine that dies (here: the test-only panic switch, what a failing libtorch op does)
/// fails readiness at once, answers in-flight and new requests with a clean 503 (an SSE error
/// event mid-stream), fails liveness after the grace period, and leaves the process running for
/// the kubelet to restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_fails_requests_with_503_then_readiness_then_liveness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.json");
    write_config(&config, &json!({"adapters": {}}));
    let mut server = Server::start(&[
        "--config".into(),
        config.display().to_string(),
        "--config-poll-interval".into(),
        "100ms".into(),
        "--engine-failure-grace".into(),
        "2s".into(),
        "--max-seq-length".into(),
        "4096".into(),
    ])
    .await;
    let r = open_stream(&server, 3000).await;
    let mut stream = r.bytes_stream();
    let first = stream.next().await.expect("first chunk").expect("chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let url = format!("{}/v1/completions", server.url);
    let plain = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"model": "base", "prompt": "hello", "max_tokens": 3000, "ignore_eos": true}))
            .send()
            .await
            .expect("request");
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    eventually(30, "both requests generating", || async {
        (server.metric("tailor_server_running_sequences").await == 2.0).then_some(())
    })
    .await;
    // TEST-ONLY: the engine panics at its next decode step.
    write_config(
        &config,
        &json!({"adapters": {}, "faultInjection": {"enginePanicAtStep": 1}}),
    );
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let error: Value = serde_json::from_str(events[events.len() - 2]).expect("error event");
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("engine")),
        "{error}"
    );
    let (status, body) = plain.await.expect("join");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Out of the Service at once; new requests refused cleanly.
    assert_eq!(server.get("/ready").await.0, 503);
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            &json!({"model": "base", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Liveness holds during the grace period, then fails; the process stays up (no exit).
    eventually(30, "liveness to fail", || async {
        (server.get("/health").await.0 == 503).then_some(())
    })
    .await;
    let child = server.child.as_mut().expect("child");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the server exited"
    );
    assert_eq!(server.get("/metrics").await.0, 200);
}

/// 50 clients dribbling headers, one stalling its body and one saying nothing are all cut off
/// by the server's timeouts, while other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[
        "--header-read-timeout".into(),
        "2s".into(),
        "--body-read-timeout".into(),
        "2s".into(),
        "--idle-timeout".into(),
        "3s".into(),
    ])
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // Reads until the server closes the connection; returns what it sent.
    async fn until_closed(mut s: tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }
    let mut slow = Vec::new();
    for i in 0..50 {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        slow.push(tokio::spawn(async move {
            // One header line a second, for as long as the server listens.
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(b"POST /v1/completions HTTP/1.1\r\n").await;
                for n in 0.. {
                    if wr
                        .write_all(format!("X-Slow-{i}-{n}: 1\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut buf = [0u8; 1024];
            let closed = loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                }
            };
            writer.abort();
            closed
        }));
    }
    let mut stalled = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stalled
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ",
        )
        .await
        .expect("write");
    let stalled = tokio::spawn(until_closed(stalled));
    let silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let silent = tokio::spawn(until_closed(silent));
    // Meanwhile, others are served.
    for _ in 0..5 {
        let (s, b) = server
            .post(
                "/v1/completions",
                &json!({"model": "base", "prompt": "hello", "max_tokens": 4, "temperature": 0}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let all = async {
        let mut closed = 0;
        for s in slow {
            if s.await.expect("join") {
                closed += 1;
            }
        }
        (
            closed,
            stalled.await.expect("join"),
            silent.await.expect("join"),
        )
    };
    // Bounded: a generous limit that only a server without timeouts would reach.
    let (closed, stalled, silent) = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("slow clients still connected after 60 s");
    assert_eq!(closed, 50);
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("request_timeout"), "{stalled}");
    assert_eq!(silent, "", "the idle connection got {silent:?}");
    let (s, _) = server
        .post(
            "/v1/completions",
            &json!({"model": "base", "prompt": "hello", "max_tokens": 1}),
        )
        .await;
    assert_eq!(s, 200);
}

/// Beyond `--max-connections`, a new connection waits until one closes, then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[
        "--max-connections".into(),
        "3".into(),
        "--idle-timeout".into(),
        "2s".into(),
    ])
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // The readiness probe's connection may still be open: take all slots with idle sockets.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The server closed an idle connection (after its idle timeout) before it served this one:
    // by now that socket reads end-of-file at once. Asked with a plain non-blocking read, so the
    // answer does not depend on when a task or the reactor gets to run.
    let closed = idle
        .into_iter()
        .map(|s| {
            let mut s = s.into_std().expect("std socket");
            let mut buf = [0u8; 16];
            matches!(std::io::Read::read(&mut s, &mut buf), Ok(0))
        })
        .filter(|&eof| eof)
        .count();
    assert!(
        closed >= 1,
        "served while every slot was held by an open connection"
    );
}

/// `--api-key-file` guards the LoRA and admin APIs too, is re-read when it changes, and its keys
/// never reach the logs (JSON logs here, `--log-format json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reload_guard_the_lora_api_and_stay_out_of_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "first-secret-key\n").expect("write");
    let log = dir.path().join("server.log");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tailor-server"))
        .arg("--model")
        .arg(fixtures().join("base"))
        .args([
            "--served-model-name",
            "base",
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--api-key-file")
        .arg(&keys)
        .args(["--config-poll-interval", "100ms", "--log-format", "json"])
        .arg("--adapter-root")
        .arg(fixtures())
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start tailor-server");
    let server = Server {
        child: Some(child),
        url: format!("http://127.0.0.1:{port}"),
    };
    let ready = format!("{}/ready", server.url);
    eventually(120, "ready", || async {
        let r = reqwest::get(&ready).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let load = |key: &'static str| {
        client
            .post(format!("{}/v1/load_lora_adapter", server.url))
            .bearer_auth(key)
            .json(&json!({"lora_name": "a0", "lora_path": fixtures().join("a0"), "load_inplace": true}))
            .send()
    };
    assert_eq!(load("wrong").await.expect("send").status(), 401);
    assert_eq!(load("first-secret-key").await.expect("send").status(), 200);
    std::fs::write(&keys, "second-secret-key\n").expect("rewrite");
    eventually(30, "the new key", || async {
        (load("second-secret-key").await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert_eq!(load("first-secret-key").await.expect("send").status(), 401);
    let unload = client
        .post(format!("{}/v1/unload_lora_adapter", server.url))
        .json(&json!({"lora_name": "a0"}))
        .send()
        .await
        .expect("send");
    assert_eq!(unload.status(), 401);
    drop(server);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.lines().count() > 3, "{text}");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(text.contains("API key file reloaded"), "{text}");
    for secret in ["first-secret-key", "second-secret-key"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

/// An adapter whose weights file is a FIFO is refused at once (nothing opens it), and other
/// loads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_adapter_is_refused_without_blocking_other_loads() {
    let root = tempfile::tempdir().expect("tempdir");
    let fifo = root.path().join("fifo");
    std::fs::create_dir_all(&fifo).expect("mkdir");
    std::fs::copy(
        fixtures().join("a0/adapter_config.json"),
        fifo.join("adapter_config.json"),
    )
    .expect("copy");
    let made = Command::new("mkfifo")
        .arg(fifo.join("adapter_model.safetensors"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let good = root.path().join("good");
    std::fs::create_dir_all(&good).expect("mkdir");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("a1").join(f), good.join(f)).expect("copy");
    }
    let server = Server::start(&["--adapter-root".into(), root.path().display().to_string()]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let load = |name: &str, path: &Path| {
        client
            .post(format!("{}/v1/load_lora_adapter", server.url))
            .json(&json!({"lora_name": name, "lora_path": path}))
            .send()
    };
    let (bad, ok) = tokio::join!(load("fifo", &fifo), load("good", &good));
    let bad = bad.expect("the FIFO load answered");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a regular file")),
        "{body}"
    );
    assert_eq!(ok.expect("good load").status(), 200);
    let (s, b) = server
        .post(
            "/v1/completions",
            &json!({"model": "good", "prompt": "hello", "max_tokens": 2}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

/// An S3 server (s3s-fs, in process) holding the fixture adapters, for loads by URI.
async fn bucket_with_adapters(root: &Path) -> tailor_local_s3::LocalS3 {
    use tailor_artifacts::{ArtifactUri, Context, Env, Store};
    let s3 = tailor_local_s3::LocalS3::start(root, "tailor-test", "s3cr3t-value-never-logged")
        .expect("s3");
    s3.create_bucket("tailor").expect("bucket");
    let ctx = Context::new(Env::from_pairs(s3.env()));
    let bucket = Store::open(&ArtifactUri::parse("s3://tailor").expect("uri"), &ctx).expect("open");
    for name in ["a0", "a1", "other"] {
        bucket
            .upload_dir(&fixtures().join(name), &format!("adapters/{name}"))
            .await
            .expect("upload");
    }
    s3
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex_string(&sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_by_uri_from_a_bucket_verified_and_confined_to_the_allowed_prefixes() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = bucket_with_adapters(&dir.path().join("s3")).await;
    let log = dir.path().join("server.log");
    let server = Server::start_with(
        &[
            "--adapter".into(),
            adapter_arg("a0"),
            "--adapter-uri-prefix".into(),
            "s3://tailor/adapters".into(),
            "--adapter-cache".into(),
            dir.path().join("cache").display().to_string(),
        ],
        &s3.env(),
        Some(&log),
    )
    .await;
    let load = |name: &str, path: &str, sha256: Option<&str>| {
        let mut b = json!({"lora_name": name, "lora_path": path});
        if let Some(s) = sha256 {
            b["sha256"] = json!(s);
        }
        b
    };
    let answer = |model: &str| {
        json!({"model": model, "prompt": "the quick brown fox", "max_tokens": 12,
               "temperature": 0, "ignore_eos": true, "logprobs": 1})
    };
    // Loaded by URI, the adapter answers as the same adapter loaded from its directory.
    let weights = fixtures().join("a0/adapter_model.safetensors");
    let (status, body) = server
        .post(
            "/v1/load_lora_adapter",
            &load(
                "a0-remote",
                "s3://tailor/adapters/a0",
                Some(&sha256_hex(&weights)),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let local_request = answer("a0");
    let (_, local) = server.post("/v1/completions", &local_request).await;
    let (_, remote) = server.post("/v1/completions", &answer("a0-remote")).await;
    assert_eq!(local["choices"][0]["text"], remote["choices"][0]["text"]);
    assert_eq!(
        local["choices"][0]["logprobs"]["token_logprobs"],
        remote["choices"][0]["logprobs"]["token_logprobs"]
    );
    // ...and differs from another adapter (else the comparison proves little).
    let (status, _) = server
        .post(
            "/v1/load_lora_adapter",
            &load("a1-remote", "s3://tailor/adapters/a1/", None),
        )
        .await;
    assert_eq!(status, 200);
    let (_, other) = server.post("/v1/completions", &answer("a1-remote")).await;
    assert_ne!(
        other["choices"][0]["logprobs"]["token_logprobs"],
        remote["choices"][0]["logprobs"]["token_logprobs"]
    );

    // Refusals, each naming the URI and why; none leaves a model behind.
    let message = |v: &Value| {
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let cases = [
        (
            load("x", "s3://tailor/adapters/missing", None),
            404,
            "NotFound",
        ),
        (
            load("x", "s3://tailor/elsewhere/a0", None),
            400,
            "not under an allowed adapter URI prefix",
        ),
        (
            load("x", "s3://tailor/adapters-old/a0", None),
            400,
            "not under an allowed",
        ),
        (
            load("x", "s3://tailor/adapters/a0", Some(&"0".repeat(64))),
            400,
            "ChecksumMismatch",
        ),
        (
            load("x", "s3://tailor/adapters/other", None),
            400,
            "different base model",
        ),
        (load("x", "file:///etc", None), 400, "directory path"),
    ];
    for (body, code, expect) in cases {
        let (status, answer) = server.post("/v1/load_lora_adapter", &body).await;
        assert_eq!(status, code, "{body}: {answer}");
        assert!(message(&answer).contains(expect), "{body}: {answer}");
        if code == 400 && expect != "directory path" {
            assert!(message(&answer).contains("s3://tailor/"), "{answer}");
        }
    }
    // Listed with the URI (as the caller wrote it) as its root; the failed loads left nothing.
    let (_, models) = server.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).expect("models");
    let roots: Vec<(&str, &str)> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or(""),
                m["root"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        roots.contains(&("a0-remote", "s3://tailor/adapters/a0")),
        "{roots:?}"
    );
    assert!(
        roots.contains(&("a1-remote", "s3://tailor/adapters/a1/")),
        "{roots:?}"
    );
    assert!(!roots.iter().any(|(id, _)| *id == "x"), "{roots:?}");
    // A local directory with the wrong sha256 is refused too.
    let (status, answer) = server
        .post(
            "/v1/load_lora_adapter",
            &load(
                "x",
                &fixtures().join("a0").display().to_string(),
                Some(&"1".repeat(64)),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(message(&answer).contains("sha256 is"), "{answer}");
    drop(server);

    // The config file (what the operator writes) may name adapters by URI as well: fetched
    // when loaded, and listed with the URI as their path.
    let cfg_file = dir.path().join("server.json");
    std::fs::write(
        &cfg_file,
        json!({"adapters": {"cfg-remote": "s3://tailor/adapters/a0"}}).to_string(),
    )
    .expect("config");
    let from_config = Server::start_with(
        &[
            "--config".into(),
            cfg_file.display().to_string(),
            "--adapter-uri-prefix".into(),
            "s3://".into(),
            "--adapter-cache".into(),
            dir.path().join("cache3").display().to_string(),
        ],
        &s3.env(),
        None,
    )
    .await;
    let listed = eventually(60, "the config's adapter loaded", || async {
        let (_, text) = from_config.get("/admin/adapters").await;
        let v: Value = serde_json::from_str(&text).ok()?;
        let a = v
            .as_array()?
            .iter()
            .find(|a| a["name"] == "cfg-remote")?
            .clone();
        (a["loaded"] == true).then_some(a)
    })
    .await;
    assert_eq!(listed["path"], "s3://tailor/adapters/a0", "{listed}");
    let mut ask = local_request.clone();
    ask["model"] = json!("cfg-remote");
    let (_, via_config) = from_config.post("/v1/completions", &ask).await;
    assert_eq!(
        local["choices"][0]["logprobs"]["token_logprobs"],
        via_config["choices"][0]["logprobs"]["token_logprobs"]
    );
    drop(from_config);

    // Without an allowed prefix, no URI is fetched; with wrong credentials, the answer says
    // PermissionDenied and the secret is in no answer and no log line.
    let plain = Server::start_with(&[], &s3.env(), None).await;
    let (status, answer) = plain
        .post(
            "/v1/load_lora_adapter",
            &load("x", "s3://tailor/adapters/a0", None),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        message(&answer).contains("--adapter-uri-prefix"),
        "{answer}"
    );
    drop(plain);
    let wrong_secret = "wrong-secret-value-never-logged";
    let env: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_SECRET_ACCESS_KEY" => (k, wrong_secret.to_string()),
            _ => (k, v),
        })
        .collect();
    let log2 = dir.path().join("server2.log");
    let denied = Server::start_with(
        &[
            "--adapter-uri-prefix".into(),
            "s3://tailor/adapters".into(),
            "--adapter-cache".into(),
            dir.path().join("cache2").display().to_string(),
        ],
        &env,
        Some(&log2),
    )
    .await;
    let (status, answer) = denied
        .post(
            "/v1/load_lora_adapter",
            &load("x", "s3://tailor/adapters/a0", None),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(message(&answer).contains("PermissionDenied"), "{answer}");
    drop(denied);
    for text in [
        std::fs::read_to_string(&log).expect("log"),
        std::fs::read_to_string(&log2).expect("log"),
        answer.to_string(),
    ] {
        assert!(!text.contains("s3cr3t-value-never-logged"), "{text}");
        assert!(!text.contains(wrong_secret), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_loads_by_uri_from_a_gated_hub_repository_at_a_pinned_commit() {
    use tailor_local_s3::hub::{LocalHub, Repo};
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let files = ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|f| {
            (
                format!("lora/{f}"),
                std::fs::read(fixtures().join("a1").join(f)).expect("read"),
            )
        })
        .collect();
    let mut repo = Repo::one_commit(sha, files);
    repo.gated = true;
    let token = "hf_granted_token_never_logged";
    let hub = LocalHub::start(
        std::collections::BTreeMap::from([("models/acme/support-lora".to_string(), repo)]),
        token,
    )
    .expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("server.log");
    let env = |token: &str| {
        vec![
            ("HF_ENDPOINT".to_string(), hub.endpoint.clone()),
            ("HF_TOKEN".to_string(), token.to_string()),
        ]
    };
    let args = |cache: &str| -> Vec<String> {
        vec![
            "--adapter".into(),
            adapter_arg("a1"),
            "--adapter-uri-prefix".into(),
            "hf://acme/support-lora".into(),
            "--adapter-cache".into(),
            dir.path().join(cache).display().to_string(),
        ]
    };
    let server = Server::start_with(&args("cache"), &env(token), Some(&log)).await;
    let load = |name: &str, uri: &str| json!({"lora_name": name, "lora_path": uri});
    for (name, uri) in [
        ("at-main", "hf://acme/support-lora/lora"),
        ("at-commit", &format!("hf://acme/support-lora@{sha}/lora")),
    ] {
        let (status, body) = server.post("/v1/load_lora_adapter", &load(name, uri)).await;
        assert_eq!(status, 200, "{uri}: {body}");
    }
    let answer = |model: &str| {
        json!({"model": model, "prompt": "the quick brown fox", "max_tokens": 12,
               "temperature": 0, "ignore_eos": true, "logprobs": 1})
    };
    let (_, local) = server.post("/v1/completions", &answer("a1")).await;
    for model in ["at-main", "at-commit"] {
        let (_, hub_loaded) = server.post("/v1/completions", &answer(model)).await;
        assert_eq!(
            local["choices"][0]["logprobs"]["token_logprobs"],
            hub_loaded["choices"][0]["logprobs"]["token_logprobs"],
            "{model}"
        );
    }
    let (status, body) = server
        .post("/v1/load_lora_adapter", &load("x", "hf://acme/other-lora"))
        .await;
    assert_eq!(status, 400, "{body}");
    drop(server);
    // The repository is gated: without the token, PermissionDenied naming the URI.
    let log2 = dir.path().join("server2.log");
    let denied = Server::start_with(&args("cache2"), &env("hf_wrong"), Some(&log2)).await;
    let (status, body) = denied
        .post(
            "/v1/load_lora_adapter",
            &load("x", "hf://acme/support-lora/lora"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("hf://acme/support-lora") && message.contains("PermissionDenied"),
        "{body}"
    );
    drop(denied);
    for text in [
        std::fs::read_to_string(&log).expect("log"),
        std::fs::read_to_string(&log2).expect("log"),
        body.to_string(),
    ] {
        assert!(
            !text.contains(token) && !text.contains("hf_wrong"),
            "{text}"
        );
    }
}
