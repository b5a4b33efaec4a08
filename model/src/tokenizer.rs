//! `tokenizer.json` through the `tokenizers` crate, plus the special tokens and chat template
//! from `tokenizer_config.json`.

use std::path::Path;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{ModelError, Result, read_json};

/// Token ids and, for each, the byte span of the input it came from.
pub type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// A Hugging Face tokenizer directory.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    chat_template: Option<String>,
    /// End-of-sequence tokens from `config.json` and `generation_config.json` (chat models list
    /// their end-of-turn token there, e.g. `<|eot_id|>`, `<end_of_turn>`, `<|end|>`).
    model_eos: Vec<String>,
}

/// Token ids and, per token, whether it counts in the loss.
pub type IdsWithMask = (Vec<u32>, Vec<bool>);

/// `eos_token_id` of a JSON config file, if the file exists.
fn eos_ids(path: &Path) -> Result<Vec<u32>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = read_json(path)?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().map(|i| i as u32).collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .map(|i| i as u32)
            .collect(),
        _ => Vec::new(),
    })
}

/// A special token as `tokenizer_config.json` spells it: a string or an `AddedToken` object.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is used.
fn template_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .find(|i| i.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| items.first())
            .and_then(|i| i.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `DIR/tokenizer.json`, and `DIR/tokenizer_config.json` / `DIR/chat_template.jinja`
    /// when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::Tokenizer(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            serde_json::Value::Null
        };
        let mut chat_template = template_string(cfg.get("chat_template"));
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template =
                Some(
                    std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
                        path: jinja.clone(),
                        source,
                    })?,
                );
        }
        let mut model_eos = Vec::new();
        for file in ["config.json", "generation_config.json"] {
            for id in eos_ids(&dir.join(file))? {
                if let Some(t) = inner.id_to_token(id) {
                    model_eos.push(t);
                }
            }
        }
        Ok(Self {
            inner,
            bos_token: token_string(cfg.get("bos_token")),
            eos_token: token_string(cfg.get("eos_token")),
            pad_token: token_string(cfg.get("pad_token")),
            chat_template,
            model_eos,
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids with the byte span of `text` each token came from.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<IdsWithOffsets> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The tokens that end a turn: the tokenizer's `eos_token` and the model's end-of-sequence
    /// tokens.
    pub fn end_of_turn(&self) -> Vec<String> {
        self.eos_token
            .iter()
            .chain(&self.model_eos)
            .cloned()
            .collect()
    }

    /// The chat template, compiled, when the tokenizer has one; it knows the end-of-turn
    /// tokens ([`Self::end_of_turn`]).
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template
            .as_deref()
            .map(|src| {
                ChatTemplate::new(src, self.bos_token.clone(), self.eos_token.clone())
                    .map(|t| t.with_end_of_turn(self.end_of_turn()))
            })
            .transpose()
    }

    /// A conversation rendered by `template` and tokenized as `apply_chat_template` does (no
    /// special tokens added), with the loss mask: a token counts when any of its bytes lies in
    /// an assistant span ([`ChatTemplate::render_with_assistant_spans`]), so a token that
    /// starts with the space before an answer (`▁Hello`) counts as the model generates it.
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        messages: &[ChatMessage],
    ) -> Result<IdsWithMask> {
        let (text, spans) = template.render_with_assistant_spans(messages)?;
        let (ids, offsets) = self.encode_with_offsets(&text, false)?;
        let counted = offsets
            .iter()
            .map(|&(s, e)| e > s && spans.iter().any(|&(a, b)| s < b && e > a))
            .collect();
        Ok((ids, counted))
    }
}
