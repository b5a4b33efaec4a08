//! Grouped-query self-attention: q/k/v from one fused projection (loaded fused, as Phi-3 stores
//! it, or concatenated from the separate ones), optional qkv bias, per-head q/k RMSNorm (Qwen3,
//! Gemma 3), partial rotary dimensions, a configurable score scale and Gemma 2's soft-capping.

use tch::{Kind, Tensor};

use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

/// Head layout and score options of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Score scale; `None` for `1/√head_dim`.
    pub scale: Option<f64>,
    /// `tanh(scores / c) * c` before the softmax.
    pub softcap: Option<f64>,
}

#[derive(Debug)]
pub struct Attention {
    /// Views into `qkv` (the HF tensors, kept addressable by name).
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// q, k and v weights (and biases) stacked: one GEMM instead of three, forward and back.
    /// This is Phi-3's `qkv_proj`.
    pub qkv: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub heads: Heads,
}

/// How queries may see keys in one forward pass.
pub enum AttentionMask {
    /// Plain causal attention over the new tokens (no cache, no padding): the fused kernel's
    /// fast path.
    Causal,
    /// Every query sees every key (one new token per row over a cache without padding).
    Full,
    /// Explicit boolean mask `[B, 1, T, S]` (or broadcastable), true where a query may attend to
    /// a key.
    Explicit(Tensor),
    /// One row holding several sequences of these lengths back to back (packed training):
    /// within each, causal attention, or the given `[1, 1, l, l]` mask (a sliding window);
    /// none across.
    Segments(Vec<(i64, Option<Tensor>)>),
    /// One row of causal sequences back to back, attended as one right-padded batch (one
    /// kernel call for all of them; see `masks::Padded`).
    Padded(crate::masks::Padded),
}

/// One layer's slice of a KV cache: preallocated `[B, kv_heads, capacity, head_dim]` key and
/// value buffers of which the first `past` columns hold earlier tokens. New keys and values are
/// written in place after them, so a decode step copies one column, not the whole cache.
pub struct KvSlot<'a> {
    pub buffers: &'a mut Option<(Tensor, Tensor)>,
    pub past: i64,
}

impl KvSlot<'_> {
    /// Stores `k`, `v` (`[B, kv_heads, T, head_dim]`) after the past columns and returns every
    /// column in use (views of the buffers).
    fn append(self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (past, t) = (self.past, k.size()[2]);
        let need = past + t;
        let (bk, bv) = match self.buffers.take() {
            Some((bk, bv)) if bk.size()[2] >= need && bk.size()[0] == k.size()[0] => (bk, bv),
            old => {
                let mut shape = k.size();
                shape[2] = capacity_for(need);
                let nk = Tensor::empty(&shape, (k.kind(), k.device()));
                let nv = Tensor::empty(&shape, (v.kind(), v.device()));
                if let Some((ok, ov)) = old
                    && past > 0
                {
                    nk.narrow(2, 0, past).copy_(&ok.narrow(2, 0, past));
                    nv.narrow(2, 0, past).copy_(&ov.narrow(2, 0, past));
                }
                (nk, nv)
            }
        };
        bk.narrow(2, past, t).copy_(k);
        bv.narrow(2, past, t).copy_(v);
        let used = (bk.narrow(2, 0, need), bv.narrow(2, 0, need));
        *self.buffers = Some((bk, bv));
        used
    }
}

/// Buffer columns for `need` columns in use: half again as many (rounded up to 64), so
/// reallocations are rare (amortised constant cost per decoded token).
pub fn capacity_for(need: i64) -> i64 {
    (need + need / 2 + 63) / 64 * 64
}

/// Per-layer context of one forward pass: the layer's RoPE and mask.
pub struct AttentionInput<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub mask: &'a AttentionMask,
}

impl Attention {
    /// Fuses the three loaded projections; `q_proj`/`k_proj`/`v_proj` become views of the fused
    /// tensor, so no weight is held twice.
    pub fn from_separate(
        [q_proj, k_proj, v_proj]: [Linear; 3],
        o_proj: Linear,
        qk_norm: Option<(RmsNorm, RmsNorm)>,
        heads: Heads,
    ) -> Self {
        Self::from_fused(
            Linear::concat(&[&q_proj, &k_proj, &v_proj]),
            o_proj,
            qk_norm,
            heads,
        )
    }

