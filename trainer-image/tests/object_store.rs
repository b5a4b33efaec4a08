//! tailor-trainer with its base model, data and output in S3 (a real S3 server, s3s-fs,
//! started here; see tailor-local-s3 for why that server): checkpoints go to the bucket as
//! they are written, and a run killed mid-way and restarted with an empty local disk resumes
//! from the bucket and ends with the adapter an uninterrupted run gives.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tailor_artifacts::{ArtifactUri, Context, Env, Fetcher, Store};
use tailor_local_s3::LocalS3;
use tch::{Device, Tensor};

mod common;
use common::*;

const ACCESS_KEY: &str = "AKIATRAINERTEST0001";
const SECRET_KEY: &str = "trainer-test-secret/VALUE+x=";

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny random Llama (tokenizer trained on the examples) and the examples prepared.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("base");
    let data = repo().join("examples/quickstart/support-chat.jsonl");
    let out = Command::new(python())
        .arg(repo().join("model/tests/reference.py"))
        .args([
            "base-model",
            s(&model),
            s(&data),
            "1000",
            "64",
            "2",
            "4",
            "2",
            "128",
        ])
        .output()
        .expect("run reference.py (is the setup script's venv on PATH?)");
    check(&out, "reference.py base-model");
    let prepared = dir.join("prepared");
    let out = Command::new(BIN)
        .args([
            "prepare",
            "--input",
            s(&data),
            "--format",
            "chat",
            "--output",
            s(&prepared),
        ])
        .output()
        .expect("prepare");
    check(&out, "prepare");
    (model, prepared)
}

fn env(s3: &LocalS3) -> Vec<(String, String)> {
    s3.env()
}

fn ctx(s3: &LocalS3) -> Context {
    Context::new(Env::from_pairs(env(s3)))
}

fn train_cmd(s3: &LocalS3, output: &str, work: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "train",
        "--base-model",
        "s3://tailor/models/base",
        "--train",
        "s3://tailor/data/train.jsonl",
        "--output",
        output,
        "--work-dir",
        s(work),
        "--target-modules",
        "q_proj,v_proj,gate_proj",
        "--dropout",
        "0",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--learning-rate",
        "0.005",
        "--checkpoint-every",
        "4",
        "--max-steps",
        "30",
        "--seed",
        "7",
    ]);
    for (k, v) in env(s3) {
        c.env(k, v);
    }
    c
}

fn adapter_from_bucket(
    rt: &tokio::runtime::Runtime,
    s3: &LocalS3,
    uri: &str,
    dest: &Path,
) -> Vec<(String, Tensor)> {
    rt.block_on(Fetcher::new(ctx(s3)).fetch(&ArtifactUri::parse(uri).expect("uri"), Some(dest)))
        .expect("fetch adapter");
    tailor_model::checkpoint::read_safetensors(&dest.join("adapter_model.safetensors"), Device::Cpu)
        .expect("adapter")
}

#[test]
fn a_run_killed_mid_way_resumes_from_the_bucket_on_an_empty_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let (model, prepared) = inputs(dir.path());
    let s3 = LocalS3::start(&dir.path().join("s3"), ACCESS_KEY, SECRET_KEY).expect("s3");
    s3.create_bucket("tailor").expect("bucket");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let c = ctx(&s3);
        let bucket =
            Store::open(&ArtifactUri::parse("s3://tailor").expect("uri"), &c).expect("open");
        bucket
            .upload_dir(&model, "models/base")
            .await
            .expect("upload model");
        bucket
            .put_file("data/train.jsonl", &prepared.join("train.jsonl"))
            .await
            .expect("upload data");
    });

    let out = train_cmd(
        &s3,
        "s3://tailor/runs/straight",
        &dir.path().join("work-straight"),
    )
    .output()
    .expect("run");
    check(&out, "uninterrupted run");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["adapter"], "s3://tailor/runs/straight");

    // Killed once its first checkpoint is in the bucket (not merely on its disk).
    let mut child = train_cmd(&s3, "s3://tailor/runs/killed", &dir.path().join("work-1"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let in_bucket = s3.object_path("tailor", "runs/killed/checkpoints/step-00000004/state.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !in_bucket.exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint reached the bucket"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "trainer exited early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        !s3.object_path("tailor", "runs/killed/metrics.json")
            .exists(),
        "the run finished before the kill"
    );

    // Another "node": a new, empty work directory.
    let fresh = dir.path().join("work-2");
    assert!(!fresh.exists());
    let out = train_cmd(&s3, "s3://tailor/runs/killed", &fresh)
        .output()
        .expect("rerun");
    check(&out, "resumed run");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let from = m["resumedFromStep"]
        .as_u64()
        .expect("resumed from the bucket");
    assert!((4..30).contains(&from), "resumed from {from}");
    assert_eq!(m["steps"], 30);

    let straight =
        adapter_from_bucket(&rt, &s3, "s3://tailor/runs/straight", &dir.path().join("a"));
    let resumed = adapter_from_bucket(&rt, &s3, "s3://tailor/runs/killed", &dir.path().join("b"));
    let d = max_diff(&straight, &resumed);
    assert!(d <= 1e-5, "resumed adapter differs by {d}");

    // The adapter names its base model as the user did, and the bucket keeps two checkpoints.
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("b/adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["base_model_name_or_path"], "s3://tailor/models/base");
    let ckpts: Vec<String> = rt
        .block_on(
            Store::open(
                &ArtifactUri::parse("s3://tailor/runs/killed").expect("uri"),
                &ctx(&s3),
            )
            .expect("open")
            .list("checkpoints"),
        )
        .expect("list")
        .into_iter()
        .filter(|o| o.path.ends_with("/state.json"))
        .map(|o| o.path)
        .collect();
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(SECRET_KEY) && !all.contains(ACCESS_KEY),
        "{all}"
    );
}

/// `prepare --output s3://...` (a Dataset's output in the operator's artifact store): the same
/// files a local output gets, uploaded with `stats.json` last.
#[test]
fn prepare_writes_its_output_to_the_bucket() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = LocalS3::start(&dir.path().join("s3"), ACCESS_KEY, SECRET_KEY).expect("s3");
    s3.create_bucket("tailor").expect("bucket");
    let data = repo().join("examples/quickstart/support-chat.jsonl");
    let prepare = |output: &str| {
        let mut c = Command::new(BIN);
        c.args([
            "prepare",
            "--input",
            s(&data),
            "--format",
            "chat",
            "--output",
            output,
        ]);
        for (k, v) in env(&s3) {
            c.env(k, v);
        }
        let out = c.output().expect("prepare");
        check(&out, &format!("prepare to {output}"));
    };
    let local = dir.path().join("local");
    prepare(s(&local));
    prepare("s3://tailor/team-a/datasets/chat/abc");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let store = Store::open(
        &ArtifactUri::parse("s3://tailor/team-a/datasets/chat/abc").expect("uri"),
        &ctx(&s3),
    )
    .expect("open");
    let listed: Vec<String> = rt
        .block_on(store.list(""))
        .expect("list")
        .into_iter()
        .map(|o| o.path)
        .collect();
    let mut want = tailor_artifacts::store::local_files(&local).expect("local files");
    want.sort();
    assert_eq!(listed, want);
    assert!(listed.iter().any(|f| f == "stats.json"), "{listed:?}");
    for f in &want {
        let got = rt.block_on(store.read_bytes(f, 1 << 30)).expect("read");
        assert_eq!(
            got.as_ref(),
            std::fs::read(local.join(f)).expect("local").as_slice(),
            "{f}"
        );
    }
}
