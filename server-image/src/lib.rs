//! `tailor-server`: one base model, many LoRA adapters, OpenAI-compatible API with continuous
//! batching (see README.md).

pub mod adapters;
pub mod app;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod serve;
