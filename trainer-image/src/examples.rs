//! Dataset examples: parsing and validating one JSONL line in each format, and turning an
//! example into training tokens with the loss mask.
//!
//! Which tokens count in the loss (the mask is per target token; position `t` of the model
//! predicts token `t + 1`, so the first token of a sequence never counts):
//! - `chat`: for every assistant message, the tokens of its content as the chat template
//!   renders it and of the end-of-turn token right after it (`<|im_end|>`, `<|eot_id|>`,
//!   `<end_of_turn>`, `<|end|>`, `</s>`: the model's end-of-sequence tokens), located by
//!   `tailor_model::Tokenizer::encode_chat`. System, user and tool messages, the assistant
//!   header, the text a template adds after the end-of-turn token and padding never count. A
//!   token counts when any of its bytes lies in such a span. The rendered conversation is
//!   tokenized without adding special tokens, as `apply_chat_template` does.
//! - `completion`: `prompt + completion` is tokenized with the tokenizer's special tokens; the
//!   tokens starting inside the completion count, and an EOS token (the tokenizer's `eos_token`)
//!   is appended and counts.
//! - `text`: every token counts.
//!
//! Sequences are truncated to `maxSeqLength` tokens; an example left with no counted token is
//! skipped (and counted in the trainer's metrics as `skippedExamples`).

use serde::{Deserialize, Serialize};
use tailor_model::{ChatMessage, ChatTemplate, Tokenizer};

pub use tailor_wire::prepare::Format;

/// One valid example, in its normalised (prepared) form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Example {
    Chat { messages: Vec<ChatMessage> },
    Completion { prompt: String, completion: String },
    Text { text: String },
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl Example {
    /// Parses and validates one line in `format`; the error says what is wrong.
    pub fn parse(line: &str, format: Format) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let obj = v.as_object().ok_or("expected a JSON object")?;
        let string = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("\"{key}\" must be a string")),
                None => Err(format!("missing \"{key}\"")),
            }
        };
        match format {
            Format::Chat => {
                let msgs = obj
                    .get("messages")
                    .ok_or("missing \"messages\"")?
                    .as_array()
                    .ok_or("\"messages\" must be an array")?;
                if msgs.is_empty() {
                    return Err("\"messages\" is empty".into());
                }
                let mut messages = Vec::with_capacity(msgs.len());
                for (i, m) in msgs.iter().enumerate() {
                    let role = m
                        .get("role")
                        .and_then(|r| r.as_str())
                        .ok_or(format!("messages[{i}]: missing string \"role\""))?;
                    if !ROLES.contains(&role) {
                        return Err(format!(
                            "messages[{i}]: unknown role {role:?} (expected system, user, assistant or tool)"
                        ));
                    }
                    let content = m
                        .get("content")
                        .and_then(|c| c.as_str())
                        .ok_or(format!("messages[{i}]: missing string \"content\""))?;
                    messages.push(ChatMessage::new(role, content));
                }
                if !messages
                    .iter()
                    .any(|m| m.role == "assistant" && !m.content.trim().is_empty())
                {
                    return Err("no non-empty assistant message to learn from".into());
                }
                Ok(Example::Chat { messages })
            }
            Format::Completion => {
                let prompt = string("prompt")?;
                let completion = string("completion")?;
                if completion.trim().is_empty() {
                    return Err("\"completion\" is empty".into());
                }
                Ok(Example::Completion { prompt, completion })
            }
            Format::Text => {
                let text = string("text")?;
                if text.trim().is_empty() {
                    return Err("\"text\" is empty".into());
                }
                Ok(Example::Text { text })
            }
        }
    }

    /// Parses a prepared line of any format (the trainer's input).
    pub fn parse_any(line: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let format = if v.get("messages").is_some() {
            Format::Chat
        } else if v.get("completion").is_some() {
            Format::Completion
        } else if v.get("text").is_some() {
            Format::Text
        } else {
            return Err("expected \"messages\", \"prompt\"/\"completion\" or \"text\"".into());
        };
        Self::parse(line, format)
    }

    /// Every string field, in order (for redaction, dedupe and hashing).
    pub fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            Example::Chat { messages } => messages.iter_mut().map(|m| &mut m.content).collect(),
            Example::Completion { prompt, completion } => vec![prompt, completion],
            Example::Text { text } => vec![text],
        }
    }

    /// Lower-cased, whitespace-collapsed content with roles: equal for examples that differ only
    /// in case or spacing.
    pub fn normalized(&self) -> String {
        let norm = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        };
        match self {
            Example::Chat { messages } => messages
                .iter()
                .map(|m| format!("{}:{}", m.role, norm(&m.content)))
                .collect::<Vec<_>>()
                .join("\u{1e}"),
            Example::Completion { prompt, completion } => {
                format!("{}\u{1e}{}", norm(prompt), norm(completion))
            }
            Example::Text { text } => norm(text),
        }
    }

    /// The text the tokenizer sees (for token statistics).
    pub fn rendered(&self, template: Option<&ChatTemplate>) -> Result<String, String> {
        match self {
            Example::Chat { messages } => match template {
                Some(t) => t.render(messages, false).map_err(|e| e.to_string()),
                None => Ok(messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")),
            },
            Example::Completion { prompt, completion } => Ok(format!("{prompt}{completion}")),
            Example::Text { text } => Ok(text.clone()),
        }
    }
}

