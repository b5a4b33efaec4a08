//! Model configuration: [`HfConfig`] is `config.json` as Hugging Face writes it (optional fields,
//! per-family defaults, old and new spellings of the RoPE settings); [`ModelConfig`] is the one
//! normalised form the layers read, where every difference between families is a field.

mod rope;

use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tailor_wire::families::Family;

pub use rope::{RopeConfig, RopeScaling};

use crate::error::{ModelError, Result, read_json};

/// A field that may be absent (family default) or explicitly `null` (off).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

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
    pub rope_scaling: Option<Value>,
    /// transformers 5.x: `{"rope_type": ..., "rope_theta": ..., ...}`, or one such object per
    /// layer type.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Gemma 3 (4.x spelling): the base of the sliding layers' RoPE.
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// Phi-3: pretraining context, the LongRoPE switch point.
    #[serde(default)]
    pub original_max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Gemma's name for the MLP activation.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub sliding_window: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<i64>,
    /// `"full_attention"` / `"sliding_attention"` per layer (transformers >= 4.53).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: every n-th layer is global.
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<i64>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    pub quantization_config: Option<Value>,
    /// Mixture of experts (Qwen3-MoE `num_experts`, Mixtral `num_local_experts`).
    #[serde(default, alias = "num_local_experts")]
    pub num_experts: Option<i64>,
    #[serde(default)]
    pub num_experts_per_tok: Option<i64>,
    #[serde(default)]
    pub moe_intermediate_size: Option<i64>,
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    #[serde(default)]
    pub decoder_sparse_step: Option<i64>,
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<i64>>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
}

/// The activation between the gate and up projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Mistral, Qwen, Phi).
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// GeGLU with the exact GELU.
    Gelu,
}

/// How an RMSNorm applies its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStyle {
    /// `weight * normed.to(dtype)` (Llama and most).
    Scale,
    /// `(normed * (1 + weight)).to(dtype)`, all in fp32 (Gemma).
    OnePlusScale,
}

/// Where the frozen projections come from in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionLayout {
    /// `q_proj`, `k_proj`, `v_proj`; `gate_proj`, `up_proj`.
    Separate,
    /// `qkv_proj`; `gate_up_proj` (Phi-3, Phi-4).
    Fused,
}

/// Attention kind of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    /// Sliding-window attention: a token sees the `sliding_window` latest tokens, itself included.
    Sliding,
}

/// The sparse MLP of a mixture-of-experts layer.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: i64,
    pub top_k: i64,
    pub expert_intermediate_size: i64,
    /// Renormalise the top-k routing weights to sum to one.
    pub norm_topk_prob: bool,
    /// Layers whose MLP is sparse (others are dense with `intermediate_size`).
    pub sparse_layers: Vec<bool>,
}

/// The normalised configuration every layer reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub norm_style: NormStyle,
    pub activation: Activation,
    pub layout: ProjectionLayout,
    /// RoPE of full-attention layers.
    pub rope: RopeConfig,
    /// RoPE of sliding layers when it differs (Gemma 3's local base).
    pub sliding_rope: Option<RopeConfig>,
    /// Per layer.
    pub layer_types: Vec<LayerType>,
    /// Window of the sliding layers (`None`: they attend fully).
    pub sliding_window: Option<i64>,
    /// Bias on q_proj, k_proj and v_proj (Qwen2 always; others with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (`attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's extra norms: on the attention output before the residual, and before and after
    /// the MLP (`pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by this (√hidden in Gemma, rounded to the model's dtype).
    pub embed_scale: Option<f64>,
    /// Attention score scale; `None` for `1/√head_dim` (Gemma: `query_pre_attn_scalar^-½`).
    pub attention_scale: Option<f64>,
    /// `tanh(scores / c) * c` before the softmax (Gemma 2).
    pub attn_logit_softcap: Option<f64>,
    /// `tanh(logits / c) * c` on the LM head's output (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    pub moe: Option<MoeConfig>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
}

