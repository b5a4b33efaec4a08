//! AdamW, gradient clipping and learning-rate schedules, written out so that their state can
//! be checkpointed and their arithmetic matches `torch.optim.AdamW` (single-tensor path),
//! `torch.nn.utils.clip_grad_norm_` and `transformers`' schedules step for step. The update runs
//! on flat buffers ([`Flat`]), a few ops per step however many tensors the adapter has.

use anyhow::Context;
use tailor_dist::{bucket_grads, flat_views};
use tailor_model::{LoraAdapter, ModelConfig};
use tch::Tensor;

pub use tailor_wire::train::Scheduler;

/// The multiplier of the base learning rate for optimizer step `step` (0-based), as
/// `get_{cosine,linear,constant}_schedule_with_warmup` compute it.
pub fn lr_factor(scheduler: Scheduler, step: usize, total: usize, warmup: usize) -> f64 {
    let (s, t, w) = (step as f64, total as f64, warmup as f64);
    if step < warmup {
        return s / w.max(1.0);
    }
    match scheduler {
        Scheduler::Constant => 1.0,
        Scheduler::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
        Scheduler::Cosine => {
            let progress = (s - w) / (t - w).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
        }
    }
}

/// `ceil(total * ratio)`, as the `transformers` Trainer rounds warmup steps.
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: i64,
    /// Per adapter tensor (views into the flat moments once `Flat::new` ran): what a checkpoint
    /// stores.
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    pub fn new(params: &[&Tensor], weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            exp_avg: params.iter().map(|p| p.zeros_like()).collect(),
            exp_avg_sq: params.iter().map(|p| p.zeros_like()).collect(),
        }
    }
}

/// The adapter's trainable state in four flat buffers: parameters, gradients and the two AdamW
/// moments. The adapter's tensors, their `.grad`s and `AdamW`'s per-tensor moments are views into
/// them, so a step's clip, update and zeroing are a dozen ops in all, whatever the number of
/// adapted projections, and the arithmetic per element is exactly the per-tensor one.
pub struct Flat {
    pub params: Tensor,
    pub grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl Flat {
    /// Rebuilds `adapter` on views of one parameter buffer (its values unchanged), gives its
    /// tensors gradients in one buffer, and moves `optim`'s moments into flat buffers.
    pub fn new(
        adapter: &LoraAdapter,
        model: &ModelConfig,
        optim: &mut AdamW,
    ) -> anyhow::Result<(LoraAdapter, Self)> {
        let (params, views) = flat_views(&adapter.parameters());
        let mut views = views.into_iter();
        let pairs = adapter
            .pairs()
            .map(|(layer, module, _)| {
                let a = views.next().context("an A matrix for every pair")?;
                let b = views.next().context("a B matrix for every pair")?;
                anyhow::Ok((layer, module, a, b))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut flat_adapter = LoraAdapter::from_pairs(model, adapter.config.clone(), pairs)?;
        flat_adapter.set_requires_grad(true);
        let grads = bucket_grads(&flat_adapter.parameters())?;
        let (exp_avg, m) = flat_views(&optim.exp_avg.iter().collect::<Vec<_>>());
        let (exp_avg_sq, v) = flat_views(&optim.exp_avg_sq.iter().collect::<Vec<_>>());
        optim.exp_avg = m;
        optim.exp_avg_sq = v;
        Ok((
            flat_adapter,
            Self {
                params,
                grads,
                exp_avg,
                exp_avg_sq,
            },
        ))
    }

    /// The parameters and both moments, for keeping replicas equal.
    pub fn state(&self) -> [&Tensor; 3] {
        [&self.params, &self.exp_avg, &self.exp_avg_sq]
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does, without a host sync.
    pub fn clip_grad_norm(&self, max_norm: f64) {
        tch::no_grad(|| {
            let total = self.grads.norm();
            let coef = (total + 1e-6)
                .reciprocal()
                .g_mul_scalar(max_norm)
                .clamp_max(1.0);
            let _ = self.grads.shallow_clone().g_mul_(&coef);
        });
    }

    /// One AdamW update (`torch.optim.AdamW`'s single-tensor arithmetic) from the gradients.
    pub fn update(&self, optim: &mut AdamW, lr: f64) {
        tch::no_grad(|| {
            optim.step += 1;
            let bc1 = 1.0 - optim.beta1.powi(optim.step as i32);
            let bc2 = 1.0 - optim.beta2.powi(optim.step as i32);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.sqrt();
            let g = &self.grads;
            let mut p = self.params.shallow_clone();
            let mut m = self.exp_avg.shallow_clone();
            let mut v = self.exp_avg_sq.shallow_clone();
            if optim.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * optim.weight_decay);
            }
            let _ = m.lerp_(g, 1.0 - optim.beta1);
            let _ = v.g_mul_scalar_(optim.beta2);
            let _ = v.g_add_(&(g * g * (1.0 - optim.beta2)));
            let denom = v.sqrt() / bc2_sqrt + optim.eps;
            let _ = p.g_sub_(&(&m / denom * step_size));
        });
    }

    pub fn zero_grad(&self) {
        let _ = self.grads.shallow_clone().zero_();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // Values of get_*_schedule_with_warmup(opt, 2, 10) lambdas at steps 0, 1, 2, 6, 10.
        let at = |s: Scheduler| [0, 1, 2, 6, 10].map(|i| lr_factor(s, i, 10, 2));
        let close = |a: [f64; 5], b: [f64; 5]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(at(Scheduler::Constant), [0.0, 0.5, 1.0, 1.0, 1.0]));
        assert!(close(at(Scheduler::Linear), [0.0, 0.5, 1.0, 0.5, 0.0]));
        assert!(close(at(Scheduler::Cosine), [0.0, 0.5, 1.0, 0.5, 0.0]));
        assert_eq!(warmup_steps(10, 0.05), 1);
    }
}
