//! `tailor-server`: one base model, many LoRA adapters, OpenAI-compatible API with continuous
//! batching (see README.md).

pub mod adapters;
pub mod config;
pub mod connections;
pub mod detokenize;
pub mod engine;
pub mod error;
pub mod generation;
pub mod health;
pub mod http;
pub mod metrics;
pub mod remote;
pub mod serve;
pub mod stop;
pub mod vllm;
