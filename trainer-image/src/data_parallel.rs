//! What a run does differently as one rank of a data-parallel group (`tailor_dist`).
//!
//! Every rank holds the whole prepared dataset and the same shuffled order, so each knows the
//! global micro-batch of a step (`batchSize × world size` examples) and takes its slice by rank.
//! Each rank's backward is scaled by the step's *global* counted tokens, so the all-reduced sum
//! of the ranks' gradients is exactly the gradient one process would form over the whole global
//! batch; clipping and AdamW then run identically on every rank, which keeps the replicas equal
//! without broadcasting weights after the start. Rank 0 alone reads and writes checkpoints,
//! evaluates and writes outputs: at start it broadcasts the adapter, the optimizer moments and
//! the data position, so the other ranks need no access to the output at all.

use anyhow::Context;
use tailor_dist::ProcessGroup;
use tch::{Device, Kind, Tensor};

use crate::optim::AdamW;
use crate::run_state::RunState;

/// `tensors` flattened into one contiguous buffer (on the CPU, where Gloo reduces).
fn flatten(tensors: &[Tensor]) -> Tensor {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| {
            t.detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .reshape([-1])
        })
        .collect();
    Tensor::cat(&flat, 0)
}

/// Copies `flat` back into `tensors`, in order.
fn unflatten(flat: &Tensor, tensors: &[Tensor]) {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        let chunk = flat
            .narrow(0, offset, n)
            .view(t.size().as_slice())
            .to_device(t.device())
            .to_kind(t.kind());
        tch::no_grad(|| t.shallow_clone().copy_(&chunk));
        offset += n;
    }
}

/// Gives every parameter a (zero) gradient, so a rank whose slice of a step is empty still
/// contributes a buffer of the right shape to the all-reduce.
pub fn define_grads(params: &[&Tensor]) {
    if let Some(zero) = params
        .iter()
        .map(|p| (*p * 0.0).sum(Kind::Float))
        .reduce(|a, b| a + b)
    {
        zero.backward();
    }
}

/// Sums the ranks' gradients (in place, in one bucket) and their loss sums.
pub fn all_reduce_grads(
    group: &ProcessGroup,
    params: &[&Tensor],
    loss_sum: f64,
) -> anyhow::Result<f64> {
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
    if let Some(i) = grads.iter().position(|g| !g.defined()) {
        anyhow::bail!("adapter tensor {i} has no gradient to all-reduce");
    }
    let mut flat = flatten(&grads);
    group
        .all_reduce_sum(&mut flat)
        .context("all-reducing the gradients")?;
    unflatten(&flat, &grads);
    let mut loss = Tensor::from_slice(&[loss_sum]);
    group
        .all_reduce_sum(&mut loss)
        .context("all-reducing the loss")?;
    Ok(loss.double_value(&[0]))
}

/// Makes every rank start where rank 0 starts: its adapter, AdamW moments and step, and its data
/// position (fresh or resumed from its checkpoint). Returns whether rank 0 resumed.
pub fn start_from_leader(
    group: &ProcessGroup,
    params: &[&Tensor],
    optim: &mut AdamW,
    state: &mut RunState,
    resumed: bool,
) -> anyhow::Result<bool> {
    let leader = group.rank() == 0;
    let mut position = Tensor::from_slice(&[
        i64::from(resumed),
        state.step as i64,
        state.epoch as i64,
        state.micro_batch as i64,
        state.tokens as i64,
        optim.step,
    ]);
    group
        .broadcast(&mut position, 0)
        .context("receiving the run's position from rank 0")?;
    let v: Vec<i64> = Vec::try_from(&position).context("reading the broadcast position")?;
    if !leader {
        state.step = v[1] as usize;
        state.epoch = v[2] as usize;
        state.micro_batch = v[3] as usize;
        state.tokens = v[4] as u64;
        optim.step = v[5];
    }
    for tensors in [
        params.iter().map(|p| p.shallow_clone()).collect::<Vec<_>>(),
        optim.exp_avg.iter().map(Tensor::shallow_clone).collect(),
        optim.exp_avg_sq.iter().map(Tensor::shallow_clone).collect(),
    ] {
        let mut flat = flatten(&tensors);
        group
            .broadcast(&mut flat, 0)
            .context("receiving the adapter and optimizer state from rank 0")?;
        if !leader {
            unflatten(&flat, &tensors);
        }
    }
    Ok(v[0] != 0)
}
