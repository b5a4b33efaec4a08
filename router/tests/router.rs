//! End-to-end tests: the real `tailor-router` binary between a real HTTP client and real
//! OpenAI-like backends on loopback.
//!
//! Size (over 700 lines, on purpose): one suite of the binary's routing behaviour (weights,
//! stickiness, reloads, keys, streaming, retries, stats, errors, drain), every case the real
//! binary over loopback backends from `common`; the other concerns are binaries of their own
//! (`clients`, `flags`, `hardening`, `scaling`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_percent_target_gets_ten_percent_of_5000_requests() {
    let stable = Backend::start("stable", Mode::Ok).await;
    let canary = Backend::start("canary", Mode::Ok).await;
    let config = route_config(
        &[
            ("stable", &[stable.url()], 90),
            ("canary", &[canary.url()], 10),
        ],
        "",
    );
    let router = RouterProc::start(&config).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let n = 5000u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let r = post(&client, &url, &[], chat_body("bot", None))
                    .await
                    .expect("request");
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let (s, c) = (stable.count(), canary.count());
    assert_eq!(s + c, n);
    let share = c as f64 / n as f64;
    assert!(
        (0.085..=0.115).contains(&share),
        "canary share {share} ({c} of {n})"
    );
    // The model was rewritten to each target's model.
    assert_eq!(
        stable.models_seen(),
        HashMap::from([("bot-stable".to_string(), s)])
    );
    assert_eq!(
        canary.models_seen(),
        HashMap::from([("bot-canary".to_string(), c)])
    );

    // /stats counts match what the backends saw (recorded as each body completes: poll).
    poll_until(Duration::from_secs(20), "stats to match traffic", || {
        let router = &router;
        async move {
            let st = router.stats().await;
            target_stats(&st, "bot", "stable")["cumulative"]["requests"] == json!(s)
                && target_stats(&st, "bot", "canary")["cumulative"]["requests"] == json!(c)
        }
    })
    .await;
    let st = router.stats().await;
    let canary_stats = target_stats(&st, "bot", "canary");
    assert_eq!(canary_stats["window"]["requests"], json!(c));
    assert_eq!(canary_stats["window"]["status"]["2xx"], json!(c));
    assert_eq!(canary_stats["window"]["errors"]["total"], json!(0));
    assert_eq!(canary_stats["weight"], json!(10));
    assert!(
        canary_stats["window"]["latency_ms"]["p50"]
            .as_f64()
            .is_some()
    );
    assert!(
        canary_stats["window"]["latency_ms"]["p95"].as_f64()
            >= canary_stats["window"]["latency_ms"]["p50"].as_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_always_lands_on_the_same_target() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let config = route_config(&[("a", &[a.url()], 50), ("b", &[b.url()], 50)], "");
    let router = RouterProc::start(&config).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for u in 0..60 {
            let user = format!("user-{u}");
            // Alternate between the `user` field and the X-User-Id header: same identity.
            let r = if (round + u) % 2 == 0 {
                post(&client, &url, &[], chat_body("bot", Some(&user))).await
            } else {
                post(
                    &client,
                    &url,
                    &[("x-user-id", user.as_str())],
                    chat_body("bot", None),
                )
                .await
            }
            .expect("request");
            assert_eq!(r.status, 200);
            let served = r.served_by();
            assert_eq!(
                r.headers
                    .get("x-tailor-target")
                    .and_then(|v| v.to_str().ok()),
                Some(served.as_str())
            );
            let first = seen.entry(user.clone()).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "{user} moved between targets");
        }
    }
    let on_a = seen.values().filter(|t| *t == "a").count();
    assert!(
        (10..=50).contains(&on_a),
        "users split 50/50, got {on_a} of 60 on a"
    );

    // The same user on /v1/completions (same served name) also stays put.
    let body = json!({"model": "bot", "prompt": "x", "user": "user-7"}).to_string();
    let r = post(
        &client,
        &format!("{}/v1/completions", router.url()),
        &[],
        body,
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), seen["user-7"]);
}

