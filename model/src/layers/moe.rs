//! A sparse mixture-of-experts MLP (Qwen3-MoE): a linear router picks the top-k experts per
//! token from the softmax of its logits (fp32), optionally renormalising their weights; each
//! expert is a gated MLP; a token's output is the weighted sum of its experts' outputs. Experts
//! and router are frozen: LoRA applies to the attention projections only.

use tch::{Device, Kind, Tensor};

use super::mlp::activate;
use crate::checkpoint::SafetensorsFiles;
use crate::config::{Activation, ModelConfig, MoeConfig};
use crate::error::Result;

#[derive(Debug)]
pub struct SparseMoe {
    /// Router `[experts, hidden]` (`mlp.gate`).
    pub gate: Tensor,
    /// Per expert, gate and up stacked: `[experts, 2 * inter, hidden]`.
    pub gate_up: Tensor,
    /// `[experts, hidden, inter]`.
    pub down: Tensor,
    top_k: i64,
    norm_topk_prob: bool,
    activation: Activation,
}

impl SparseMoe {
    /// Loads `PREFIX.gate.weight` and the experts, stored per expert
    /// (`PREFIX.experts.{e}.gate_proj.weight`, as checkpoints on the Hub hold them) or fused
    /// (`PREFIX.experts.gate_up_proj`, `PREFIX.experts.down_proj`).
    pub fn load(
        files: &SafetensorsFiles,
        prefix: &str,
        c: &ModelConfig,
        moe: &MoeConfig,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let (e, h, inter) = (moe.num_experts, c.hidden_size, moe.expert_intermediate_size);
        let gate =
            files.tensor_with_shape(&format!("{prefix}.gate.weight"), &[e, h], kind, device)?;
        let fused = format!("{prefix}.experts.gate_up_proj");
        let (gate_up, down) = if files.contains(&fused) {
            (
                files.tensor_with_shape(&fused, &[e, 2 * inter, h], kind, device)?,
                files.tensor_with_shape(
                    &format!("{prefix}.experts.down_proj"),
                    &[e, h, inter],
                    kind,
                    device,
                )?,
            )
        } else {
            let gate_up = Tensor::f_empty([e, 2 * inter, h], (kind, device))?;
            let down = Tensor::f_empty([e, h, inter], (kind, device))?;
            for i in 0..e {
                let p = format!("{prefix}.experts.{i}");
                let w = |name: &str, shape: &[i64]| {
                    files.tensor_with_shape(&format!("{p}.{name}.weight"), shape, kind, device)
                };
                gate_up
                    .get(i)
                    .narrow(0, 0, inter)
                    .f_copy_(&w("gate_proj", &[inter, h])?)?;
                gate_up
                    .get(i)
                    .narrow(0, inter, inter)
                    .f_copy_(&w("up_proj", &[inter, h])?)?;
                down.get(i).f_copy_(&w("down_proj", &[h, inter])?)?;
            }
            (gate_up, down)
        };
        Ok(Self {
            gate,
            gate_up,
            down,
            top_k: moe.top_k,
            norm_topk_prob: moe.norm_topk_prob,
            activation: c.activation,
        })
    }

    /// `[..., hidden] -> [..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let shape = x.size();
        let hidden = shape.last().copied().unwrap_or(0);
        let flat = x.reshape([-1, hidden]);
        let logits = flat.linear::<Tensor>(&self.gate, None);
        let probs = logits.softmax(-1, Kind::Float);
        let (mut weights, experts) = probs.topk(self.top_k, -1, true, true);
        if self.norm_topk_prob {
            weights = &weights / weights.sum_dim_intlist(-1, true, Kind::Float);
        }
        let weights = weights.to_kind(x.kind());
        let mut out = flat.zeros_like();
        // Which (token, slot) pairs each expert serves, read once on the host.
        let chosen =
            Vec::<i64>::try_from(experts.reshape([-1]).to_device(Device::Cpu)).unwrap_or_default();
        let inter = self.down.size()[2];
        let num_experts = self.gate.size()[0];
        for e in 0..num_experts {
            let slots: Vec<i64> = chosen
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c == e)
                .map(|(i, _)| i as i64)
                .collect();
            if slots.is_empty() {
                continue;
            }
            let tokens: Vec<i64> = slots.iter().map(|s| s / self.top_k).collect();
            let slots = Tensor::from_slice(&slots).to_device(x.device());
            let tokens = Tensor::from_slice(&tokens).to_device(x.device());
            let xs = flat.index_select(0, &tokens);
            let gu = xs.linear::<Tensor>(&self.gate_up.get(e), None);
            let h =
                activate(self.activation, &gu.narrow(-1, 0, inter)) * gu.narrow(-1, inter, inter);
            let y = h.linear::<Tensor>(&self.down.get(e), None);
            let w = weights.reshape([-1]).index_select(0, &slots).unsqueeze(1);
            out = out.index_add(0, &tokens, &(y * w));
        }
        out.view(shape.as_slice())
    }
}
