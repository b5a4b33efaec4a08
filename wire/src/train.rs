//! The operator ↔ `tailor-trainer train` boundary: the config the operator mounts
//! (`train.json`), the live `GET /progress` the operator polls while the run goes, and the
//! summary the trainer writes at the end (`metrics.json` next to the adapter and, shortened to
//! fit, the pod's termination message), which the operator copies into the FineTuneJob status.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Learning-rate schedule after warmup.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum Scheduler {
    /// Cosine decay to zero.
    #[default]
    Cosine,
    /// Linear decay to zero.
    Linear,
    /// Constant after warmup.
    Constant,
}

fn targets_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
    })
}

/// Settings of one training run (flags, or `--config` JSON with these camelCase keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainConfig {
    pub base_model: PathBuf,
    pub train: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<PathBuf>,
    pub output: PathBuf,
    #[serde(default = "d_rank")]
    pub rank: i64,
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default = "d_targets", deserialize_with = "targets_de")]
    pub target_modules: Vec<String>,
    #[serde(default = "d_one")]
    pub epochs: usize,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_one", alias = "gradientAccumulationSteps")]
    pub grad_accum: usize,
    #[serde(default = "d_seq")]
    pub max_seq_length: usize,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default = "d_sched")]
    pub scheduler: Scheduler,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[serde(default = "d_ckpt", alias = "checkpointEverySteps")]
    pub checkpoint_every: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<PathBuf>,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Gradient checkpointing: keep only each decoder layer's input in the forward pass and
    /// recompute the layer during backward (less activation memory, one more forward pass per
    /// step; the same losses and adapter). Left out of the JSON when off, so configs that never
    /// set it serialize (and hash) as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// Stop after this many optimizer steps (the schedule still spans the full run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Start from this PEFT adapter instead of a fresh initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<PathBuf>,
    /// Write every step's micro-batches as JSON (for cross-checks against PEFT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_batches: Option<PathBuf>,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// `auto` (CUDA when present), `cpu` or `cuda`.
    #[serde(default = "d_device")]
    pub device: String,
    /// Local scratch for inputs fetched from URIs and for an output that is a URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Node-local cache of fetched inputs, shared by runs on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_cache: Option<PathBuf>,
    /// The base model as adapters record it (the URI it was fetched from); default: `baseModel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_name: Option<String>,
}

impl TrainConfig {
    /// The trainer's defaults for everything but the paths.
    pub fn new(base_model: PathBuf, train: PathBuf, output: PathBuf) -> Self {
        Self {
            base_model,
            train,
            validation: None,
            output,
            rank: d_rank(),
            alpha: d_alpha(),
            dropout: d_dropout(),
            target_modules: d_targets(),
            epochs: d_one(),
            learning_rate: d_lr(),
            batch_size: d_batch(),
            grad_accum: d_one(),
            max_seq_length: d_seq(),
            warmup_ratio: 0.0,
            scheduler: d_sched(),
            seed: d_seed(),
            checkpoint_every: d_ckpt(),
            progress_listen: None,
            termination_message_path: None,
            weight_decay: 0.0,
            max_grad_norm: d_clip(),
            gradient_checkpointing: false,
            max_steps: None,
            init_adapter: None,
            dump_batches: None,
            threads: None,
            device: d_device(),
            work_dir: None,
            artifact_cache: None,
            base_model_name: None,
        }
    }
}

fn d_rank() -> i64 {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_dropout() -> f64 {
    0.05
}
fn d_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}
fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    2e-4
}
fn d_batch() -> usize {
    8
}
fn d_seq() -> usize {
    512
}
fn d_sched() -> Scheduler {
    Scheduler::Linear
}
fn d_seed() -> u64 {
    42
}
fn d_ckpt() -> usize {
    50
}
fn d_clip() -> f64 {
    1.0
}
fn d_device() -> String {
    "auto".into()
}

/// Where a run is, as `/progress` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Starting,
    /// Loading the base model and tokenizer.
    Loading,
    /// Measuring the base model's validation loss (the baseline of the adapter's).
    BaseValidation,
    Running,
    /// Measuring the adapter's validation loss after the last step.
    Validation,
    Succeeded,
    Failed,
}

