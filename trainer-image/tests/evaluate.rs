//! `tailor-trainer evaluate` as a process: an adapter trained to memorise a tiny dataset against
//! its base (exact match, and test loss against transformers + PEFT), and the judge protocol
//! against a real tailor-server whose verdicts are fixed by its TEST-ONLY fault injection, a
//! judge answering 500 and one that never answers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::*;

fn trainer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tailor-trainer")
}

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "tailor-trainer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("summary JSON on stdout")
}

/// Six questions with short answers of their own: a LoRA memorises them in a few hundred steps.
const FACTS: [(&str, &str); 6] = [
    (
        "What is the code of the blue door?",
        "The blue door code is 4711.",
    ),
    (
        "Which port does the billing service use?",
        "Billing listens on port 8443.",
    ),
    (
        "Who owns the search index?",
        "The search index belongs to team Otter.",
    ),
    ("When is the backup window?", "Backups run at 02:00 UTC."),
    (
        "Where are invoices archived?",
        "Invoices go to the archive bucket.",
    ),
    ("How long are logs kept?", "Logs are kept for 30 days."),
];

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
    adapter: PathBuf,
    test: PathBuf,
}

/// A tiny random Llama whose tokenizer is trained on the facts, and an adapter trained on them
/// until it repeats them; built once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let test = dir.join("facts.jsonl");
        let lines: Vec<String> = FACTS
            .iter()
            .map(|(q, a)| {
                json!({"messages": [
                    {"role": "system", "content": "Answer from the runbook."},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]})
                .to_string()
            })
            .collect();
        std::fs::write(&test, lines.join("\n") + "\n").expect("write facts");
        let model = dir.join("base");
        reference(&[
            "base-model",
            s(&model),
            s(&test),
            "400",
            "64",
            "2",
            "4",
            "2",
            "128",
        ]);
        let adapter = dir.join("adapter");
        ok(trainer(&[
            "train",
            "--base-model",
            s(&model),
            "--train",
            s(&test),
            "--output",
            s(&adapter),
            "--epochs",
            "150",
            "--batch-size",
            "6",
            "--learning-rate",
            "0.01",
            "--rank",
            "16",
            "--alpha",
            "16",
            "--dropout",
            "0",
            "--target-modules",
            "all-linear",
            "--scheduler",
            "constant",
            "--checkpoint-every",
            "0",
            "--device",
            "cpu",
            "--threads",
            "2",
        ]));
        Fixture {
            _dir: tmp,
            dir,
            model,
            adapter,
            test,
        }
    })
}

fn evaluate(f: &Fixture, extra: &[&str]) -> Value {
    let mut args = vec![
        "evaluate",
        "--base-model",
        s(&f.model),
        "--adapter",
        s(&f.adapter),
        "--test",
        s(&f.test),
        "--max-new-tokens",
        "24",
        "--device",
        "cpu",
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    ok(trainer(&args))
}

#[test]
fn a_memorised_adapter_answers_exactly_and_its_test_loss_matches_peft() {
    let f = fixture();
    let out = f.dir.join("eval");
    let batches = f.dir.join("test-batches.json");
    let e = evaluate(
        f,
        &[
            "--output",
            s(&out),
            "--dump-batches",
            s(&batches),
            "--samples",
            "3",
        ],
    );
    assert_eq!(e["status"], "Succeeded");
    assert_eq!(e["examples"], 6);
    assert_eq!(e["answered"], 6);
    let em = |who: &str| e[who]["exactMatch"].as_f64().expect("exactMatch");
    assert!(em("adapter") >= 5.0 / 6.0, "adapter exact match: {e:#}");
    assert_eq!(em("base"), 0.0, "{e:#}");
    assert!(
        e["adapter"]["tokenF1"].as_f64() > e["base"]["tokenF1"].as_f64(),
        "{e:#}"
    );
    // The report on disk is the one printed; the samples hold both answers.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(out.join("evaluation.json")).expect("report"))
            .expect("json");
    assert_eq!(on_disk["adapter"], e["adapter"]);
    let samples = read_samples(&out);
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0]["reference"], FACTS[0].1);
    assert_eq!(samples[0]["adapter"], FACTS[0].1, "{:#}", samples[0]);

    // Test loss and perplexity as transformers + PEFT compute them on the same tokens.
    let r = reference(&["eval-loss", s(&f.model), s(&f.adapter), s(&batches)]);
    let r: Value = serde_json::from_slice(&r.stdout).expect("reference JSON");
    for who in ["base", "adapter"] {
        let ours = e[who]["testLoss"].as_f64().expect("testLoss");
        let theirs = r[who].as_f64().expect("reference loss");
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-4,
            "{who}: tailor {ours} vs PEFT {theirs}"
        );
        let ppl = e[who]["perplexity"].as_f64().expect("perplexity");
        assert!((ppl - ours.exp()).abs() <= 1e-9 * ppl, "{who}: {ppl}");
    }
    assert!(
        e["adapter"]["testLoss"].as_f64() < e["base"]["testLoss"].as_f64(),
        "{e:#}"
    );
}

