//! `tailor-model`: decoder-only LMs on libtorch — Llama 2/3.x, Mistral, Qwen2/2.5/3, Qwen3-MoE,
//! Gemma 2/3 and Phi-3/Phi-4 (the families in `tailor_wire::families`) — loaded from a Hugging
//! Face checkpoint directory, with PEFT-compatible LoRA.
//!
//! The public surface, stable for the trainer and the server:
//! - [`ModelConfig`] / [`HfConfig`]: `config.json`, normalised.
//! - [`CausalLm::load`] and [`CausalLm::forward`] / [`CausalLm::hidden_states`] +
//!   [`CausalLm::logits`], taking a [`ForwardInput`] (token ids, optional validity mask, the
//!   [`Adapters`] to use, per row if need be) and an optional caller-owned [`KvCache`].
//! - [`LoraAdapter`] / [`LoraConfig`] / [`TargetModule`], with [`peft`] reading and writing the
//!   PEFT adapter directory format.
//! - [`CausalLm::packed_loss_backward`]: one training micro-batch ([`PackedBatch`]), its loss and
//!   the adapter's gradient, with optional gradient [`Checkpointing`].
//! - [`Tokenizer`] (`tokenizer.json` + `tokenizer_config.json`) and [`ChatTemplate`].
//! - [`ModelError`]: every failure, with a message naming the file or field.
//! - [`profile`]: per-phase step times under `TAILOR_PROFILE=1`.

pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod kv_cache;
pub mod layers;
pub mod lora;
pub mod masks;
pub mod model;
pub mod peft;
pub mod profile;
pub mod tokenizer;
pub mod training;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{HfConfig, LayerType, ModelConfig, RopeConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use lora::{Adapters, LoraAdapter, LoraConfig, StackedAdapters, TargetModule};
pub use model::{CausalLm, ForwardInput};
pub use tailor_wire::families::Family;
pub use tokenizer::Tokenizer;
pub use training::{Checkpointing, PackedBatch};

pub use device::{cuda_available, default_device, parse_device};