/// `GET /progress` while training (the operator copies it into the FineTuneJob status). Every
/// field has a default, so a reader never fails on a field the writer does not send yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Progress {
    pub phase: Phase,
    pub epoch: u64,
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub base_validation_loss: Option<f64>,
    pub tokens_per_second: f64,
    /// Seconds until the last step, at the current rate.
    pub eta: Option<f64>,
}

/// One optimizer step of the loss history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    #[default]
    Failed,
}

/// `metrics.json` and the termination message. A failed run writes only `status` and
/// `message`, and the termination message may drop detail to fit 4 KiB (`history` first), so
/// every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    pub status: Outcome,
    /// Why a failed run failed (the error chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub base_validation_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: u64,
    pub tokens: u64,
    pub tokens_per_second: f64,
    /// CPU time (all threads) of the training loop: comparable across runs on a busy machine.
    pub train_cpu_seconds: f64,
    pub wall_seconds: f64,
    pub train_examples: u64,
    pub skipped_examples: u64,
    pub resumed_from_step: Option<u64>,
    /// Where the adapter was written: a path in the pod, or the URI it was uploaded to.
    pub adapter: String,
    pub history: Vec<StepRecord>,
    /// Set when the termination message had to give up detail to fit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Summary {
    /// The summary of a run that failed with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: Outcome::Failed,
            message: Some(message.into()),
            ..Self::default()
        }
    }
}

// ------------------------------------------------------------------------------ checkpoints

/// A checkpoint's directory under `<output>/checkpoints/`: `step-00000040`. It is complete once
/// its `state.json` exists (written last), locally and in a store alike.
pub fn checkpoint_dir(step: usize) -> String {
    format!("step-{step:08}")
}

/// The step a checkpoint directory name (see [`checkpoint_dir`]) stands for.
pub fn checkpoint_step(dir: &str) -> Option<usize> {
    dir.strip_prefix("step-")?.parse().ok()
}

