//! The model families tailor trains and serves, keyed by the architecture name a checkpoint's
//! `config.json` gives (`architectures[0]`), and the LoRA target modules each allows.
//!
//! One table for the operator (admission: a FineTuneJob naming a module its base model does not
//! have is an invalid spec, refused before any pod starts) and for `tailor-model` (which builds
//! the layers and refuses the same adapters at load time). Target names are the module names as
//! PEFT writes them in `adapter_config.json` and in tensor keys for that architecture.

use std::fmt;

/// A family of checkpoints that share one layer layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    Qwen3Moe,
    Mixtral,
}

/// PEFT's `target_modules` value for every linear layer of a model (the LM head excepted).
pub const ALL_LINEAR: &str = "all-linear";

const DENSE: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// Phi-3 and Phi-4 checkpoints fuse q/k/v and gate/up into one projection each.
const FUSED: &[&str] = &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];
/// Mixture-of-experts models: adapters on attention only, the experts stay frozen (their
/// weights are 3-D parameters, not linear modules PEFT's LoRA wraps).
const ATTENTION: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj"];

impl Family {
    pub const ALL: [Family; 9] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma2,
        Self::Gemma3,
        Self::Phi3,
        Self::Qwen3Moe,
        Self::Mixtral,
    ];

    /// The family of a `config.json` `architectures[0]` value.
    pub fn from_architecture(architecture: &str) -> Result<Self, FamilyError> {
        Self::ALL
            .into_iter()
            .find(|f| f.architecture() == architecture)
            .ok_or_else(|| FamilyError::UnknownArchitecture {
                found: architecture.to_string(),
            })
    }

    /// Short name, as in `config.json`'s `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
            Self::Phi3 => "phi3",
            Self::Qwen3Moe => "qwen3_moe",
            Self::Mixtral => "mixtral",
        }
    }

    /// The `transformers` class name checkpoints of this family give in `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
            Self::Qwen3Moe => "Qwen3MoeForCausalLM",
            Self::Mixtral => "MixtralForCausalLM",
        }
    }

    /// The module names LoRA may target in this family (what `all-linear` expands to).
    pub fn lora_targets(self) -> &'static [&'static str] {
        match self {
            Self::Phi3 => FUSED,
            Self::Qwen3Moe | Self::Mixtral => ATTENTION,
            _ => DENSE,
        }
    }

    /// Checks a `targetModules` list: each name must be one this family has, or `all-linear`.
    pub fn check_targets<S: AsRef<str>>(self, targets: &[S]) -> Result<(), FamilyError> {
        for t in targets {
            let t = t.as_ref();
            if t != ALL_LINEAR && !self.lora_targets().contains(&t) {
                return Err(FamilyError::TargetNotAllowed {
                    family: self,
                    found: t.to_string(),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn supported_architectures() -> String {
    Family::ALL
        .iter()
        .map(|f| f.architecture())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a base model or a target-module list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FamilyError {
    #[error(
        "unsupported architecture {found:?} in config.json (supported: {})",
        supported_architectures()
    )]
    UnknownArchitecture { found: String },
    #[error(
        "LoRA target module {found:?} does not exist in {family} models (allowed: {}, or all-linear)",
        family.lora_targets().join(", ")
    )]
    TargetNotAllowed { family: Family, found: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_maps_back_to_its_family() {
        for f in Family::ALL {
            assert_eq!(Family::from_architecture(f.architecture()), Ok(f));
            assert!(!f.lora_targets().is_empty());
        }
    }

    #[test]
    fn unknown_architecture_names_what_was_found_and_what_is_supported() {
        let err = Family::from_architecture("GPT2LMHeadModel").expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("\"GPT2LMHeadModel\""), "{msg}");
        assert!(
            msg.contains("Gemma3ForCausalLM") && msg.contains("Phi3ForCausalLM"),
            "{msg}"
        );
    }

    #[test]
    fn targets_are_checked_per_family() {
        let phi = Family::from_architecture("Phi3ForCausalLM").expect("phi3");
        assert_eq!(phi.check_targets(&["qkv_proj", "gate_up_proj"]), Ok(()));
        assert_eq!(phi.check_targets(&[ALL_LINEAR]), Ok(()));
        let err = phi
            .check_targets(&["qkv_proj", "q_proj"])
            .expect_err("q_proj");
        assert_eq!(
            err.to_string(),
            "LoRA target module \"q_proj\" does not exist in phi3 models (allowed: qkv_proj, o_proj, gate_up_proj, down_proj, or all-linear)"
        );
        assert!(
            Family::Gemma3
                .check_targets(&["q_proj", "down_proj"])
                .is_ok()
        );
        let err = Family::Mixtral
            .check_targets(&["gate_proj"])
            .expect_err("experts are frozen");
        assert!(err.to_string().contains("mixtral"), "{err}");
        assert!(Family::Llama.check_targets(&["qkv_proj"]).is_err());
    }
}