/// Token ids and, per token, whether predicting it counts in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ids: Vec<i64>,
    pub counted: Vec<bool>,
}

impl Sample {
    /// Tokens that count (the first token never does: nothing predicts it).
    pub fn target_count(&self) -> usize {
        self.counted.iter().skip(1).filter(|&&c| c).count()
    }
}

/// Tokenizes an example with its loss mask (see the module docs for which tokens count).
pub fn tokenize(
    example: &Example,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_len: usize,
) -> Result<Sample, String> {
    let mut sample = match example {
        Example::Chat { messages } => {
            let template = template
                .ok_or("the base model's tokenizer has no chat template, needed for chat data")?;
            let (ids, counted) = tokenizer
                .encode_chat(template, messages)
                .map_err(|e| e.to_string())?;
            Sample {
                ids: ids.into_iter().map(i64::from).collect(),
                counted,
            }
        }
        Example::Completion { prompt, completion } => {
            let text = format!("{prompt}{completion}");
            let (ids, offsets) = tokenizer
                .encode_with_offsets(&text, true)
                .map_err(|e| e.to_string())?;
            let mut counted: Vec<bool> = offsets
                .iter()
                .map(|&(s, e)| e > s && s >= prompt.len())
                .collect();
            let mut ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
            if let Some(eos) = tokenizer.eos_token_id() {
                ids.push(i64::from(eos));
                counted.push(true);
            }
            Sample { ids, counted }
        }
        Example::Text { text } => {
            let ids = tokenizer.encode(text, true).map_err(|e| e.to_string())?;
            Sample {
                counted: vec![true; ids.len()],
                ids: ids.into_iter().map(i64::from).collect(),
            }
        }
    };
    sample.ids.truncate(max_len);
    sample.counted.truncate(max_len);
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_each_format() {
        assert!(Example::parse(r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#, Format::Chat).is_ok());
        let err = Example::parse(
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            Format::Chat,
        )
        .expect_err("no assistant");
        assert!(err.contains("assistant"));
        let err = Example::parse(
            r#"{"messages":[{"role":"bot","content":"hi"}]}"#,
            Format::Chat,
        )
        .expect_err("role");
        assert!(err.contains("unknown role"));
        assert!(Example::parse(r#"{"prompt":"a","completion":"b"}"#, Format::Completion).is_ok());
        assert!(Example::parse(r#"{"prompt":"a"}"#, Format::Completion).is_err());
        assert!(Example::parse(r#"{"text":"a"}"#, Format::Text).is_ok());
        assert!(
            Example::parse("not json", Format::Text)
                .expect_err("json")
                .contains("invalid JSON")
        );
    }

    #[test]
    fn normalized_ignores_case_and_spacing() {
        let a = Example::parse(r#"{"text":"Hello   World"}"#, Format::Text).expect("a");
        let b = Example::parse(r#"{"text":"hello world "}"#, Format::Text).expect("b");
        assert_eq!(a.normalized(), b.normalized());
    }
}