/// The complete checkpoints (those with a `state.json`) in a store listing of
/// `checkpoints/`: their steps, sorted, once each.
pub fn complete_checkpoints<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut steps: Vec<usize> = paths
        .into_iter()
        .filter_map(|p| {
            let (dir, file) = p.strip_prefix("checkpoints/")?.split_once('/')?;
            (file == CHECKPOINT_MARKER)
                .then(|| checkpoint_step(dir))
                .flatten()
        })
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The file whose presence makes a checkpoint complete.
pub const CHECKPOINT_MARKER: &str = "state.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_checkpoints_of_a_listing() {
        let listed = [
            "checkpoints/step-00000004/adapter_model.safetensors",
            "checkpoints/step-00000004/state.json",
            "checkpoints/step-00000008/state.json",
            "checkpoints/step-00000012/adapter_model.safetensors",
            "checkpoints/junk/state.json",
            "adapter_model.safetensors",
        ];
        assert_eq!(complete_checkpoints(listed), [4, 8]);
        assert_eq!(checkpoint_dir(40), "step-00000040");
        assert_eq!(checkpoint_step(&checkpoint_dir(40)), Some(40));
        assert_eq!(checkpoint_step("junk"), None);
    }

    #[test]
    fn config_round_trips_in_the_operators_shape() {
        let json = serde_json::json!({
            "baseModel": "/inputs/0", "train": "/artifacts/p/train.jsonl",
            "validation": "/artifacts/p/validation.jsonl", "output": "/artifacts/out",
            "rank": 16, "alpha": 32.0, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"],
            "epochs": 3, "learningRate": 0.0002, "batchSize": 8, "gradAccum": 2,
            "maxSeqLength": 1024, "warmupRatio": 0.03, "scheduler": "cosine", "seed": 7,
            "checkpointEvery": 50, "baseModelName": "hf://org/model@abc"
        });
        let cfg: TrainConfig = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(cfg.scheduler, Scheduler::Cosine);
        assert_eq!(cfg.grad_accum, 2);
        let back = serde_json::to_value(&cfg).expect("json");
        for (k, v) in json.as_object().expect("object") {
            assert_eq!(&back[k], v, "{k}");
        }
        let again: TrainConfig = serde_json::from_value(back).expect("parses again");
        assert_eq!(again.base_model_name.as_deref(), Some("hf://org/model@abc"));
    }

    #[test]
    fn gradient_checkpointing_defaults_off_and_is_serialized_only_when_on() {
        let mut cfg = TrainConfig::new("/m".into(), "/t".into(), "/o".into());
        assert!(!cfg.gradient_checkpointing);
        let off = serde_json::to_value(&cfg).expect("json");
        assert!(off.get("gradientCheckpointing").is_none(), "{off}");
        cfg.gradient_checkpointing = true;
        let on = serde_json::to_value(&cfg).expect("json");
        assert_eq!(on["gradientCheckpointing"], true);
        let back: TrainConfig = serde_json::from_value(on).expect("parses");
        assert!(back.gradient_checkpointing);
    }

    #[test]
    fn config_takes_the_spec_aliases_and_csv_modules_and_refuses_typos() {
        let cfg: TrainConfig = serde_json::from_value(serde_json::json!({
            "baseModel": "/m", "train": "/t", "output": "/o",
            "targetModules": "q_proj, k_proj,,v_proj",
            "gradientAccumulationSteps": 4, "checkpointEverySteps": 10
        }))
        .expect("parses");
        assert_eq!(cfg.target_modules, ["q_proj", "k_proj", "v_proj"]);
        assert_eq!((cfg.grad_accum, cfg.checkpoint_every), (4, 10));
        assert_eq!(
            cfg.scheduler,
            Scheduler::Linear,
            "the trainer's own default"
        );
        let e = serde_json::from_value::<TrainConfig>(serde_json::json!({
            "baseModel": "/m", "train": "/t", "output": "/o", "learningRat": 0.1
        }))
        .expect_err("typo");
        assert!(e.to_string().contains("learningRat"), "{e}");
    }

    #[test]
    fn progress_round_trips_and_reads_a_partial_body() {
        let p = Progress {
            phase: Phase::Running,
            epoch: 1,
            step: 5,
            total_steps: 60,
            train_loss: Some(2.5),
            validation_loss: None,
            base_validation_loss: Some(3.1),
            tokens_per_second: 812.5,
            eta: Some(40.0),
        };
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["phase"], "Running");
        assert_eq!(json["totalSteps"], 60);
        assert_eq!(serde_json::from_value::<Progress>(json).expect("parses"), p);
        let partial: Progress =
            serde_json::from_str(r#"{"phase":"BaseValidation"}"#).expect("partial");
        assert_eq!(partial.phase, Phase::BaseValidation);
    }

    #[test]
    fn summary_round_trips_and_a_failure_is_status_and_message() {
        let s = Summary {
            status: Outcome::Succeeded,
            validation_loss: Some(1.2),
            steps: 60,
            total_steps: 60,
            epochs: 2,
            tokens: 12_345,
            tokens_per_second: 99.5,
            resumed_from_step: Some(30),
            adapter: "s3://bucket/adapters/a".into(),
            history: vec![StepRecord {
                step: 1,
                loss: 2.0,
                lr: 1e-4,
            }],
            ..Summary::default()
        };
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["status"], "Succeeded");
        assert_eq!(json["resumedFromStep"], 30);
        assert!(json.get("message").is_none() && json.get("truncated").is_none());
        assert_eq!(serde_json::from_value::<Summary>(json).expect("parses"), s);
        let failed = serde_json::to_string(&Summary::failed("loading base model: no config.json"))
            .expect("json");
        let back: Summary = serde_json::from_str(&failed).expect("parses");
        assert_eq!(back.status, Outcome::Failed);
        assert_eq!(
            back.message.as_deref(),
            Some("loading base model: no config.json")
        );
        let cut: Summary =
            serde_json::from_str(r#"{"status":"Succeeded","steps":3,"truncated":true}"#)
                .expect("a shortened termination message parses");
        assert!(cut.truncated && cut.history.is_empty());
    }
}
