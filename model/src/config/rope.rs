//! RoPE settings from `config.json`, as `transformers` reads them: the 4.x spelling
//! (`rope_theta` + `rope_scaling`), the 5.x spelling (`rope_parameters`, flat or per layer type)
//! and the family-specific ones (Gemma 3's `rope_local_base_freq`, Phi-3's top-level
//! `original_max_position_embeddings` and `partial_rotary_factor`, `su` for LongRoPE).

use serde_json::Value;

use crate::error::{ModelError, Result};

/// How RoPE frequencies are adjusted for long contexts (the `rope_type`s `transformers`
/// implements for these families).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Dynamic NTK: past `max_position_embeddings`, the base grows with the sequence length.
    Dynamic {
        factor: f64,
        max_position_embeddings: i64,
    },
    /// YaRN: frequencies blended between interpolation and extrapolation, cos/sin scaled.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
    /// LongRoPE (Phi-3 `su`): per-frequency factors, the long set once a sequence passes
    /// `original_max_position_embeddings`; cos/sin scaled.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: i64,
        attention_factor: f64,
    },
    /// Llama 3.1's piecewise scaling of low and medium frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// One RoPE: base, scaling and how much of each head it rotates.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Leading dimensions of each head that rotate (`head_dim * partial_rotary_factor`); the
    /// rest pass through.
    pub rotary_dim: i64,
}

/// What the family-independent parser needs to know about the model.
pub(crate) struct RopeContext {
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    /// Phi-3's top-level value, which overrides the one in the RoPE parameters.
    pub original_max_override: Option<i64>,
    /// Phi-3 reads `su` and `yarn` as LongRoPE.
    pub phi3_names: bool,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Parses one flat parameter object (`{"rope_type": .., "rope_theta": .., "factor": ..}`).
/// `theta` and `partial` are the fallbacks from the top level of `config.json`.
pub(crate) fn parse(
    params: Option<&Value>,
    theta: f64,
    partial: Option<f64>,
    ctx: &RopeContext,
    field: &str,
) -> Result<RopeConfig> {
    let empty = Value::Null;
    let v = params.unwrap_or(&empty);
    let theta = num(v, "rope_theta").unwrap_or(theta);
    let partial = num(v, "partial_rotary_factor").or(partial).unwrap_or(1.0);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(ModelError::InvalidConfig(format!(
            "{field}: partial_rotary_factor must be in (0, 1], got {partial}"
        )));
    }
    let rotary_dim = (ctx.head_dim as f64 * partial) as i64;
    if rotary_dim < 2 || rotary_dim % 2 != 0 {
        return Err(ModelError::InvalidConfig(format!(
            "{field}: rotary dimension {rotary_dim} (head_dim {} x partial_rotary_factor {partial}) must be even and at least 2",
            ctx.head_dim
        )));
    }
    let mut kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if ctx.phi3_names && (kind == "su" || kind == "yarn") {
        kind = "longrope";
    }
    let need = |key: &str| {
        num(v, key).ok_or_else(|| {
            ModelError::InvalidConfig(format!("{field}: rope type {kind:?} needs {key}"))
        })
    };
    let original_max = || -> f64 {
        ctx.original_max_override
            .map(|o| o as f64)
            .or_else(|| num(v, "original_max_position_embeddings"))
            .unwrap_or(ctx.max_position_embeddings as f64)
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
            max_position_embeddings: ctx.max_position_embeddings,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original_max(),
        },
        "yarn" => {
            let original = original_max();
            let factor = num(v, "factor").unwrap_or(ctx.max_position_embeddings as f64 / original);
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (
                num(v, "attention_factor"),
                num(v, "mscale").filter(|m| *m != 0.0),
                num(v, "mscale_all_dim").filter(|m| *m != 0.0),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                beta_fast: num(v, "beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: num(v, "beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
                truncate: v.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        "longrope" => {
            let list = |key: &str| -> Result<Vec<f64>> {
                let items = v.get(key).and_then(Value::as_array).ok_or_else(|| {
                    ModelError::InvalidConfig(format!(
                        "{field}: rope type \"longrope\" needs {key}"
                    ))
                })?;
                let out: Vec<f64> = items.iter().filter_map(Value::as_f64).collect();
                if out.len() != items.len() || out.len() as i64 != rotary_dim / 2 {
                    return Err(ModelError::InvalidConfig(format!(
                        "{field}: {key} must be {} numbers (rotary dimension / 2), got {}",
                        rotary_dim / 2,
                        items.len()
                    )));
                }
                Ok(out)
            };
            let original = original_max();
            let factor = num(v, "factor").unwrap_or(ctx.max_position_embeddings as f64 / original);
            let attention_factor = num(v, "attention_factor").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            });
            RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: original as i64,
                attention_factor,
            }
        }
        other => {
            return Err(ModelError::InvalidConfig(format!(
                "{field}: rope type {other:?} is not supported (supported: default, linear, dynamic, yarn, longrope, llama3)"
            )));
        }
    };
    Ok(RopeConfig {
        theta,
        scaling,
        rotary_dim,
    })
}

/// `rope_parameters` written per layer type (transformers 5.x for Gemma 3 and others):
/// `{"full_attention": {..}, "sliding_attention": {..}}`.
pub(crate) fn nested<'a>(params: Option<&'a Value>, layer_type: &str) -> Option<&'a Value> {
    params?.get(layer_type).filter(|v| v.is_object())
}

/// Whether a parameter object is the per-layer-type form.
pub(crate) fn is_nested(params: Option<&Value>) -> bool {
    params
        .is_some_and(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some())
}
