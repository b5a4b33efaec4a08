//! `tailor-trainer`: `prepare` a dataset, `train` a LoRA adapter and `evaluate` it against its
//! base model (see `--help`).
//!
//! Every setting is a flag (with a `TAILOR_*` environment fallback) or a key of the JSON file
//! given with `--config`, in camelCase (the form the operator mounts into pods); flags win.
//! On failure the process exits non-zero with the error chain on stderr and, with
//! `--termination-message-path`, a JSON summary `{status: "Failed", message}` there.

mod data_parallel;
mod evaluate;
mod examples;
mod judge;
mod optim;
mod prepare;
mod profiling;
mod progress;
mod redact;
mod remote;
mod run_state;
mod termination;
mod train;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::examples::Format;
use crate::optim::Scheduler;
use crate::redact::RedactKind;

#[derive(Parser)]
#[command(
    name = "tailor-trainer",
    version,
    about = "Prepare datasets and train LoRA adapters for tailor"
)]
struct Cli {
    /// Log format: text for people, json for pods (as every tailor binary).
    #[arg(long, global = true, env = "TAILOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate, redact, dedupe and split a JSONL dataset into train/validation/test.
    Prepare(Box<PrepareArgs>),
    /// Train a LoRA adapter on prepared data.
    Train(Box<TrainArgs>),
    /// Compare an adapter with its base model on the test split: loss, perplexity, exact match,
    /// token F1 and, with a judge, an order-swapped pairwise win rate.
    Evaluate(Box<EvaluateArgs>),
}

#[derive(Args)]
struct EvaluateArgs {
    /// JSON file with the settings below in camelCase (`decoding` and `judge` as objects);
    /// flags override it.
    #[arg(long, env = "TAILOR_CONFIG")]
    config: Option<PathBuf>,
    /// Hugging Face model directory or artifact URI.
    #[arg(long)]
    base_model: Option<PathBuf>,
    /// PEFT adapter directory or artifact URI.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prepared test split (JSONL path or URI).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Directory for evaluation.json and samples.jsonl.
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    max_examples: Option<usize>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 (default) decodes greedily.
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// OpenAI-compatible base URL of the judge (e.g. http://judge:8000/v1).
    #[arg(long)]
    judge_url: Option<String>,
    #[arg(long)]
    judge_model: Option<String>,
    /// File holding the judge's API key.
    #[arg(long)]
    judge_api_key_file: Option<PathBuf>,
    /// A minijinja template replacing the default judge prompt.
    #[arg(long)]
    judge_prompt_file: Option<PathBuf>,
    #[arg(long)]
    judge_timeout_seconds: Option<u64>,
    #[arg(long)]
    judge_max_attempts: Option<usize>,
    /// Judgements in flight at once.
    #[arg(long)]
    judge_concurrency: Option<usize>,
    /// Ask the judge for exactly one verdict through vLLM's `structured_outputs.choice`.
    #[arg(long)]
    judge_structured_outputs: bool,
    /// Judged samples kept in samples.jsonl.
    #[arg(long)]
    samples: Option<usize>,
    #[arg(long)]
    max_seq_length: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, env = "TAILOR_TERMINATION_MESSAGE_PATH")]
    termination_message_path: Option<PathBuf>,
    #[arg(long, env = "TAILOR_THREADS")]
    threads: Option<i32>,
    #[arg(long, env = "TAILOR_DEVICE")]
    device: Option<String>,
    #[arg(long, env = "TAILOR_WORK_DIR")]
    work_dir: Option<PathBuf>,
    #[arg(long, env = "TAILOR_ARTIFACT_CACHE")]
    artifact_cache: Option<PathBuf>,
    /// Write the tokenized test batches as JSON (cross-checks against PEFT).
    #[arg(long, hide = true)]
    dump_batches: Option<PathBuf>,
}

