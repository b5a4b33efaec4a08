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

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}
