//! Grouped-query self-attention with optional qkv bias and Qwen3's per-head q/k RMSNorm.

use tch::Tensor;

use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

#[derive(Debug)]
pub struct Attention {
    /// Views into `qkv` (the HF tensors, kept addressable by name).
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// q, k and v weights (and biases) concatenated: one GEMM instead of three, forward and back.
    pub qkv: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

/// How queries may see keys in one forward pass.
pub enum AttentionMask {
    /// Plain causal attention over the new tokens (no cache, no padding): the fused kernel's
    /// fast path.
    Causal,
    /// Every query sees every key (one new token per row over a cache without padding).
    Full,
    /// Explicit boolean mask `[B, 1, T, S]`, true where a query may attend to a key.
    Explicit(Tensor),
    /// One row holding several sequences of these lengths back to back (packed training):
    /// causal attention within each, none across.
    Segments(Vec<i64>),
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

/// Per-layer context shared by every layer of one forward pass.
pub struct AttentionInput<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub mask: &'a AttentionMask,
}

impl Attention {
    /// Fuses the three loaded projections; `q_proj`/`k_proj`/`v_proj` become views of the fused
    /// tensor, so no weight is held twice.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        q_norm: Option<RmsNorm>,
        k_norm: Option<RmsNorm>,
        num_heads: i64,
        num_kv_heads: i64,
        head_dim: i64,
    ) -> Self {
        let qkv = Linear::concat(&[&q_proj, &k_proj, &v_proj]);
        let parts = qkv.split(&[
            num_heads * head_dim,
            num_kv_heads * head_dim,
            num_kv_heads * head_dim,
        ]);
        let mut parts = parts.into_iter();
        let (Some(q_proj), Some(k_proj), Some(v_proj)) = (parts.next(), parts.next(), parts.next())
        else {
            unreachable!("split returns three parts")
        };
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qkv,
            q_norm,
            k_norm,
            num_heads,
            num_kv_heads,
            head_dim,
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
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q_dim = h * d;
        let kv_dim = kvh * d;
        let qkv = self.qkv.forward(x);
        let plain_qk = self.q_norm.is_none()
            && self.k_norm.is_none()
            && !adapters.touches(layer, TargetModule::QProj)
            && !adapters.touches(layer, TargetModule::KProj);
        let (q, k) = if plain_qk {
            // q and k side by side in `qkv`: one rotation for both.
            let qk = rope::apply(
                &qkv.narrow(-1, 0, q_dim + kv_dim).view([b, t, h + kvh, d]),
                ctx.cos,
                ctx.sin,
            );
            (qk.narrow(2, 0, h), qk.narrow(2, h, kvh))
        } else {
            let q = adapters.apply(
                layer,
                TargetModule::QProj,
                x,
                qkv.narrow(-1, 0, q_dim),
                train,
            )?;
            let k = adapters.apply(
                layer,
                TargetModule::KProj,
                x,
                qkv.narrow(-1, q_dim, kv_dim),
                train,
            )?;
            let mut q = q.view([b, t, h, d]);
            let mut k = k.view([b, t, kvh, d]);
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
        let v = adapters.apply(
            layer,
            TargetModule::VProj,
            x,
            qkv.narrow(-1, q_dim + kv_dim, kv_dim),
            train,
        )?;
        let q = q.transpose(1, 2);
        let mut k = k.transpose(1, 2);
        let mut v = v.view([b, t, kvh, d]).transpose(1, 2);
        if let Some(slot) = cache {
            (k, v) = slot.append(&k, &v);
        }
        let gqa = kvh != h;
        let y = match ctx.mask {
            AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, gqa,
            ),
            AttentionMask::Full => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, gqa,
            ),
            AttentionMask::Explicit(mask) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, gqa)
            }
            AttentionMask::Segments(lengths) => {
                let mut start = 0;
                let parts: Vec<Tensor> = lengths
                    .iter()
                    .map(|&l| {
                        let (qs, ks, vs) = (
                            q.narrow(2, start, l),
                            k.narrow(2, start, l),
                            v.narrow(2, start, l),
                        );
                        start += l;
                        Tensor::scaled_dot_product_attention::<Tensor>(
                            &qs, &ks, &vs, None, 0.0, true, None, gqa,
                        )
                    })
                    .collect();
                Tensor::cat(&parts, 2)
            }
        };
        Ok(y.transpose(1, 2).reshape([b, t, q_dim]))
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
