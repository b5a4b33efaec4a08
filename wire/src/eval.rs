//! The `tailor-trainer evaluate` boundary: the settings of one evaluation (flags, or the
//! `--config` JSON the operator mounts) and the report it writes (`evaluation.json`, printed and
//! in the termination message), which the operator copies into FineTuneJob status and adapter
//! lineage and which a ModelDeployment's gate reads.
//!
//! How the judge's verdicts become a win rate (one definition, used by the trainer that counts
//! and by every reader):
//! - each test example gives one *pair* (the base model's answer, the adapter's answer), judged
//!   twice: once with the adapter's answer shown as "A", once as "B", to cancel the judge's
//!   position bias;
//! - the two verdicts combine into one outcome for the adapter ([`pair_outcome`]): a win when it
//!   wins both orders or wins one and ties the other, a loss symmetrically, a tie otherwise
//!   (including a win in one order and a loss in the other: the judge only followed the
//!   position);
//! - a pair whose judging failed in either order (timeouts, 5xx, unparseable answers after the
//!   retries) is *unjudged*: counted, never guessed;
//! - win rate = wins / judged pairs (a tie is not a win), with a Wilson score 95% interval
//!   ([`wilson_interval`]) on that proportion.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Decoding settings shared by the base model's and the adapter's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decoding {
    /// Tokens generated at most per answer.
    #[serde(default = "d_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 decodes greedily; above 0 samples at this temperature from a seeded generator.
    #[serde(default)]
    pub temperature: f64,
    /// Seed of the sampler (the same for both models, so they draw the same random numbers).
    #[serde(default = "d_seed")]
    pub seed: u64,
}

impl Default for Decoding {
    fn default() -> Self {
        Self {
            max_new_tokens: d_max_new_tokens(),
            temperature: 0.0,
            seed: d_seed(),
        }
    }
}

/// An OpenAI-compatible chat endpoint that compares two answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgeConfig {
    /// Base URL (`https://host/v1` or `http://svc:8000`): `/chat/completions` is appended, with
    /// `/v1` in front when the URL does not end in it.
    pub url: String,
    /// The `model` of the requests.
    pub model: String,
    /// A file holding the bearer token (a mounted Secret key); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// A minijinja template replacing the default judge prompt (variables: `question`,
    /// `reference`, `answer_a`, `answer_b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_file: Option<PathBuf>,
    /// Seconds one request may take.
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u64,
    /// Tries per judgement (a timeout, a 5xx or 429, an unreadable verdict is tried again).
    #[serde(default = "d_attempts")]
    pub max_attempts: usize,
    /// Judgements in flight at once.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Ask for the verdict through vLLM's structured outputs (`structured_outputs: {"choice":
    /// VERDICT_CHOICES}`; vLLM >= 0.12 and tailor-server): the reply is exactly one verdict,
    /// without a reason. For judges too small to follow the JSON instruction; an API without
    /// the extension (OpenAI's) refuses the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub structured_outputs: bool,
}

/// The replies a judge asked with `structuredOutputs` may give.
pub const VERDICT_CHOICES: [&str; 3] = [
    r#"{"winner": "A"}"#,
    r#"{"winner": "B"}"#,
    r#"{"winner": "tie"}"#,
];

/// Settings of one evaluation (flags, or `--config` JSON with these camelCase keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateConfig {
    /// The base model: a Hugging Face directory or an artifact URI.
    pub base_model: PathBuf,
    /// The PEFT adapter directory (or URI) to compare with the base.
    pub adapter: PathBuf,
    /// The test split: prepared JSONL (a path or a URI).
    pub test: PathBuf,
    /// Where `evaluation.json` and `samples.jsonl` go (nothing written without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Evaluate the first N examples of the test split only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_examples: Option<usize>,
    #[serde(default)]
    pub decoding: Decoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeConfig>,
    /// Judged samples kept in `samples.jsonl` (prompt, both answers, verdicts, reasons).
    #[serde(default = "d_samples")]
    pub samples: usize,
    /// Examples are truncated to this many tokens for the loss, as in training.
    #[serde(default = "d_seq")]
    pub max_seq_length: usize,
    /// Examples per forward pass of the loss.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// `auto` (CUDA when present), `cpu` or `cuda`.
    #[serde(default = "d_device")]
    pub device: String,
    /// Local scratch for inputs fetched from URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Node-local cache of fetched inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_cache: Option<PathBuf>,
    /// Write the tokenized test batches as JSON (cross-checks against PEFT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_batches: Option<PathBuf>,
}

fn d_max_new_tokens() -> usize {
    128
}
fn d_seed() -> u64 {
    42
}
fn d_timeout() -> u64 {
    60
}
fn d_attempts() -> usize {
    3
}
fn d_concurrency() -> usize {
    4
}
fn d_samples() -> usize {
    5
}
fn d_seq() -> usize {
    512
}
fn d_batch() -> usize {
    8
}
fn d_device() -> String {
    "auto".into()
}

/// One model's scores on the test split. A score is absent where it cannot be computed (no
/// example has a reference answer, or no token counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scores {
    /// Mean token cross-entropy over the counted tokens (the training loss's definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// exp(testLoss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Fraction of answers equal to the reference after normalisation (case, punctuation,
    /// articles and spacing ignored, as SQuAD's metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    /// Mean token-level F1 of the normalised answer against the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_f1: Option<f64>,
}

