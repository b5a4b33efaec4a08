//! The command line (clap, every flag with an env fallback) and the reloadable JSON config file
//! (`tailor_wire::server::ServerConfig`, which the operator writes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tailor_wire::server::{FaultInjection, ServerConfig};

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
    /// Directories adapters may be loaded from through the API (repeatable; env:
    /// comma-separated). Default: the directories holding the adapters of `--adapter` and of
    /// the config file.
    #[arg(
        long = "adapter-root",
        env = "TAILOR_SERVER_ADAPTER_ROOTS",
        value_delimiter = ','
    )]
    pub adapter_roots: Vec<PathBuf>,
    /// URI prefixes adapters may be loaded from by URI through the LoRA API (`s3://bucket/adapters`,
    /// `hf://org`; repeatable; env: comma-separated). None: loads by URI are refused.
    /// Credentials come from the standard variables (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`,
    /// `AZURE_*`, `HF_TOKEN`, `HF_ENDPOINT`).
    #[arg(
        long = "adapter-uri-prefix",
        env = "TAILOR_SERVER_ADAPTER_URI_PREFIXES",
        value_delimiter = ','
    )]
    pub adapter_uri_prefixes: Vec<String>,
    /// Where adapters loaded by URI are fetched to and cached (default: `tailor-adapters` in
    /// the temporary directory).
    #[arg(long, env = "TAILOR_SERVER_ADAPTER_CACHE")]
    pub adapter_cache: Option<PathBuf>,
    /// Time one adapter load may take before it is abandoned with an error.
    #[arg(long, env = "TAILOR_SERVER_ADAPTER_LOAD_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub adapter_load_timeout: Duration,
    /// Address and port to listen on.
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
    /// File with accepted API keys, one per line (`Authorization: Bearer KEY`), for the
    /// OpenAI API, the LoRA API and the admin API. Re-read when it changes.
    #[arg(long, env = "TAILOR_SERVER_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// JSON config file, re-read when it changes (see README).
    #[arg(long, env = "TAILOR_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the config and API key files are checked for changes (`500ms`, `1s`, ...).
    #[arg(long, env = "TAILOR_SERVER_CONFIG_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub config_poll_interval: Duration,
    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "TAILOR_SERVER_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers, from its first byte.
    #[arg(long, env = "TAILOR_SERVER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body (408 beyond).
    #[arg(long, env = "TAILOR_SERVER_BODY_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and no bytes received for this long is closed.
    #[arg(long, env = "TAILOR_SERVER_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Open connections at most; beyond it new connections wait in the listen queue.
    #[arg(long, env = "TAILOR_SERVER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Completion requests in flight at most (queued or generating); 429 beyond.
    #[arg(long, env = "TAILOR_SERVER_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,
    /// `auto` (CUDA when available, else CPU), `cpu` or `cuda`.
    #[arg(long, env = "TAILOR_SERVER_DEVICE", default_value = "auto")]
    pub device: String,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32`, `bf16` or `f16`.
    #[arg(long, env = "TAILOR_SERVER_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Intra-op threads for libtorch on CPU (0: libtorch's default).
    #[arg(long, env = "TAILOR_SERVER_THREADS", default_value_t = 0)]
    pub threads: i32,
    /// Time to wait for in-flight requests after SIGTERM.
    #[arg(long, env = "TAILOR_SERVER_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// After the engine dies, `/ready` fails at once and `/health` after this long (the
    /// kubelet then restarts the pod; in-flight requests have had their 503s by then).
    #[arg(long, env = "TAILOR_SERVER_ENGINE_FAILURE_GRACE", default_value = "10s", value_parser = duration)]
    pub engine_failure_grace: Duration,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TAILOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TEST-ONLY fault injection: fraction of requests (0..1) to the models in
    /// `--fault-adapters` (all models when empty) answered with a 500. Off (0) by default.
    #[arg(long, env = "TAILOR_SERVER_FAULT_ERROR_RATE", default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// TEST-ONLY: model names fault injection applies to (comma-separated in the env).
    #[arg(long, env = "TAILOR_SERVER_FAULT_ADAPTERS", value_delimiter = ',')]
    pub fault_adapters: Vec<String>,
    /// TEST-ONLY: answer non-streamed chat completions with these contents in turn, without
    /// generating (repeat the flag for several).
    #[arg(long)]
    pub fault_fixed_response: Vec<String>,
    /// Standing in for vLLM (`tailor-server serve ...`, see [`crate::vllm`]).
    #[arg(skip)]
    pub vllm: Option<crate::vllm::VllmMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration flag: `500ms`, `30s`, `2m`, `1h` (humantime's format).
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?}: expected a duration such as 500ms, 30s or 2m ({e})"))
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

    /// The fault injection the flags ask for (the config file's, when it has one, wins).
    pub fn fault(&self) -> FaultInjection {
        FaultInjection {
            error_rate: self.fault_error_rate,
            adapters: self.fault_adapters.clone(),
            engine_panic_at_step: None,
            fixed_responses: self.fault_fixed_response.clone(),
        }
    }
}

/// The `--config` file, validated, with adapter paths resolved against the file's directory
/// (an adapter given by URI stays a URI).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    pub served_model_name: Option<String>,
    pub adapters: BTreeMap<String, PathBuf>,
    pub max_loaded_adapters: Option<usize>,
    pub fault_injection: Option<FaultInjection>,
}

impl FileConfig {
    pub fn parse(bytes: &[u8], path: &Path) -> anyhow::Result<Self> {
        let c: ServerConfig = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("{}: invalid config: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut adapters = BTreeMap::new();
        for (name, p) in c.adapters {
            if name.is_empty() || p.is_empty() {
                anyhow::bail!(
                    "{}: adapters: expected non-empty names and paths, got {name:?}: {p:?}",
                    path.display()
                );
            }
            // A URI (`s3://…`, `hf://…`) is fetched when the adapter is loaded.
            let p = PathBuf::from(&p);
            let uri = p.to_str().is_some_and(crate::remote::is_uri);
            adapters.insert(
                name,
                if p.is_relative() && !uri {
                    base.join(p)
                } else {
                    p
                },
            );
        }
        if let Some(f) = &c.fault_injection
            && !(0.0..=1.0).contains(&f.error_rate)
        {
            anyhow::bail!(
                "{}: faultInjection.errorRate must be in [0, 1], got {}",
                path.display(),
                f.error_rate
            );
        }
        Ok(Self {
            served_model_name: c.served_model_name,
            adapters,
            max_loaded_adapters: c.max_loaded_adapters,
            fault_injection: c.fault_injection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_humans_write_them() {
        let cli = Cli::try_parse_from([
            "tailor-server",
            "--model",
            "/m",
            "--config-poll-interval",
            "250ms",
            "--drain-timeout",
            "2m",
        ])
        .expect("parses");
        assert_eq!(cli.config_poll_interval, Duration::from_millis(250));
        assert_eq!(cli.drain_timeout, Duration::from_secs(120));
        assert_eq!(cli.header_read_timeout, Duration::from_secs(10));
        let err = Cli::try_parse_from(["tailor-server", "--model", "/m", "--idle-timeout", "soon"])
            .expect_err("rejected");
        assert!(err.to_string().contains("expected a duration"), "{err}");
    }

    #[test]
    fn every_flag_has_help_and_there_is_a_version() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_help().is_some(),
                "--{} has no help text",
                arg.get_id()
            );
        }
        let err = Cli::try_parse_from(["tailor-server", "--version"]).expect_err("exits");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")), "{err}");
    }

    #[test]
    fn config_file_paths_resolve_against_its_directory() {
        let fc = FileConfig::parse(
            br#"{"adapters": {"a": "rel/a", "b": "/abs/b"}, "maxLoadedAdapters": 2}"#,
            Path::new("/etc/tailor/server.json"),
        )
        .expect("parses");
        assert_eq!(fc.adapters["a"], PathBuf::from("/etc/tailor/rel/a"));
        assert_eq!(fc.adapters["b"], PathBuf::from("/abs/b"));
        assert_eq!(fc.max_loaded_adapters, Some(2));
        let err = FileConfig::parse(
            br#"{"faultInjection": {"errorRate": 2}}"#,
            Path::new("/c.json"),
        )
        .expect_err("rejected");
        assert!(err.to_string().contains("errorRate"), "{err}");
        let err = FileConfig::parse(br#"{"adapters": {"a": 1}}"#, Path::new("/c.json"))
            .expect_err("rejected");
        assert!(err.to_string().contains("/c.json"), "{err}");
    }
}
