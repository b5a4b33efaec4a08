//! The gated MLP: `down_proj(act(gate_proj(x)) * up_proj(x))`, SwiGLU or GeGLU, with the gate and
//! up projections stored fused (`gate_up_proj`, as Phi-3 checkpoints hold them) or separate.

use tch::Tensor;

use super::linear::Linear;
use crate::config::Activation;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

#[derive(Debug)]
pub struct Mlp {
    /// Views into `gate_up`.
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// gate and up weights stacked (gate first): one GEMM instead of two. This is Phi-3's
    /// `gate_up_proj`.
    pub gate_up: Linear,
    activation: Activation,
}

impl Mlp {
    /// From separate `gate_proj` and `up_proj` (concatenated here).
    pub fn from_separate(
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
        activation: Activation,
    ) -> Self {
        Self::from_fused(
            Linear::concat(&[&gate_proj, &up_proj]),
            down_proj,
            activation,
        )
    }

    /// From a checkpoint's fused `gate_up_proj` (`[2 * intermediate, hidden]`, gate first).
    pub fn from_fused(gate_up: Linear, down_proj: Linear, activation: Activation) -> Self {
        let inter = gate_up.weight.size()[0] / 2;
        let mut parts = gate_up.split(&[inter, inter]).into_iter();
        let (Some(gate_proj), Some(up_proj)) = (parts.next(), parts.next()) else {
            unreachable!("split returns two parts")
        };
        Self {
            gate_proj,
            up_proj,
            down_proj,
            gate_up,
            activation,
        }
    }

    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let inter = self.gate_proj.weight.size()[0];
        let gu = adapters.apply(
            layer,
            TargetModule::GateUpProj,
            x,
            self.gate_up.forward(x),
            train,
        )?;
        let gu = adapters.apply_group(
            layer,
            &[
                (TargetModule::GateProj, inter),
                (TargetModule::UpProj, inter),
            ],
            x,
            gu,
            train,
        )?;
        let (gate, up) = (gu.narrow(-1, 0, inter), gu.narrow(-1, inter, inter));
        let h = activate(self.activation, &gate) * up;
        adapters.apply(
            layer,
            TargetModule::DownProj,
            &h,
            self.down_proj.forward(&h),
            train,
        )
    }
}

pub fn activate(activation: Activation, x: &Tensor) -> Tensor {
    match activation {
        Activation::Silu => x.silu(),
        Activation::GeluTanh => x.gelu("tanh"),
        Activation::Gelu => x.gelu("none"),
    }
}