#[derive(Args)]
struct PrepareArgs {
    /// JSON file with the settings below in camelCase; flags override it.
    #[arg(long, env = "TAILOR_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    input: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<Format>,
    #[arg(long)]
    output: Option<PathBuf>,
    /// Drop examples whose normalised content repeats an earlier one.
    #[arg(long)]
    dedupe: bool,
    /// Comma-separated: email, phone, credit-card, ip-address.
    #[arg(long, value_enum, value_delimiter = ',')]
    redact: Vec<RedactKind>,
    #[arg(long)]
    validation_fraction: Option<f64>,
    #[arg(long)]
    test_fraction: Option<f64>,
    #[arg(long)]
    min_examples: Option<usize>,
    /// A model directory whose tokenizer counts tokens for the stats.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Reject examples longer than this many tokens (needs --tokenizer).
    #[arg(long)]
    max_tokens_per_example: Option<usize>,
    /// Salt of the split hash: another seed draws another (equally stable) split.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, env = "TAILOR_TERMINATION_MESSAGE_PATH")]
    termination_message_path: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// JSON file with the settings below in camelCase; flags override it.
    #[arg(long, env = "TAILOR_CONFIG")]
    config: Option<PathBuf>,
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json), or an
    /// artifact URI (s3://, gs://, az://, https://, hf://, pvc://) fetched before loading.
    #[arg(long)]
    base_model: Option<PathBuf>,
    /// Prepared training JSONL (a path or an artifact URI).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Prepared validation JSONL (a path or an artifact URI).
    #[arg(long)]
    validation: Option<PathBuf>,
    /// Output directory: the PEFT adapter, metrics.json and checkpoints/. As a URI
    /// (s3://bucket/run), checkpoints are uploaded as they are written and a restarted run
    /// resumes from the newest one there.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Local scratch for fetched inputs and a URI output (default: under $TMPDIR).
    #[arg(long, env = "TAILOR_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Node-local cache for fetched inputs, shared by runs on this machine.
    #[arg(long, env = "TAILOR_ARTIFACT_CACHE")]
    artifact_cache: Option<PathBuf>,
    #[arg(long)]
    rank: Option<i64>,
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long)]
    dropout: Option<f64>,
    /// Comma-separated module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear.
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    max_seq_length: Option<usize>,
    #[arg(long)]
    warmup_ratio: Option<f64>,
    #[arg(long, value_enum)]
    scheduler: Option<Scheduler>,
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Serve GET /progress and GET /metrics on this HOST:PORT while training.
    #[arg(long, env = "TAILOR_PROGRESS_LISTEN")]
    progress_listen: Option<String>,
    #[arg(long, env = "TAILOR_TERMINATION_MESSAGE_PATH")]
    termination_message_path: Option<PathBuf>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Gradient checkpointing: recompute each decoder layer during backward instead of keeping
    /// its activations (less memory, more compute; the same result).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Stop after N optimizer steps (the LR schedule still spans the whole run).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Start from this PEFT adapter directory instead of a fresh one.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Write each step's micro-batches as JSON (cross-checks against PEFT).
    #[arg(long, hide = true)]
    dump_batches: Option<PathBuf>,
    /// CPU threads for libtorch.
    #[arg(long, env = "TAILOR_THREADS")]
    threads: Option<i32>,
    /// auto, cpu or cuda.
    #[arg(long, env = "TAILOR_DEVICE")]
    device: Option<String>,
    #[command(flatten)]
    launch: LaunchArgs,
}

/// Data-parallel training, as torchrun launches it. A process started with `RANK` and
/// `WORLD_SIZE` in its environment (by torchrun, or by this binary) is one rank; otherwise these
/// flags describe this node's part and the binary starts its rank processes itself.
#[derive(Args)]
struct LaunchArgs {
    /// Nodes (pods) of the run.
    #[arg(long, env = "TAILOR_NNODES", default_value_t = 1)]
    nnodes: usize,
    /// Rank processes on this node, one per GPU.
    #[arg(long, env = "TAILOR_NPROC_PER_NODE", default_value_t = 1)]
    nproc_per_node: usize,
    /// This node's index among the nodes (default: an Indexed Job's JOB_COMPLETION_INDEX, else 0).
    #[arg(long, env = "TAILOR_NODE_RANK")]
    node_rank: Option<usize>,
    /// Where rank 0 serves the rendezvous store.
    #[arg(long, env = "MASTER_ADDR")]
    master_addr: Option<String>,
    #[arg(long, env = "MASTER_PORT", default_value_t = 29500)]
    master_port: u16,
    /// How long a rank waits for the others: at the rendezvous and in each collective.
    #[arg(long, env = "TAILOR_DIST_TIMEOUT_SECONDS", default_value_t = 600)]
    dist_timeout_seconds: u64,
}

impl LaunchArgs {
    fn launch(&self) -> tailor_dist::Launch {
        let node_rank = self.node_rank.or_else(|| {
            std::env::var("JOB_COMPLETION_INDEX")
                .ok()
                .and_then(|v| v.trim().parse().ok())
        });
        tailor_dist::Launch {
            nnodes: self.nnodes,
            nproc_per_node: self.nproc_per_node,
            node_rank: node_rank.unwrap_or(0),
            master_addr: self.master_addr.clone().unwrap_or_else(|| {
                if self.nnodes == 1 {
                    "127.0.0.1".into()
                } else {
                    String::new()
                }
            }),
            master_port: self.master_port,
        }
    }
}