fn token_ids(v: &Option<Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

fn positive(name: &str, v: i64) -> Result<i64> {
    if v > 0 {
        Ok(v)
    } else {
        Err(ModelError::InvalidConfig(format!(
            "{name} must be positive, got {v}"
        )))
    }
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }

    fn family(&self) -> Result<Family> {
        let arch = match self.architectures.first() {
            Some(a) => a.clone(),
            None => match self.model_type.as_deref() {
                Some(t) => Family::ALL
                    .into_iter()
                    .find(|f| f.name() == t)
                    .map_or_else(|| t.to_string(), |f| f.architecture().to_string()),
                None => String::new(),
            },
        };
        Family::from_architecture(&arch)
            .map_err(|_| ModelError::UnsupportedArchitecture { found: arch })
    }

    /// Normalises into [`ModelConfig`], rejecting what tailor does not implement.
    pub fn normalize(&self) -> Result<ModelConfig> {
        if let Some(q) = &self.quantization_config
            && !q.is_null()
        {
            let method = q
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            return Err(ModelError::InvalidConfig(format!(
                "quantized checkpoints are not supported: config.json has a quantization_config (quant_method {method:?}); use the unquantized (bf16/fp16/fp32) weights"
            )));
        }
        let family = self.family()?;
        let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
        if self.use_bidirectional_attention == Some(true) {
            return Err(ModelError::InvalidConfig(
                "use_bidirectional_attention is true: an embedding model, not a causal LM".into(),
            ));
        }
        let activation = self.activation(gemma)?;
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
        // Phi-3 ignores `head_dim` (transformers derives it), every other family reads it.
        let head_dim = match self.head_dim.filter(|_| family != Family::Phi3) {
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
        let layers = positive("num_hidden_layers", self.num_hidden_layers)?;
        let max_position_embeddings = self.max_position_embeddings.unwrap_or(match family {
            Family::Gemma2 => 8192,
            Family::Gemma3 => 131_072,
            _ => 4096,
        });
        let (rope, sliding_rope) = self.ropes(family, head_dim, max_position_embeddings)?;
        let (layer_types, sliding_window) = self.layer_types(family, layers)?;
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Phi3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let softcap = |v: Option<Option<f64>>, default: Option<f64>| match v {
            Some(v) => v,
            None => default,
        };
        let moe = self.moe(family, layers)?;
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: positive("vocab_size", self.vocab_size)?,
            max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            norm_style: if gemma {
                NormStyle::OnePlusScale
            } else {
                NormStyle::Scale
            },
            activation,
            layout: if family == Family::Phi3 {
                ProjectionLayout::Fused
            } else {
                ProjectionLayout::Separate
            },
            rope,
            sliding_rope,
            layer_types,
            sliding_window,
            qkv_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3 | Family::Qwen3Moe),
            sandwich_norms: gemma,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            attention_scale: gemma.then(|| self.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5)),
            // Gemma 3's attention ignores `attn_logit_softcapping` in transformers.
            attn_logit_softcap: match family {
                Family::Gemma2 => softcap(self.attn_logit_softcapping, Some(50.0)),
                _ => None,
            },
            final_logit_softcap: match family {
                Family::Gemma2 => softcap(self.final_logit_softcapping, Some(30.0)),
                Family::Gemma3 => softcap(self.final_logit_softcapping, None),
                _ => None,
            },
            moe,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(gemma),
            bos_token_id: token_ids(&self.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&self.eos_token_id),
        })
    }

    fn activation(&self, gemma: bool) -> Result<Activation> {
        let (field, name) = match (&self.hidden_activation, &self.hidden_act) {
            (Some(a), _) if gemma => ("hidden_activation", a.as_str()),
            (_, Some(a)) => ("hidden_act", a.as_str()),
            _ => (
                "hidden_act",
                if gemma { "gelu_pytorch_tanh" } else { "silu" },
            ),
        };
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ModelError::InvalidConfig(format!(
                "{field} {other:?} is not supported (supported: silu, gelu, gelu_pytorch_tanh)"
            ))),
        }
    }

    /// `(full-attention RoPE, sliding-layer RoPE when it differs)`.
    fn ropes(
        &self,
        family: Family,
        head_dim: i64,
        max_position_embeddings: i64,
    ) -> Result<(RopeConfig, Option<RopeConfig>)> {
        let ctx = rope::RopeContext {
            head_dim,
            max_position_embeddings,
            original_max_override: (family == Family::Phi3)
                .then_some(self.original_max_position_embeddings)
                .flatten(),
            phi3_names: family == Family::Phi3,
        };
        // As transformers: `rope_scaling` (4.x) takes precedence over `rope_parameters`.
        let params = self
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(self.rope_parameters.as_ref().filter(|v| !v.is_null()));
        let partial = self.partial_rotary_factor;
        if family == Family::Gemma3 {
            let (full, local) = if rope::is_nested(params) {
                (
                    rope::nested(params, "full_attention"),
                    rope::nested(params, "sliding_attention"),
                )
            } else {
                // 4.x: `rope_scaling` applies to the global layers only.
                (params, None)
            };
            let global = rope::parse(
                full,
                self.rope_theta.unwrap_or(1_000_000.0),
                partial,
                &ctx,
                "rope (full attention)",
            )?;
            let local = rope::parse(
                local,
                self.rope_local_base_freq.unwrap_or(10_000.0),
                partial,
                &ctx,
                "rope (sliding attention)",
            )?;
            return Ok((global, Some(local)));
        }
        let theta = self.rope_theta.unwrap_or(10_000.0);
        if rope::is_nested(params) {
            let full = rope::parse(
                rope::nested(params, "full_attention"),
                theta,
                partial,
                &ctx,
                "rope (full attention)",
            )?;
            let sliding = match rope::nested(params, "sliding_attention") {
                Some(p) => Some(rope::parse(
                    Some(p),
                    theta,
                    partial,
                    &ctx,
                    "rope (sliding attention)",
                )?),
                None => None,
            };
            let sliding = sliding.filter(|s| *s != full);
            return Ok((full, sliding));
        }
        Ok((rope::parse(params, theta, partial, &ctx, "rope")?, None))
    }

    /// Per-layer attention kinds and the sliding window, as each family's config class derives
    /// them when `layer_types` is absent.
    fn layer_types(&self, family: Family, layers: i64) -> Result<(Vec<LayerType>, Option<i64>)> {
        let window = match &self.sliding_window {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|w| *w > 0).ok_or_else(|| {
                ModelError::InvalidConfig(format!(
                    "sliding_window must be a positive integer or null, got {v}"
                ))
            })?),
        };
        let n = layers as usize;
        let parse_given = |given: &[String]| -> Result<Vec<LayerType>> {
            if given.len() != n {
                return Err(ModelError::InvalidConfig(format!(
                    "layer_types has {} entries for {n} layers",
                    given.len()
                )));
            }
            given
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(LayerType::Full),
                    "sliding_attention" => Ok(LayerType::Sliding),
                    other => Err(ModelError::InvalidConfig(format!(
                        "layer_types[{i}] {other:?} is not supported (expected full_attention or sliding_attention)"
                    ))),
                })
                .collect()
        };
        let all = |t: LayerType| vec![t; n];
        let (types, window) = match family {
            Family::Gemma2 | Family::Gemma3 => {
                let types = match &self.layer_types {
                    Some(given) => parse_given(given)?,
                    None => {
                        let pattern = if family == Family::Gemma2 {
                            2
                        } else {
                            positive(
                                "sliding_window_pattern",
                                self.sliding_window_pattern.unwrap_or(6),
                            )?
                        };
                        (0..layers)
                            .map(|i| {
                                if (i + 1) % pattern != 0 {
                                    LayerType::Sliding
                                } else {
                                    LayerType::Full
                                }
                            })
                            .collect()
                    }
                };
                (types, window.or(Some(4096)))
            }
            Family::Qwen2 | Family::Qwen3 => {
                let window = window.filter(|_| self.use_sliding_window == Some(true));
                let types = match &self.layer_types {
                    Some(given) => parse_given(given)?,
                    None => {
                        let from = self.max_window_layers.unwrap_or(28);
                        (0..layers)
                            .map(|i| {
                                if window.is_some() && i >= from {
                                    LayerType::Sliding
                                } else {
                                    LayerType::Full
                                }
                            })
                            .collect()
                    }
                };
                (types, window)
            }
            Family::Qwen3Moe => {
                let window = window.filter(|_| self.use_sliding_window == Some(true));
                let kind = if window.is_some() {
                    LayerType::Sliding
                } else {
                    LayerType::Full
                };
                (all(kind), window)
            }
            // Every layer slides when the config sets a window (layer_types is ignored, as
            // transformers does for these families).
            Family::Mistral | Family::Phi3 | Family::Mixtral => (
                all(if window.is_some() {
                    LayerType::Sliding
                } else {
                    LayerType::Full
                }),
                window,
            ),
            Family::Llama => (all(LayerType::Full), None),
        };
        Ok((types, window))
    }

    fn moe(&self, family: Family, layers: i64) -> Result<Option<MoeConfig>> {
        if !matches!(family, Family::Qwen3Moe | Family::Mixtral) {
            return Ok(None);
        }
        let need = |name: &str, v: Option<i64>| {
            v.ok_or_else(|| ModelError::InvalidConfig(format!("{family} config needs {name}")))
                .and_then(|v| positive(name, v))
        };
        let num_experts = need("num_experts", self.num_experts)?;
        let top_k = need("num_experts_per_tok", self.num_experts_per_tok)?;
        if top_k > num_experts {
            return Err(ModelError::InvalidConfig(format!(
                "num_experts_per_tok ({top_k}) exceeds the number of experts ({num_experts})"
            )));
        }
        let (expert_intermediate_size, norm_topk_prob, sparse_layers) = match family {
            Family::Qwen3Moe => {
                let step = positive("decoder_sparse_step", self.decoder_sparse_step.unwrap_or(1))?;
                let dense = self.mlp_only_layers.clone().unwrap_or_default();
                (
                    need("moe_intermediate_size", self.moe_intermediate_size)?,
                    self.norm_topk_prob.unwrap_or(false),
                    (0..layers)
                        .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
                        .collect(),
                )
            }
            _ => (
                positive("intermediate_size", self.intermediate_size)?,
                true,
                vec![true; layers as usize],
            ),
        };
        Ok(Some(MoeConfig {
            num_experts,
            top_k,
            expert_intermediate_size,
            norm_topk_prob,
            sparse_layers,
        }))
    }
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<Value>,
}

