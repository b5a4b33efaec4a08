//! The operator ↔ `tailor-trainer prepare` boundary: the config the operator mounts
//! (`prepare.json`), and the stats the trainer writes (`stats.json` and, shortened to fit, the
//! pod's termination message), which the operator copies into the Dataset's status.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The line format of raw data.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// OpenAI chat fine-tuning: `{"messages": [{"role", "content"}, ...]}`; loss on assistant turns.
    #[default]
    Chat,
    /// `{"prompt", "completion"}`; loss on the completion.
    Completion,
    /// `{"text"}`; loss on every token.
    Text,
}

/// Kinds of personal data that preparation can mask.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum RedactKind {
    /// Email addresses, replaced by `[EMAIL]`.
    Email,
    /// Phone numbers, replaced by `[PHONE]`.
    Phone,
    /// Payment card numbers (Luhn-valid), replaced by `[CARD]`.
    CreditCard,
    /// IPv4 addresses, replaced by `[IP]`.
    IpAddress,
}

/// `prepare.json`: one preparation, with paths as the prepare pod sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// A model directory whose tokenizer counts tokens (stats) and measures examples against
    /// `maxTokensPerExample`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Longer examples (in tokens, rendered with the chat template) are rejected as invalid.
    /// Needs `tokenizer`; without one, lengths cannot be measured and the limit is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_example: Option<usize>,
    /// Salt of the split hash (0: the unsalted hash). Another seed draws another split; the
    /// same seed keeps every example in its split as data is added.
    #[serde(default)]
    pub seed: u64,
}

fn default_validation_fraction() -> f64 {
    0.1
}

fn default_min_examples() -> usize {
    1
}

/// One rejected line: its 1-based number and why (cut to [`MAX_REASON_BYTES`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InvalidSample {
    pub line: u64,
    pub reason: String,
}

/// The most rejected lines the stats keep as samples.
pub const MAX_INVALID_SAMPLES: usize = 20;
/// The most of one rejection reason kept: reasons quote the input, and a hostile line must not
/// make `stats.json`, the termination message or the Dataset's status large.
pub const MAX_REASON_BYTES: usize = 200;

/// `stats.json`, and the prepare pod's termination message (which may be shortened: then
/// `truncated` is set and `stats.json` has it all).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrepareStats {
    pub examples: u64,
    pub invalid: u64,
    pub duplicates_removed: u64,
    pub redactions: u64,
    pub train: u64,
    pub validation: u64,
    pub test: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub content_hash: String,
    #[serde(default)]
    pub invalid_samples: Vec<InvalidSample>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_in_the_operators_shape() {
        let json = serde_json::json!({
            "input": "/in", "format": "chat", "output": "/out", "dedupe": true,
            "redact": ["email", "phone", "creditCard", "ipAddress"],
            "validationFraction": 0.1, "testFraction": 0.0, "minExamples": 10,
            "maxTokensPerExample": 4096, "seed": 3, "tokenizer": "/models/base"
        });
        let cfg: PrepareConfig = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(cfg.redact.len(), 4);
        assert_eq!(serde_json::to_value(&cfg).expect("json"), json);
        let bad =
            serde_json::json!({"input": "/in", "format": "chat", "output": "/o", "dedup": true});
        let e = serde_json::from_value::<PrepareConfig>(bad).expect_err("typo");
        assert!(e.to_string().contains("dedup"), "{e}");
    }

    #[test]
    fn stats_round_trip() {
        let s = PrepareStats {
            examples: 3,
            invalid: 1,
            duplicates_removed: 0,
            redactions: 2,
            train: 2,
            validation: 1,
            test: 0,
            tokens: Some(40),
            content_hash: "ab".into(),
            invalid_samples: vec![InvalidSample {
                line: 4,
                reason: "not JSON".into(),
            }],
            truncated: false,
        };
        let text = serde_json::to_string(&s).expect("json");
        assert!(text.contains("duplicatesRemoved") && !text.contains("truncated"));
        assert_eq!(
            serde_json::from_str::<PrepareStats>(&text).expect("back"),
            s
        );
    }
}