/// ConfigMap-style mount: `config.yaml -> ..data/config.yaml`, `..data -> ..<version>`; an
/// update writes a new version directory and swaps the `..data` link.
fn configmap_write(dir: &std::path::Path, version: u32, config: &str) {
    let vdir = dir.join(format!("..v{version}"));
    std::fs::create_dir(&vdir).expect("version dir");
    std::fs::write(vdir.join("config.yaml"), config).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join("config.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/config.yaml", &link).expect("config link");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloading_weights_mid_load_drops_no_request() {
    let a = Backend::start("a", Mode::Ok).await;
    let b = Backend::start("b", Mode::Ok).await;
    let weights =
        |wa: u32, wb: u32| route_config(&[("a", &[a.url()], wa), ("b", &[b.url()], wb)], "");
    let dir = tempfile::tempdir().expect("tempdir");
    configmap_write(dir.path(), 0, &weights(100, 0));
    let config_path = dir.path().join("config.yaml");
    let router = RouterProc::spawn(dir, config_path, false).await;

    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, url, stop, ok) = (client.clone(), url.clone(), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // Half the workers stream, so reloads also land in the middle of streams.
                let body = if w % 2 == 0 {
                    chat_body("bot", None)
                } else {
                    json!({"model": "bot", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()
                };
                match post(&client, &url, &[], body).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.push(format!("{}: {}", r.status, String::from_utf8_lossy(&r.body))),
                    Err(e) => failures.push(e),
                }
                i += 1;
            }
            (i, failures)
        }));
    }

    // Change the weights ten times while the load runs, each time waiting for the router to
    // load the new file.
    let plan = [
        (90, 10),
        (50, 50),
        (0, 100),
        (100, 0),
        (10, 90),
        (70, 30),
        (30, 70),
        (100, 0),
        (1, 1),
        (0, 100),
    ];
    for (version, (wa, wb)) in plan.iter().enumerate() {
        let generation = router.stats().await["config"]["generation"]
            .as_u64()
            .expect("gen");
        configmap_write(router.dir.path(), version as u32 + 1, &weights(*wa, *wb));
        router.wait_generation(generation + 1).await;
    }
    // The last config sends everything to b: requests now land there.
    let b_before = b.count();
    poll_until(Duration::from_secs(20), "traffic on b", || {
        let b = &b;
        async move { b.count() > b_before + 20 }
    })
    .await;
    let a_after = a.count();
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        let (n, failures) = w.await.expect("worker");
        assert!(
            failures.is_empty(),
            "failed requests during reloads: {failures:?}"
        );
        total += n;
    }
    assert!(total > 100, "only {total} requests ran");
    assert_eq!(ok.load(Ordering::SeqCst), total);
    assert_eq!(
        a.count(),
        a_after,
        "weight 0 target got traffic after the final reload"
    );
    let st = router.stats().await;
    assert_eq!(st["config"]["generation"], json!(plan.len() as u64 + 1));
    assert_eq!(st["config"]["last_error"], json!(null));

    // A broken file is rejected and the previous config stays in force.
    configmap_write(
        router.dir.path(),
        99,
        "routes: [{model: bot, targets: []}]\n",
    );
    poll_until(Duration::from_secs(20), "reload error reported", || {
        let router = &router;
        async move { router.stats().await["config"]["last_error"].is_string() }
    })
    .await;
    let r = post(&client, &url, &[], chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), "b");
}

