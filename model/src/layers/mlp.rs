//! SwiGLU MLP: `down_proj(silu(gate_proj(x)) * up_proj(x))`.

use tch::Tensor;

use super::linear::Linear;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

#[derive(Debug)]
pub struct Mlp {
    /// Views into `gate_up`.
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// gate and up weights concatenated: one GEMM instead of two.
    pub gate_up: Linear,
}

impl Mlp {
    pub fn new(gate_proj: Linear, up_proj: Linear, down_proj: Linear) -> Self {
        let inter = gate_proj.weight.size()[0];
        let gate_up = Linear::concat(&[&gate_proj, &up_proj]);
        let mut parts = gate_up.split(&[inter, inter]).into_iter();
        let (Some(gate_proj), Some(up_proj)) = (parts.next(), parts.next()) else {
            unreachable!("split returns two parts")
        };
        Self {
            gate_proj,
            up_proj,
            down_proj,
            gate_up,
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
        let gu = self.gate_up.forward(x);
        let gate = adapters.apply(
            layer,
            TargetModule::GateProj,
            x,
            gu.narrow(-1, 0, inter),
            train,
        )?;
        let up = adapters.apply(
            layer,
            TargetModule::UpProj,
            x,
            gu.narrow(-1, inter, inter),
            train,
        )?;
        let h = gate.silu() * up;
        adapters.apply(
            layer,
            TargetModule::DownProj,
            &h,
            self.down_proj.forward(&h),
            train,
        )
    }
}
