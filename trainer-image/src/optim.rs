//! AdamW, gradient clipping and learning-rate schedules, written out so that their state can
//! be checkpointed and their arithmetic matches `torch.optim.AdamW` (single-tensor path),
//! `torch.nn.utils.clip_grad_norm_` and `transformers`' schedules step for step.

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

    /// One update of every parameter from its `.grad()`.
    pub fn update(&mut self, params: &[&Tensor], lr: f64) {
        tch::no_grad(|| {
            self.step += 1;
            let bc1 = 1.0 - self.beta1.powi(self.step as i32);
            let bc2 = 1.0 - self.beta2.powi(self.step as i32);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.sqrt();
            for ((p, m), v) in params
                .iter()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - self.beta2)));
                let denom = v.sqrt() / bc2_sqrt + self.eps;
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        });
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(params: &[&Tensor], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (max_norm / (total.double_value(&[]) + 1e-6)).min(1.0);
        for g in &grads {
            let _ = g.shallow_clone().g_mul_scalar_(coef);
        }
        total.double_value(&[])
    })
}

pub fn zero_grad(params: &[&Tensor]) {
    for p in params {
        p.shallow_clone().zero_grad();
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