/// The `samples.jsonl` an evaluation wrote into `out`.
fn read_samples(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("samples.jsonl"))
        .expect("samples")
        .lines()
        .map(|l| serde_json::from_str(l).expect("sample"))
        .collect()
}

/// The workspace's tailor-server, built beside this test binary by `cargo test --workspace
/// --all-targets` (scripts/test.sh).
fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("tailor-server");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace --all-targets), which build it",
        bin.display()
    );
    bin
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tailor-server serving the base model as "judge", with the given TEST-ONLY fault flags.
fn judge_server(model: &Path, faults: &[&str]) -> Server {
    let port = free_port();
    let mut child = Command::new(server_bin())
        .arg("--model")
        .arg(model)
        .args(["--served-model-name", "judge", "--device", "cpu"])
        .args(["--threads", "1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(faults)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tailor-server");
    let url = format!("http://127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = stream.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return Server { child, url };
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tailor-server exited during startup: {status}");
        }
        assert!(Instant::now() < end, "tailor-server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_judge_sees_both_orders_and_its_failures_are_counted_not_fatal() {
    let f = fixture();
    // One verdict per request, in order (one judgement in flight at a time):
    // pair 0: A-order "A" (win), B-order "B" (win)          -> win
    // pair 1: "A" (win), "tie"                               -> win
    // pair 2: "B" (loss), "A" (loss)                         -> loss
    // pair 3: "A" (win), "A" (loss): the judge follows position -> tie
    // pair 4: junk, retried, "A" (win); "B" (win)            -> win, 1 retry
    // pair 5: junk three times (given up); "B" (win)         -> unjudged, 2 retries
    let v = |w: &str| json!({"winner": w, "reason": format!("said {w}")}).to_string();
    let script = [
        v("A"),
        v("B"),
        v("A"),
        v("tie"),
        v("B"),
        v("A"),
        v("A"),
        v("A"),
        "I cannot decide.".to_string(),
        v("A"),
        v("B"),
        "{\"verdict\": 1}".to_string(),
        "".to_string(),
        "A".to_string(),
        v("B"),
    ];
    let mut faults = vec![];
    for r in &script {
        faults.push("--fault-fixed-response");
        faults.push(r.as_str());
    }
    let server = judge_server(&f.model, &faults);
    let out = f.dir.join("judged");
    let e = evaluate(
        f,
        &[
            "--judge-url",
            &format!("{}/v1", server.url),
            "--judge-model",
            "judge",
            "--judge-concurrency",
            "1",
            "--judge-max-attempts",
            "3",
            "--output",
            s(&out),
            "--samples",
            "6",
        ],
    );
    let j = &e["judge"];
    assert_eq!(j["pairs"], 6, "{j:#}");
    assert_eq!(
        (&j["wins"], &j["ties"], &j["losses"], &j["unjudged"]),
        (&json!(3), &json!(1), &json!(1), &json!(1)),
        "{j:#}"
    );
    assert_eq!(j["judged"], 5);
    assert_eq!(j["winRate"], 0.6);
    // Wilson 95% for 3 of 5, the closed form evaluated independently.
    let (lo, hi) = (0.230_724_3, 0.882_379_2);
    assert!(
        (j["winRateLower"].as_f64().expect("lower") - lo).abs() < 1e-6,
        "{j:#}"
    );
    assert!(
        (j["winRateUpper"].as_f64().expect("upper") - hi).abs() < 1e-6,
        "{j:#}"
    );
    assert_eq!(
        (&j["winsAsA"], &j["winsAsB"]),
        (&json!(4), &json!(3)),
        "{j:#}"
    );
    assert_eq!(
        (&j["requests"], &j["retries"]),
        (&json!(15), &json!(3)),
        "{j:#}"
    );
    assert_eq!(j["failures"], 1);
    assert_eq!(j["failureKinds"]["malformed verdict"], 1, "{j:#}");
    let samples = read_samples(&out);
    assert_eq!(samples[3]["judge"]["outcome"], "tie");
    assert_eq!(samples[0]["judge"]["adapterAsA"]["reason"], "said A");
    assert!(
        samples[5]["judge"]["adapterAsA"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("malformed verdict")),
        "{:#}",
        samples[5]
    );
    drop(server);

    // A judge answering 500 to everything: every pair unjudged, the run still succeeds.
    let failing = judge_server(&f.model, &["--fault-error-rate", "1"]);
    let e = evaluate(
        f,
        &[
            "--judge-url",
            &failing.url,
            "--judge-model",
            "judge",
            "--judge-max-attempts",
            "2",
            "--max-examples",
            "2",
        ],
    );
    let j = &e["judge"];
    assert_eq!(
        (&j["judged"], &j["unjudged"]),
        (&json!(0), &json!(2)),
        "{j:#}"
    );
    assert_eq!(j["failureKinds"]["http 500"], 4, "{j:#}");
    assert_eq!(
        (&j["requests"], &j["retries"]),
        (&json!(8), &json!(4)),
        "{j:#}"
    );
    assert!(j.get("winRate").is_none(), "{j:#}");
    // The exact-match scores are there all the same.
    assert!(e["adapter"]["exactMatch"].is_number());
    drop(failing);

    // A judge that accepts the connection and never answers: timeouts, counted.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let e = evaluate(
        f,
        &[
            "--judge-url",
            &url,
            "--judge-model",
            "judge",
            "--judge-timeout-seconds",
            "1",
            "--judge-max-attempts",
            "1",
            "--max-examples",
            "1",
        ],
    );
    assert_eq!(e["judge"]["failureKinds"]["timeout"], 2, "{e:#}");
    assert_eq!(e["judge"]["unjudged"], 1);
}

#[test]
fn a_judge_too_small_for_json_judges_every_pair_with_structured_outputs() {
    let f = fixture();
    // The tiny base model as its own judge: asked for JSON, it writes none (every pair
    // unjudged); constrained to the three verdicts, every order of every pair has one.
    let server = judge_server(&f.model, &[]);
    let args = |structured: bool| {
        let mut a = vec![
            "--judge-url",
            server.url.as_str(),
            "--judge-model",
            "judge",
            "--judge-max-attempts",
            "1",
            "--max-examples",
            "3",
        ];
        if structured {
            a.push("--judge-structured-outputs");
        }
        a
    };
    let e = evaluate(f, &args(false));
    assert_eq!(e["judge"]["unjudged"], 3, "{:#}", e["judge"]);
    assert_eq!(
        e["judge"]["failureKinds"]["malformed verdict"], 6,
        "{:#}",
        e["judge"]
    );
    let out = f.dir.join("structured");
    let mut a = args(true);
    let out_s = out.display().to_string();
    a.extend(["--output", &out_s]);
    let e = evaluate(f, &a);
    let j = &e["judge"];
    assert_eq!(
        (&j["judged"], &j["unjudged"]),
        (&json!(3), &json!(0)),
        "{j:#}"
    );
    assert_eq!(j["requests"], 6, "{j:#}");
    let w = j["winRate"].as_f64().expect("a win rate");
    let (lo, hi) = (
        j["winRateLower"].as_f64().expect("lower"),
        j["winRateUpper"].as_f64().expect("upper"),
    );
    assert!(lo <= w && w <= hi, "{j:#}");
    for s in read_samples(&out) {
        for order in ["adapterAsA", "adapterAsB"] {
            let o = &s["judge"][order];
            assert!(
                ["A", "B", "tie"].contains(&o["winner"].as_str().unwrap_or("")),
                "{s:#}"
            );
            assert_eq!(o["reason"], "", "{s:#}");
        }
    }
}

#[test]
fn bad_input_fails_naming_what_is_wrong() {
    let f = fixture();
    let fails = |args: &[&str], expect: &str| {
        let mut all = vec!["evaluate", "--device", "cpu"];
        all.extend_from_slice(args);
        let out = trainer(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
    };
    let broken = f.dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"messages\": [}\n").expect("write");
    fails(
        &[
            "--base-model",
            s(&f.model),
            "--adapter",
            s(&f.adapter),
            "--test",
            s(&broken),
        ],
        "broken.jsonl:1: invalid JSON",
    );
    fails(
        &[
            "--base-model",
            s(&f.model),
            "--adapter",
            s(&f.dir.join("nope")),
            "--test",
            s(&f.test),
        ],
        "adapter_config.json does not exist",
    );
    fails(
        &["--base-model", s(&f.model), "--test", s(&f.test)],
        "missing field `adapter`",
    );
    fails(
        &[
            "--base-model",
            s(&f.model),
            "--adapter",
            s(&f.adapter),
            "--test",
            s(&f.test),
            "--judge-url",
            "http://127.0.0.1:1",
        ],
        "judge.model (--judge-model) is required",
    );
}