impl ModelConfig {
    /// Reads and normalises `DIR/config.json`; end-of-sequence ids from
    /// `DIR/generation_config.json` are added (chat models list their end-of-turn token there).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut config = HfConfig::from_file(&dir.join("config.json"))?.normalize()?;
        let generation = dir.join("generation_config.json");
        if generation.exists() {
            let g: GenerationConfig = read_json(&generation)?;
            for id in token_ids(&g.eos_token_id) {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// The RoPE of layer `i`.
    pub fn rope_of(&self, layer: usize) -> &RopeConfig {
        match (self.layer_types.get(layer), &self.sliding_rope) {
            (Some(LayerType::Sliding), Some(r)) => r,
            _ => &self.rope,
        }
    }

    /// The window layer `i` attends within (`None`: everything before it).
    pub fn window_of(&self, layer: usize) -> Option<i64> {
        match self.layer_types.get(layer) {
            Some(LayerType::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// (in_features, out_features) of a projection that LoRA can target.
    pub fn projection_shape(&self, module: crate::lora::TargetModule) -> (i64, i64) {
        use crate::lora::TargetModule as M;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match module {
            M::QProj => (self.hidden_size, q),
            M::KProj | M::VProj => (self.hidden_size, kv),
            M::QkvProj => (self.hidden_size, q + 2 * kv),
            M::OProj => (q, self.hidden_size),
            M::GateProj | M::UpProj => (self.hidden_size, self.intermediate_size),
            M::GateUpProj => (self.hidden_size, 2 * self.intermediate_size),
            M::DownProj => (self.intermediate_size, self.hidden_size),
        }
    }

    /// The modules LoRA may target in this model.
    pub fn lora_targets(&self) -> Vec<crate::lora::TargetModule> {
        self.family
            .lora_targets()
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Multiply-adds of the projections and the LM head for one token (attention scores
    /// excluded): the work of a forward pass is about this times its tokens.
    pub fn macs_per_token(&self) -> i64 {
        use crate::lora::TargetModule as M;
        let (q, o) = self.projection_shape(M::QkvProj);
        let attention = q * o + self.hidden_size * self.num_attention_heads * self.head_dim;
        let mlp = match &self.moe {
            Some(m) => 3 * self.hidden_size * m.expert_intermediate_size * m.top_k,
            None => 3 * self.hidden_size * self.intermediate_size,
        };
        (attention + mlp) * self.num_hidden_layers + self.vocab_size * self.hidden_size
    }
}

#[cfg(test)]
mod tests;
