//! The step profile `TAILOR_PROFILE=1` prints at the end of a run (and writes to
//! `profile.json` in the output): milliseconds and host-dispatched ops per step by phase
//! (`opsPerStep`, top-level aten calls counted by libtorch's RecordFunction observer; on a GPU,
//! close to the kernel launches each step pays host time for), deliberate host syncs per step,
//! steady-state tokens/s and, given the device's peak (`TAILOR_PEAK_TFLOPS`), the model FLOP
//! utilisation. Steady state: the first `WARMUP` steps (allocator growth, first-call setup) are
//! left out, and so are checkpoint saves and validation, which run between steps.

use serde_json::{Value, json};
use tailor_model::profile::{Phase, Step};
use tailor_model::{ModelConfig, TargetModule};

pub const WARMUP: usize = 2;

#[derive(Default)]
pub struct StepProfile {
    seen: usize,
    steps: usize,
    phases: Vec<Phase>,
    syncs: u64,
    tokens: u64,
}

/// Starts counting ops for the profile (libtorch's observer, through `tailor-dist`). Called only
/// when profiling: the observer costs a little on every op.
pub fn count_ops() -> anyhow::Result<()> {
    tailor_dist::ops::install().map_err(|e| anyhow::anyhow!("installing the op counter: {e}"))?;
    tailor_model::profile::count_ops_with(tailor_dist::ops::count);
    Ok(())
}

impl StepProfile {
    /// Adds one step (`tokens` of the whole group) unless it is a warm-up step.
    pub fn record(&mut self, step: Step, tokens: usize) {
        self.seen += 1;
        if self.seen <= WARMUP {
            return;
        }
        self.steps += 1;
        self.syncs += step.syncs;
        self.tokens += tokens as u64;
        for phase in step.phases {
            match self.phases.iter_mut().find(|p| p.name == phase.name) {
                Some(total) => {
                    total.time += phase.time;
                    total.ops += phase.ops;
                }
                None => self.phases.push(phase),
            }
        }
    }

    /// The report, or `None` before any steady-state step.
    pub fn report(&self, params: f64, peak_tflops: Option<f64>) -> Option<Value> {
        if self.steps == 0 {
            return None;
        }
        let n = self.steps as f64;
        let seconds: f64 = self.phases.iter().map(|p| p.time.as_secs_f64()).sum();
        let tokens_per_second = self.tokens as f64 / seconds.max(1e-12);
        let per_phase = |value: &dyn Fn(&Phase) -> f64| -> serde_json::Map<String, Value> {
            self.phases
                .iter()
                .map(|p| (p.name.to_string(), json!(value(p) / n)))
                .collect()
        };
        let ops: u64 = self.phases.iter().map(|p| p.ops).sum();
        let flops = 4.0 * params * tokens_per_second;
        Some(json!({
            "steps": self.steps,
            "warmupSteps": WARMUP,
            "msPerStep": per_phase(&|p| p.time.as_secs_f64() * 1e3),
            "stepMs": seconds * 1e3 / n,
            "opsPerStep": per_phase(&|p| p.ops as f64),
            "stepOps": ops as f64 / n,
            "hostSyncsPerStep": self.syncs as f64 / n,
            "tokensPerSecond": tokens_per_second,
            "modelParameters": params,
            "tflops": flops / 1e12,
            "mfu": peak_tflops.map(|p| flops / (p * 1e12)),
        }))
    }
}

/// Weights that take part in a token's matmuls: every layer's projections and the LM head
/// (embedding lookups are not FLOPs). Sparse layers count one expert per token's top-k.
pub fn matmul_parameters(config: &ModelConfig) -> f64 {
    let per_layer: f64 = TargetModule::ALL
        .iter()
        .map(|&m| {
            let (fan_in, fan_out) = config.projection_shape(m);
            (fan_in * fan_out) as f64
        })
        .sum();
    per_layer * config.num_hidden_layers as f64 + (config.vocab_size * config.hidden_size) as f64
}

/// The device's peak dense TFLOP/s for MFU, from `TAILOR_PEAK_TFLOPS`.
pub fn peak_tflops() -> Option<f64> {
    std::env::var("TAILOR_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| *v > 0.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn warm_up_steps_are_left_out_and_phases_averaged() {
        let phase = |name, ms, ops| Phase {
            name,
            time: Duration::from_millis(ms),
            ops,
        };
        let step = |ms: u64| Step {
            phases: vec![phase("forward", ms, 30), phase("optimizer", 1, 4)],
            syncs: 2,
        };
        let mut p = StepProfile::default();
        assert!(p.report(1e6, None).is_none());
        p.record(step(1000), 10);
        p.record(step(1000), 10);
        p.record(step(3), 100);
        p.record(step(5), 100);
        let r = p.report(1e6, Some(1.0)).expect("report");
        assert_eq!(r["steps"], 2);
        assert_eq!(r["msPerStep"]["forward"], 4.0);
        assert_eq!(r["opsPerStep"]["forward"], 30.0);
        assert_eq!(r["stepOps"], 34.0);
        assert_eq!(r["hostSyncsPerStep"], 2.0);
        // 200 tokens in 10 ms.
        assert_eq!(r["tokensPerSecond"], 20_000.0);
        assert!((r["mfu"].as_f64().expect("mfu") - 4.0 * 1e6 * 20_000.0 / 1e12).abs() < 1e-12);
    }
}
