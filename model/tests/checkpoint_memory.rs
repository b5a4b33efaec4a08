//! A sharded bf16 checkpoint loads as bf16 without an fp32 copy and without the file's pages
//! held a second time: the process's peak resident memory grows by less than 1.3 times the
//! checkpoint's size while loading. (Its own test binary, so no other test allocates meanwhile.)

mod common;

use std::path::Path;

use common::{max_abs_diff, reference, run_reference};
use tailor_model::CausalLm;
use tch::{Device, Kind, Tensor};

/// `VmRSS` / `VmHWM` of this process, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    kb * 1024
}

fn checkpoint_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter(|e| e.file_name() != "reference.safetensors")
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

#[test]
fn sharded_bf16_checkpoint_loads_within_1_3x_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_reference(&[
        "sharded-bf16".as_ref(),
        dir.path().as_os_str(),
        "24".as_ref(),
        "384".as_ref(),
        "20".as_ref(),
    ]);
    let index = dir.path().join("model.safetensors.index.json");
    assert!(index.exists(), "no shard index written");
    let shards = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("model-"))
        })
        .count();
    assert!(shards >= 3, "expected several shards, found {shards}");
    let size = checkpoint_bytes(dir.path());

    // libtorch's allocator and thread pool up before the baseline.
    let warm = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
    let _ = warm.matmul(&warm).sum(Kind::Float).double_value(&[]);
    // Reset the peak to the current resident size (Linux: clear_refs 5).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = status_bytes("VmRSS:");
    let model = CausalLm::load(dir.path(), Kind::BFloat16, Device::Cpu).expect("load");
    let peak = status_bytes("VmHWM:");
    let growth = peak.saturating_sub(before);
    let ratio = growth as f64 / size as f64;
    println!(
        "checkpoint {:.1} MiB in {shards} shards; peak RSS grew by {:.1} MiB while loading ({ratio:.2}x)",
        size as f64 / 1048576.0,
        growth as f64 / 1048576.0
    );
    assert!(ratio < 1.3, "loading took {ratio:.2}x the checkpoint size");
    assert!(ratio > 0.8, "the model cannot be resident: {ratio:.2}x");
    assert_eq!(model.lm_head.kind(), Kind::BFloat16);

    // And it holds the weights transformers wrote, bit for bit (bf16 widened to fp32 is exact).
    let checks = [
        ("embed_rows", model.model.embed_tokens.narrow(0, 0, 8)),
        (
            "last_down_rows",
            model.model.layers[23].mlp_down_weight().narrow(0, 0, 8),
        ),
        (
            "first_k_rows",
            model.model.layers[0]
                .self_attn
                .k_proj
                .weight
                .narrow(0, 0, 8),
        ),
    ];
    for (name, ours) in checks {
        let diff = max_abs_diff(&ours.to_kind(Kind::Float), &reference(dir.path(), name));
        assert_eq!(diff, 0.0, "{name} differs from the checkpoint");
    }
}
