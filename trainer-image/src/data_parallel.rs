//! What a run does differently as one rank of a data-parallel group (`tailor_dist`).
//!
//! Every rank holds the whole prepared dataset and the same shuffled order, so each knows the
//! global micro-batch of a step (`batchSize × world size` examples) and takes its slice by rank.
//! Each rank's backward is scaled by the step's *global* counted tokens, so the all-reduced sum
//! of the ranks' gradients is exactly the gradient one process would form over the whole global
//! batch; clipping and AdamW then run identically on every rank, which keeps the replicas equal
//! without broadcasting weights after the start. Rank 0 alone reads and writes checkpoints,
//! evaluates and writes outputs: at start it broadcasts the adapter, the optimizer moments and
//! the data position, so the other ranks need no access to the output at all. Gradients, like
//! the optimizer state, live in one flat buffer (`optim::Flat`), reduced in one call.

use anyhow::Context;
use tailor_dist::ProcessGroup;
use tch::{Device, Kind, Tensor};

use crate::optim::{AdamW, Flat};
use crate::run_state::RunState;

/// `flat` reduced (or broadcast) on the CPU, where Gloo works, and written back.
fn on_cpu(
    flat: &Tensor,
    op: impl FnOnce(&mut Tensor) -> Result<(), tailor_dist::DistError>,
) -> Result<(), tailor_dist::DistError> {
    if flat.device() == Device::Cpu && flat.kind() == Kind::Float {
        return op(&mut flat.shallow_clone());
    }
    let mut host = flat.to_device(Device::Cpu).to_kind(Kind::Float);
    op(&mut host)?;
    tch::no_grad(|| {
        flat.shallow_clone()
            .copy_(&host.to_device(flat.device()).to_kind(flat.kind()))
    });
    Ok(())
}

/// Sums the ranks' gradients (the whole bucket in one all-reduce) and their loss sums.
pub fn all_reduce_grads(group: &ProcessGroup, flat: &Flat, loss_sum: f64) -> anyhow::Result<f64> {
    on_cpu(&flat.grads, |g| group.all_reduce_sum(g)).context("all-reducing the gradients")?;
    let mut loss = Tensor::from_slice(&[loss_sum]);
    group
        .all_reduce_sum(&mut loss)
        .context("all-reducing the loss")?;
    tailor_model::profile::sync();
    Ok(loss.double_value(&[0]))
}

/// Makes every rank start where rank 0 starts: its adapter, AdamW moments and step, and its data
/// position (fresh or resumed from its checkpoint). Returns whether rank 0 resumed.
pub fn start_from_leader(
    group: &ProcessGroup,
    flat: &Flat,
    optim: &mut AdamW,
    state: &mut RunState,
    resumed: bool,
) -> anyhow::Result<bool> {
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
    if group.rank() != 0 {
        state.step = v[1] as usize;
        state.epoch = v[2] as usize;
        state.micro_batch = v[3] as usize;
        state.tokens = v[4] as u64;
        optim.step = v[5];
    }
    for t in flat.state() {
        on_cpu(t, |t| group.broadcast(t, 0))
            .context("receiving the adapter and optimizer state from rank 0")?;
    }
    Ok(v[0] != 0)
}
