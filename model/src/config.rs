//! Model configuration: [`HfConfig`] is `config.json` as Hugging Face writes it (optional fields,
//! per-architecture defaults, old and new spellings of the RoPE settings); [`ModelConfig`] is the
//! one normalised form the layers read.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result, read_json};

/// `config.json` as written by `transformers` (4.x and 5.x spellings).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    pub vocab_size: i64,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 4.x: `{"type"|"rope_type": ..., "factor": ...}`.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5.x: `{"rope_type": ..., "rope_theta": ..., ...}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub sliding_window: Option<serde_json::Value>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// The architectures tailor implements. All are the Llama block with small variations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" => Ok(Self::Llama),
            "MistralForCausalLM" => Ok(Self::Mistral),
            "Qwen2ForCausalLM" => Ok(Self::Qwen2),
            "Qwen3ForCausalLM" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture {
                found: other.to_string(),
            }),
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// How RoPE frequencies are adjusted for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling of low and medium frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The normalised configuration every layer reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Bias on q_proj, k_proj and v_proj (Qwen2 always; Llama/Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama/Qwen3 `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
}

fn num_field(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(serde_json::Value::as_f64)
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => {
            a.iter().filter_map(serde_json::Value::as_i64).collect()
        }
        _ => Vec::new(),
    }
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// Normalises into [`ModelConfig`], rejecting what tailor does not implement.
    pub fn normalize(&self) -> Result<ModelConfig> {
        let arch_name = self
            .architectures
            .first()
            .cloned()
            .or_else(|| self.model_type.clone())
            .unwrap_or_default();
        let architecture = Architecture::from_hf(&arch_name)?;
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(ModelError::InvalidConfig(format!(
                "hidden_act {act:?} is not supported (expected \"silu\")"
            )));
        }
        let positive = |name: &str, v: i64| {
            if v > 0 {
                Ok(v)
            } else {
                Err(ModelError::InvalidConfig(format!(
                    "{name} must be positive, got {v}"
                )))
            }
        };
        let hidden_size = positive("hidden_size", self.hidden_size)?;
        let heads = positive("num_attention_heads", self.num_attention_heads)?;
        let kv_heads = positive(
            "num_key_value_heads",
            self.num_key_value_heads.unwrap_or(heads),
        )?;
        if heads % kv_heads != 0 {
            return Err(ModelError::InvalidConfig(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) => positive("head_dim", d)?,
            None => {
                if hidden_size % heads != 0 {
                    return Err(ModelError::InvalidConfig(format!(
                        "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({heads}) and head_dim is not set"
                    )));
                }
                hidden_size / heads
            }
        };
        let params = self.rope_parameters.as_ref();
        let rope_theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| num_field(p, "rope_theta")))
            .unwrap_or(10_000.0);
        let scaling_value = self.rope_scaling.as_ref().or(params);
        let rope_scaling = match scaling_value {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("default");
                let need = |key: &str| {
                    num_field(v, key).ok_or_else(|| {
                        ModelError::InvalidConfig(format!("rope scaling {kind:?} needs {key}"))
                    })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: need("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: need("factor")?,
                        low_freq_factor: need("low_freq_factor")?,
                        high_freq_factor: need("high_freq_factor")?,
                        original_max_position_embeddings: need("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(ModelError::InvalidConfig(format!(
                            "rope scaling type {other:?} is not supported (supported: default, linear, llama3)"
                        )));
                    }
                }
            }
        };
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: positive("vocab_size", self.vocab_size)?,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&self.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&self.eos_token_id),
        })
    }
}

impl ModelConfig {
    /// Reads and normalises `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        HfConfig::from_file(&dir.join("config.json"))?.normalize()
    }

    /// (in_features, out_features) of a projection that LoRA can target.
    pub fn projection_shape(&self, module: crate::lora::TargetModule) -> (i64, i64) {
        use crate::lora::TargetModule as M;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match module {
            M::QProj => (self.hidden_size, q),
            M::KProj | M::VProj => (self.hidden_size, kv),
            M::OProj => (q, self.hidden_size),
            M::GateProj | M::UpProj => (self.hidden_size, self.intermediate_size),
            M::DownProj => (self.intermediate_size, self.hidden_size),
        }
    }

    /// Multiply-adds of the projections and the LM head for one token (attention scores
    /// excluded): the work of a forward pass is about this times its tokens.
    pub fn macs_per_token(&self) -> i64 {
        let per_layer: i64 = crate::lora::TargetModule::ALL
            .into_iter()
            .map(|m| {
                let (i, o) = self.projection_shape(m);
                i * o
            })
            .sum();
        per_layer * self.num_hidden_layers + self.vocab_size * self.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        serde_json::from_str::<HfConfig>(json)
            .map_err(|e| ModelError::InvalidConfig(e.to_string()))?
            .normalize()
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100"#;

    #[test]
    fn llama_defaults_and_gqa() -> Result<()> {
        let c = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}}"#
        ))?;
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.num_key_value_heads, c.head_dim), (2, 16));
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.qkv_bias && !c.qk_norm && !c.tie_word_embeddings);
        Ok(())
    }

    #[test]
    fn llama3_rope_scaling_both_spellings() -> Result<()> {
        let old = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_theta": 500000.0,
              "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))?;
        let new = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE},
              "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))?;
        assert_eq!(old, new);
        assert_eq!(old.rope_theta, 500_000.0);
        assert!(matches!(old.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        Ok(())
    }

    #[test]
    fn qwen_variants() -> Result<()> {
        let q2 = parse(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "tie_word_embeddings": true}}"#
        ))?;
        assert!(q2.qkv_bias && !q2.o_bias && q2.tie_word_embeddings && !q2.qk_norm);
        let q3 = parse(&format!(
            r#"{{"architectures": ["Qwen3ForCausalLM"], {BASE}, "head_dim": 32}}"#
        ))?;
        assert!(q3.qk_norm && !q3.qkv_bias);
        assert_eq!(q3.head_dim, 32);
        Ok(())
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = parse(&format!(
            r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#
        ));
        match err {
            Err(e @ ModelError::UnsupportedArchitecture { .. }) => {
                assert!(e.to_string().contains("GPT2LMHeadModel"));
            }
            other => panic!("expected UnsupportedArchitecture, got {other:?}"),
        }
    }

    #[test]
    fn bad_head_layout_rejected() {
        let err = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 3}}"#
        ));
        assert!(matches!(err, Err(ModelError::InvalidConfig(_))));
    }
}
