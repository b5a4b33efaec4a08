//! Grouped-query self-attention with optional qkv bias and Qwen3's per-head q/k RMSNorm.

use tch::Tensor;

use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
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
}

/// Per-layer context shared by every layer of one forward pass.
pub struct AttentionInput<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub mask: &'a AttentionMask,
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &AttentionInput<'_>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = adapters.apply(layer, TargetModule::QProj, x, self.q_proj.forward(x), train)?;
        let k = adapters.apply(layer, TargetModule::KProj, x, self.k_proj.forward(x), train)?;
        let v = adapters.apply(layer, TargetModule::VProj, x, self.v_proj.forward(x), train)?;
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
        };
        let y = y
            .transpose(1, 2)
            .reshape([b, t, self.num_heads * self.head_dim]);
        adapters.apply(
            layer,
            TargetModule::OProj,
            &y,
            self.o_proj.forward(&y),
            train,
        )
    }
}
