//! Real clients against the real router: the official `openai` Python client, and a real
//! Prometheus server scraping `/metrics`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The venv's python3 (with `openai`): `TAILOR_PYTHON`, else `python3` on PATH if it has
/// `openai` (scripts/test.sh puts the venv first), else the venv's default location.
fn python() -> PathBuf {
    let has_openai = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import openai"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("TAILOR_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push("python3".into());
    let cache = std::env::var("TAILOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tailor")
        });
    candidates.push(cache.join("venv/bin/python3"));
    candidates
        .into_iter()
        .find(has_openai)
        .expect("no python3 with the `openai` package: run `eval \"$(scripts/setup-libtorch.sh)\"`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_through_the_router() {
    let backend = Backend::start("a", Mode::Ok).await;
    let config = format!(
        "routes:\n  - model: bot\n    targets:\n      - {{backend: {:?}, model: bot-v1, weight: 1}}\n\
         apiKeys:\n  - {{name: test, key: sk-test}}\n",
        backend.url()
    );
    let router = RouterProc::start(&config).await;
    let script = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"),
    )
    .join("tests/openai_client.py");
    let base = format!("{}/v1", router.url());
    let python = python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
            .arg("sk-test")
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
    assert_eq!(seen["chat"], "served by a");
    assert_eq!(
        seen["served"], "bot-v1",
        "the response names the target's model"
    );
    assert!(seen["stream_chunks"].as_u64() >= Some(3));
    assert_eq!(backend.count(), 2);
}

/// The `prometheus` binary (Debian package `prometheus`), if installed.
fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_router_metrics() {
    // Prometheus is a test dependency (scripts/test.sh and .ci/run install it): without it
    // this test fails rather than pass unchecked.
    let prometheus = prometheus_binary()
        .expect("no `prometheus` binary on PATH: install the Debian package `prometheus` (scripts/test.sh does)");
    let backend = Backend::start("a", Mode::Ok).await;
    let config = format!(
        "routes:\n  - model: bot\n    targets:\n      - {{name: stable, backend: {:?}, model: bot-v1, weight: 1}}\n",
        backend.url()
    );
    let router = RouterProc::start_with(&config, true).await;
    let client = http_client();
    let url = format!("{}/v1/chat/completions", router.url());
    for _ in 0..7 {
        let r = post(&client, &url, &[], chat_body("bot", None))
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let admin = router.admin.expect("admin listener");
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tailor-router\n    static_configs:\n      - targets: ['{admin}']\n"
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

    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=tailor_router_requests_total%7Broute%3D%22bot%22%2Ctarget%3D%22stable%22%2Cstatus_class%3D%222xx%22%7D"
    );
    let mut last = String::new();
    let mut found = None;
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < end {
        if let Ok((200, body)) = get(&client, &query).await {
            last = String::from_utf8_lossy(&body).to_string();
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(sample) = v["data"]["result"][0]["value"][1].as_str() {
                found = Some((v["data"]["result"][0]["metric"].clone(), sample.to_string()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (metric, value) =
        found.unwrap_or_else(|| panic!("series never appeared; last answer: {last}"));
    assert_eq!(value, "7");
    assert_eq!(metric["job"], "tailor-router");
    assert_eq!(metric["target"], "stable");
}