    /// From a checkpoint's fused `qkv_proj` (`[(heads + 2 * kv_heads) * head_dim, hidden]`).
    pub fn from_fused(
        qkv: Linear,
        o_proj: Linear,
        qk_norm: Option<(RmsNorm, RmsNorm)>,
        heads: Heads,
    ) -> Self {
        let (q, kv) = (
            heads.num_heads * heads.head_dim,
            heads.num_kv_heads * heads.head_dim,
        );
        let mut parts = qkv.split(&[q, kv, kv]).into_iter();
        let (Some(q_proj), Some(k_proj), Some(v_proj)) = (parts.next(), parts.next(), parts.next())
        else {
            unreachable!("split returns three parts")
        };
        let (q_norm, k_norm) = qk_norm.unzip();
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qkv,
            q_norm,
            k_norm,
            heads,
        }
    }

    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &AttentionInput<'_>,
        cache: Option<KvSlot<'_>>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let y = self.attend(layer, x, ctx, cache, adapters, train)?;
        self.project_out(layer, &y, adapters, train)
    }

    /// Attention up to (not including) `o_proj`: `[B, T, heads * head_dim]`.
    pub fn attend(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &AttentionInput<'_>,
        cache: Option<KvSlot<'_>>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let Heads {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            ..
        } = self.heads;
        let q_dim = h * d;
        let kv_dim = kvh * d;
        let qkv = adapters.apply(layer, TargetModule::QkvProj, x, self.qkv.forward(x), train)?;
        let qkv = adapters.apply_group(
            layer,
            &[
                (TargetModule::QProj, q_dim),
                (TargetModule::KProj, kv_dim),
                (TargetModule::VProj, kv_dim),
            ],
            x,
            qkv,
            train,
        )?;
        let (q, k) = if self.q_norm.is_none() && self.k_norm.is_none() {
            // q and k side by side in `qkv`: one rotation for both.
            let qk = rope::apply(
                &qkv.narrow(-1, 0, q_dim + kv_dim).view([b, t, h + kvh, d]),
                ctx.cos,
                ctx.sin,
            );
            (qk.narrow(2, 0, h), qk.narrow(2, h, kvh))
        } else {
            let mut q = qkv.narrow(-1, 0, q_dim).view([b, t, h, d]);
            let mut k = qkv.narrow(-1, q_dim, kv_dim).view([b, t, kvh, d]);
            if let Some(n) = &self.q_norm {
                q = n.forward(&q);
            }
            if let Some(n) = &self.k_norm {
                k = n.forward(&k);
            }
            (
                rope::apply(&q, ctx.cos, ctx.sin),
                rope::apply(&k, ctx.cos, ctx.sin),
            )
        };
        let v = qkv.narrow(-1, q_dim + kv_dim, kv_dim);
        let q = q.transpose(1, 2);
        let mut k = k.transpose(1, 2);
        let mut v = v.view([b, t, kvh, d]).transpose(1, 2);
        if let Some(slot) = cache {
            (k, v) = slot.append(&k, &v);
        }
        let y = match ctx.mask {
            AttentionMask::Causal => self.scores(&q, &k, &v, Visible::Causal),
            AttentionMask::Full => self.scores(&q, &k, &v, Visible::All),
            AttentionMask::Explicit(mask) => self.scores(&q, &k, &v, Visible::Mask(mask)),
            AttentionMask::Segments(segments) => {
                let mut start = 0;
                let parts: Vec<Tensor> = segments
                    .iter()
                    .map(|(l, mask)| {
                        let (qs, ks, vs) = (
                            q.narrow(2, start, *l),
                            k.narrow(2, start, *l),
                            v.narrow(2, start, *l),
                        );
                        start += l;
                        let visible = match mask {
                            Some(m) => Visible::Mask(m),
                            None => Visible::Causal,
                        };
                        self.scores(&qs, &ks, &vs, visible)
                    })
                    .collect();
                Tensor::cat(&parts, 2)
            }
            AttentionMask::Padded(p) => {
                // [1, heads, N, d] -> [rows, heads, width, d] and back.
                let pad = |x: &Tensor| {
                    x.index_select(2, &p.gather)
                        .view([x.size()[1], p.rows, p.width, d])
                        .transpose(0, 1)
                };
                self.scores(&pad(&q), &pad(&k), &pad(&v), Visible::Causal)
                    .transpose(0, 1)
                    .reshape([1, h, p.rows * p.width, d])
                    .index_select(2, &p.scatter)
            }
        };
        Ok(y.transpose(1, 2).reshape([b, t, q_dim]))
    }

    /// Softmax attention `[B, heads, T, head_dim]`: the fused kernel, or (with soft-capping,
    /// which it cannot do) the eager computation `transformers` runs for Gemma 2.
    fn scores(&self, q: &Tensor, k: &Tensor, v: &Tensor, visible: Visible<'_>) -> Tensor {
        let gqa = self.heads.num_kv_heads != self.heads.num_heads;
        let Some(cap) = self.heads.softcap else {
            let (mask, causal) = match visible {
                Visible::Causal => (None, true),
                Visible::All => (None, false),
                Visible::Mask(m) => (Some(m), false),
            };
            return Tensor::scaled_dot_product_attention(
                q,
                k,
                v,
                mask,
                0.0,
                causal,
                self.heads.scale,
                gqa,
            );
        };
        let groups = self.heads.num_heads / self.heads.num_kv_heads;
        let (k, v) = if groups > 1 {
            (
                k.repeat_interleave_self_int(groups, 1, None),
                v.repeat_interleave_self_int(groups, 1, None),
            )
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let scale = self
            .heads
            .scale
            .unwrap_or(1.0 / (self.heads.head_dim as f64).sqrt());
        let w = q.matmul(&k.transpose(-2, -1)) * scale;
        let w = (w / cap).tanh() * cap;
        let w = match visible {
            Visible::All => w,
            Visible::Mask(m) => w.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
            Visible::Causal => {
                let (tq, tk) = (q.size()[2], k.size()[2]);
                let device = q.device();
                let cols = Tensor::arange(tk, (Kind::Int64, device)).unsqueeze(0);
                let rows = (Tensor::arange(tq, (Kind::Int64, device)) + (tk - tq)).unsqueeze(1);
                w.masked_fill(&cols.gt_tensor(&rows), f64::NEG_INFINITY)
            }
        };
        w.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
    }

    /// `o_proj` (with its adapter) over attention outputs of any leading shape.
    pub fn project_out(
        &self,
        layer: usize,
        y: &Tensor,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        adapters.apply(layer, TargetModule::OProj, y, self.o_proj.forward(y), train)
    }
}

/// Which keys each query sees, for [`Attention::scores`].
enum Visible<'a> {
    Causal,
    All,
    Mask(&'a Tensor),
}
