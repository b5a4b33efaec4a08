//! OpenAI request types, parsed once from the body, and their validation into a [`Job`] (TGI's
//! split of `router/src/validation.rs`): typing says what a field is, validation says whether
//! the server can do what it asks. Parameters the server does not implement — `tools`,
//! `response_format` other than text, structured outputs other than vLLM's `choice`,
//! penalties, `logit_bias`, `n > 1`, ... — are refused with a
//! 400 naming the parameter, as OpenAI refuses what it does not know; so are fields nobody
//! defined ("Unrecognized request argument supplied").

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use tailor_model::ChatMessage;

use crate::engine::Sampling;
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// Accepted as OpenAI does (participant name); not passed to the template.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<MessageIn>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// vLLM's extension: generate exactly `max_tokens` (benchmarks).
    pub ignore_eos: Option<bool>,
    /// vLLM's structured outputs (`{"choice": [...]}`; other kinds are refused).
    pub structured_outputs: Option<Value>,
    /// vLLM's spelling of `structured_outputs.choice` before 0.12.
    pub guided_choice: Option<Value>,
    // Known, refused unless neutral.
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub reasoning_effort: Option<Value>,
    pub web_search_options: Option<Value>,
    pub service_tier: Option<Value>,
    pub store: Option<bool>,
    /// Meaningful only with `store`; accepted.
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptSpec>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub structured_outputs: Option<Value>,
    pub guided_choice: Option<Value>,
    // Known, refused unless neutral.
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, IgnoredAny>,
}

/// What to feed the model, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<i64>),
}

/// A validated request: everything the server needs, nothing it cannot do.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub model: String,
    pub prompt: Prompt,
    /// `max_tokens` / `max_completion_tokens`; `None`: the rest of the context.
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub stops: Vec<String>,
    /// `Some(k)`: logprobs with the top `k` alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// The answer must be exactly one of these (vLLM's `structured_outputs.choice`).
    pub choices: Option<Vec<String>>,
}

/// The shared fields, validated.
struct Checked {
    model: String,
    max_tokens: Option<usize>,
    sampling: Sampling,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    choices: Option<Vec<String>>,
}

impl Checked {
    fn job(self, prompt: Prompt, logprobs: Option<usize>, ignore_eos: Option<bool>) -> Job {
        Job {
            model: self.model,
            prompt,
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            stops: self.stops,
            logprobs,
            stream: self.stream,
            include_usage: self.include_usage,
            ignore_eos: ignore_eos.unwrap_or(false),
            choices: self.choices,
        }
    }
}

/// The fields both endpoints share.
struct Common<'a> {
    model: &'a Option<String>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<i64>,
    stop: &'a Option<StopSpec>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: &'a Option<StreamOptions>,
    n: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: &'a Option<Value>,
    structured_outputs: &'a Option<Value>,
    guided_choice: &'a Option<Value>,
    unrecognized: &'a BTreeMap<String, IgnoredAny>,
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::unsupported(param, format!("{what} is not supported by this server"))
}

