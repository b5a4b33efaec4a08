//! tailor-trainer as a process: prepare, train against PyTorch + PEFT, progress endpoints,
//! resume after SIGKILL, and bad input.
//!
//! Size (over 700 lines, on purpose): one suite of the trainer binary's behaviour, sharing the
//! PEFT reference runs and fixtures of `tests/common`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tch::Device;

mod common;
use common::*;

struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    prepared: PathBuf,
}

/// A tiny random Llama whose tokenizer is trained on the examples dataset, and that dataset
/// prepared; built once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("base");
        let data = examples_jsonl();
        reference(&[
            "base-model",
            model.to_str().expect("utf8"),
            data.to_str().expect("utf8"),
            "1000",
            "64",
            "2",
            "4",
            "2",
            "128",
        ]);
        let prepared = dir.path().join("prepared");
        let out = trainer(&[
            "prepare",
            "--input",
            data.to_str().expect("utf8"),
            "--format",
            "chat",
            "--output",
            prepared.to_str().expect("utf8"),
            "--dedupe",
            "--validation-fraction",
            "0.2",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture {
            _dir: dir,
            model,
            prepared,
        }
    })
}

fn trainer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tailor-trainer")
}

fn read_jsonl(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn prepare_validates_redacts_dedupes_and_splits_stably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let chat = |u: &str, a: &str| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"{u}"}},{{"role":"assistant","content":"{a}"}}]}}"#
        )
    };
    let mut data = Vec::new();
    for i in 0..40 {
        data.extend_from_slice(chat(&format!("question {i}"), &format!("answer {i}")).as_bytes());
        data.push(b'\n');
    }
    data.extend_from_slice(chat("Question 0", "answer   0").as_bytes()); // duplicate after normalisation
    data.extend_from_slice(b"\n{\"messages\": [\n");
    data.extend_from_slice(b"{\"text\": \"caf\xff\xfe\"}\n");
    data.extend_from_slice(chat("mail me at a.b@example.com", "call +1 555 123 4567").as_bytes());
    data.extend_from_slice(b"\n\n");
    std::fs::write(&input, &data).expect("write");
    let out_dir = dir.path().join("out");
    let config = dir.path().join("prepare.json");
    std::fs::write(
        &config,
        serde_json::json!({"input": input, "format": "chat", "output": out_dir, "dedupe": true,
            "redact": ["email", "phone"], "validationFraction": 0.25, "testFraction": 0.1})
        .to_string(),
    )
    .expect("write config");
    let out = trainer(&["prepare", "--config", s(&config)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = json_file(&out_dir.join("stats.json"));
    assert_eq!(stats["examples"], 41);
    assert_eq!(stats["invalid"], 2);
    assert_eq!(stats["duplicatesRemoved"], 1);
    assert_eq!(stats["redactions"], 2);
    let sum = ["train", "validation", "test"]
        .iter()
        .map(|k| stats[k].as_u64().expect("count"))
        .sum::<u64>();
    assert_eq!(sum, 41);
    assert!(stats["validation"].as_u64().expect("v") > 0 && stats["test"].as_u64().expect("t") > 0);
    let samples = stats["invalidSamples"].as_array().expect("samples");
    assert_eq!(samples[0]["line"], 42);
    assert!(
        samples[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("invalid JSON")
    );
    assert_eq!(samples[1]["line"], 43);
    assert!(
        samples[1]["reason"]
            .as_str()
            .expect("reason")
            .contains("UTF-8")
    );
    let all: String = ["train", "validation", "test"]
        .iter()
        .flat_map(|k| read_jsonl(&out_dir.join(format!("{k}.jsonl"))))
        .collect();
    assert!(all.contains("[EMAIL]") && all.contains("[PHONE]") && !all.contains("example.com"));
    assert_eq!(stats["contentHash"].as_str().expect("hash").len(), 64);

    // Adding data never moves an old example to another split.
    let mut more = data.clone();
    for i in 100..130 {
        more.extend_from_slice(chat(&format!("new {i}"), "ok").as_bytes());
        more.push(b'\n');
    }
    std::fs::write(&input, &more).expect("write");
    let out_dir2 = dir.path().join("out2");
    let out = trainer(&["prepare", "--config", s(&config), "--output", s(&out_dir2)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for split in ["train", "validation", "test"] {
        let new = read_jsonl(&out_dir2.join(format!("{split}.jsonl")));
        for line in read_jsonl(&out_dir.join(format!("{split}.jsonl"))) {
            assert!(new.contains(&line), "{line} left {split}");
        }
    }
}

#[test]
fn prepare_rejects_empty_and_all_invalid_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [
        ("empty", &b""[..]),
        ("invalid", &b"{\"prompt\": 1}\nnot json\n\xc3\x28\n"[..]),
    ] {
        let input = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&input, content).expect("write");
        let term = dir.path().join(format!("{name}.termination"));
        let out = trainer(&[
            "prepare",
            "--input",
            s(&input),
            "--format",
            "completion",
            "--output",
            s(&dir.path().join(name)),
            "--termination-message-path",
            s(&term),
        ]);
        assert!(!out.status.success(), "{name} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("only 0 valid examples"), "{name}: {err}");
        assert_eq!(json_file(&term)["status"], "Failed");
        if name == "invalid" {
            assert!(err.contains("first invalid line 1"), "{err}");
            assert_eq!(
                json_file(&dir.path().join(name).join("stats.json"))["invalid"],
                3
            );
        }
    }
}

/// A PEFT-initialised adapter for the fixture's model: q, v and down projections, rank 4,
/// alpha 8, seed 3 (B non-zero, so the first steps move every tensor).
fn peft_init(f: &Fixture, dir: &Path) -> PathBuf {
    let init = dir.join("init");
    reference(&[
        "peft-init",
        s(&f.model),
        s(&init),
        "q_proj,v_proj,down_proj",
        "4",
        "8",
        "3",
    ]);
    init
}

/// PyTorch + PEFT replaying `batches` (as tailor dumped them) from `init` into `out`: its
/// per-step losses.
fn peft_losses(f: &Fixture, init: &Path, batches: &Path, out: &Path) -> Vec<f64> {
    reference(&["train", s(&f.model), s(init), s(batches), s(out)]);
    serde_json::from_slice(&std::fs::read(out.join("losses.json")).expect("losses")).expect("json")
}

fn assert_losses_match_peft(ours: &[f64], theirs: &[f64]) {
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let rel = (a - b).abs() / b.abs();
        assert!(
            rel <= 1e-4,
            "step {}: tailor {a} vs PEFT {b} (relative {rel})",
            i + 1
        );
    }
}

/// One process, micro-batches of 4, for `steps` steps into `out`, dumping the batches it trained
/// on (for PEFT to replay): returns the dump's path.
fn run_dumping_batches(f: &Fixture, init: &Path, out: &Path, steps: usize) -> PathBuf {
    let batches = out.with_extension("batches.json");
    let mut args = dp_args(f, init, out, 4, steps);
    args.extend(["--dump-batches".into(), s(&batches).into()]);
    succeeded(Command::new(BIN).args(&args).output().expect("run"));
    batches
}

#[test]
fn training_matches_pytorch_peft_step_for_step() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let init = peft_init(f, dir.path());
    let out = dir.path().join("tailor");
    let batches = run_dumping_batches(f, &init, &out, 20);
    let ours = losses(&out);
    assert_eq!(ours.len(), 20);
    let peft_out = dir.path().join("peft");
    assert_losses_match_peft(&ours, &peft_losses(f, &init, &batches, &peft_out));
    assert!(ours[19] < ours[0] - 0.01, "loss did not fall: {ours:?}");
    // And the adapters they end with agree.
    let d = max_diff(&adapter_tensors(&out), &adapter_tensors(&peft_out));
    assert!(d <= 1e-4, "final adapters differ by {d}");
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[test]
fn training_on_examples_lowers_validation_loss_and_reports_progress() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("train.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "baseModel": f.model, "train": f.prepared.join("train.jsonl"),
            "validation": f.prepared.join("validation.jsonl"), "output": out,
            "rank": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "epochs": 3, "learningRate": 0.003, "batchSize": 8, "gradientAccumulationSteps": 1,
            "maxSeqLength": 256, "warmupRatio": 0.05, "scheduler": "cosine", "seed": 42,
            "checkpointEverySteps": 20, "progressListen": addr,
            "terminationMessagePath": dir.path().join("termination")
        })
        .to_string(),
    )
    .expect("config");
    let mut child = Command::new(BIN)
        .args(["train", "--config", s(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let progress = loop {
        if let Some((200, body)) = http_get(&addr, "/progress") {
            break body;
        }
        assert!(Instant::now() < deadline, "no /progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "trainer exited before /progress answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let p: Value = serde_json::from_str(&progress).expect("progress json");
    for key in [
        "epoch",
        "step",
        "totalSteps",
        "trainLoss",
        "validationLoss",
        "tokensPerSecond",
        "eta",
    ] {
        assert!(p.get(key).is_some(), "/progress lacks {key}: {p}");
    }
    let (status, metrics) = http_get(&addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tailor_trainer_step")
            && metrics.contains("tailor_trainer_tokens_per_second"),
        "{metrics}"
    );
    let status = child.wait().expect("wait");
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert!(status.success(), "{err}");
    let m = json_file(&out.join("metrics.json"));
    let base = m["baseValidationLoss"].as_f64().expect("base");
    let tuned = m["validationLoss"].as_f64().expect("tuned");
    assert!(
        tuned < base,
        "validation loss {tuned} not below base {base}"
    );
    for key in [
        "trainLoss",
        "steps",
        "tokens",
        "tokensPerSecond",
        "wallSeconds",
    ] {
        assert!(
            m.get(key).is_some_and(|v| !v.is_null()),
            "metrics.json lacks {key}"
        );
    }
    assert_eq!(
        json_file(&dir.path().join("termination"))["status"],
        "Succeeded"
    );
    assert!(
        out.join("adapter_config.json").exists() && out.join("adapter_model.safetensors").exists()
    );
    let ckpts: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .expect("checkpoints")
        .collect();
    assert!(!ckpts.is_empty());
}

fn resume_args<'a>(f: &'a Fixture, out: &'a Path) -> Vec<String> {
    [
        "train",
        "--base-model",
        s(&f.model),
        "--train",
        s(&f.prepared.join("train.jsonl")),
        "--output",
        s(out),
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
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[test]
fn resumes_after_sigkill_and_ends_where_an_uninterrupted_run_ends() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let straight = dir.path().join("straight");
    let run = Command::new(BIN)
        .args(resume_args(f, &straight))
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let killed = dir.path().join("killed");
    let mut child = Command::new(BIN)
        .args(resume_args(f, &killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let first_ckpt = killed.join("checkpoints/step-00000004/state.json");
    while !first_ckpt.exists() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "trainer exited early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        !killed.join("metrics.json").exists(),
        "run finished before the kill"
    );

    let run = Command::new(BIN)
        .args(resume_args(f, &killed))
        .output()
        .expect("rerun");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let m = json_file(&killed.join("metrics.json"));
    let from = m["resumedFromStep"].as_u64().expect("resumed");
    assert!((4..30).contains(&from), "resumed from {from}");
    assert_eq!(m["steps"], 30);
    let d = max_diff(&adapter_tensors(&straight), &adapter_tensors(&killed));
    assert!(d <= 1e-5, "resumed adapter differs by {d}");
    let a = json_file(&straight.join("metrics.json"));
    assert_eq!(
        a["history"].as_array().map(Vec::len),
        m["history"].as_array().map(Vec::len)
    );
}

fn train_fails(args: &[&str], expect: &str) {
    let out = trainer(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(
        err.contains(expect),
        "error for {args:?} lacks {expect:?}: {err}"
    );
}

#[test]
fn bad_input_fails_with_a_clear_error() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let train = f.prepared.join("train.jsonl");
    let out = dir.path().join("out");
    let base = |model: &Path| {
        vec![
            "train".to_string(),
            "--base-model".into(),
            s(model).into(),
            "--train".into(),
            s(&train).into(),
            "--output".into(),
            s(&out).into(),
            "--max-steps".into(),
            "1".into(),
        ]
    };
    let run = |model: &Path, extra: &[&str], expect: &str| {
        let mut a = base(model);
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        train_fails(&refs, expect);
    };
    // Missing model directory / checkpoint files.
    run(&dir.path().join("nope"), &[], "config.json");
    let copy = dir.path().join("model");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(f.model.join(file), copy.join(file)).expect("copy");
    }
    run(&copy, &[], "no checkpoint");
    // Corrupt weights.
    let weights = std::fs::read(f.model.join("model.safetensors")).expect("read");
    std::fs::write(
        copy.join("model.safetensors"),
        &weights[..weights.len() - 100],
    )
    .expect("write");
    run(&copy, &[], "corrupt safetensors");
    std::fs::write(copy.join("model.safetensors"), &weights).expect("write");
    // Unsupported architecture.
    let mut cfg = json_file(&f.model.join("config.json"));
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(copy.join("config.json"), cfg.to_string()).expect("write");
    run(&copy, &[], "unsupported architecture \"GPT2LMHeadModel\"");
    // Target modules that do not exist.
    run(
        &f.model,
        &["--target-modules", "q_proj,attn_proj"],
        "LoRA target module \"attn_proj\" does not exist in llama models (allowed: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear)",
    );
    // An initial adapter for a base model with other shapes.
    let other = dir.path().join("other-adapter");
    let mut mc = tailor_model::ModelConfig::from_dir(&f.model).expect("config");
    mc.hidden_size = 32;
    let lc = tailor_model::LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: tailor_model::TargetModule::parse_list(&["q_proj", "v_proj"])
            .expect("targets"),
        use_rslora: false,
    };
    let adapter = tailor_model::LoraAdapter::init(&mc, lc, Device::Cpu).expect("init");
    tailor_model::peft::save_adapter(&adapter, &other, "other").expect("save");
    run(
        &f.model,
        &["--init-adapter", s(&other)],
        "trained for a different base model",
    );
    // Empty and non-UTF-8 training data.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").expect("write");
    let mut a = base(&f.model);
    a[4] = s(&empty).into();
    train_fails(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "no training examples",
    );
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n").expect("write");
    a[4] = s(&bad).into();
    train_fails(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "bad.jsonl:2: not valid UTF-8",
    );
    // Unknown keys in --config are refused, with the key named.
    let config = dir.path().join("c.json");
    std::fs::write(
        &config,
        r#"{"baseModel": "/m", "train": "/t", "output": "/o", "learningrate": 1}"#,
    )
    .expect("write");
    train_fails(&["train", "--config", s(&config)], "learningrate");
}

/// A run of `steps` steps from `init` with `batch` examples per rank and micro-batch.
fn dp_args(f: &Fixture, init: &Path, out: &Path, batch: usize, steps: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--base-model",
        s(&f.model),
        "--train",
        s(&f.prepared.join("train.jsonl")),
        "--output",
        s(out),
        "--init-adapter",
        s(init),
        "--target-modules",
        "q_proj,v_proj,down_proj",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--dropout",
        "0",
        "--epochs",
        "2",
        "--grad-accum",
        "2",
        "--learning-rate",
        "0.01",
        "--warmup-ratio",
        "0.1",
        "--scheduler",
        "cosine",
        "--weight-decay",
        "0.01",
        "--checkpoint-every",
        "3",
        "--threads",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend([
        "--batch-size".into(),
        batch.to_string(),
        "--max-steps".into(),
        steps.to_string(),
    ]);
    args
}

fn losses(out: &Path) -> Vec<f64> {
    json_file(&out.join("metrics.json"))["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["loss"].as_f64().expect("loss"))
        .collect()
}

fn succeeded(out: Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two nodes of one rank each, as two processes (an Indexed Job's two pods).
fn two_nodes(args: &[String], port: u16) -> [Output; 2] {
    let node = |rank: usize| {
        Command::new(BIN)
            .args(args)
            .args(["--nnodes", "2", "--node-rank", &rank.to_string()])
            .args([
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a rank")
    };
    let (a, b) = (node(0), node(1));
    [
        a.wait_with_output().expect("rank 0"),
        b.wait_with_output().expect("rank 1"),
    ]
}

#[test]
fn two_ranks_on_gloo_train_what_one_process_trains_on_their_batches_and_peft_agrees() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let init = peft_init(f, dir.path());
    // One process, micro-batches of 4.
    let one = dir.path().join("one");
    let batches = run_dumping_batches(f, &init, &one, 12);

    // Two ranks of micro-batches of 2, started by the binary as one node's launcher.
    let two = dir.path().join("two");
    let mut args = dp_args(f, &init, &two, 2, 12);
    args.extend([
        "--nproc-per-node".into(),
        "2".into(),
        "--master-port".into(),
        free_port().to_string(),
    ]);
    succeeded(
        Command::new(BIN)
            .args(&args)
            .env("TAILOR_PROFILE", "1")
            .env("TAILOR_PEAK_TFLOPS", "1")
            .output()
            .expect("run"),
    );

    let (a, b) = (losses(&one), losses(&two));
    assert_eq!((a.len(), b.len()), (12, 12));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5,
            "step {}: 1 rank {x}, 2 ranks {y}",
            i + 1
        );
    }
    let d = max_diff(&adapter_tensors(&one), &adapter_tensors(&two));
    assert!(d <= 1e-5, "adapters of 1 and 2 ranks differ by {d}");
    // Only rank 0 wrote the run's outputs and checkpoints.
    let m = json_file(&two.join("metrics.json"));
    assert_eq!(m["steps"], 12);
    assert!(m["tokensPerSecond"].as_f64().expect("tokens/s") > 0.0);
    // TAILOR_PROFILE=1: per-phase milliseconds of the steady-state steps, the group's tokens/s
    // and MFU against the given peak.
    let p = json_file(&two.join("profile.json"));
    assert_eq!(p["steps"], 10, "{p}");
    for phase in [
        "data",
        "forward",
        "head",
        "backward",
        "all-reduce",
        "clip",
        "optimizer",
    ] {
        assert!(
            p["msPerStep"][phase].as_f64().is_some_and(|ms| ms > 0.0),
            "{phase}: {p}"
        );
    }
    // Ops the host dispatched per step, by phase (libtorch's observer): every phase does some,
    // and a step of this 2-layer model is a few hundred.
    for phase in ["forward", "head", "backward", "clip", "optimizer"] {
        assert!(
            p["opsPerStep"][phase]
                .as_f64()
                .is_some_and(|ops| ops >= 1.0),
            "{phase}: {p}"
        );
    }
    assert!(
        p["stepOps"]
            .as_f64()
            .is_some_and(|ops| (100.0..10_000.0).contains(&ops)),
        "{p}"
    );
    assert_eq!(
        p["hostSyncsPerStep"], 3.0,
        "one per micro-batch's loss, one for the reduced loss"
    );
    assert!(p["mfu"].as_f64().is_some_and(|m| m > 0.0), "{p}");

    // PyTorch + PEFT on the same batches.
    let peft_out = dir.path().join("peft");
    assert_losses_match_peft(&b, &peft_losses(f, &init, &batches, &peft_out));
    let d = max_diff(&adapter_tensors(&two), &adapter_tensors(&peft_out));
    assert!(d <= 1e-4, "2 ranks and PEFT end {d} apart");

    // Two nodes stopped at step 6 and started again resume from rank 0's checkpoint (rank 1
    // gets the adapter, the moments and the data position from it) and end where the
    // uninterrupted two-rank run ends.
    let resumed = dir.path().join("resumed");
    for steps in [6, 12] {
        let outs = two_nodes(&dp_args(f, &init, &resumed, 2, steps), free_port());
        for o in outs {
            succeeded(o);
        }
    }
    let m = json_file(&resumed.join("metrics.json"));
    assert_eq!(m["resumedFromStep"], 6);
    assert_eq!(losses(&resumed), b);
    let d = max_diff(&adapter_tensors(&two), &adapter_tensors(&resumed));
    assert!(
        d <= 1e-5,
        "the resumed group ends {d} from the uninterrupted one"
    );
}

#[test]
fn a_rank_that_dies_fails_its_peers_instead_of_hanging_them() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let init = peft_init(f, dir.path());
    let out = dir.path().join("out");
    let term = dir.path().join("termination");
    std::fs::write(&term, "").expect("termination file");
    let port = free_port();
    let mut args = dp_args(f, &init, &out, 2, 100_000);
    for (flag, value) in [("--epochs", "1000"), ("--checkpoint-every", "1")] {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = value.into();
    }
    let node = |rank: usize, term: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.args(&args)
            .args(["--nnodes", "2", "--node-rank", &rank.to_string()])
            .args([
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = term {
            c.args(["--termination-message-path", s(t)]);
        }
        c.spawn().expect("spawn a rank")
    };
    let leader = node(0, Some(&term));
    let mut peer = node(1, None);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut leader = leader;
    while !out.join("checkpoints/step-00000002/state.json").exists() {
        assert!(Instant::now() < deadline, "the group made no progress");
        assert!(
            leader.try_wait().expect("wait").is_none(),
            "rank 0 ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    peer.kill().expect("SIGKILL rank 1");
    let _ = peer.wait();
    // Rank 0 fails on its own (the wait is bounded only so a regression cannot hang CI).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(leader.wait_with_output());
    });
    let done = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("rank 0 still waits for its dead peer")
        .expect("rank 0");
    assert!(!done.status.success(), "rank 0 succeeded without its peer");
    let message = json_file(&term);
    assert_eq!(message["status"], "Failed");
    let text = message["message"].as_str().expect("message");
    assert!(text.contains("all-reducing"), "{text}");
}
