//! Chat templates from `tokenizer_config.json`, rendered with `minijinja` the way
//! `transformers`' `apply_chat_template` renders them: `trim_blocks` and `lstrip_blocks` on,
//! Python string methods (`.strip()`, `.startswith()`, …), `raise_exception`, `tojson`, and
//! `strftime_now`.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One chat message (OpenAI shape, text content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Tokens that end an assistant turn (the model's end-of-sequence tokens): the loss covers
    /// the one following each assistant message, so the model learns to stop.
    end_of_turn: Vec<String>,
}

/// A byte range of a rendered conversation.
pub type Span = (usize, usize);

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    chrono::Utc::now().format(&format).to_string()
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate(format!("cannot compile: {e}")))?;
        let end_of_turn = eos_token.iter().cloned().collect();
        Ok(Self {
            env,
            bos_token,
            eos_token,
            end_of_turn,
        })
    }

    /// Sets the tokens that end an assistant turn (by default the `eos_token`).
    pub fn with_end_of_turn(mut self, tokens: Vec<String>) -> Self {
        let mut tokens: Vec<String> = tokens.into_iter().filter(|t| !t.is_empty()).collect();
        tokens.sort();
        tokens.dedup();
        self.end_of_turn = tokens;
        self
    }

    pub fn end_of_turn(&self) -> &[String] {
        &self.end_of_turn
    }

    /// Renders `messages` (no generation prompt) and locates, for each assistant message, the
    /// span the loss covers: its content as the template renders it, and the end-of-turn token
    /// right after it when there is one.
    ///
    /// The content is found by rendering the conversation again with that message's content
    /// replaced by a marker: the text before the marker and the text after it must be the
    /// conversation's own start and end, and what lies between is the content. This holds for
    /// templates that place the system prompt anywhere, add end-of-sequence tokens, or render
    /// the last turn differently (Mistral, Phi-3, Qwen3), where comparing prefix renderings
    /// does not.
    pub fn render_with_assistant_spans(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Vec<Span>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let marker = format!("\u{e000}tailor-assistant-{i}\u{e001}");
            let mut probe = messages.to_vec();
            probe[i].content = marker.clone();
            let rendered = self.render(&probe, false)?;
            let not_found = |why: &str| {
                ModelError::ChatTemplate(format!(
                    "cannot locate assistant message {i} in the rendered conversation: {why}"
                ))
            };
            let start = rendered
                .find(&marker)
                .ok_or_else(|| not_found("the template does not render its content"))?;
            if rendered[start + marker.len()..].contains(&marker) {
                return Err(not_found("the template renders its content twice"));
            }
            let after = &rendered[start + marker.len()..];
            if !full.starts_with(&rendered[..start])
                || !full.ends_with(after)
                || full.len() < start + after.len()
            {
                return Err(not_found(
                    "the rest of the conversation renders differently with other content",
                ));
            }
            let end = full.len() - after.len();
            let eot = self
                .end_of_turn
                .iter()
                .filter(|t| full[end..].starts_with(t.as_str()))
                .map(String::len)
                .max()
                .unwrap_or(0);
            spans.push((start, end + eot));
        }
        Ok((full, spans))
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::ChatTemplate(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml() -> Result<()> {
        let t = ChatTemplate::new(CHATML, None, Some("<|im_end|>".into()))?;
        let out = t.render(&[ChatMessage::new("user", " hi ")], true)?;
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn python_methods_and_raise_exception() -> Result<()> {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ messages[0].content.strip().upper() }}{{ messages | tojson }}";
        let t = ChatTemplate::new(src, None, None)?;
        let out = t.render(&[ChatMessage::new("user", " x ")], false)?;
        assert!(out.starts_with('X'), "{out}");
        let err = t.render(&[ChatMessage::new("system", "x")], false);
        assert!(format!("{err:?}").contains("first message must be from the user"));
        Ok(())
    }
}
