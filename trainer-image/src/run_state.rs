//! Training checkpoints under `OUTPUT/checkpoints/step-NNNNNNNN/`: the adapter (PEFT format),
//! AdamW moments (`optimizer.safetensors`) and `state.json` (step, data position, loss history).
//! A checkpoint is written into a temporary directory and renamed into place, so a kill at any
//! moment leaves either the old or the new checkpoint, never half of one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tailor_model::checkpoint::{read_safetensors, write_safetensors};
use tailor_model::{LoraAdapter, ModelConfig, peft};
use tch::{Device, Tensor};

use crate::optim::AdamW;

const KEEP: usize = 2;

pub use tailor_wire::train::StepRecord;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Epoch of the last completed step and the next micro-batch within it (data position).
    pub epoch: usize,
    pub micro_batch: usize,
    pub adam_step: i64,
    pub tokens: u64,
    pub wall_seconds: f64,
    pub base_validation_loss: Option<f64>,
    pub history: Vec<StepRecord>,
}

impl RunState {
    pub fn new(base_validation_loss: Option<f64>) -> Self {
        Self {
            step: 0,
            epoch: 0,
            micro_batch: 0,
            adam_step: 0,
            tokens: 0,
            wall_seconds: 0.0,
            base_validation_loss,
            history: Vec::new(),
        }
    }
}

fn step_of(dir: &Path) -> Option<usize> {
    tailor_wire::train::checkpoint_step(dir.file_name()?.to_str()?)
}

fn complete_checkpoints(root: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let p = e?.path();
        if let Some(s) = step_of(&p)
            && p.join("state.json").exists()
        {
            out.push((s, p));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint, if any.
pub fn latest(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(complete_checkpoints(root)?.pop().map(|(_, p)| p))
}

pub fn save(
    root: &Path,
    adapter: &LoraAdapter,
    optim: &AdamW,
    state: &RunState,
    base_model: &str,
) -> anyhow::Result<PathBuf> {
    let final_dir = root.join(tailor_wire::train::checkpoint_dir(state.step));
    let tmp = root.join(format!(
        ".tmp-{}",
        tailor_wire::train::checkpoint_dir(state.step)
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    peft::save_adapter(adapter, &tmp, base_model)?;
    let names = peft::named_tensors(adapter);
    let mut tensors = Vec::with_capacity(names.len() * 2);
    for ((name, _), (m, v)) in names
        .iter()
        .zip(optim.exp_avg.iter().zip(&optim.exp_avg_sq))
    {
        tensors.push((format!("{name}.exp_avg"), m.shallow_clone()));
        tensors.push((format!("{name}.exp_avg_sq"), v.shallow_clone()));
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &tensors)?;
    let mut state = state.clone();
    state.adam_step = optim.step;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("publishing {}", final_dir.display()))?;
    tracing::info!(step = state.step, checkpoint = %final_dir.display(), "checkpoint written");
    let all = complete_checkpoints(root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(KEEP)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

pub fn load(
    dir: &Path,
    model: &ModelConfig,
    device: Device,
    weight_decay: f64,
) -> anyhow::Result<(LoraAdapter, AdamW, RunState)> {
    let state: RunState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
        .with_context(|| format!("{}: invalid state.json", dir.display()))?;
    let adapter = peft::load_adapter(dir, model, device)?;
    let moments = read_safetensors(&dir.join("optimizer.safetensors"), device)?;
    let find = |name: &str| -> anyhow::Result<Tensor> {
        moments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| format!("{}: optimizer state lacks {name}", dir.display()))
    };
    let mut optim = AdamW::new(&adapter.parameters(), weight_decay);
    optim.step = state.adam_step;
    for (i, (name, _)) in peft::named_tensors(&adapter).iter().enumerate() {
        optim.exp_avg[i] = find(&format!("{name}.exp_avg"))?;
        optim.exp_avg_sq[i] = find(&format!("{name}.exp_avg_sq"))?;
    }
    Ok((adapter, optim, state))
}
