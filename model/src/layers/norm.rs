//! RMSNorm as Hugging Face computes it: in fp32, cast back, then scaled by the weight.

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::error::Result;

#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(
        files: &SafetensorsFiles,
        name: &str,
        dim: i64,
        eps: f64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let weight = files.tensor_with_shape(&format!("{name}.weight"), &[dim], kind, device)?;
        Ok(Self { weight, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = x.size().last().copied().unwrap_or(1);
        if x.kind() == Kind::Float && self.weight.kind() == Kind::Float {
            // libtorch's fused kernel; identical maths in fp32.
            x.rms_norm([dim], Some(&self.weight), self.eps)
        } else {
            let kind = x.kind();
            let xf = x.to_kind(Kind::Float);
            let var = xf.square().mean_dim(-1, true, Kind::Float);
            let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
            &self.weight * normed
        }
    }
}
