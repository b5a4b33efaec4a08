//! tailor-server as `vllm serve`: the part of vLLM's command line and environment a
//! ModelDeployment with `runtime: vllm` renders, so tailor-server can stand in for vLLM under
//! the same Deployment (tailor-sim, CPU-only clusters) and answer as vLLM does there.
//!
//! `tailor-server serve MODEL [flags]` (or the binary named `vllm`) takes vLLM's flags and
//! refuses the ones it does not implement, so a Deployment that passes here passes only flags
//! both servers know. What vLLM does differently, this mode does as vLLM:
//! - the runtime LoRA API exists only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING` true, and loads
//!   only with `--enable-lora`; an adapter of a rank above `--max-lora-rank` is refused;
//! - `VLLM_API_KEY` (or `--api-key`) guards `/v1/*`;
//! - adapters load from any directory the process reads (no `--adapter-root` confinement
//!   unless one is given);
//! - `/health` answers only once the model is loaded (vLLM listens only then); there is no
//!   `/ready` and no `/admin/adapters`.

use std::ffi::OsString;
use std::path::Path;

use clap::Parser;

use tailor_wire::server::VLLM_LORA_RANKS;

use crate::config::Cli;

/// `vllm serve`'s flags that tailor-server implements.
#[derive(Debug, Clone, Parser)]
#[command(name = "vllm serve", no_binary_name = true)]
pub struct VllmServe {
    /// The model: a local checkpoint directory.
    #[arg(value_name = "MODEL_TAG")]
    pub model_tag: Option<String>,
    /// The model (older spelling of the positional argument).
    #[arg(long)]
    pub model: Option<String>,
    /// Names the base model is served under (the first is the one listed).
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long)]
    pub enable_lora: bool,
    /// LoRAs in one batch (on GPU); also the adapters held without `--max-cpu-loras`.
    #[arg(long, default_value_t = 1)]
    pub max_loras: usize,
    /// Adapters held in memory (vLLM's CPU cache of LoRAs).
    #[arg(long)]
    pub max_cpu_loras: Option<usize>,
    #[arg(long, default_value_t = 16, value_parser = lora_rank)]
    pub max_lora_rank: u32,
    /// Accepted; tailor-server runs the model on one device.
    #[arg(long, visible_alias = "tp", default_value_t = 1)]
    pub tensor_parallel_size: u32,
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "half", "float16", "bfloat16", "float", "float32"])]
    pub dtype: String,
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn lora_rank(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|r| VLLM_LORA_RANKS.contains(r))
        .ok_or_else(|| format!("invalid choice: {text} (choose from {VLLM_LORA_RANKS:?})"))
}

