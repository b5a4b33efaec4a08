//! Command line (clap, with env fallbacks) and the reloadable JSON config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// tailor-server: one base model, many LoRA adapters, OpenAI-compatible API.
#[derive(Debug, Clone, Parser)]
#[command(name = "tailor-server", version)]
pub struct Cli {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "TAILOR_SERVER_MODEL")]
    pub model: PathBuf,
    /// The name clients use for the base model (default: the directory's name).
    #[arg(long, env = "TAILOR_SERVER_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// `NAME=DIR`: a PEFT adapter directory served as model NAME (repeatable; env: comma-separated).
    #[arg(
        long = "adapter",
        env = "TAILOR_SERVER_ADAPTERS",
        value_delimiter = ','
    )]
    pub adapters: Vec<String>,
    #[arg(long, env = "TAILOR_SERVER_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Sequences decoded together.
    #[arg(long, env = "TAILOR_SERVER_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,
    /// Context limit (prompt + generated tokens); default: the model's max_position_embeddings.
    #[arg(long, env = "TAILOR_SERVER_MAX_SEQ_LENGTH")]
    pub max_seq_length: Option<usize>,
    /// Adapters held in memory at once; least recently used ones are unloaded beyond it.
    #[arg(long, env = "TAILOR_SERVER_MAX_LOADED_ADAPTERS", default_value_t = 8)]
    pub max_loaded_adapters: usize,
    /// File with accepted API keys, one per line (`Authorization: Bearer KEY`). Re-read on change.
    #[arg(long, env = "TAILOR_SERVER_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// JSON config file, re-read on change (see README).
    #[arg(long, env = "TAILOR_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the config and API key files are checked for changes, in milliseconds.
    #[arg(long, env = "TAILOR_SERVER_CONFIG_POLL_MS", default_value_t = 1000)]
    pub config_poll_ms: u64,
    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "TAILOR_SERVER_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// `auto` (CUDA when available, else CPU), `cpu` or `cuda`.
    #[arg(long, env = "TAILOR_SERVER_DEVICE", default_value = "auto")]
    pub device: String,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32`, `bf16` or `f16`.
    #[arg(long, env = "TAILOR_SERVER_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Intra-op threads for libtorch on CPU (0: libtorch's default).
    #[arg(long, env = "TAILOR_SERVER_THREADS", default_value_t = 0)]
    pub threads: i32,
    /// Seconds to wait for in-flight requests after SIGTERM.
    #[arg(long, env = "TAILOR_SERVER_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// TEST-ONLY fault injection: fraction of requests (0..1) to the models in
    /// `--fault-adapters` (all models when empty) answered with a 500. Off (0) by default.
    #[arg(long, env = "TAILOR_SERVER_FAULT_ERROR_RATE", default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// TEST-ONLY: model names fault injection applies to (comma-separated in the env).
    #[arg(long, env = "TAILOR_SERVER_FAULT_ADAPTERS", value_delimiter = ',')]
    pub fault_adapters: Vec<String>,
}

impl Cli {
    /// `--adapter NAME=DIR` pairs.
    pub fn adapter_pairs(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        self.adapters
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                let (n, p) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--adapter {s:?}: expected NAME=DIR"))?;
                if n.is_empty() || p.is_empty() {
                    anyhow::bail!("--adapter {s:?}: expected NAME=DIR");
                }
                Ok((n.to_string(), PathBuf::from(p)))
            })
            .collect()
    }
}

/// TEST-ONLY fault injection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjection {
    #[serde(default)]
    pub error_rate: f64,
    /// Model names it applies to; empty: every model.
    #[serde(default)]
    pub adapters: Vec<String>,
}

impl FaultInjection {
    pub fn applies(&self, model: &str) -> bool {
        self.error_rate > 0.0
            && (self.adapters.is_empty() || self.adapters.iter().any(|a| a == model))
    }
}

/// The `--config` file (JSON).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileConfig {
    #[serde(default)]
    pub served_model_name: Option<String>,
    /// name → PEFT adapter directory (relative paths: relative to the config file's directory).
    #[serde(default)]
    pub adapters: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub max_loaded_adapters: Option<usize>,
    /// TEST-ONLY.
    #[serde(default)]
    pub fault_injection: Option<FaultInjection>,
}

impl FileConfig {
    pub fn parse(bytes: &[u8], path: &Path) -> anyhow::Result<Self> {
        let mut c: FileConfig = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{}: invalid config: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in c.adapters.values_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(f) = &c.fault_injection
            && !(0.0..=1.0).contains(&f.error_rate)
        {
            anyhow::bail!(
                "{}: faultInjection.errorRate must be in [0, 1]",
                path.display()
            );
        }
        Ok(c)
    }
}