/// The judge's part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeSummary {
    pub model: String,
    /// Pairs sent to the judge (examples with a prompt and both answers).
    pub pairs: usize,
    /// Pairs with a verdict in both orders.
    pub judged: usize,
    /// Pairs left without a verdict after the retries.
    pub unjudged: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// wins / judged; absent when nothing was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    /// Wilson score 95% interval of the win rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate_lower: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate_upper: Option<f64>,
    /// Orders the adapter won shown first ("A") and shown second ("B"): far apart, the judge
    /// leans on position.
    pub wins_as_a: usize,
    pub wins_as_b: usize,
    /// HTTP requests made, retries among them, and judgements given up.
    pub requests: usize,
    pub retries: usize,
    pub failures: usize,
    /// Why judgements failed, by kind (`timeout`, `http 503`, `malformed verdict`, …).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failure_kinds: std::collections::BTreeMap<String, usize>,
}

/// `evaluation.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// Test examples evaluated.
    pub examples: usize,
    /// Of those, examples with a prompt and a reference answer (chat and completion data),
    /// which both models answered.
    pub answered: usize,
    pub base: Scores,
    pub adapter: Scores,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSummary>,
    pub decoding: Decoding,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// One judgement of one order, from the adapter's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    Win,
    Tie,
    Loss,
}

impl Verdict {
    fn score(self) -> u8 {
        match self {
            Verdict::Win => 2,
            Verdict::Tie => 1,
            Verdict::Loss => 0,
        }
    }
}

/// The adapter's outcome on a pair judged in both orders (see the module docs).
pub fn pair_outcome(first: Verdict, second: Verdict) -> Verdict {
    match first.score() + second.score() {
        3.. => Verdict::Win,
        2 => Verdict::Tie,
        _ => Verdict::Loss,
    }
}

/// The Wilson score interval at 95% (z = 1.96) of `k` successes in `n` trials; None for n = 0.
pub fn wilson_interval(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_round_trips_with_defaults() {
        let c: EvaluateConfig = serde_json::from_value(json!({
            "baseModel": "/m", "adapter": "/a", "test": "/t.jsonl",
            "judge": {"url": "http://j:8000", "model": "big"}
        }))
        .expect("parse");
        assert_eq!(c.decoding, Decoding::default());
        assert_eq!(c.judge.as_ref().map(|j| j.max_attempts), Some(3));
        let back: EvaluateConfig =
            serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        let err = serde_json::from_value::<EvaluateConfig>(
            json!({"baseModel": "/m", "adapter": "/a", "test": "/t", "maxExample": 3}),
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("maxExample"), "{err}");
    }

    #[test]
    fn report_round_trips() {
        let e = Evaluation {
            examples: 10,
            answered: 9,
            base: Scores {
                test_loss: Some(2.0),
                perplexity: Some(2f64.exp()),
                exact_match: Some(0.0),
                token_f1: Some(0.1),
            },
            adapter: Scores::default(),
            judge: Some(JudgeSummary {
                model: "j".into(),
                pairs: 9,
                judged: 8,
                unjudged: 1,
                wins: 6,
                win_rate: Some(0.75),
                failure_kinds: [("timeout".to_string(), 1)].into(),
                ..Default::default()
            }),
            decoding: Decoding::default(),
            seconds: 1.5,
        };
        let v = serde_json::to_value(&e).expect("ser");
        assert_eq!(v["judge"]["winRate"], 0.75);
        assert_eq!(v["base"]["testLoss"], 2.0);
        let back: Evaluation = serde_json::from_value(v).expect("de");
        assert_eq!(back, e);
    }

    #[test]
    fn both_orders_make_one_outcome() {
        use Verdict::*;
        assert_eq!(pair_outcome(Win, Win), Win);
        assert_eq!(pair_outcome(Win, Tie), Win);
        assert_eq!(pair_outcome(Tie, Win), Win);
        // Position bias: A wins whichever answer it is.
        assert_eq!(pair_outcome(Win, Loss), Tie);
        assert_eq!(pair_outcome(Tie, Tie), Tie);
        assert_eq!(pair_outcome(Loss, Tie), Loss);
        assert_eq!(pair_outcome(Loss, Loss), Loss);
    }

    #[test]
    fn wilson_interval_matches_the_closed_form() {
        // The closed form evaluated independently (Python, math.sqrt), z = 1.959963984540054.
        let (lo, hi) = wilson_interval(7, 10).expect("n > 0");
        assert!((lo - 0.396_778_1).abs() < 1e-6, "{lo}");
        assert!((hi - 0.892_208_7).abs() < 1e-6, "{hi}");
        let (lo, hi) = wilson_interval(0, 20).expect("n > 0");
        assert_eq!(lo, 0.0);
        assert!((hi - 0.161_125_2).abs() < 1e-6, "{hi}");
        let (lo, hi) = wilson_interval(20, 20).expect("n > 0");
        assert!((lo - 0.838_874_8).abs() < 1e-6, "{lo}");
        assert_eq!(hi, 1.0);
        assert_eq!(wilson_interval(0, 0), None);
    }
}