/// What this `train` process is in its run.
enum Role {
    Single,
    /// Starts this node's rank processes and waits for them.
    Launcher(tailor_dist::Launch),
    Rank(tailor_dist::World),
}

fn role(a: &LaunchArgs) -> anyhow::Result<Role> {
    if let Some(world) = tailor_dist::World::from_env()? {
        return Ok(Role::Rank(world));
    }
    let launch = a.launch();
    launch.validate()?;
    Ok(match (launch.is_distributed(), launch.nproc_per_node) {
        (false, _) => Role::Single,
        // One rank on this node: this process is it.
        (true, 1) => Role::Rank(tailor_dist::World {
            rank: launch.node_rank,
            local_rank: 0,
            size: launch.world_size(),
            master_addr: launch.master_addr,
            master_port: launch.master_port,
        }),
        (true, _) => Role::Launcher(launch),
    })
}

/// Joins the group this rank belongs to; its Gloo transport binds the pod IP when one is given.
fn join(world: &tailor_dist::World, a: &LaunchArgs) -> anyhow::Result<tailor_dist::ProcessGroup> {
    let host = ["TAILOR_POD_IP", "POD_IP"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    tracing::info!(
        rank = world.rank,
        world = world.size,
        master = %format!("{}:{}", world.master_addr, world.master_port),
        "joining the data-parallel group"
    );
    Ok(tailor_dist::ProcessGroup::join(
        world,
        "tailor",
        host.as_deref(),
        std::time::Duration::from_secs(a.dist_timeout_seconds),
    )?)
}

/// A termination message path that a failure of this rank may still write: in a group the first
/// failure (usually the cause) is kept, not the peers' "connection closed" that follows it.
fn unless_written(path: Option<PathBuf>) -> Option<PathBuf> {
    path.filter(|p| std::fs::metadata(p).map_or(true, |m| m.len() == 0))
}

fn put<T: serde::Serialize>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(key.to_string(), json!(v));
    }
}

/// The `--config` file's object with the given flags laid over it.
fn merged(config: Option<&PathBuf>, flags: Map<String, Value>) -> anyhow::Result<Value> {
    let mut base = match config {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading --config {}", p.display()))?;
            match serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: invalid JSON", p.display()))?
            {
                Value::Object(m) => m,
                _ => anyhow::bail!("{}: expected a JSON object", p.display()),
            }
        }
        None => Map::new(),
    };
    base.extend(flags);
    Ok(Value::Object(base))
}

fn prepare_config(a: &PrepareArgs) -> anyhow::Result<prepare::PrepareConfig> {
    let mut m = Map::new();
    put(&mut m, "input", a.input.as_ref());
    put(&mut m, "format", a.format);
    put(&mut m, "output", a.output.as_ref());
    if a.dedupe {
        m.insert("dedupe".into(), json!(true));
    }
    if !a.redact.is_empty() {
        m.insert("redact".into(), json!(a.redact));
    }
    put(&mut m, "validationFraction", a.validation_fraction);
    put(&mut m, "testFraction", a.test_fraction);
    put(&mut m, "minExamples", a.min_examples);
    put(&mut m, "tokenizer", a.tokenizer.as_ref());
    put(&mut m, "maxTokensPerExample", a.max_tokens_per_example);
    put(&mut m, "seed", a.seed);
    let mut v = merged(a.config.as_ref(), m)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("terminationMessagePath");
    }
    serde_json::from_value(v).context("invalid prepare settings (flags or --config)")
}

