//! Rotary position embeddings with the scalings `transformers` implements, computed as it
//! computes them (inverse frequencies in fp32 tensors, angles in fp32, cos/sin scaled by the
//! attention factor, then cast), over the leading `rotary_dim` dimensions of each head.
//!
//! Two scalings depend on the sequence, not only on the position: dynamic NTK (a larger base
//! past `max_position_embeddings`) and LongRoPE (the long factors once a sequence passes its
//! original context). `transformers` decides from the longest sequence of the batch; here each
//! sequence decides for itself (its *extent*: its largest position in the pass, plus one), so a
//! row gives the same result in a batch as alone. For one sequence the two agree.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::config::{RopeConfig, RopeScaling};

/// Positions below this get their cos/sin from a table built once at load; later positions
/// (long contexts) are computed per call. Bounds the tables to a few MiB per model.
const TABLE_POSITIONS: i64 = 8192;

/// A RoPE ready to rotate: tables for the common case, and what the extent-dependent
/// scalings need to compute the rest.
#[derive(Debug)]
pub struct Rope {
    rotary_dim: i64,
    /// fp32 `[rotary_dim / 2]`: the frequencies of short sequences.
    inv_freq: Tensor,
    /// cos/sin scale (YaRN, LongRoPE).
    attention_factor: f64,
    /// `[positions, rotary_dim]` tables in the model's kind.
    cos: Tensor,
    /// Signed: the first half negated (see [`apply`]).
    sin: Tensor,
    kind: Kind,
    long: Option<LongSequences>,
}

/// How frequencies change for sequences past a threshold.
#[derive(Debug)]
enum LongSequences {
    /// LongRoPE: these frequencies for sequences longer than `threshold`.
    Fixed { threshold: i64, inv_freq: Tensor },
    /// Dynamic NTK: recomputed from each sequence's extent past `threshold`.
    Ntk {
        threshold: i64,
        theta: f64,
        factor: f64,
    },
}

impl LongSequences {
    fn threshold(&self) -> i64 {
        match self {
            Self::Fixed { threshold, .. } | Self::Ntk { threshold, .. } => *threshold,
        }
    }
}

/// `2i / dim` for `i < dim / 2`, in fp32 as `torch.arange(0, dim, 2).float() / dim`.
fn exponents(dim: i64, device: Device) -> Tensor {
    Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64
}

/// `1 / (theta ^ (2i / dim))` in fp32.
fn default_frequencies(theta: f64, dim: i64, device: Device) -> Tensor {
    Tensor::pow_scalar(theta, &exponents(dim, device)).reciprocal()
}

