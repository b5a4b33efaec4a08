//! One training micro-batch's loss and backward ([`CausalLm::packed_loss_backward`]), with
//! optional gradient checkpointing per decoder layer, and the per-layer seeding of LoRA dropout
//! that lets a recomputed layer draw the masks its first run drew.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::lora::{Adapters, LoraAdapter};
use crate::model::CausalLm;
use crate::profile;

/// One training micro-batch of sequences packed back to back (see
/// [`CausalLm::hidden_states_packed`]) and the tokens its loss counts.
pub struct PackedBatch<'a> {
    /// Token ids `[N]` (int64), `N = sum(lengths)`.
    pub input_ids: &'a Tensor,
    /// Each sequence's length.
    pub lengths: &'a [i64],
    /// Packed indices `[K]` whose next token counts in the loss.
    pub keep: &'a Tensor,
    /// That next token at each of them, `[K]` (int64).
    pub targets: &'a Tensor,
}

/// What a training pass keeps for its backward (see [`CausalLm::packed_loss_backward`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checkpointing {
    /// Autograd keeps every layer's activations: fastest, most memory.
    #[default]
    Off,
    /// Gradient checkpointing per decoder layer: only each layer's input is kept, and its
    /// activations are recomputed during backward.
    Layers,
}

/// LoRA dropout's seeds in one training pass. Before each decoder layer runs, libtorch's global
/// generator (CPU and every CUDA device) is reseeded from one number drawn from it when the pass
/// began and the layer's index, so a layer's dropout masks depend only on those two: the layer
/// recomputed during a checkpointed backward draws the masks its first run drew. After the pass
/// the generator is reseeded from the same number once more, so the next pass draws a new one
/// whichever way this pass ran. Nothing is drawn or reseeded without dropout or outside training.
pub(crate) struct DropoutSeeds(Option<u64>);

impl DropoutSeeds {
    pub(crate) fn draw(adapters: &Adapters<'_>, train: bool) -> Self {
        if !(train && adapters.has_dropout()) {
            return Self(None);
        }
        let base = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        Self(Some(base as u64))
    }

    fn reseed(&self, salt: u64) {
        if let Some(base) = self.0 {
            // SplitMix64's finaliser: every bit of the seed (the CPU generator keeps only 32)
            // depends on both inputs.
            let mut z = base ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            tch::manual_seed((z ^ (z >> 31)) as i64);
        }
    }

    pub(crate) fn enter_layer(&self, i: usize) {
        self.reseed(i as u64 + 1);
    }

    pub(crate) fn leave(&self) {
        self.reseed(0);
    }
}

impl CausalLm {
    /// One training micro-batch: the summed token cross-entropy of `batch` under `adapter` (LoRA
    /// dropout on), and the gradient of `scale * loss` accumulated into the adapter's tensors
    /// (their `.grad()`; they must require grad). The LM head's part is formed without autograd
    /// ([`Self::head_cross_entropy`]) and backpropagated through the layers from there.
    ///
    /// With [`Checkpointing::Layers`], the forward pass keeps no graph, only each decoder layer's
    /// input; backward then walks the layers from the last, recomputing each one's forward from
    /// its saved input with autograd on and backpropagating through it alone. Activation memory
    /// falls from every layer's to one layer's (plus one `[N, hidden]` per layer), for one more
    /// forward pass. Losses and gradients are those of [`Checkpointing::Off`]: a layer reseeds
    /// the generator to the same seed in both of its runs, so dropout draws the same masks.
    pub fn packed_loss_backward(
        &self,
        batch: &PackedBatch<'_>,
        adapter: &LoraAdapter,
        scale: f64,
        checkpointing: Checkpointing,
    ) -> Result<f64> {
        let adapters = Adapters::All(adapter);
        if checkpointing == Checkpointing::Off {
            let h = self.hidden_states_packed(
                batch.input_ids,
                batch.lengths,
                &adapters,
                true,
                batch.keep,
            )?;
            profile::phase("forward");
            let (loss, grad) =
                tch::no_grad(|| self.head_cross_entropy(&h.detach(), batch.targets, true))?;
            profile::phase("head");
            if let Some(grad) = grad {
                // The gradient of sum(h * g) with respect to h is g.
                h.f_mul(&grad.f_mul_scalar(scale)?)?
                    .f_sum(None)?
                    .f_backward()?;
            }
            profile::phase("backward");
            return Ok(loss);
        }
        let pass = self.packed_pass(batch.input_ids, batch.lengths, &adapters, batch.keep)?;
        let rotations = self.rotations(&pass.positions);
        let seeds = DropoutSeeds::draw(&adapters, true);
        let count = self.model.layers.len();
        let keep_at = |i: usize| (i + 1 == count).then_some(&pass.keep);
        // Layer `i` as training runs it, in both passes.
        let layer = |i: usize, x: &Tensor| {
            self.layer_forward(
                i,
                x,
                &rotations,
                &pass.masks,
                None,
                keep_at(i),
                &adapters,
                true,
            )
        };
        // Forward without a graph, keeping each layer's input.
        let (inputs, hidden) = tch::no_grad(|| -> Result<_> {
            let mut x = self.embed(&pass.ids);
            let mut inputs = Vec::with_capacity(count);
            for i in 0..count {
                seeds.enter_layer(i);
                let next = layer(i, &x)?;
                inputs.push(std::mem::replace(&mut x, next));
            }
            Ok((inputs, self.finish(x, count > 0, &pass.keep)))
        })?;
        profile::phase("forward");
        let (loss, grad) = tch::no_grad(|| self.head_cross_entropy(&hidden, batch.targets, true))?;
        profile::phase("head");
        drop(hidden);
        let Some(grad) = grad else {
            seeds.leave();
            return Ok(loss);
        };
        // Backward, one layer at a time from the last: `grad` is the loss's gradient with
        // respect to the current layer's output.
        let mut grad = tch::no_grad(|| grad.f_mul_scalar(scale))?;
        let mut inputs = inputs;
        for i in (0..count).rev() {
            let Some(saved) = inputs.pop() else { break };
            // Layer 0's input (the embeddings) is frozen: no gradient needed below it.
            let x = if i > 0 {
                saved.detach().set_requires_grad(true)
            } else {
                saved
            };
            seeds.enter_layer(i);
            let out = layer(i, &x)?;
            let out = if keep_at(i).is_some() {
                self.model.norm.forward(&out)
            } else {
                out
            };
            if out.requires_grad() {
                out.f_mul(&grad)?.f_sum(None)?.f_backward()?;
            }
            if i > 0 {
                grad = x.grad();
            }
        }
        seeds.leave();
        profile::phase("backward");
        Ok(loss)
    }
}