fn keys_config(backend: &str, key_file: &std::path::Path) -> String {
    let digest = tailor_router::config::key_digest("sk-hashed");
    format!(
        "routes:\n  - model: bot\n    targets:\n      - backend: {backend}\n        model: bot-v1\n        weight: 1\n\
         apiKeys:\n  - name: plain\n    key: sk-plain\n  - name: limited\n    key: sk-limited\n    requestsPerMinute: 1\n    burst: 2\n\
         \x20 - name: from-file\n    keyFile: {}\n  - name: hashed\n    sha256: {}\n",
        key_file.display(),
        hex::encode(digest)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_401_and_rate_limit_429() {
    let backend = Backend::start("a", Mode::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-file\n").expect("key file");
    let router = RouterProc::start(&keys_config(&backend.url(), &key_file)).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let call = |key: Option<&'static str>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            post(&client, &url, &headers, chat_body("bot", None))
                .await
                .expect("request")
        }
    };

    for (key, code) in [
        (None, "invalid_api_key"),
        (Some("sk-wrong"), "invalid_api_key"),
    ] {
        let r = call(key).await;
        assert_eq!(r.status, 401, "{key:?}");
        let e = r.json();
        assert_eq!(e["error"]["code"], json!(code));
        assert_eq!(e["error"]["type"], json!("invalid_request_error"));
        assert!(e["error"]["message"].is_string() && e["error"].get("param").is_some());
    }
    for key in ["sk-plain", "sk-file", "sk-hashed"] {
        assert_eq!(call(Some(key)).await.status, 200, "{key}");
    }
    // /v1/models is behind the keys too.
    let (status, _) = get(&client, &format!("{}/v1/models", router.url()))
        .await
        .expect("models");
    assert_eq!(status, 401);
    assert_eq!(
        backend.shared.saw_authorization.load(Ordering::SeqCst),
        0,
        "client keys must not reach the backend"
    );

    // 1 request per minute with a burst of 2: the third is refused.
    assert_eq!(call(Some("sk-limited")).await.status, 200);
    assert_eq!(call(Some("sk-limited")).await.status, 200);
    let r = call(Some("sk-limited")).await;
    assert_eq!(r.status, 429);
    let retry_after: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(r.json()["error"]["code"], json!("rate_limit_exceeded"));
    // Other keys are not affected.
    assert_eq!(call(Some("sk-plain")).await.status, 200);

    // A reload that keeps the key keeps its spent bucket.
    let generation = router.stats().await["config"]["generation"]
        .as_u64()
        .expect("gen");
    std::fs::write(&key_file, "sk-file-2\n").expect("rotate key file");
    router.wait_generation(generation + 1).await;
    assert_eq!(call(Some("sk-limited")).await.status, 429);
    assert_eq!(
        call(Some("sk-file")).await.status,
        401,
        "rotated key file is re-read"
    );
    assert_eq!(call(Some("sk-file-2")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_passes_through_incrementally() {
    let backend = Backend::start("a", Mode::Ok).await;
    backend.shared.hold_streams.store(true, Ordering::SeqCst);
    let config = route_config(&[("a", &[backend.url()], 1)], "");
    let router = RouterProc::start(&config).await;
    let client = http_client();
    let body =
        json!({"model": "bot", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let req = http::Request::post(format!("{}/v1/chat/completions", router.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    // Bounded wait: a buffering proxy would not even send the headers while the backend holds.
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("response headers while the backend holds the stream")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = resp.into_body();
    let mut received = String::new();
    // The backend holds the stream after its first event; that event must get through.
    while !received.contains("\n\n") {
        // Bounded wait: a buffering proxy would never deliver this frame.
        let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("the first event arrives while the backend holds the rest")
            .expect("a frame before the backend finishes")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            received.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(received.starts_with("data: {"), "{received}");
    assert!(received.contains("\"model\":\"bot-a\""), "{received}");
    assert!(!backend.shared.stream_finished.load(Ordering::SeqCst));
    // Release the rest.
    backend.shared.release.notify_one();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            received.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(backend.shared.stream_finished.load(Ordering::SeqCst));
    assert!(received.ends_with("data: [DONE]\n\n"), "{received}");
    let text: String = received
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text.trim(), "served by a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend() {
    let live = Backend::start("live", Mode::Ok).await;
    // Port 1 (tcpmux): privileged and unused, so connecting is refused.
    let dead = "http://127.0.0.1:1".to_string();
    let standby = Backend::start("standby", Mode::Ok).await;
    let config = format!(
        "routes:\n\
         \x20 - model: bot\n    targets:\n      - {{name: pods, revision: v1, backend: [{dead:?}, {live:?}], model: m, weight: 1}}\n\
         \x20 - model: solo\n    targets:\n      - {{name: only, revision: v2, backend: {dead:?}, model: m, weight: 1}}\n\
         \x20 - model: pair\n    targets:\n      - {{name: primary, revision: v3, backend: {dead:?}, model: m, weight: 1}}\n\
         \x20     - {{name: secondary, revision: v3, backend: {standby:?}, model: m, weight: 0}}\n\
         timeouts: {{connect: 2s, request: 30s}}\n",
        live = live.url(),
        standby = standby.url(),
    );
    let router = RouterProc::start(&config).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    for _ in 0..20 {
        let r = post(&client, &url, &[], chat_body("bot", None))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.served_by(), "live");
    }
    assert_eq!(live.count(), 20);
    // Another target of the same revision backs the first one up.
    let r = post(&client, &url, &[], chat_body("pair", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), "standby");
    // With nothing else to try, the router answers 502 and counts a connect error.
    let r = post(&client, &url, &[], chat_body("solo", None))
        .await
        .expect("request");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], json!("upstream_connect_error"));

    poll_until(Duration::from_secs(20), "stats", || {
        let router = &router;
        async move {
            let st = router.stats().await;
            target_stats(&st, "bot", "pods")["cumulative"]["requests"] == json!(20)
                && target_stats(&st, "solo", "only")["cumulative"]["requests"] == json!(1)
        }
    })
    .await;
    let st = router.stats().await;
    let pods = target_stats(&st, "bot", "pods");
    // Round-robin starts on the dead URL for every other request.
    assert_eq!(pods["cumulative"]["retries"], json!(10));
    assert_eq!(pods["cumulative"]["errors"]["total"], json!(0));
    let only = target_stats(&st, "solo", "only");
    assert_eq!(only["cumulative"]["errors"]["connect"], json!(1));
    assert_eq!(only["window"]["errors"]["connect"], json!(1));
    assert_eq!(only["window"]["status"]["5xx"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_count_errors_and_timeouts_by_class() {
    let ok = Backend::start("ok", Mode::Ok).await;
    let bad = Backend::start("bad", Mode::Fail500).await;
    let slow = Backend::start("slow", Mode::Hang).await;
    let config = format!(
        "routes:\n\
         \x20 - model: bot\n    targets:\n      - {{name: ok, backend: {ok:?}, model: m, weight: 1}}\n      - {{name: bad, backend: {bad:?}, model: m, weight: 1}}\n\
         \x20 - model: slow\n    targets:\n      - {{name: slow, backend: {slow:?}, model: m, weight: 1}}\n\
         timeouts: {{request: 1s}}\n",
        ok = ok.url(),
        bad = bad.url(),
        slow = slow.url(),
    );
    let router = RouterProc::start_with(&config, true).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let mut by_status: HashMap<u16, u64> = HashMap::new();
    for i in 0..200 {
        let user = format!("u{i}");
        let r = post(&client, &url, &[], chat_body("bot", Some(&user)))
            .await
            .expect("request");
        *by_status.entry(r.status).or_default() += 1;
    }
    assert_eq!(by_status.get(&200).copied().unwrap_or(0), ok.count());
    assert_eq!(by_status.get(&500).copied().unwrap_or(0), bad.count());
    let r = post(&client, &url, &[], chat_body("slow", None))
        .await
        .expect("request");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], json!("upstream_timeout"));

    let (okn, badn) = (ok.count(), bad.count());
    poll_until(Duration::from_secs(20), "stats", || {
        let router = &router;
        async move {
            let st = router.stats().await;
            target_stats(&st, "bot", "ok")["cumulative"]["requests"] == json!(okn)
                && target_stats(&st, "bot", "bad")["cumulative"]["requests"] == json!(badn)
                && target_stats(&st, "slow", "slow")["cumulative"]["requests"] == json!(1)
        }
    })
    .await;
    let st = router.stats().await;
    let okj = target_stats(&st, "bot", "ok");
    let badj = target_stats(&st, "bot", "bad");
    let slowj = target_stats(&st, "slow", "slow");
    assert_eq!(okj["window"]["requests"], json!(okn));
    assert_eq!(okj["window"]["errors"]["total"], json!(0));
    assert_eq!(okj["window"]["error_rate"], json!(0.0));
    assert_eq!(badj["window"]["requests"], json!(badn));
    assert_eq!(badj["window"]["errors"]["5xx"], json!(badn));
    assert_eq!(badj["window"]["error_rate"], json!(1.0));
    assert_eq!(badj["cumulative"]["status"]["5xx"], json!(badn));
    assert_eq!(slowj["window"]["errors"]["timeout"], json!(1));
    assert_eq!(slowj["window"]["status"]["5xx"], json!(1));
    assert_eq!(st["window_seconds"], json!(60.0));
    // The window query parameter.
    let (status, body) = get(&client, &format!("{}/stats?window=5m", router.ops_url()))
        .await
        .expect("stats");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["window_seconds"], json!(300.0));
    let (status, _) = get(&client, &format!("{}/stats?window=soon", router.ops_url()))
        .await
        .expect("stats");
    assert_eq!(status, 400);

    // Admin listener: /metrics and /stats live there, not on the API port.
    let (status, _) = get(&client, &format!("{}/stats", router.url()))
        .await
        .expect("stats");
    assert_eq!(status, 404);
    let (status, metrics) = get(&client, &format!("{}/metrics", router.ops_url()))
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for needle in [
        format!(
            "tailor_router_requests_total{{route=\"bot\",target=\"ok\",status_class=\"2xx\"}} {okn}"
        ),
        format!("tailor_router_errors_total{{route=\"bot\",target=\"bad\",class=\"5xx\"}} {badn}"),
        "tailor_router_errors_total{route=\"slow\",target=\"slow\",class=\"timeout\"} 1"
            .to_string(),
        "tailor_router_request_duration_seconds_bucket{".to_string(),
    ] {
        assert!(
            metrics.contains(&needle),
            "{needle} missing from\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let backend = Backend::start("a", Mode::Ok).await;
    let config = route_config(&[("a", &[backend.url()], 1)], "maxBodyBytes: 2000\n");
    let router = RouterProc::start(&config).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());

    let r = post(&client, &url, &[], "{\"model\": \"bot\",")
        .await
        .expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], json!("invalid_request_error"));

    let r = post(&client, &url, &[], json!({"messages": []}).to_string())
        .await
        .expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], json!("model"));

    let r = post(&client, &url, &[], chat_body("nope", None))
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    let e = r.json();
    assert_eq!(e["error"]["code"], json!("model_not_found"));
    assert_eq!(e["error"]["param"], json!("model"));
    assert_eq!(e["error"]["type"], json!("invalid_request_error"));
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope"))
    );

    let big = json!({"model": "bot", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
        .to_string();
    let r = post(&client, &url, &[], big).await.expect("request");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], json!("request_too_large"));

    let r = post(
        &client,
        &format!("{}/v1/embeddings", router.url()),
        &[],
        chat_body("bot", None),
    )
    .await
    .expect("request");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(backend.count(), 0, "no bad request reached the backend");

    let (status, body) = get(&client, &url).await.expect("GET on a POST path");
    assert_eq!(status, 405);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], json!("method_not_allowed"));

    let (status, body) = get(&client, &format!("{}/v1/models", router.url()))
        .await
        .expect("models");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["object"], json!("list"));
    assert_eq!(v["data"][0]["id"], json!("bot"));
    let (status, _) = get(&client, &format!("{}/healthz", router.url()))
        .await
        .expect("healthz");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream() {
    let backend = Backend::start("a", Mode::Ok).await;
    backend.shared.hold_streams.store(true, Ordering::SeqCst);
    let config = route_config(&[("a", &[backend.url()], 1)], "");
    let mut router = RouterProc::start(&config).await;
    let client = http_client();
    let body =
        json!({"model": "bot", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let req = http::Request::post(format!("{}/v1/chat/completions", router.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    // Bounded wait: a buffering proxy would not even send the headers while the backend holds.
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("response headers while the backend holds the stream")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("first event")
        .expect("frame")
        .expect("frame");
    assert!(first.is_data());

    // SIGTERM while the stream is held open: the router stops accepting but keeps serving it.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &router.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    poll_until(Duration::from_secs(30), "listener closed", || {
        let url = format!("{}/healthz", router.url());
        async move { get(&http_client(), &url).await.is_err() }
    })
    .await;
    assert!(router.exited().is_none(), "exited with a stream in flight");
    backend.shared.release.notify_one();
    let mut rest = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            rest.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let mut code = None;
    poll_until(Duration::from_secs(30), "router exit", || {
        code = router.exited();
        let done = code.is_some();
        async move { done }
    })
    .await;
    assert_eq!(code, Some(0));
}
