//! A frozen projection (`nn.Linear` weight `[out, in]`, optional bias).

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::error::Result;

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(
        files: &SafetensorsFiles,
        prefix: &str,
        in_features: i64,
        out_features: i64,
        bias: bool,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let weight = files.tensor_with_shape(
            &format!("{prefix}.weight"),
            &[out_features, in_features],
            kind,
            device,
        )?;
        let bias = if bias {
            Some(files.tensor_with_shape(
                &format!("{prefix}.bias"),
                &[out_features],
                kind,
                device,
            )?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Stacks projections of the same input along the output dimension.
    pub fn concat(parts: &[&Linear]) -> Linear {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let bias = if parts.iter().all(|l| l.bias.is_some()) {
            let b: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
            Some(Tensor::cat(&b, 0))
        } else if parts.iter().any(|l| l.bias.is_some()) {
            let b: Vec<Tensor> = parts
                .iter()
                .map(|l| match &l.bias {
                    Some(b) => b.shallow_clone(),
                    None => l
                        .weight
                        .new_zeros([l.weight.size()[0]], (l.weight.kind(), l.weight.device())),
                })
                .collect();
            Some(Tensor::cat(&b, 0))
        } else {
            None
        };
        Linear {
            weight: Tensor::cat(&weights, 0),
            bias,
        }
    }

    /// Views of consecutive output rows (the inverse of [`Linear::concat`], sharing storage).
    pub fn split(&self, sizes: &[i64]) -> Vec<Linear> {
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let l = Linear {
                    weight: self.weight.narrow(0, start, n),
                    bias: self.bias.as_ref().map(|b| b.narrow(0, start, n)),
                };
                start += n;
                l
            })
            .collect()
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}
