//! The binary's command line: `--version`, `--help`, `--log-format` (and `TAILOR_LOG_FORMAT`).

mod common;

use std::process::Command;

use common::*;

fn router() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tailor-router"))
}

#[test]
fn version_and_help() {
    let out = router().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tailor-router {}", env!("CARGO_PKG_VERSION"))
    );
    let out = router().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--backend-token-file",
        "--admin-token-file",
        "--header-read-timeout",
        "--body-read-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-in-flight",
        "--log-format",
        "TAILOR_LOG_FORMAT",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let out = router()
        .args(["--config", "x.yaml", "--idle-timeout", "90"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--idle-timeout") && err.contains("30s"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_by_flag_and_by_env() {
    let backend = Backend::start("a", Mode::Ok).await;
    let config = route_config(&[("a", &[backend.url()], 1)], "");
    let by_flag = RouterProc::start_opts(
        &config,
        Start {
            args: vec!["--log-format".into(), "json".into()],
            log: Some("info".into()),
            ..Start::default()
        },
    )
    .await;
    let by_default = RouterProc::start_opts(
        &config,
        Start {
            log: Some("info".into()),
            ..Start::default()
        },
    )
    .await;
    for (router, json) in [(&by_flag, true), (&by_default, false)] {
        let logs = router.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.iter().any(|l| l.contains("configuration loaded")),
            "{logs}"
        );
        for line in lines {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert_eq!(parsed.is_ok(), json, "{line}");
            if let Ok(v) = parsed {
                assert!(v["fields"]["message"].is_string(), "{line}");
                assert!(v["level"].is_string(), "{line}");
            }
        }
    }

    // The environment variable the images set.
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, &config).expect("write");
    // The port is taken: the router exits after loading (and logging) its config.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = router()
        .args(["--config"])
        .arg(&config_path)
        .args(["--listen", addr.as_str()])
        .env("TAILOR_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert_eq!(v["fields"]["message"], "configuration loaded");
}
