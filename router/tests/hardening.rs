//! Issue 18 at the router: its own token towards the backends (never a client's), a token for
//! `/stats`, error classes that count only what the target caused, and the limits that keep slow
//! or numerous clients from holding the router.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Secret volume: `NAME -> ..data/NAME`, `..data -> ..<version>`; an update swaps `..data`.
fn secret_write(dir: &Path, version: u32, name: &str, value: &str) {
    let vdir = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&vdir).expect("version dir");
    std::fs::write(vdir.join(name), value).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join(name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("link");
    }
}

const BACKEND_1: &str = "tok-backend-1f9a7c";
const BACKEND_2: &str = "tok-backend-2b4d8e";
const ADMIN_1: &str = "tok-admin-1c3e5a";
const ADMIN_2: &str = "tok-admin-2d6f8b";
const USER_KEY: &str = "sk-user-7e1f0a";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_and_admin_tokens_from_secret_files() {
    let backend = Backend::start("a", Mode::Ok).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let (backend_dir, admin_dir) = (secrets.path().join("backend"), secrets.path().join("admin"));
    std::fs::create_dir_all(&backend_dir).expect("dir");
    std::fs::create_dir_all(&admin_dir).expect("dir");
    secret_write(&backend_dir, 1, "token", &format!("{BACKEND_1}\n"));
    secret_write(&admin_dir, 1, "token", ADMIN_1);
    let config = format!(
        "{}apiKeys:\n  - name: users\n    key: {USER_KEY}\n",
        route_config(&[("a", &[backend.url()], 1)], "")
    );
    let router = RouterProc::start_opts(
        &config,
        Start {
            admin: true,
            args: vec![
                "--backend-token-file".into(),
                backend_dir.join("token").display().to_string(),
                "--admin-token-file".into(),
                admin_dir.join("token").display().to_string(),
            ],
            admin_token: Some(ADMIN_1.into()),
            log: Some("debug".into()),
        },
    )
    .await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let user = format!("Bearer {USER_KEY}");
    let headers = [("authorization", user.as_str())];

    // The backend sees the router's token, never the user's key.
    let r = post(&client, &url, &headers, chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        *backend.shared.authorizations.lock().expect("lock"),
        [format!("Bearer {BACKEND_1}")]
    );

    // /stats wants the admin token; /metrics and the probes stay open.
    let stats = format!("{}/stats", router.ops_url());
    for (auth, code) in [
        (None, "invalid_api_key"),
        (Some(format!("Bearer {USER_KEY}")), "invalid_api_key"),
        (Some(format!("Bearer {BACKEND_1}")), "invalid_api_key"),
    ] {
        let h: Vec<(String, String)> = auth
            .iter()
            .map(|a| ("authorization".to_string(), a.clone()))
            .collect();
        let (status, body) = get_with(&client, &stats, &h).await.expect("stats");
        assert_eq!(status, 401, "{auth:?}");
        let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(e["error"]["code"], json!(code));
        assert_eq!(e["error"]["type"], json!("invalid_request_error"));
    }
    assert_eq!(router.stats().await["config"]["generation"], json!(1));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = get(&client, &format!("{}{path}", router.ops_url()))
            .await
            .expect("ops");
        assert_eq!(status, 200, "{path}");
    }

    // Both Secrets rotate while clients keep sending: no request fails, and the new tokens
    // take over.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, failures) =
            (client.clone(), url.clone(), stop.clone(), failures.clone());
        let user = user.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let r = post(
                    &client,
                    &url,
                    &[("authorization", &user)],
                    chat_body("bot", None),
                )
                .await;
                if !matches!(r, Ok(ref r) if r.status == 200) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    secret_write(&backend_dir, 2, "token", BACKEND_2);
    secret_write(&admin_dir, 2, "token", ADMIN_2);
    let last_is_new = || {
        backend
            .shared
            .authorizations
            .lock()
            .expect("lock")
            .last()
            .cloned()
            == Some(format!("Bearer {BACKEND_2}"))
    };
    poll_until(
        Duration::from_secs(30),
        "the new backend token in use",
        || {
            let done = last_is_new();
            async move { done }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for w in workers {
        sent += w.await.expect("worker");
    }
    assert!(sent > 10, "only {sent} requests ran");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during the rotation"
    );
    let seen: HashMap<String, usize> = backend
        .shared
        .authorizations
        .lock()
        .expect("lock")
        .iter()
        .fold(HashMap::new(), |mut m, a| {
            *m.entry(a.clone()).or_default() += 1;
            m
        });
    assert_eq!(
        seen.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        [format!("Bearer {BACKEND_1}"), format!("Bearer {BACKEND_2}")]
            .into_iter()
            .collect(),
        "only the router's tokens reach the backend"
    );
    let with = |t: &str| vec![("authorization".to_string(), format!("Bearer {t}"))];
    poll_until(Duration::from_secs(30), "the new admin token", || {
        let (client, stats) = (client.clone(), stats.clone());
        async move {
            matches!(
                get_with(&client, &stats, &with(ADMIN_2)).await,
                Ok((200, _))
            ) && matches!(
                get_with(&client, &stats, &with(ADMIN_1)).await,
                Ok((401, _))
            )
        }
    })
    .await;

    // An emptied Secret is reported and the token in use stays.
    secret_write(&backend_dir, 3, "token", "\n");
    poll_until(
        Duration::from_secs(30),
        "the empty token file reported",
        || {
            let logs = router.logs();
            async move { logs.contains("is empty") }
        },
    )
    .await;
    let r = post(&client, &url, &headers, chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(
        backend.shared.authorizations.lock().expect("lock").last(),
        Some(&format!("Bearer {BACKEND_2}"))
    );

    // No token or key value in any log line (debug level included).
    let logs = router.logs();
    assert!(logs.contains("token file changed"), "{logs}");
    for secret in [BACKEND_1, BACKEND_2, ADMIN_1, ADMIN_2, USER_KEY] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_credentials_never_reach_the_backend_even_without_api_keys() {
    let backend = Backend::start("a", Mode::Ok).await;
    let router = RouterProc::start(&route_config(&[("a", &[backend.url()], 1)], "")).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    for headers in [
        vec![("authorization", "Bearer sk-whatever")],
        vec![("api-key", "sk-whatever")],
    ] {
        let r = post(&client, &url, &headers, chat_body("bot", None))
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }
    assert_eq!(backend.count(), 2);
    assert_eq!(backend.shared.saw_authorization.load(Ordering::SeqCst), 0);
}

/// What the target caused counts against it in `/stats` and `/metrics`; the client's own
/// mistakes pass through to the client and count as answered requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_count_as_errors_only_when_the_target_caused_them() {
    let backend = Backend::start("a", Mode::Ok).await;
    let router =
        RouterProc::start_with(&route_config(&[("a", &[backend.url()], 1)], ""), true).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    // (status, counts as an error, class)
    let table: [(u16, Option<&str>); 10] = [
        (200, None),
        (400, None),
        (401, None),
        (404, Some("404")),
        (413, None),
        (422, None),
        (429, None),
        (500, Some("5xx")),
        (502, Some("5xx")),
        (503, Some("5xx")),
    ];
    for (status, _) in table {
        let code = status.to_string();
        let headers = if status == 200 {
            vec![]
        } else {
            vec![("x-test-status", code.as_str())]
        };
        let r = post(&client, &url, &headers, chat_body("bot", None))
            .await
            .expect("request");
        assert_eq!(r.status, status, "the backend's status reaches the client");
    }
    let n = table.len() as u64;
    poll_until(Duration::from_secs(20), "stats", || {
        let router = &router;
        async move {
            target_stats(&router.stats().await, "bot", "a")["cumulative"]["requests"] == json!(n)
        }
    })
    .await;
    let st = router.stats().await;
    let w = &target_stats(&st, "bot", "a")["window"];
    assert_eq!(w["requests"], json!(n));
    assert_eq!(w["status"]["2xx"], json!(1));
    assert_eq!(w["status"]["4xx"], json!(6));
    assert_eq!(w["status"]["5xx"], json!(3));
    assert_eq!(w["errors"]["404"], json!(1));
    assert_eq!(w["errors"]["5xx"], json!(3));
    assert_eq!(w["errors"]["total"], json!(4));
    assert_eq!(w["error_rate"], json!(0.4));
    // The same in the wire type the operator reads.
    let typed: tailor_wire::router::Stats = serde_json::from_value(st.clone()).expect("wire type");
    assert_eq!(typed.routes["bot"].targets["a"].window.errors.total, 4);

    let (_, metrics) = get(&client, &format!("{}/metrics", router.ops_url()))
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for needle in [
        r#"tailor_router_errors_total{route="bot",target="a",class="404"} 1"#,
        r#"tailor_router_errors_total{route="bot",target="a",class="5xx"} 3"#,
        r#"tailor_router_requests_total{route="bot",target="a",status_class="4xx"} 6"#,
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    let error_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tailor_router_errors_total{"))
        .collect();
    assert_eq!(error_lines.len(), 2, "{error_lines:?}");
}

/// Reads from `stream` until the server closes it (EOF or reset), returning what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client sending one header line a second, never finishing its head. Returns once the
/// server has closed the connection.
async fn slowloris(addr: std::net::SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await;
    let mut buf = [0u8; 1024];
    for i in 0u64.. {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {
                // The server answered something (an error): it closes next.
                read_to_close(&mut stream).await;
                return;
            }
            Err(_) => {
                if stream
                    .write_all(format!("x-slow-{i}: {i}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let backend = Backend::start("a", Mode::Ok).await;
    let router = RouterProc::start_opts(
        &route_config(&[("a", &[backend.url()], 1)], ""),
        Start {
            admin: true,
            args: [
                "--header-read-timeout",
                "2s",
                "--body-read-timeout",
                "2s",
                "--idle-timeout",
                "3s",
            ]
            .map(String::from)
            .to_vec(),
            ..Start::default()
        },
    )
    .await;
    // A generous bound: the limits are 2-3 s; this only says "not forever".
    let bound = Duration::from_secs(60);

    // 50 slow-header connections.
    let slow: Vec<_> = (0..50)
        .map(|_| tokio::spawn(tokio::time::timeout(bound, slowloris(router.addr))))
        .collect();

    // A body stalled after 10 of 1,000 declared bytes.
    let stalled = tokio::spawn(tokio::time::timeout(bound, {
        let addr = router.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\":",
                )
                .await
                .expect("write");
            String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
        }
    }));

    // An idle keep-alive connection after one request.
    let idle = tokio::spawn(tokio::time::timeout(bound, {
        let addr = router.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
        }
    }));

    // Meanwhile ordinary clients are served.
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let mut served = 0;
    while !(slow.iter().all(|t| t.is_finished()) && stalled.is_finished() && idle.is_finished()) {
        let r = post(&client, &url, &[], chat_body("bot", None))
            .await
            .expect("request while slow clients hold connections");
        assert_eq!(r.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 0);
    for t in slow {
        t.await
            .expect("slow client")
            .expect("a slow-header connection is closed in bounded time");
    }
    let answer = stalled
        .await
        .expect("stalled client")
        .expect("a stalled body ends in bounded time");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    let answer = idle
        .await
        .expect("idle client")
        .expect("an idle connection is closed in bounded time");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Still serving.
    let r = post(&client, &url, &[], chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200);

    let (_, metrics) = get(&client, &format!("{}/metrics", router.ops_url()))
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    let count = |phase: &str| -> u64 {
        let prefix = format!("tailor_router_connection_timeouts_total{{phase=\"{phase}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("header") >= 50, "{metrics}");
    assert!(count("idle") >= 1, "{metrics}");
    assert!(
        metrics.contains(r#"tailor_router_rejected_total{reason="body_timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_bound_get_429() {
    let ok = Backend::start("ok", Mode::Ok).await;
    let slow = Backend::start("slow", Mode::Hang).await;
    let config = format!(
        "routes:\n\
         \x20 - model: bot\n    targets:\n      - {{name: ok, backend: {ok:?}, model: m, weight: 1}}\n\
         \x20 - model: slow\n    targets:\n      - {{name: slow, backend: {slow:?}, model: m, weight: 1}}\n\
         timeouts: {{request: 3s}}\n",
        ok = ok.url(),
        slow = slow.url(),
    );
    let router = RouterProc::start_opts(
        &config,
        Start {
            admin: true,
            args: vec!["--max-in-flight".into(), "2".into()],
            ..Start::default()
        },
    )
    .await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post(&client, &url, &[], chat_body("slow", None)).await })
        })
        .collect();
    poll_until(Duration::from_secs(30), "two requests held", || {
        let n = slow.count();
        async move { n == 2 }
    })
    .await;
    let r = post(&client, &url, &[], chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 429);
    let e = r.json();
    assert_eq!(e["error"]["code"], json!("overloaded"));
    assert!(e["error"]["message"].is_string() && e["error"].get("param").is_some());
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(ok.count(), 0);
    // The held requests end (the backend timeout) and free their slots.
    for h in held {
        let r = h.await.expect("task").expect("request");
        assert_eq!(r.status, 504);
    }
    let r = post(&client, &url, &[], chat_body("bot", None))
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    let (_, metrics) = get(&client, &format!("{}/metrics", router.ops_url()))
        .await
        .expect("metrics");
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains(r#"tailor_router_rejected_total{reason="overloaded"} 1"#)
    );
}

/// One request on a raw keep-alive connection; returns the status line.
async fn raw_request(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    // /healthz answers "ok\n": the response ends with it.
    while !got.ends_with(b"ok\n") {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let backend = Backend::start("a", Mode::Ok).await;
    let router = RouterProc::start_opts(
        &route_config(&[("a", &[backend.url()], 1)], ""),
        Start {
            admin: true,
            args: vec!["--max-connections".into(), "2".into()],
            ..Start::default()
        },
    )
    .await;
    let mut first = TcpStream::connect(router.addr).await.expect("connect");
    let mut second = TcpStream::connect(router.addr).await.expect("connect");
    assert_eq!(raw_request(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(raw_request(&mut second).await, "HTTP/1.1 200 OK");
    // A third connection is not served while both are open...
    let third = tokio::spawn({
        let addr = router.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            raw_request(&mut s).await
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "served beyond the connection cap");
    // ...and is once one closes.
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(60), third)
        .await
        .expect("served after a connection closed")
        .expect("task");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(raw_request(&mut second).await, "HTTP/1.1 200 OK");
}
