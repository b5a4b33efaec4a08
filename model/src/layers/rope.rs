//! Rotary position embeddings with the scalings Llama-family checkpoints use.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies `[head_dim / 2]` (fp32), with the configured scaling applied.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
    /// `[positions, head_dim]` tables in the model's kind.
    cos: Tensor,
    /// Signed: the first half negated (see [`apply`]).
    sin: Tensor,
    kind: Kind,
}

pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let dim = config.head_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    match config.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Positions below this get their cos/sin from a table built once at load; later positions
/// (long contexts) are computed per call. Bounds the tables to a few MiB per model.
const TABLE_POSITIONS: i64 = 8192;

impl Rope {
    pub fn new(config: &ModelConfig, kind: Kind, device: Device) -> Self {
        let inv: Vec<f32> = inverse_frequencies(config)
            .into_iter()
            .map(|f| f as f32)
            .collect();
        let inv_freq = Tensor::from_slice(&inv).to_device(device);
        let len = config.max_position_embeddings.clamp(1, TABLE_POSITIONS);
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let (cos, sin) = cos_sin_of(&inv_freq, &positions, kind);
        Self {
            inv_freq,
            cos,
            sin,
            kind,
        }
    }

    /// `(cos, sin)`, each `[B, T, 1, head_dim]`, for positions `[B, T]` below `bound` (any
    /// upper bound of the positions known without reading them).
    pub fn cos_sin(&self, positions: &Tensor, bound: i64) -> (Tensor, Tensor) {
        let size = positions.size();
        let shape = [size[0], size[1], 1, -1];
        if bound <= self.cos.size()[0] {
            let flat = positions.reshape([-1]);
            (
                self.cos.index_select(0, &flat).view(shape),
                self.sin.index_select(0, &flat).view(shape),
            )
        } else {
            let (cos, sin) = cos_sin_of(&self.inv_freq, positions, self.kind);
            (cos.unsqueeze(2), sin.unsqueeze(2))
        }
    }

    /// `(cos, sin)`, each `[1, T, 1, head_dim]`, for positions `start..start + len` of every row.
    pub fn cos_sin_range(&self, start: i64, len: i64) -> (Tensor, Tensor) {
        if start + len <= self.cos.size()[0] {
            let shape = [1, len, 1, -1];
            (
                self.cos.narrow(0, start, len).view(shape),
                self.sin.narrow(0, start, len).view(shape),
            )
        } else {
            let positions =
                Tensor::arange_start(start, start + len, (Kind::Int64, self.cos.device()))
                    .unsqueeze(0);
            self.cos_sin(&positions, i64::MAX)
        }
    }
}

/// `(cos, sin)` of `positions` (any shape) with a trailing `head_dim` axis, as Hugging Face
/// computes them: angles in fp32, cos/sin in fp32, then cast to `kind`. `sin` comes with its
/// first half negated (see [`apply`]).
fn cos_sin_of(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    let half = inv_freq.size()[0];
    let sin = emb.sin().to_kind(kind);
    let signed = Tensor::cat(
        &[sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)],
        -1,
    );
    (emb.cos().to_kind(kind), signed)
}

/// `x * cos + rotate_half(x) * sin` for `x` of shape `[..., head_dim]`, where
/// `rotate_half(x) = cat(-x2, x1)`. With `sin` stored with its first half negated,
/// `rotate_half(x) * sin = roll(x, half) * signed_sin` exactly (a sign flip is exact), which is
/// one kernel instead of four.
pub fn apply(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    (x * cos).addcmul(&x.roll([half], [-1]), signed_sin)
}