/// Inverse frequencies of a sequence whose extent is within the model's own context, and the
/// cos/sin attention factor.
fn frequencies(rope: &RopeConfig, device: Device) -> (Tensor, f64) {
    let dim = rope.rotary_dim;
    let base = default_frequencies(rope.theta, dim, device);
    match &rope.scaling {
        RopeScaling::None | RopeScaling::Dynamic { .. } => (base, 1.0),
        RopeScaling::Linear { factor } => (base / *factor, 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            let wavelen = base.reciprocal() * (2.0 * PI);
            let scaled = &base / *factor;
            let llama = scaled.where_self(&wavelen.gt(low_freq_wavelen), &base);
            let smooth = ((wavelen.reciprocal() * *old_ctx) - *low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &llama / *factor + &smooth * &llama;
            let medium = wavelen
                .lt(high_freq_wavelen)
                .logical_not()
                .logical_and(&wavelen.gt(low_freq_wavelen).logical_not());
            (smoothed.where_self(&medium, &llama), 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
        } => {
            let correction_dim = |rotations: f64| {
                dim as f64 * (original_max_position_embeddings / (rotations * 2.0 * PI)).ln()
                    / (2.0 * rope.theta.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0), high.min((dim - 1) as f64));
            if low == high {
                high += 0.001;
            }
            let pos_freqs = Tensor::pow_scalar(rope.theta, &exponents(dim, device));
            let extrapolation = pos_freqs.reciprocal();
            let interpolation = (&pos_freqs * *factor).reciprocal();
            let ramp = ((Tensor::arange(dim / 2, (Kind::Float, device)) - low) / (high - low))
                .clamp(0.0, 1.0);
            let extrapolation_factor = ramp.ones_like() - ramp;
            let inv = &interpolation * (extrapolation_factor.ones_like() - &extrapolation_factor)
                + &extrapolation * &extrapolation_factor;
            (inv, *attention_factor)
        }
        RopeScaling::LongRope {
            short_factor,
            attention_factor,
            ..
        } => (
            longrope_frequencies(rope.theta, dim, short_factor, device),
            *attention_factor,
        ),
    }
}

fn longrope_frequencies(theta: f64, dim: i64, factors: &[f64], device: Device) -> Tensor {
    let f: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    let ext = Tensor::from_slice(&f).to_device(device);
    (ext * Tensor::pow_scalar(theta, &exponents(dim, device))).reciprocal()
}

impl Rope {
    pub fn new(
        rope: &RopeConfig,
        max_position_embeddings: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let (inv_freq, attention_factor) = frequencies(rope, device);
        let long = match &rope.scaling {
            RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings,
                ..
            } => Some(LongSequences::Fixed {
                threshold: *original_max_position_embeddings,
                inv_freq: longrope_frequencies(rope.theta, rope.rotary_dim, long_factor, device),
            }),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => Some(LongSequences::Ntk {
                threshold: *max_position_embeddings,
                theta: rope.theta,
                factor: *factor,
            }),
            _ => None,
        };
        let len = max_position_embeddings.clamp(1, TABLE_POSITIONS);
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let (cos, sin) = cos_sin_of(&inv_freq, &positions, attention_factor, kind);
        Self {
            rotary_dim: rope.rotary_dim,
            inv_freq,
            attention_factor,
            cos,
            sin,
            kind,
            long,
        }
    }

    /// Whether [`Self::cos_sin`] needs each token's sequence extent for positions below `bound`.
    pub fn needs_extent(&self, bound: i64) -> bool {
        self.long.as_ref().is_some_and(|l| bound > l.threshold())
    }

    /// `(cos, sin)`, each `[B, T, 1, rotary_dim]`, for positions `[B, T]` below `bound` (any
    /// upper bound of the positions known without reading them). `extent`: per token
    /// (`[B, T]`, or `[B, 1]` per row), the extent of its sequence; required when
    /// [`Self::needs_extent`], ignored otherwise.
    pub fn cos_sin(
        &self,
        positions: &Tensor,
        bound: i64,
        extent: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        let size = positions.size();
        let shape = [size[0], size[1], 1, -1];
        if let (Some(long), Some(extent), true) = (&self.long, extent, self.needs_extent(bound)) {
            let extent = extent.expand(&size, false);
            let inv = self.long_frequencies(long, &extent);
            let (cos, sin) = cos_sin_of(&inv, positions, self.attention_factor, self.kind);
            return (cos.unsqueeze(2), sin.unsqueeze(2));
        }
        if bound <= self.cos.size()[0] {
            let flat = positions.reshape([-1]);
            (
                self.cos.index_select(0, &flat).view(shape),
                self.sin.index_select(0, &flat).view(shape),
            )
        } else {
            let (cos, sin) =
                cos_sin_of(&self.inv_freq, positions, self.attention_factor, self.kind);
            (cos.unsqueeze(2), sin.unsqueeze(2))
        }
    }

    /// Per token `[B, T, rotary_dim / 2]` frequencies from its sequence's extent.
    fn long_frequencies(&self, long: &LongSequences, extent: &Tensor) -> Tensor {
        let short = self.inv_freq.view([1, 1, -1]);
        match long {
            LongSequences::Fixed {
                threshold,
                inv_freq,
            } => inv_freq
                .view([1, 1, -1])
                .where_self(&extent.gt(*threshold).unsqueeze(-1), &short),
            LongSequences::Ntk {
                threshold,
                theta,
                factor,
            } => {
                let dim = self.rotary_dim as f64;
                // transformers: base * (factor * seq_len / max_pos - (factor - 1)) ^ (dim / (dim - 2)).
                let len = extent.clamp_min(*threshold).to_kind(Kind::Float);
                let base = ((len * *factor / *threshold as f64) - (factor - 1.0))
                    .pow_tensor_scalar(dim / (dim - 2.0))
                    * *theta;
                let inv = base
                    .unsqueeze(-1)
                    .pow(&exponents(self.rotary_dim, self.inv_freq.device()))
                    .reciprocal();
                inv.where_self(&extent.gt(*threshold).unsqueeze(-1), &short)
            }
        }
    }

    /// `(cos, sin)`, each `[1, T, 1, rotary_dim]`, for positions `start..start + len` of every
    /// row (one sequence, or rows of equal extent `start + len`).
    pub fn cos_sin_range(&self, start: i64, len: i64) -> (Tensor, Tensor) {
        let end = start + len;
        if end <= self.cos.size()[0] && !self.needs_extent(end) {
            let shape = [1, len, 1, -1];
            (
                self.cos.narrow(0, start, len).view(shape),
                self.sin.narrow(0, start, len).view(shape),
            )
        } else {
            let device = self.cos.device();
            let positions = Tensor::arange_start(start, end, (Kind::Int64, device)).unsqueeze(0);
            let extent = Tensor::from_slice(&[end]).to_device(device).view([1, 1]);
            self.cos_sin(&positions, end, Some(&extent))
        }
    }
}

/// `(cos, sin)` of `positions` (any shape) with a trailing `rotary_dim` axis, as Hugging Face
/// computes them: angles in fp32, cos/sin in fp32 times the attention factor, then cast to
/// `kind`. `inv_freq` (`[..., rotary_dim / 2]`) broadcasts against `positions[..., None]`, so
/// it may differ per token. `sin` comes with its first half negated (see [`apply`]).
fn cos_sin_of(inv_freq: &Tensor, positions: &Tensor, factor: f64, kind: Kind) -> (Tensor, Tensor) {
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    let half = freqs.size().last().copied().unwrap_or(0);
    let cos = emb.cos() * factor;
    let sin = (emb.sin() * factor).to_kind(kind);
    let signed = Tensor::cat(
        &[sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)],
        -1,
    );
    (cos.to_kind(kind), signed)
}

/// `x * cos + rotate_half(x) * sin` on the leading `rotary_dim` dimensions of `x`
/// (`[..., head_dim]`), where `rotate_half(x) = cat(-x2, x1)`; the remaining dimensions pass
/// through. With `sin` stored with its first half negated,
/// `rotate_half(x) * sin = roll(x, half) * signed_sin` exactly (a sign flip is exact), which is
/// one kernel instead of four.
pub fn apply(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let dim = x.size().last().copied().unwrap_or(0);
    let rotary = cos.size().last().copied().unwrap_or(dim);
    if rotary == dim {
        return (x * cos).addcmul(&x.roll([rotary / 2], [-1]), signed_sin);
    }
    let rot = x.narrow(-1, 0, rotary);
    let rotated = (&rot * cos).addcmul(&rot.roll([rotary / 2], [-1]), signed_sin);
    Tensor::cat(&[rotated, x.narrow(-1, rotary, dim - rotary)], -1)
}
