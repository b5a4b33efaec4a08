//! The PEFT adapter directory format: `adapter_config.json` + `adapter_model.safetensors` with
//! tensors named `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` etc., so
//! adapters move between tailor, PEFT and vLLM unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{read_safetensors, write_atomic, write_safetensors};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result, read_json};
use crate::lora::{LoraAdapter, LoraConfig, TargetModule};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.model.layers.";

/// `adapter_config.json` as PEFT writes it (the fields tailor reads).
#[derive(Debug, Clone, Deserialize)]
pub struct PeftConfigFile {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: i64,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<serde_json::Value>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

impl PeftConfigFile {
    /// Checks the config is one tailor implements and converts it.
    pub fn to_lora_config(&self) -> Result<LoraConfig> {
        let names = self.checked_target_names()?;
        self.lora_config(TargetModule::parse_list(&names)?)
    }

    /// [`Self::to_lora_config`] for `model`: every target must exist in its family.
    pub fn to_lora_config_for(&self, model: &ModelConfig) -> Result<LoraConfig> {
        let names = self.checked_target_names()?;
        self.lora_config(TargetModule::resolve(&names, model)?)
    }

    /// The target module names, once the settings tailor does not implement are ruled out.
    fn checked_target_names(&self) -> Result<Vec<String>> {
        let unsupported = |what: &str| {
            Err(ModelError::Adapter(format!(
                "{CONFIG_FILE}: {what} is not supported"
            )))
        };
        if let Some(t) = &self.peft_type
            && t != "LORA"
        {
            return unsupported(&format!("peft_type {t:?}"));
        }
        if self.use_dora {
            return unsupported("use_dora");
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out");
        }
        if let Some(b) = &self.bias
            && b != "none"
        {
            return unsupported(&format!("bias {b:?}"));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save");
        }
        if self.rank_pattern.as_ref().is_some_and(|m| !m.is_empty())
            || self.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty())
        {
            return unsupported("rank_pattern/alpha_pattern");
        }
        Ok(match &self.target_modules {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ModelError::Adapter(format!(
                            "{CONFIG_FILE}: target_modules must be strings"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            Some(serde_json::Value::String(s)) if s == "all-linear" => vec![s.clone()],
            Some(other) => {
                return Err(ModelError::Adapter(format!(
                    "{CONFIG_FILE}: target_modules {other} is not supported (use a list of module names)"
                )));
            }
            None => {
                return Err(ModelError::Adapter(format!(
                    "{CONFIG_FILE}: target_modules is missing"
                )));
            }
        })
    }

    fn lora_config(&self, target_modules: Vec<TargetModule>) -> Result<LoraConfig> {
        let config = LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules,
            use_rslora: self.use_rslora,
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_key(key: &str) -> Option<(usize, TargetModule, bool)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let mut parts = rest.split('.');
    let parent = parts.next()?;
    let module: TargetModule = parts.next()?.parse().ok()?;
    if module.parent() != parent {
        return None;
    }
    let which = parts.next()?;
    let mut tail: Vec<&str> = parts.collect();
    // Some PEFT versions keep the adapter name: `lora_A.default.weight`.
    if tail.len() == 2 {
        tail.remove(0);
    }
    if tail != ["weight"] {
        return None;
    }
    match which {
        "lora_A" => Some((layer, module, true)),
        "lora_B" => Some((layer, module, false)),
        _ => None,
    }
}

/// PEFT's tensor name for one half of a pair.
pub fn tensor_name(layer: usize, module: TargetModule, a: bool) -> String {
    format!(
        "{KEY_PREFIX}{layer}.{}.{}.lora_{}.weight",
        module.parent(),
        module.name(),
        if a { "A" } else { "B" }
    )
}

/// Reads a PEFT adapter directory for `model`. Tensors land on `device` in fp32.
pub fn load_adapter(dir: &Path, model: &ModelConfig, device: Device) -> Result<LoraAdapter> {
    let cfg_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    if !cfg_path.exists() {
        return Err(ModelError::Adapter(format!(
            "{} does not exist",
            cfg_path.display()
        )));
    }
    if !weights_path.exists() {
        return Err(ModelError::Adapter(format!(
            "{} does not exist",
            weights_path.display()
        )));
    }
    let file: PeftConfigFile = read_json(&cfg_path)?;
    let config = file.to_lora_config_for(model)?;
    let mut a_map = BTreeMap::new();
    let mut b_map = BTreeMap::new();
    for (name, t) in read_safetensors(&weights_path, device)? {
        let Some((layer, module, is_a)) = parse_key(&name) else {
            return Err(ModelError::Adapter(format!(
                "{}: unexpected tensor {name} (tailor reads LoRA A/B weights of the attention and MLP projections)",
                weights_path.display()
            )));
        };
        if !config.target_modules.contains(&module) {
            return Err(ModelError::Adapter(format!(
                "{}: tensor {name} targets {module}, which adapter_config.json does not list",
                weights_path.display()
            )));
        }
        let t = t.to_kind(Kind::Float);
        if is_a {
            a_map.insert((layer, module), t);
        } else {
            b_map.insert((layer, module), t);
        }
    }
    if a_map.is_empty() {
        return Err(ModelError::Adapter(format!(
            "{}: holds no LoRA weights",
            weights_path.display()
        )));
    }
    let mut pairs = Vec::new();
    for ((layer, module), a) in a_map {
        let b = b_map.remove(&(layer, module)).ok_or_else(|| {
            ModelError::Adapter(format!(
                "missing tensor {}",
                tensor_name(layer, module, false)
            ))
        })?;
        pairs.push((layer, module, a, b));
    }
    if let Some(((layer, module), _)) = b_map.into_iter().next() {
        return Err(ModelError::Adapter(format!(
            "missing tensor {}",
            tensor_name(layer, module, true)
        )));
    }
    LoraAdapter::from_pairs(model, config, pairs)
}

#[derive(Serialize)]
struct PeftConfigOut<'a> {
    alpha_pattern: BTreeMap<String, f64>,
    auto_mapping: Option<()>,
    base_model_name_or_path: &'a str,
    bias: &'a str,
    fan_in_fan_out: bool,
    inference_mode: bool,
    init_lora_weights: bool,
    layers_pattern: Option<()>,
    layers_to_transform: Option<()>,
    lora_alpha: f64,
    lora_dropout: f64,
    modules_to_save: Option<()>,
    peft_type: &'a str,
    r: i64,
    rank_pattern: BTreeMap<String, i64>,
    revision: Option<()>,
    target_modules: Vec<&'a str>,
    task_type: &'a str,
    use_dora: bool,
    use_rslora: bool,
}

/// Writes `adapter` into `dir` in PEFT's format (weights in fp32). `base_model` is recorded as
/// `base_model_name_or_path`.
pub fn save_adapter(adapter: &LoraAdapter, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let c = &adapter.config;
    let out = PeftConfigOut {
        alpha_pattern: BTreeMap::new(),
        auto_mapping: None,
        base_model_name_or_path: base_model,
        bias: "none",
        fan_in_fan_out: false,
        inference_mode: true,
        init_lora_weights: true,
        layers_pattern: None,
        layers_to_transform: None,
        lora_alpha: c.alpha,
        lora_dropout: c.dropout,
        modules_to_save: None,
        peft_type: "LORA",
        r: c.r,
        rank_pattern: BTreeMap::new(),
        revision: None,
        target_modules: c.target_modules.iter().map(|m| m.name()).collect(),
        task_type: "CAUSAL_LM",
        use_dora: false,
        use_rslora: c.use_rslora,
    };
    let json = serde_json::to_vec_pretty(&out).map_err(|source| ModelError::Json {
        path: dir.join(CONFIG_FILE),
        source,
    })?;
    let mut tensors = Vec::new();
    for (layer, module, p) in adapter.pairs() {
        tensors.push((
            tensor_name(layer, module, true),
            p.a.detach().to_kind(Kind::Float),
        ));
        tensors.push((
            tensor_name(layer, module, false),
            p.b.detach().to_kind(Kind::Float),
        ));
    }
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    write_atomic(&dir.join(CONFIG_FILE), &json)
}

/// Flat `name -> tensor` view of an adapter's weights, PEFT names (used by checkpoints).
pub fn named_tensors(adapter: &LoraAdapter) -> Vec<(String, Tensor)> {
    adapter
        .pairs()
        .flat_map(|(layer, module, p)| {
            [
                (tensor_name(layer, module, true), p.a.shallow_clone()),
                (tensor_name(layer, module, false), p.b.shallow_clone()),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_keys() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, TargetModule::QProj, true))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"),
            Some((0, TargetModule::DownProj, false))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.q_proj.lora_B.weight"),
            None
        );
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
    }

    #[test]
    fn rejects_unsupported_configs() {
        let f: PeftConfigFile = serde_json::from_str(
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"],"use_dora":true}"#,
        )
        .expect("json");
        assert!(f.to_lora_config().is_err());
        let f: PeftConfigFile = serde_json::from_str(
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["qq_proj"]}"#,
        )
        .expect("json");
        assert!(matches!(
            f.to_lora_config(),
            Err(ModelError::UnknownTargetModule(_))
        ));
    }
}
