//! SwiGLU MLP: `down_proj(silu(gate_proj(x)) * up_proj(x))`.

use tch::Tensor;

use super::linear::Linear;
use crate::error::Result;
use crate::lora::{Adapters, TargetModule};

#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let gate = adapters.apply(
            layer,
            TargetModule::GateProj,
            x,
            self.gate_proj.forward(x),
            train,
        )?;
        let up = adapters.apply(
            layer,
            TargetModule::UpProj,
            x,
            self.up_proj.forward(x),
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