/// A value that asks for nothing: null, false, 0, "", [] or {}.
fn neutral(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn refuse_unless_neutral(param: &str, v: &Option<Value>) -> Result<(), ApiError> {
    match v {
        Some(v) if !neutral(v) => Err(unsupported(param, &format!("`{param}`"))),
        _ => Ok(()),
    }
}

impl Common<'_> {
    fn validate(&self) -> Result<Checked, ApiError> {
        if let Some(name) = self.unrecognized.keys().next() {
            return Err(ApiError::unsupported(
                name.clone(),
                format!("Unrecognized request argument supplied: {name}"),
            ));
        }
        let model = match self.model.as_deref() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => return Err(ApiError::bad("you must provide a model parameter", "model")),
        };
        match self.n {
            Some(n) if n < 1 => {
                return Err(ApiError::bad(format!("n must be at least 1, got {n}"), "n"));
            }
            Some(n) if n > 1 => {
                return Err(ApiError::unsupported(
                    "n",
                    format!("n = {n} is not supported by this server: only one choice per request"),
                ));
            }
            _ => {}
        }
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(unsupported(param, &format!("a non-zero `{param}`")));
            }
        }
        refuse_unless_neutral("logit_bias", self.logit_bias)?;
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad(
                format!("temperature must be between 0 and 2, got {temperature}"),
                "temperature",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad(
                format!("top_p must be in (0, 1], got {top_p}"),
                "top_p",
            ));
        }
        let max_tokens = match self.max_tokens {
            None => None,
            Some(m) if m <= 0 => {
                return Err(ApiError::bad(
                    format!("max_tokens must be at least 1, got {m}"),
                    "max_tokens",
                ));
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        let stops = match self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        if stops.len() > 4 || stops.iter().any(String::is_empty) {
            return Err(ApiError::bad(
                "stop must be up to 4 non-empty strings",
                "stop",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::bad(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            ));
        }
        let include_usage = self
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let sampling = Sampling {
            temperature,
            top_p,
            seed: self.seed.map(|s| s as u64),
        };
        let choices = choices(self.structured_outputs, self.guided_choice)?;
        Ok(Checked {
            model,
            max_tokens,
            sampling,
            stops,
            stream,
            include_usage,
            choices,
        })
    }
}

/// Most choices one request may give, and the longest choice (characters).
const MAX_CHOICES: usize = 64;
const MAX_CHOICE_CHARS: usize = 1024;

/// vLLM's constrained choice, from `structured_outputs: {"choice": [...]}` or the older
/// `guided_choice: [...]`. The other kinds of structured output (JSON schema, regex, grammar,
/// structural tags) are refused with a 400 naming them.
fn choices(
    structured: &Option<Value>,
    guided: &Option<Value>,
) -> Result<Option<Vec<String>>, ApiError> {
    let mut found = None;
    match structured {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (key, v) in o {
                match key.as_str() {
                    "choice" => found = Some(("structured_outputs.choice", v)),
                    _ if neutral(v) => {}
                    _ => {
                        return Err(unsupported(
                            &format!("structured_outputs.{key}"),
                            &format!("structured output of kind `{key}` (only `choice`)"),
                        ));
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad(
                "structured_outputs must be an object such as {\"choice\": [\"yes\", \"no\"]}",
                "structured_outputs",
            ));
        }
    }
    match (guided, found) {
        (None | Some(Value::Null), _) => {}
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "give structured_outputs.choice or guided_choice, not both",
                "guided_choice",
            ));
        }
        (Some(v), None) => found = Some(("guided_choice", v)),
    }
    let Some((param, v)) = found else {
        return Ok(None);
    };
    let list: Vec<String> = match v {
        Value::Array(a) => a
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad(format!("{param} must be a list of strings"), param))?,
        _ => {
            return Err(ApiError::bad(
                format!("{param} must be a list of strings"),
                param,
            ));
        }
    };
    if list.is_empty() || list.len() > MAX_CHOICES {
        return Err(ApiError::bad(
            format!(
                "{param} must hold 1 to {MAX_CHOICES} choices, got {}",
                list.len()
            ),
            param,
        ));
    }
    if let Some((i, _)) = list
        .iter()
        .enumerate()
        .find(|(_, c)| c.is_empty() || c.chars().count() > MAX_CHOICE_CHARS)
    {
        return Err(ApiError::bad(
            format!(
                "{param}[{i}] must be a non-empty string of at most {MAX_CHOICE_CHARS} characters"
            ),
            param,
        ));
    }
    Ok(Some(list))
}

