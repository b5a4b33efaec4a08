//! Helpers shared by the integration tests that compare tailor-model with `transformers`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tch::{Device, Tensor};

pub fn python() -> String {
    std::env::var("TAILOR_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn script() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (set by cargo test)"))
        .join("tests/reference.py")
}

/// Runs `reference.py ARGS`, failing the test with its stderr when it fails.
pub fn run_reference(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("run reference.py (is the setup script's venv on PATH?)");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the `reference.py` commands listed, one after another in one Python process
/// (`reference.py many`), failing the test as [`run_reference`] does.
pub fn run_reference_many(commands: &[Vec<String>]) -> std::process::Output {
    let list = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(list.path(), serde_json::to_vec(commands).expect("json")).expect("write");
    run_reference(&["many".as_ref(), list.path().as_os_str()])
}

/// Tiny checkpoints of `names` (entries of reference.py's FAMILIES), built once per test
/// binary by `reference.py fixtures`.
pub fn fixtures_of(names: &[&str]) -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<&std::ffi::OsStr> = vec!["fixtures".as_ref(), dir.path().as_os_str()];
        args.extend(names.iter().map(|n| std::ffi::OsStr::new(*n)));
        run_reference(&args);
        dir
    })
    .path()
}

pub fn reference(model_dir: &Path, name: &str) -> Tensor {
    let all = tailor_model::checkpoint::read_safetensors(
        &model_dir.join("reference.safetensors"),
        Device::Cpu,
    )
    .expect("reference.safetensors");
    all.into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no {name} in reference"))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}
