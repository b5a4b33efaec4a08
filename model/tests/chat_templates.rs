//! The chat templates models ship (tests/chat_templates/*.jinja, the Jinja text of each model's
//! `tokenizer_config.json`; templates.json names the model and its special tokens), rendered by
//! tailor, equal `transformers`' `apply_chat_template` on conversations with and without a system
//! prompt, several turns, and with and without the generation prompt (a template that refuses
//! a conversation, as Gemma 2 refuses system prompts, must refuse it in both). The assistant
//! spans tailor's loss mask is built from equal the spans located independently in
//! `transformers`' rendering (each assistant message's content and the end-of-turn token after
//! it), and the tokens the mask counts cover exactly those spans.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::run_reference;
use serde::Deserialize;
use tailor_model::{ChatMessage, ChatTemplate, Tokenizer};

#[derive(Deserialize)]
struct TemplateSpec {
    bos: Option<String>,
    eos: Option<String>,
    end_of_turn: Vec<String>,
}

#[derive(Deserialize)]
struct Spec {
    templates: BTreeMap<String, TemplateSpec>,
    conversations: Vec<Vec<ChatMessage>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Rendered {
    Text(String),
    Error { error: String },
}

#[derive(Deserialize)]
struct Reference {
    /// Per conversation: without, then with the generation prompt.
    renders: Vec<[Rendered; 2]>,
    /// Per conversation: byte spans of each assistant message (without generation prompt).
    spans: Vec<Vec<(usize, usize)>>,
}

fn templates_dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("tests/chat_templates")
}

#[test]
fn shipped_templates_render_as_transformers_and_mask_the_assistant_spans() {
    let spec_path = templates_dir().join("templates.json");
    let spec: Spec =
        serde_json::from_slice(&std::fs::read(&spec_path).expect("templates.json")).expect("spec");
    let out = tempfile::tempdir().expect("tempdir");
    let renders = out.path().join("renders.json");
    run_reference(&[
        "chat-templates".as_ref(),
        spec_path.as_os_str(),
        renders.as_os_str(),
    ]);
    let reference: BTreeMap<String, Reference> =
        serde_json::from_slice(&std::fs::read(&renders).expect("renders")).expect("json");
    let tokenizer = Tokenizer::from_dir(&out.path().join("tokenizer")).expect("tokenizer");
    let mut checked_spans = 0;
    for (name, t) in &spec.templates {
        let source = std::fs::read_to_string(templates_dir().join(format!("{name}.jinja")))
            .expect("template file");
        let template = ChatTemplate::new(&source, t.bos.clone(), t.eos.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .with_end_of_turn(t.end_of_turn.clone());
        let want = &reference[name];
        for (c, conv) in spec.conversations.iter().enumerate() {
            for (g, gen_prompt) in [false, true].into_iter().enumerate() {
                let ours = template.render(conv, gen_prompt);
                match (&want.renders[c][g], ours) {
                    (Rendered::Text(theirs), Ok(ours)) => assert_eq!(
                        &ours, theirs,
                        "{name}: conversation {c}, generation prompt {gen_prompt}"
                    ),
                    (Rendered::Error { error }, Err(e)) => assert!(
                        e.to_string().contains(error.as_str()),
                        "{name}: conversation {c}: transformers refused with {error:?}, tailor with {e}"
                    ),
                    (theirs, ours) => panic!(
                        "{name}: conversation {c}, generation prompt {gen_prompt}: transformers {}, tailor {ours:?}",
                        match theirs {
                            Rendered::Text(t) => format!("rendered {t:?}"),
                            Rendered::Error { error } => format!("refused: {error}"),
                        }
                    ),
                }
            }
            let Rendered::Text(text) = &want.renders[c][0] else {
                continue;
            };
            let (ours, spans) = template
                .render_with_assistant_spans(conv)
                .unwrap_or_else(|e| panic!("{name}: conversation {c}: {e}"));
            assert_eq!(&ours, text);
            assert_eq!(spans, want.spans[c], "{name}: conversation {c}: spans");
            checked_spans += spans.len();
            // Each span is the content and the end-of-turn token.
            for (&(a, b), m) in spans
                .iter()
                .zip(conv.iter().filter(|m| m.role == "assistant"))
            {
                let span = &text[a..b];
                assert!(span.starts_with(&m.content), "{name}: span {span:?}");
                let rest = &span[m.content.len()..];
                assert!(
                    t.end_of_turn.iter().any(|e| e == rest),
                    "{name}: span {span:?} does not end with an end-of-turn token"
                );
            }
            // The tokens the loss counts cover the spans, and only whitespace beside them (a
            // token carrying the space before an answer counts, as the model generates it).
            let (ids, counted) = tokenizer.encode_chat(&template, conv).expect("encode");
            let (ids2, offsets) = tokenizer.encode_with_offsets(text, false).expect("encode");
            assert_eq!(ids, ids2);
            let mut covered = vec![false; text.len()];
            for (&(s, e), &on) in offsets.iter().zip(&counted) {
                if on {
                    covered[s..e].iter_mut().for_each(|c| *c = true);
                }
            }
            for (i, byte) in text.bytes().enumerate() {
                let in_span = spans.iter().any(|&(a, b)| i >= a && i < b);
                if in_span {
                    assert!(covered[i], "{name}: byte {i} of a span is not counted");
                } else if covered[i] {
                    assert!(
                        byte.is_ascii_whitespace(),
                        "{name}: byte {i} ({:?}) outside the spans is counted",
                        byte as char
                    );
                }
            }
        }
    }
    assert!(checked_spans >= 30, "only {checked_spans} spans checked");
}

/// The end-of-turn tokens come from the tokenizer and from the model's `config.json` and
/// `generation_config.json` (Phi-3 ends turns with `<|end|>`, which only generation_config
/// lists), so a template that renders `<|end|>` after an answer gets it into the loss.
#[test]
fn end_of_turn_tokens_include_the_models_generation_eos() {
    let out = tempfile::tempdir().expect("tempdir");
    let spec_path = templates_dir().join("templates.json");
    run_reference(&[
        "chat-templates".as_ref(),
        spec_path.as_os_str(),
        out.path().join("renders.json").as_os_str(),
    ]);
    let dir = out.path().join("tokenizer");
    let tok = Tokenizer::from_dir(&dir).expect("tokenizer");
    let end = tok.token_to_id("<|end|>").expect("<|end|> is a token");
    std::fs::write(
        dir.join("generation_config.json"),
        format!(r#"{{"eos_token_id": [0, {end}]}}"#),
    )
    .expect("write");
    let tok = Tokenizer::from_dir(&dir).expect("tokenizer");
    let eot = tok.end_of_turn();
    assert!(eot.contains(&"<|end|>".to_string()), "{eot:?}");
    assert!(eot.contains(&"<|im_end|>".to_string()), "{eot:?}");
    let phi3 = std::fs::read_to_string(templates_dir().join("phi3.jinja")).expect("phi3");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"eos_token": "<|endoftext|>", "chat_template": phi3}).to_string(),
    )
    .expect("write");
    let tok = Tokenizer::from_dir(&dir).expect("tokenizer");
    let template = tok.chat_template().expect("template").expect("has one");
    let conv = [
        ChatMessage::new("user", "hi"),
        ChatMessage::new("assistant", "hello there"),
    ];
    let (text, spans) = template.render_with_assistant_spans(&conv).expect("spans");
    assert_eq!(&text[spans[0].0..spans[0].1], "hello there<|end|>");
}