fn chat_messages(messages: Vec<MessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad("messages must not be empty", "messages"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        if m.role == "tool" || m.role == "function" {
            return Err(unsupported(
                &format!("messages[{i}].role"),
                &format!("the `{}` role", m.role),
            ));
        }
        if m.tool_calls.as_ref().is_some_and(|v| !neutral(v)) {
            return Err(unsupported(
                &format!("messages[{i}].tool_calls"),
                "tool calls",
            ));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    if p.kind != "text" {
                        return Err(unsupported(
                            &format!("messages[{i}].content[{j}].type"),
                            &format!("content part type {:?}", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        out.push(ChatMessage::new(m.role, content));
    }
    Ok(out)
}

impl ChatCompletionRequest {
    pub fn validate(self) -> Result<Job, ApiError> {
        let checked = Common {
            model: &self.model,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: &self.stop,
            seed: self.seed,
            stream: self.stream,
            stream_options: &self.stream_options,
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: &self.logit_bias,
            structured_outputs: &self.structured_outputs,
            guided_choice: &self.guided_choice,
            unrecognized: &self.unrecognized,
        }
        .validate()
        .map_err(|e| match e {
            // Chat says max_completion_tokens when that is what was given.
            ApiError::BadRequest {
                message,
                param: Some(p),
            } if p == "max_tokens" && self.max_completion_tokens.is_some() => ApiError::bad(
                message.replace("max_tokens", "max_completion_tokens"),
                "max_completion_tokens",
            ),
            e => e,
        })?;
        refuse_unless_neutral("tools", &self.tools)?;
        refuse_unless_neutral("functions", &self.functions)?;
        for (param, v) in [
            ("tool_choice", &self.tool_choice),
            ("function_call", &self.function_call),
        ] {
            match v {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == "none" => {}
                Some(_) => return Err(unsupported(param, &format!("`{param}`"))),
            }
        }
        match &self.response_format {
            None | Some(Value::Null) => {}
            Some(v) if v.get("type").and_then(Value::as_str) == Some("text") => {}
            Some(v) => {
                let kind = v.get("type").and_then(Value::as_str).unwrap_or("?");
                return Err(unsupported(
                    "response_format",
                    &format!("response_format of type {kind:?} (only \"text\")"),
                ));
            }
        }
        refuse_unless_neutral("audio", &self.audio)?;
        refuse_unless_neutral("prediction", &self.prediction)?;
        refuse_unless_neutral("reasoning_effort", &self.reasoning_effort)?;
        refuse_unless_neutral("web_search_options", &self.web_search_options)?;
        match &self.modalities {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.iter().all(|m| m == "text") => {}
            Some(_) => return Err(unsupported("modalities", "output other than text")),
        }
        match &self.service_tier {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" || s == "default" => {}
            Some(v) => return Err(unsupported("service_tier", &format!("service_tier {v}"))),
        }
        if self.store == Some(true) {
            return Err(unsupported("store", "storing completions"));
        }
        let Some(messages) = self.messages else {
            return Err(ApiError::bad(
                "'messages' is a required property",
                "messages",
            ));
        };
        let messages = chat_messages(messages)?;
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), k) => {
                let k = k.unwrap_or(0);
                if !(0..=20).contains(&k) {
                    return Err(ApiError::bad(
                        "top_logprobs must be between 0 and 20",
                        "top_logprobs",
                    ));
                }
                Some(k as usize)
            }
            (_, Some(k)) if k > 0 => {
                return Err(ApiError::bad(
                    "top_logprobs requires logprobs: true",
                    "top_logprobs",
                ));
            }
            _ => None,
        };
        Ok(checked.job(Prompt::Chat(messages), logprobs, self.ignore_eos))
    }
}

impl CompletionRequest {
    pub fn validate(self, vocab: usize) -> Result<Job, ApiError> {
        let checked = Common {
            model: &self.model,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            stop: &self.stop,
            seed: self.seed,
            stream: self.stream,
            stream_options: &self.stream_options,
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: &self.logit_bias,
            structured_outputs: &self.structured_outputs,
            guided_choice: &self.guided_choice,
            unrecognized: &self.unrecognized,
        }
        .validate()?;
        if self.echo == Some(true) {
            return Err(unsupported("echo", "`echo`"));
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(unsupported("best_of", "best_of > 1"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "`suffix`"));
        }
        let prompt = match self.prompt {
            None => return Err(ApiError::bad("'prompt' is a required property", "prompt")),
            Some(PromptSpec::Text(t)) => Prompt::Text(t),
            Some(PromptSpec::Texts(mut v)) if v.len() == 1 => Prompt::Text(v.remove(0)),
            Some(PromptSpec::TokenLists(mut v)) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
            Some(PromptSpec::Texts(_)) | Some(PromptSpec::TokenLists(_)) => {
                return Err(unsupported("prompt", "more than one prompt per request"));
            }
            Some(PromptSpec::Tokens(ids)) => Prompt::Tokens(ids),
        };
        if let Prompt::Tokens(ids) = &prompt
            && ids.iter().any(|&i| i < 0 || i >= vocab as i64)
        {
            return Err(ApiError::bad(
                format!("prompt token ids must be in [0, {vocab})"),
                "prompt",
            ));
        }
        let logprobs = match self.logprobs {
            None => None,
            Some(k) if (0..=20).contains(&k) => Some(k as usize),
            Some(_) => {
                return Err(ApiError::bad(
                    "logprobs must be between 0 and 20",
                    "logprobs",
                ));
            }
        };
        Ok(checked.job(prompt, logprobs, self.ignore_eos))
    }
}

/// The completion budget for a prompt of `prompt_len` tokens within `max_seq`: the request's
/// `max_tokens`, or all the room left; a prompt that leaves no room, or a `max_tokens` beyond the
/// room, is a `context_length_exceeded` error naming the limit.
pub fn fit_context(
    prompt_len: usize,
    max_tokens: Option<usize>,
    max_seq: usize,
    param: &'static str,
) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::bad("the prompt is empty", param));
    }
    if prompt_len >= max_seq {
        return Err(ApiError::ContextLength {
            message: format!(
                "This model's maximum context length is {max_seq} tokens. However, your prompt has {prompt_len} tokens, leaving no room for a completion."
            ),
            param,
        });
    }
    let room = max_seq - prompt_len;
    match max_tokens {
        None => Ok(room),
        Some(m) if m > room => Err(ApiError::ContextLength {
            message: format!(
                "This model's maximum context length is {max_seq} tokens. However, you requested {} tokens ({prompt_len} in the prompt, {m} for the completion). Please reduce the prompt or max_tokens.",
                prompt_len.saturating_add(m)
            ),
            param,
        }),
        Some(m) => Ok(m),
    }
}

#[cfg(test)]
mod tests;