fn train_config(a: &TrainArgs) -> anyhow::Result<train::TrainConfig> {
    let mut m = Map::new();
    put(&mut m, "baseModel", a.base_model.as_ref());
    put(&mut m, "train", a.train.as_ref());
    put(&mut m, "validation", a.validation.as_ref());
    put(&mut m, "output", a.output.as_ref());
    put(&mut m, "workDir", a.work_dir.as_ref());
    put(&mut m, "artifactCache", a.artifact_cache.as_ref());
    put(&mut m, "rank", a.rank);
    put(&mut m, "alpha", a.alpha);
    put(&mut m, "dropout", a.dropout);
    if !a.target_modules.is_empty() {
        m.insert("targetModules".into(), json!(a.target_modules));
    }
    put(&mut m, "epochs", a.epochs);
    put(&mut m, "learningRate", a.learning_rate);
    put(&mut m, "batchSize", a.batch_size);
    put(&mut m, "gradAccum", a.grad_accum);
    put(&mut m, "maxSeqLength", a.max_seq_length);
    put(&mut m, "warmupRatio", a.warmup_ratio);
    put(&mut m, "scheduler", a.scheduler);
    put(&mut m, "seed", a.seed);
    put(&mut m, "checkpointEvery", a.checkpoint_every);
    put(&mut m, "progressListen", a.progress_listen.as_ref());
    put(
        &mut m,
        "terminationMessagePath",
        a.termination_message_path.as_ref(),
    );
    put(&mut m, "weightDecay", a.weight_decay);
    put(&mut m, "maxGradNorm", a.max_grad_norm);
    if a.gradient_checkpointing {
        m.insert("gradientCheckpointing".into(), json!(true));
    }
    put(&mut m, "maxSteps", a.max_steps);
    put(&mut m, "initAdapter", a.init_adapter.as_ref());
    put(&mut m, "dumpBatches", a.dump_batches.as_ref());
    put(&mut m, "threads", a.threads);
    put(&mut m, "device", a.device.as_ref());
    let v = merged(a.config.as_ref(), m)?;
    // The aliases the FineTuneJob spec uses map onto the flag names.
    serde_json::from_value(v).context("invalid train settings (flags or --config)")
}

fn evaluate_config(a: &EvaluateArgs) -> anyhow::Result<evaluate::EvaluateConfig> {
    let mut m = Map::new();
    put(&mut m, "baseModel", a.base_model.as_ref());
    put(&mut m, "adapter", a.adapter.as_ref());
    put(&mut m, "test", a.test.as_ref());
    put(&mut m, "output", a.output.as_ref());
    put(&mut m, "maxExamples", a.max_examples);
    put(&mut m, "samples", a.samples);
    put(&mut m, "maxSeqLength", a.max_seq_length);
    put(&mut m, "batchSize", a.batch_size);
    put(
        &mut m,
        "terminationMessagePath",
        a.termination_message_path.as_ref(),
    );
    put(&mut m, "threads", a.threads);
    put(&mut m, "device", a.device.as_ref());
    put(&mut m, "workDir", a.work_dir.as_ref());
    put(&mut m, "artifactCache", a.artifact_cache.as_ref());
    put(&mut m, "dumpBatches", a.dump_batches.as_ref());
    let mut decoding = Map::new();
    put(&mut decoding, "maxNewTokens", a.max_new_tokens);
    put(&mut decoding, "temperature", a.temperature);
    put(&mut decoding, "seed", a.seed);
    let mut judge = Map::new();
    put(&mut judge, "url", a.judge_url.as_ref());
    put(&mut judge, "model", a.judge_model.as_ref());
    put(&mut judge, "apiKeyFile", a.judge_api_key_file.as_ref());
    put(&mut judge, "promptFile", a.judge_prompt_file.as_ref());
    put(&mut judge, "timeoutSeconds", a.judge_timeout_seconds);
    put(&mut judge, "maxAttempts", a.judge_max_attempts);
    put(&mut judge, "concurrency", a.judge_concurrency);
    put(
        &mut judge,
        "structuredOutputs",
        a.judge_structured_outputs.then_some(true),
    );
    let mut v = merged(a.config.as_ref(), m)?;
    // Nested settings: the flags are laid over the file's object key by key.
    for (key, flags) in [("decoding", decoding), ("judge", judge)] {
        if flags.is_empty() {
            continue;
        }
        let slot = &mut v[key];
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        if let Some(o) = slot.as_object_mut() {
            o.extend(flags);
        }
    }
    if let Some(j) = v.get("judge").and_then(Value::as_object) {
        for (key, flag) in [("url", "--judge-url"), ("model", "--judge-model")] {
            if !j.contains_key(key) {
                anyhow::bail!("judge.{key} ({flag}) is required when a judge is given");
            }
        }
    }
    serde_json::from_value(v).context("invalid evaluate settings (flags or --config)")
}

fn write_termination(path: Option<&PathBuf>, value: &Value) {
    if let Some(p) = path
        && let Err(e) = std::fs::write(p, termination::render(value, termination::LIMIT))
    {
        tracing::warn!(path = %p.display(), error = %e, "cannot write termination message");
    }
}

