//! `tailor-trainer evaluate`: the adapter against its base model on the test split.
//!
//! - Test loss and perplexity of both, by the training loss's definition (mean cross-entropy
//!   over the tokens that count, see `examples`), on the same tokenization.
//! - Each example with a prompt and a reference answer (chat: the conversation up to its last
//!   assistant message, which is the reference; completion: prompt and completion) is answered
//!   by both models with the same decoding settings — greedy, or sampled from a generator
//!   seeded per example so both models draw the same numbers — stopping at the model's
//!   end-of-sequence tokens as tailor-server does. Answers are scored by exact match and token
//!   F1 against the reference, after SQuAD's normalisation.
//! - With a judge, every pair is judged in both orders (`judge`, `tailor_wire::eval`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use tailor_model::{
    Adapters, CausalLm, ChatMessage, ForwardInput, KvCache, LoraAdapter, Tokenizer, peft,
};
use tch::{Device, Kind, Tensor};

pub use tailor_wire::eval::{EvaluateConfig, Evaluation, Scores};

use crate::examples::{Example, Sample};
use crate::judge::{self, Question};
use crate::train::{choose_device, eval_loss, load_examples, make_batch, pad_id, tokenize_all};

/// SQuAD's answer normalisation: lower case, punctuation and the articles a/an/the removed,
/// whitespace collapsed.
pub fn normalize_answer(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .map(|c| if c.is_ascii_punctuation() { ' ' } else { c })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

pub fn exact_match(answer: &str, reference: &str) -> bool {
    normalize_answer(answer) == normalize_answer(reference)
}

/// Token-level F1 of the normalised answer against the normalised reference (tokens counted
/// with multiplicity, as SQuAD's `f1_score`). Two empty answers agree fully.
pub fn token_f1(answer: &str, reference: &str) -> f64 {
    let a = normalize_answer(answer);
    let r = normalize_answer(reference);
    if a.is_empty() || r.is_empty() {
        return if a == r { 1.0 } else { 0.0 };
    }
    let mut pool: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in &r {
        *pool.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &a {
        if let Some(n) = pool.get_mut(w.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / a.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// What a model is asked and what it should answer; None for examples without a prompt
/// (`text`) or whose last message is not the assistant's.
pub struct Prompted {
    /// The conversation shown to a judge (the user's side, as text).
    pub question: String,
    pub reference: String,
    /// Chat messages before the reference, or a completion prompt.
    pub prompt: PromptKind,
}

pub enum PromptKind {
    Chat(Vec<ChatMessage>),
    Text(String),
}

pub fn prompted(example: &Example) -> Option<Prompted> {
    match example {
        Example::Chat { messages } => {
            let (last, before) = messages.split_last()?;
            if last.role != "assistant" || before.is_empty() {
                return None;
            }
            let question = before
                .iter()
                .filter(|m| m.role != "system")
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n");
            Some(Prompted {
                question,
                reference: last.content.clone(),
                prompt: PromptKind::Chat(before.to_vec()),
            })
        }
        Example::Completion { prompt, completion } => Some(Prompted {
            question: prompt.clone(),
            reference: completion.clone(),
            prompt: PromptKind::Text(prompt.clone()),
        }),
        Example::Text { .. } => None,
    }
}

/// Token ids of a prompt, as tailor-server tokenizes the same request (a chat through the
/// template with the generation prompt and no added special tokens; text with them).
fn prompt_ids(
    p: &PromptKind,
    tok: &Tokenizer,
    template: Option<&tailor_model::ChatTemplate>,
) -> anyhow::Result<Vec<i64>> {
    let (text, special) = match p {
        PromptKind::Chat(messages) => {
            let t = template
                .context("the base model's tokenizer has no chat template, needed for chat data")?;
            (t.render(messages, true)?, false)
        }
        PromptKind::Text(t) => (t.clone(), true),
    };
    Ok(tok
        .encode(&text, special)?
        .into_iter()
        .map(i64::from)
        .collect())
}

/// Generates up to `max_new` tokens after `prompt`; stops after an end-of-sequence token (not
/// returned). `temperature` 0 is greedy; above, sampling from libtorch's generator, which the
/// caller seeds.
fn generate(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    prompt: &[i64],
    eos: &[i64],
    max_new: usize,
    temperature: f64,
) -> anyhow::Result<Vec<i64>> {
    let adapters = adapter.map_or(Adapters::None, Adapters::All);
    let mut cache: KvCache = model.new_cache();
    let mut next = Tensor::from_slice(prompt)
        .to_device(model.device())
        .unsqueeze(0);
    let mut out = Vec::new();
    tch::no_grad(|| -> anyhow::Result<()> {
        for _ in 0..max_new {
            let input = ForwardInput {
                input_ids: &next,
                valid: None,
                adapters,
                train: false,
            };
            let logits = model
                .forward(&input, Some(&mut cache))?
                .select(1, -1)
                .to_kind(Kind::Float);
            let token = if temperature > 0.0 {
                (logits / temperature)
                    .softmax(-1, Kind::Float)
                    .multinomial(1, false)
                    .view([-1])
            } else {
                logits.argmax(-1, false)
            };
            let id = token.int64_value(&[0]);
            if eos.contains(&id) {
                break;
            }
            out.push(id);
            next = token.view([1, 1]);
        }
        Ok(())
    })?;
    Ok(out)
}

struct Answers {
    question: String,
    reference: String,
    base: String,
    adapter: String,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn scores(loss: Option<f64>, answers: &[Answers], pick: fn(&Answers) -> &str) -> Scores {
    let em: Vec<f64> = answers
        .iter()
        .map(|a| f64::from(u8::from(exact_match(pick(a), &a.reference))))
        .collect();
    let f1: Vec<f64> = answers
        .iter()
        .map(|a| token_f1(pick(a), &a.reference))
        .collect();
    Scores {
        test_loss: loss,
        perplexity: loss.map(f64::exp),
        exact_match: mean(&em),
        token_f1: mean(&f1),
    }
}

fn validate(cfg: &EvaluateConfig) -> anyhow::Result<()> {
    if cfg.max_seq_length < 2 {
        bail!("maxSeqLength must be at least 2");
    }
    if cfg.batch_size == 0 {
        bail!("batchSize must be at least 1");
    }
    if cfg.max_examples == Some(0) {
        bail!("maxExamples must be at least 1 when set");
    }
    let t = cfg.decoding.temperature;
    if !(t.is_finite() && t >= 0.0) {
        bail!("decoding.temperature must be 0 (greedy) or positive, got {t}");
    }
    if let Some(j) = &cfg.judge {
        if j.max_attempts == 0 {
            bail!("judge.maxAttempts must be at least 1");
        }
        if j.url.trim().is_empty() || j.model.trim().is_empty() {
            bail!("judge: url and model are both required");
        }
    }
    Ok(())
}

/// Runs the evaluation; writes `evaluation.json` and `samples.jsonl` into `output` when set.
pub fn run(cfg: &EvaluateConfig) -> anyhow::Result<Evaluation> {
    let started = Instant::now();
    validate(cfg)?;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n);
    }
    let device: Device = choose_device(&cfg.device)?;
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let model = CausalLm::load(&cfg.base_model, kind, device)
        .with_context(|| format!("loading base model {}", cfg.base_model.display()))?;
    let tokenizer = Tokenizer::from_dir(&cfg.base_model)
        .with_context(|| format!("loading tokenizer of {}", cfg.base_model.display()))?;
    let template = tokenizer.chat_template()?;
    let adapter = peft::load_adapter(&cfg.adapter, &model.config, device).with_context(|| {
        format!(
            "loading adapter {} onto base model {}",
            cfg.adapter.display(),
            cfg.base_model.display()
        )
    })?;
    // The judge's settings are checked before the long part starts.
    let judge = cfg.judge.as_ref().map(judge::Judge::new).transpose()?;

    let mut examples = load_examples(&cfg.test)?;
    if examples.is_empty() {
        bail!("{}: the test split has no examples", cfg.test.display());
    }
    if let Some(n) = cfg.max_examples {
        examples.truncate(n);
    }
    let (samples, _skipped) = tokenize_all(
        &examples,
        &tokenizer,
        template.as_ref(),
        cfg.max_seq_length,
        &cfg.test,
    )?;
    let pad = pad_id(&tokenizer);
    if let Some(path) = &cfg.dump_batches {
        dump_batches(path, &samples, cfg.batch_size, pad)?;
    }
    let base_loss = eval_loss(&model, None, &samples, cfg.batch_size, pad)?;
    let adapter_loss = eval_loss(&model, Some(&adapter), &samples, cfg.batch_size, pad)?;
    tracing::info!(
        ?base_loss,
        ?adapter_loss,
        examples = samples.len(),
        "test loss"
    );

    let mut eos: Vec<i64> = model.config.eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_id().map(i64::from));
    let max_ctx = usize::try_from(model.config.max_position_embeddings).unwrap_or(usize::MAX);
    let d = &cfg.decoding;
    let mut answers = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let Some(p) = prompted(ex) else { continue };
        let ids = prompt_ids(&p.prompt, &tokenizer, template.as_ref())
            .with_context(|| format!("{}: example {}", cfg.test.display(), i + 1))?;
        if ids.is_empty() || ids.len() >= max_ctx {
            tracing::warn!(
                example = i + 1,
                tokens = ids.len(),
                "prompt does not fit the model's context: not answered"
            );
            continue;
        }
        let max_new = d.max_new_tokens.min(max_ctx - ids.len());
        let answer = |a: Option<&LoraAdapter>| -> anyhow::Result<String> {
            tch::manual_seed(d.seed.wrapping_add(i as u64) as i64);
            let out = generate(&model, a, &ids, &eos, max_new, d.temperature)?;
            let out: Vec<u32> = out
                .into_iter()
                .filter_map(|t| u32::try_from(t).ok())
                .collect();
            Ok(tokenizer.decode(&out, true)?.trim().to_string())
        };
        answers.push(Answers {
            question: p.question,
            reference: p.reference,
            base: answer(None)?,
            adapter: answer(Some(&adapter))?,
        });
    }

    let mut judged = Vec::new();
    let judge_summary = match &judge {
        Some(j) => {
            let questions: Vec<Question> = answers
                .iter()
                .map(|a| Question {
                    question: a.question.clone(),
                    reference: a.reference.clone(),
                    base: a.base.clone(),
                    adapter: a.adapter.clone(),
                })
                .collect();
            let (summary, pairs) = j.judge_all(&questions)?;
            judged = pairs;
            Some(summary)
        }
        None => None,
    };

    let evaluation = Evaluation {
        examples: examples.len(),
        answered: answers.len(),
        base: scores(base_loss, &answers, |a| &a.base),
        adapter: scores(adapter_loss, &answers, |a| &a.adapter),
        judge: judge_summary,
        decoding: cfg.decoding.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(out) = &cfg.output {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let samples: Vec<serde_json::Value> = answers
            .iter()
            .enumerate()
            .take(cfg.samples)
            .map(|(i, a)| {
                let mut v = serde_json::json!({
                    "question": a.question,
                    "reference": a.reference,
                    "base": a.base,
                    "adapter": a.adapter,
                });
                if let Some(p) = judged.get(i) {
                    v["judge"] = serde_json::to_value(p).unwrap_or_default();
                }
                v
            })
            .collect();
        write_report(out, &evaluation, &samples)?;
    }
    Ok(evaluation)
}

fn write_report(
    out: &Path,
    evaluation: &Evaluation,
    samples: &[serde_json::Value],
) -> anyhow::Result<()> {
    let mut lines = String::new();
    for s in samples {
        lines.push_str(&serde_json::to_string(s)?);
        lines.push('\n');
    }
    std::fs::write(out.join("samples.jsonl"), lines)?;
    // The report last: its presence means the evaluation finished.
    std::fs::write(
        out.join("evaluation.json"),
        serde_json::to_vec_pretty(evaluation)?,
    )?;
    Ok(())
}

/// The test batches as `transformers` takes them (right-padded ids, labels -100 where a token
/// does not count), for the cross-check against PEFT.
fn dump_batches(
    path: &Path,
    samples: &[Sample],
    batch_size: usize,
    pad: i64,
) -> anyhow::Result<()> {
    let batches: Vec<serde_json::Value> = samples
        .chunks(batch_size.max(1))
        .map(|chunk| {
            let refs: Vec<&Sample> = chunk.iter().collect();
            make_batch(&refs, pad, Device::Cpu, true)
                .dump
                .unwrap_or_default()
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&batches)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_punctuation_articles_and_spacing() {
        assert!(exact_match("The answer is: 42.", "answer is 42"));
        assert!(exact_match(
            "  Reset   it, then log in! ",
            "reset it then log in"
        ));
        assert!(!exact_match("reset it", "reset it now"));
        assert!(exact_match("", "  "));
    }

    #[test]
    fn token_f1_counts_tokens_with_multiplicity() {
        assert_eq!(token_f1("reset the password", "Reset password"), 1.0);
        assert_eq!(token_f1("blue", "red"), 0.0);
        // answer: [go go home], reference: [go home now] -> common 2, p 2/3, r 2/3.
        assert!((token_f1("go go home", "go home now") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("", "something"), 0.0);
    }

    #[test]
    fn a_prompt_is_everything_before_the_last_assistant_message() {
        let chat = Example::Chat {
            messages: vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "how do I reset?"),
                ChatMessage::new("assistant", "Use the link."),
            ],
        };
        let p = prompted(&chat).expect("prompted");
        assert_eq!(p.reference, "Use the link.");
        assert_eq!(p.question, "user: how do I reset?");
        assert!(matches!(p.prompt, PromptKind::Chat(ref m) if m.len() == 2));
        let ends_with_user = Example::Chat {
            messages: vec![
                ChatMessage::new("assistant", "hello"),
                ChatMessage::new("user", "bye"),
            ],
        };
        assert!(prompted(&ends_with_user).is_none());
        assert!(prompted(&Example::Text { text: "x".into() }).is_none());
        let c = Example::Completion {
            prompt: "Q: 2+2? A:".into(),
            completion: " 4".into(),
        };
        assert_eq!(prompted(&c).map(|p| p.reference), Some(" 4".into()));
    }
}
