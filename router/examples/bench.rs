//! Router overhead benchmark (a command, not a test).
//!
//! `cargo build --release -p tailor-router --bins --examples && target/release/examples/bench [REQUESTS] [CONCURRENCY]`
//!
//! Starts a minimal OpenAI-like backend in-process and `tailor-router` (the binary next to this
//! example) in front of it, then sends the same chat completions directly and through the
//! router, and prints requests/s and latency percentiles for both.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type C = Client<HttpConnector, Full<Bytes>>;

async fn backend() -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            axum::Json(json!({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn run(
    label: &str,
    client: &C,
    url: &str,
    model: &str,
    n: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(
        json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
            .to_string(),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, body) =
            (client.clone(), url.to_string(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let resp = client.request(req).await?;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                resp.into_body().collect().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = start.elapsed();
    all.sort();
    let pct = |q: f64| all[((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
    println!(
        "{label:<14} {n} requests, concurrency {concurrency}: {:>8.0} req/s, p50 {:>7.3} ms, p99 {:>7.3} ms",
        n as f64 / wall.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let concurrency: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let backend = backend().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "routes:\n  - model: bot\n    targets:\n      - {{name: a, backend: 'http://{backend}', model: bot-a, weight: 90}}\n      - {{name: b, backend: 'http://{backend}', model: bot-b, weight: 10}}\n"
        ),
    )?;
    let exe = std::env::current_exe()?;
    let router_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("tailor-router"))
        .ok_or_else(|| anyhow::anyhow!("no tailor-router next to {}", exe.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&router_bin)
        .args([
            "--config",
            &config.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let client: C = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = http::Request::get(&ready).body(Full::new(Bytes::new()))?;
        if client.request(req).await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "router did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let direct = format!("http://{backend}/v1/chat/completions");
    let routed = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let result = async {
        run("warm-up", &client, &direct, "bot-a", n / 10, concurrency).await?;
        run("direct", &client, &direct, "bot-a", n, concurrency).await?;
        run("warm-up", &client, &routed, "bot", n / 10, concurrency).await?;
        run("via router", &client, &routed, "bot", n, concurrency).await?;
        run("direct", &client, &direct, "bot-a", n, 1).await?;
        run("via router", &client, &routed, "bot", n, 1).await
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