fn run(cli: &Cli) -> (anyhow::Result<Value>, Option<PathBuf>) {
    match &cli.command {
        Command::Prepare(a) => {
            let path = a.termination_message_path.clone();
            let r = prepare_config(a)
                .and_then(|mut c| {
                    // An output in the store: prepared locally, uploaded with stats.json last.
                    let upload = remote::Upload::redirect(&mut c.output, None)?;
                    let s = prepare::run(&c)?;
                    if let Some(u) = upload {
                        u.finish(&c.output, "stats.json")?;
                    }
                    Ok(s)
                })
                .and_then(|s| {
                    let mut v = serde_json::to_value(&s)?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("status".into(), json!("Succeeded"));
                    }
                    Ok(v)
                });
            (r, path)
        }
        Command::Train(a) => {
            let mut cfg = match train_config(a) {
                Ok(c) => c,
                Err(e) => return (Err(e), a.termination_message_path.clone()),
            };
            let path = cfg.termination_message_path.clone();
            let world = match role(&a.launch) {
                Err(e) => return (Err(e), path),
                Ok(Role::Single) => None,
                Ok(Role::Launcher(launch)) => {
                    let r = std::env::current_exe()
                        .context("finding this program to start its ranks")
                        .and_then(|exe| {
                            let args: Vec<std::ffi::OsString> =
                                std::env::args_os().skip(1).collect();
                            tracing::info!(
                                ranks = launch.nproc_per_node,
                                node = launch.node_rank,
                                "starting this node's ranks"
                            );
                            Ok(tailor_dist::supervise(&launch, &exe, &args)?)
                        });
                    // Rank 0 wrote the outcome; a failure is written only where no rank did.
                    return match r {
                        Ok(()) => (
                            Ok(json!({"status": "Succeeded", "ranks": launch.nproc_per_node})),
                            None,
                        ),
                        Err(e) => (Err(e), unless_written(path)),
                    };
                }
                Ok(Role::Rank(world)) => Some(world),
            };
            let leader = world.as_ref().is_none_or(tailor_dist::World::is_leader);
            if !leader {
                // Only rank 0 touches the output and serves progress.
                cfg.output = std::env::temp_dir().join(format!(
                    "tailor-rank-{}-{}",
                    world.as_ref().map_or(0, |w| w.rank),
                    std::process::id()
                ));
                cfg.progress_listen = None;
            }
            let group = match world.as_ref().map(|w| join(w, &a.launch)).transpose() {
                Ok(g) => g,
                Err(e) => return (Err(e), unless_written(path)),
            };
            let handle = progress::ProgressHandle::new();
            if let Some(addr) = &cfg.progress_listen {
                match progress::serve(addr, handle.clone()) {
                    Ok(local) => tracing::info!(%local, "serving /progress and /metrics"),
                    Err(e) => return (Err(e), path),
                }
            }
            let r = remote::Remote::prepare(&mut cfg).and_then(|remote| {
                let on_checkpoint = |dir: &std::path::Path| match &remote {
                    Some(r) => r.checkpoint_written(dir),
                    None => Ok(()),
                };
                let mut summary = train::run(&cfg, &handle, &on_checkpoint, group.as_ref())?;
                if let Some(uri) = remote
                    .as_ref()
                    .map(|r| r.finish(&cfg.output))
                    .transpose()?
                    .flatten()
                {
                    summary.adapter = uri;
                }
                Ok(serde_json::to_value(&summary)?)
            });
            if r.is_err() {
                handle.update(|p| p.phase = progress::Phase::Failed);
            }
            let path = match (&r, &world) {
                (_, None) => path,
                (Ok(_), Some(w)) => path.filter(|_| w.is_leader()),
                (Err(_), Some(_)) => unless_written(path),
            };
            (r, path)
        }
        Command::Evaluate(a) => {
            let mut cfg = match evaluate_config(a) {
                Ok(c) => c,
                Err(e) => return (Err(e), a.termination_message_path.clone()),
            };
            let path = cfg.termination_message_path.clone();
            let work = cfg
                .work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("tailor-evaluate"));
            let cache = cfg.artifact_cache.clone();
            let r = remote::localize_inputs(
                &mut [
                    ("base model", &mut cfg.base_model),
                    ("adapter", &mut cfg.adapter),
                    ("test split", &mut cfg.test),
                ],
                &work,
                cache,
            )
            .and_then(|()| evaluate::run(&cfg))
            .and_then(|e| {
                let mut v = serde_json::to_value(&e)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("status".into(), json!("Succeeded"));
                }
                Ok(v)
            });
            (r, path)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cli.log_format == LogFormat::Json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let (result, termination) = run(&cli);
    match result {
        Ok(summary) => {
            write_termination(termination.as_ref(), &summary);
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {message}");
            write_termination(
                termination.as_ref(),
                &serde_json::to_value(tailor_wire::train::Summary::failed(message))
                    .unwrap_or_default(),
            );
            std::process::ExitCode::FAILURE
        }
    }
}
