//! RMSNorm as Hugging Face computes it: Llama's (`weight * normed.to(dtype)`) and Gemma's
//! (`(normed * (1 + weight)).to(dtype)`, all in fp32).

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::config::NormStyle;
use crate::error::Result;

#[derive(Debug)]
pub struct RmsNorm {
    /// As in the checkpoint.
    pub weight: Tensor,
    pub eps: f64,
    style: NormStyle,
    /// Gemma: `1 + weight` in fp32, formed once.
    one_plus: Option<Tensor>,
}

impl RmsNorm {
    pub fn load(
        files: &SafetensorsFiles,
        name: &str,
        dim: i64,
        eps: f64,
        style: NormStyle,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let weight = files.tensor_with_shape(&format!("{name}.weight"), &[dim], kind, device)?;
        let one_plus = match style {
            NormStyle::Scale => None,
            NormStyle::OnePlusScale => Some(weight.to_kind(Kind::Float) + 1.0),
        };
        Ok(Self {
            weight,
            eps,
            style,
            one_plus,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = x.size().last().copied().unwrap_or(1);
        match (self.style, &self.one_plus) {
            (NormStyle::OnePlusScale, Some(scale)) => {
                if x.kind() == Kind::Float {
                    x.rms_norm([dim], Some(scale), self.eps)
                } else {
                    x.to_kind(Kind::Float)
                        .rms_norm([dim], Some(scale), self.eps)
                        .to_kind(x.kind())
                }
            }
            _ if x.kind() == Kind::Float && self.weight.kind() == Kind::Float => {
                // libtorch's fused kernel; identical maths in fp32.
                x.rms_norm([dim], Some(&self.weight), self.eps)
            }
            _ => {
                let kind = x.kind();
                let xf = x.to_kind(Kind::Float);
                let var = xf.square().mean_dim(-1, true, Kind::Float);
                let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
                &self.weight * normed
            }
        }
    }
}