/// What this mode changes in the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VllmMode {
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`: the LoRA API's routes exist.
    pub runtime_lora_updating: bool,
    pub enable_lora: bool,
    pub max_lora_rank: u32,
    pub api_key: Option<String>,
}

/// vLLM's reading of a boolean environment variable (`1` or `true`, any case).
fn env_flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
}

/// The server's command line from `vllm serve`'s arguments (after `serve`) and vLLM's
/// environment (`var` reads it); tailor-server's own variables still apply (test-only faults).
pub fn cli(
    args: impl IntoIterator<Item = OsString>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Cli, clap::Error> {
    let v = VllmServe::try_parse_from(args)?;
    let model = match (&v.model_tag, &v.model) {
        (Some(m), _) | (None, Some(m)) => m.clone(),
        (None, None) => {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "vllm serve: the model is required (vllm serve MODEL)\n",
            ));
        }
    };
    let dtype = match v.dtype.as_str() {
        "half" | "float16" => "f16",
        "bfloat16" => "bf16",
        "float" | "float32" => "f32",
        _ => "auto",
    };
    let host = if v.host.contains(':') {
        format!("[{}]", v.host)
    } else {
        v.host.clone()
    };
    let mut own: Vec<String> = vec![
        "tailor-server".into(),
        "--model".into(),
        model,
        "--listen".into(),
        format!("{host}:{}", v.port),
        "--max-loaded-adapters".into(),
        v.max_cpu_loras.unwrap_or(v.max_loras).to_string(),
        "--dtype".into(),
        dtype.into(),
    ];
    if let Some(name) = v.served_model_name.first() {
        own.extend(["--served-model-name".into(), name.clone()]);
    }
    if let Some(n) = v.max_model_len {
        own.extend(["--max-seq-length".into(), n.to_string()]);
    }
    if let Some(n) = v.max_num_seqs {
        own.extend(["--max-batch-size".into(), n.to_string()]);
    }
    if v.tensor_parallel_size > 1 {
        tracing::warn!(
            tensor_parallel_size = v.tensor_parallel_size,
            "tailor-server standing in for vLLM runs the model on one device"
        );
    }
    let mut cli = Cli::try_parse_from(own)?;
    if cli.adapter_roots.is_empty() {
        // vLLM loads an adapter from any directory it can read (the API is behind the key).
        cli.adapter_roots = vec!["/".into()];
    }
    cli.vllm = Some(VllmMode {
        runtime_lora_updating: env_flag(var("VLLM_ALLOW_RUNTIME_LORA_UPDATING").as_deref()),
        enable_lora: v.enable_lora,
        max_lora_rank: v.max_lora_rank,
        api_key: v.api_key.filter(|k| !k.is_empty()),
    });
    Ok(cli)
}

/// The most of adapter_config.json read for its rank.
const CONFIG_LIMIT: u64 = 1 << 20;

/// The rank of the PEFT adapter in `dir` (its `r`, or the largest of its `rank_pattern`), when
/// its adapter_config.json says.
pub fn adapter_rank(dir: &Path) -> Option<u32> {
    // adapter_config.json is a few hundred bytes: a larger one is not read (the load then
    // fails on it with its own error).
    let file = std::fs::File::open(dir.join(tailor_artifacts::adapter::CONFIG)).ok()?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, CONFIG_LIMIT + 1), &mut text).ok()?;
    if text.len() as u64 > CONFIG_LIMIT {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let base = v["r"].as_u64();
    let pattern = v["rank_pattern"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(serde_json::Value::as_u64)
        .max();
    base.into_iter()
        .chain(pattern)
        .max()
        .and_then(|r| u32::try_from(r).ok())
}

impl VllmMode {
    /// vLLM's refusals of a load (400), before tailor-server's own checks.
    pub fn check_load(&self, dir: &Path) -> Result<(), String> {
        if !self.enable_lora {
            return Err("LoRA is not enabled. Use --enable-lora to enable LoRA.".into());
        }
        match adapter_rank(dir) {
            Some(r) if r > self.max_lora_rank => Err(format!(
                "LoRA rank {r} is greater than max_lora_rank {}.",
                self.max_lora_rank
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn takes_vllms_flags_as_the_operator_renders_them() {
        let cli = cli(
            args(&[
                "/models/base",
                "--served-model-name",
                "base",
                "--host",
                "10.0.0.7",
                "--port",
                "8000",
                "--enable-lora",
                "--max-loras",
                "4",
                "--max-lora-rank",
                "32",
                "--tensor-parallel-size",
                "2",
                "--max-model-len=2048",
                "--max-num-seqs",
                "16",
                "--dtype",
                "bfloat16",
            ]),
            env(&[
                ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"),
                ("VLLM_API_KEY", "not-read-through-this-closure"),
            ]),
        )
        .expect("parses");
        assert_eq!(cli.model, Path::new("/models/base"));
        assert_eq!(cli.served_model_name.as_deref(), Some("base"));
        assert_eq!(cli.listen.to_string(), "10.0.0.7:8000");
        assert_eq!(cli.max_loaded_adapters, 4);
        assert_eq!(cli.max_seq_length, Some(2048));
        assert_eq!(cli.max_batch_size, 16);
        assert_eq!(cli.dtype, "bf16");
        let mode = cli.vllm.expect("vllm mode");
        assert!(mode.runtime_lora_updating && mode.enable_lora);
        assert_eq!(mode.max_lora_rank, 32);
    }

    #[test]
    fn refuses_what_vllm_or_tailor_server_would_not_run() {
        let e = |a: &[&str]| cli(args(a), env(&[])).expect_err("refused").to_string();
        // A rank vLLM has no kernel size for.
        assert!(
            e(&["/m", "--max-lora-rank", "24"]).contains("invalid choice: 24"),
            "{}",
            e(&["/m", "--max-lora-rank", "24"])
        );
        // A flag tailor-server does not implement is an error, not ignored.
        let msg = e(&["/m", "--enable-prefix-caching"]);
        assert!(msg.contains("--enable-prefix-caching"), "{msg}");
        assert!(e(&["--port", "8000"]).contains("the model is required"));
        assert!(e(&["/m", "--dtype", "fp8"]).contains("fp8"));
    }

    #[test]
    fn the_lora_api_needs_the_variable_and_loads_need_enable_lora() {
        for (value, on) in [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            ("0", false),
            ("yes", false),
        ] {
            assert_eq!(env_flag(Some(value)), on, "{value}");
        }
        assert!(!env_flag(None));
        let cli = cli(args(&["/m"]), env(&[])).expect("parses");
        let mode = cli.vllm.expect("mode");
        assert!(!mode.runtime_lora_updating);
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(
            mode.check_load(dir.path()).expect_err("no --enable-lora"),
            "LoRA is not enabled. Use --enable-lora to enable LoRA."
        );
    }

    #[test]
    fn an_adapter_above_the_max_rank_is_refused_as_vllm_does() {
        let dir = tempfile::tempdir().expect("tmp");
        let mode = VllmMode {
            enable_lora: true,
            max_lora_rank: 16,
            ..VllmMode::default()
        };
        let write = |cfg: serde_json::Value| {
            std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).expect("write")
        };
        write(serde_json::json!({"r": 16, "lora_alpha": 32}));
        assert_eq!(adapter_rank(dir.path()), Some(16));
        mode.check_load(dir.path()).expect("rank 16 fits");
        write(serde_json::json!({"r": 8, "rank_pattern": {"q_proj": 64}}));
        assert_eq!(
            mode.check_load(dir.path()).expect_err("too large"),
            "LoRA rank 64 is greater than max_lora_rank 16."
        );
    }
}
