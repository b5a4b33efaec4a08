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
    /// Explicit boolean mask `[B, 1, T, S]`, true where a query may attend to a key.
    Explicit(Tensor),
    /// One row holding several sequences of these lengths back to back (packed training):
    /// causal attention within each, none across.
    Segments(Vec<i64>),
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
        cache: Option<&mut Option<(Tensor, Tensor)>>,
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
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q_dim = self.num_heads * self.head_dim;
        let kv_dim = self.num_kv_heads * self.head_dim;
        let qkv = self.qkv.forward(x);
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
        let v = adapters.apply(
            layer,
            TargetModule::VProj,
            x,
            qkv.narrow(-1, q_dim + kv_dim, kv_dim),
            train,
        )?;
        let mut q = q.view([b, t, self.num_heads, self.head_dim]);
        let mut k = k.view([b, t, self.num_kv_heads, self.head_dim]);
        if let Some(n) = &self.q_norm {
            q = n.forward(&q);
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k);
        }
        let q = rope::apply(&q.transpose(1, 2), ctx.cos, ctx.sin);
        let mut k = rope::apply(&k.transpose(1, 2), ctx.cos, ctx.sin);
        let mut v = v
            .view([b, t, self.num_kv_heads, self.head_dim])
            .transpose(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let gqa = self.num_kv_heads != self.num_heads;
        let y = match ctx.mask {
            AttentionMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, gqa,
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
