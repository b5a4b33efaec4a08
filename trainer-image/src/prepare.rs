//! `tailor-trainer prepare`: validate, redact, dedupe and split a JSONL dataset.
//!
//! A malformed line is counted and reported (line number and reason), never fatal by itself.
//! Splits are by a stable hash of the normalised example, so adding data never moves an old
//! example to another split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::examples::{Example, Format};
use crate::redact::{RedactKind, Redactor};

/// Settings of one preparation (flags or `--config` camelCase JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrepareConfig {
    pub input: PathBuf,
    pub format: Format,
    pub output: PathBuf,
    #[serde(default)]
    pub dedupe: bool,
    #[serde(default)]
    pub redact: Vec<RedactKind>,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub test_fraction: f64,
    #[serde(default = "default_min_examples")]
    pub min_examples: usize,
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

fn default_validation_fraction() -> f64 {
    0.1
}

fn default_min_examples() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InvalidSample {
    pub line: usize,
    pub reason: String,
}

/// `stats.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub examples: usize,
    pub invalid: usize,
    pub duplicates_removed: usize,
    pub redactions: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub content_hash: String,
    pub invalid_samples: Vec<InvalidSample>,
}

const MAX_INVALID_SAMPLES: usize = 20;

/// The split of an example: a fraction in [0, 1) from the first 8 bytes of its hash.
fn split_of(hash: &[u8], validation: f64, test: f64) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    let x = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    if x < test {
        2
    } else if x < test + validation {
        1
    } else {
        0
    }
}

pub fn run(cfg: &PrepareConfig) -> anyhow::Result<Stats> {
    for (name, f) in [
        ("validationFraction", cfg.validation_fraction),
        ("testFraction", cfg.test_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            bail!("{name} must be in [0, 1), got {f}");
        }
    }
    if cfg.validation_fraction + cfg.test_fraction >= 1.0 {
        bail!("validationFraction + testFraction must be below 1, leaving examples to train on");
    }
    let bytes =
        std::fs::read(&cfg.input).with_context(|| format!("reading {}", cfg.input.display()))?;
    let tokenizer = match &cfg.tokenizer {
        Some(dir) => Some(tailor_model::Tokenizer::from_dir(dir)?),
        None => None,
    };
    let template = match &tokenizer {
        Some(t) => t.chat_template()?,
        None => None,
    };
    let redactor = Redactor::new(&cfg.redact);
    let mut seen = HashSet::new();
    let mut stats = Stats {
        examples: 0,
        invalid: 0,
        duplicates_removed: 0,
        redactions: 0,
        train: 0,
        validation: 0,
        test: 0,
        tokens: tokenizer.as_ref().map(|_| 0),
        content_hash: String::new(),
        invalid_samples: Vec::new(),
    };
    let mut outputs: [Vec<u8>; 3] = Default::default();
    let mut content = Sha256::new();
    let reject = |stats: &mut Stats, line: usize, reason: String| {
        stats.invalid += 1;
        if stats.invalid_samples.len() < MAX_INVALID_SAMPLES {
            stats.invalid_samples.push(InvalidSample { line, reason });
        }
    };
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            reject(&mut stats, line_no, "not valid UTF-8".into());
            continue;
        };
        let mut example = match Example::parse(line, cfg.format) {
            Ok(e) => e,
            Err(reason) => {
                reject(&mut stats, line_no, reason);
                continue;
            }
        };
        for text in example.texts_mut() {
            stats.redactions += redactor.redact(text);
        }
        let normalized = example.normalized();
        let hash = Sha256::digest(normalized.as_bytes());
        if cfg.dedupe && !seen.insert(hash) {
            stats.duplicates_removed += 1;
            continue;
        }
        if let (Some(tok), Some(total)) = (&tokenizer, stats.tokens.as_mut()) {
            match example.rendered(template.as_ref()) {
                Ok(text) => *total += tok.encode(&text, false)?.len() as u64,
                Err(reason) => {
                    reject(&mut stats, line_no, reason);
                    continue;
                }
            }
        }
        let split = split_of(&hash, cfg.validation_fraction, cfg.test_fraction);
        let json = serde_json::to_string(&example)?;
        content.update(json.as_bytes());
        content.update(b"\n");
        outputs[split].extend_from_slice(json.as_bytes());
        outputs[split].push(b'\n');
        stats.examples += 1;
        match split {
            0 => stats.train += 1,
            1 => stats.validation += 1,
            _ => stats.test += 1,
        }
    }
    stats.content_hash = hex::encode(content.finalize());
    std::fs::create_dir_all(&cfg.output)
        .with_context(|| format!("creating {}", cfg.output.display()))?;
    for (name, data) in ["train.jsonl", "validation.jsonl", "test.jsonl"]
        .iter()
        .zip(&outputs)
    {
        write(&cfg.output.join(name), data)?;
    }
    write(
        &cfg.output.join("stats.json"),
        &serde_json::to_vec_pretty(&stats)?,
    )?;
    if stats.examples < cfg.min_examples.max(1) {
        bail!(
            "only {} valid examples ({} invalid, {} duplicates removed) in {}; at least {} required (--min-examples){}",
            stats.examples,
            stats.invalid,
            stats.duplicates_removed,
            cfg.input.display(),
            cfg.min_examples.max(1),
            stats
                .invalid_samples
                .first()
                .map(|s| format!("; first invalid line {}: {}", s.line, s.reason))
                .unwrap_or_default()
        );
    }
    Ok(stats)
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
