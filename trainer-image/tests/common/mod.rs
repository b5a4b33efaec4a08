//! What the trainer's integration tests share: the binary, the reference implementation
//! (`model/tests/reference.py`, PyTorch + transformers + PEFT), and reading adapters back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tch::{Device, Tensor};

pub const BIN: &str = env!("CARGO_BIN_EXE_tailor-trainer");

pub fn python() -> String {
    std::env::var("TAILOR_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn repo() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"))
        .join("..")
}

/// Runs `model/tests/reference.py` and insists it succeeded.
pub fn reference(args: &[&str]) -> Output {
    let out = Command::new(python())
        .arg(repo().join("model/tests/reference.py"))
        .args(args)
        .output()
        .expect("run reference.py (is the setup script's venv on PATH?)");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the `reference.py` commands listed, one after another in one Python process
/// (`reference.py many`: Python, torch, transformers and peft start once).
pub fn reference_many(commands: &[Vec<String>]) -> Output {
    let list = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(list.path(), serde_json::to_vec(commands).expect("json")).expect("write");
    reference(&["many", s(list.path())])
}

pub fn examples_jsonl() -> PathBuf {
    repo().join("examples/quickstart/support-chat.jsonl")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

pub fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("json")
}

pub fn adapter_tensors(dir: &Path) -> Vec<(String, Tensor)> {
    tailor_model::checkpoint::read_safetensors(&dir.join("adapter_model.safetensors"), Device::Cpu)
        .expect("adapter")
}

/// The largest absolute difference between two adapters' tensors (same names, same order).
pub fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
