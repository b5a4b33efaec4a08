//! tailor-trainer on each model family against PyTorch + PEFT: 20 optimizer steps from the same
//! PEFT-initialised adapter on the same batches (tailor dumps them) give the same losses
//! (relative 1e-4) and the same final adapter. The base models are tiny random checkpoints of
//! the family's own config class (model/tests/reference.py FAMILIES) with a tokenizer trained on
//! the examples dataset; sequences are longer than their sliding windows.

use std::process::{Command, Output};

mod common;
use common::*;

fn trainer(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run tailor-trainer");
    assert!(
        out.status.success(),
        "tailor-trainer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (reference.py FAMILIES entry, LoRA targets)
const CASES: [(&str, &str); 6] = [
    ("llama32_tied", "q_proj,v_proj,down_proj"),
    ("mistral", "q_proj,k_proj,o_proj,up_proj"),
    ("gemma2", "q_proj,v_proj,gate_proj,down_proj"),
    ("gemma3", "q_proj,k_proj,v_proj,o_proj,down_proj"),
    ("phi3", "qkv_proj,o_proj,gate_up_proj,down_proj"),
    ("qwen3_moe", "q_proj,k_proj,v_proj,o_proj"),
];

#[test]
fn twenty_lora_steps_match_pytorch_peft_for_every_family() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = repo().join("examples/quickstart/support-chat.jsonl");
    let prepared = dir.path().join("prepared");
    trainer(&[
        "prepare",
        "--input",
        s(&data),
        "--format",
        "chat",
        "--output",
        s(&prepared),
        "--dedupe",
        "--validation-fraction",
        "0.2",
    ]);
    // The base models and PEFT's initial adapters of every family, in one Python process.
    let base = |family: &str| dir.path().join(family).join("base");
    let init = |family: &str| dir.path().join(family).join("init");
    let prepare: Vec<Vec<String>> = CASES
        .iter()
        .flat_map(|&(family, targets)| {
            let (base, init) = (base(family), init(family));
            let (base, init) = (s(&base), s(&init));
            [
                vec![
                    "base-model",
                    base,
                    s(&data),
                    "1000",
                    "64",
                    "2",
                    "4",
                    "2",
                    "128",
                    "0",
                    family,
                ],
                vec!["peft-init", base, init, targets, "4", "8", "3"],
            ]
            .map(|c| c.into_iter().map(String::from).collect())
        })
        .collect();
    reference_many(&prepare);
    // tailor-trainer on each, dumping the batches it trained on.
    let (mut peft_runs, mut results) = (Vec::new(), Vec::new());
    for (family, targets) in CASES {
        let (base, init) = (base(family), init(family));
        let out = dir.path().join(family).join("tailor");
        let batches = dir.path().join(family).join("batches.json");
        trainer(&[
            "train",
            "--base-model",
            s(&base),
            "--train",
            s(&prepared.join("train.jsonl")),
            "--output",
            s(&out),
            "--init-adapter",
            s(&init),
            "--target-modules",
            targets,
            "--rank",
            "4",
            "--alpha",
            "8",
            "--dropout",
            "0",
            "--epochs",
            "2",
            "--batch-size",
            "4",
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
            "--max-steps",
            "20",
            "--dump-batches",
            s(&batches),
        ]);
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics"))
                .expect("json");
        let ours: Vec<f64> = metrics["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|h| h["loss"].as_f64().expect("loss"))
            .collect();
        assert_eq!(ours.len(), 20, "{family}");
        let peft_out = dir.path().join(family).join("peft");
        peft_runs.push(
            ["train", s(&base), s(&init), s(&batches), s(&peft_out)]
                .map(String::from)
                .to_vec(),
        );
        results.push((family, ours, out, peft_out));
    }
    // PyTorch + PEFT on the same batches, every family in one Python process.
    reference_many(&peft_runs);
    for (family, ours, out, peft_out) in results {
        let theirs: Vec<f64> =
            serde_json::from_slice(&std::fs::read(peft_out.join("losses.json")).expect("losses"))
                .expect("json");
        assert_eq!(theirs.len(), 20);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let rel = (a - b).abs() / b.abs();
            assert!(
                rel <= 1e-4,
                "{family}: step {}: tailor {a} vs PEFT {b} (relative {rel})",
                i + 1
            );
        }
        assert!(
            ours[19] < ours[0] - 0.01,
            "{family}: loss did not fall: {ours:?}"
        );
        let (a, b) = (adapter_tensors(&out), adapter_tensors(&peft_out));
        assert_eq!(a.len(), b.len(), "{family}");
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let d = (ta - tb).abs().max().double_value(&[]);
            assert!(d <= 1e-4, "{family}: {na} differs by {d}");
        }
    }
}
