//! `tailor-trainer prepare`: validate, redact, dedupe and split a JSONL dataset.
//!
//! A malformed line is counted and reported (line number and reason), never fatal by itself.
//! Splits are by a stable hash of the normalised example, so adding data never moves an old
//! example to another split.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::examples::Example;
use crate::redact::Redactor;

pub use tailor_wire::prepare::{
    InvalidSample, MAX_INVALID_SAMPLES, MAX_REASON_BYTES, PrepareConfig, PrepareStats as Stats,
};

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary, marked when cut.
fn short_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// The split of an example: a fraction in [0, 1) from the first 8 bytes of its hash (salted
/// with `seed` unless it is 0).
fn split_of(hash: &[u8], seed: u64, validation: f64, test: f64) -> usize {
    let salted;
    let hash = if seed == 0 {
        hash
    } else {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(hash);
        salted = h.finalize();
        &salted[..]
    };
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

/// The JSONL to read: the file `input`, or each `*.jsonl` file directly under the directory
/// `input` in name order (a fetched bucket prefix), with its name.
fn read_sources(input: &std::path::Path) -> anyhow::Result<Vec<(Option<String>, Vec<u8>)>> {
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    if !input.is_dir() {
        return Ok(vec![(None, read(input)?)]);
    }
    let mut files: Vec<_> = std::fs::read_dir(input)
        .with_context(|| format!("listing {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.jsonl files directly under {}", input.display());
    }
    files
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((Some(name), read(p)?))
        })
        .collect()
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
    let sources = read_sources(&cfg.input)?;
    let tokenizer = match &cfg.tokenizer {
        Some(dir) => Some(tailor_model::Tokenizer::from_dir(dir)?),
        None => None,
    };
    let template = match &tokenizer {
        Some(t) => t.chat_template()?,
        None => None,
    };
    if tokenizer.is_none() && cfg.max_tokens_per_example.is_some() {
        tracing::warn!(
            "maxTokensPerExample needs a tokenizer to measure examples; not applied (no tokenizer given)"
        );
    }
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
        truncated: false,
    };
    let mut outputs: [Vec<u8>; 3] = Default::default();
    let mut content = Sha256::new();
    let reject = |stats: &mut Stats, line: usize, reason: String| {
        stats.invalid += 1;
        if stats.invalid_samples.len() < MAX_INVALID_SAMPLES {
            stats.invalid_samples.push(InvalidSample {
                line: line as u64,
                reason: short_reason(reason),
            });
        }
    };
    let lines = sources.iter().flat_map(|(file, bytes)| {
        bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(move |(i, raw)| (file.as_deref(), i + 1, raw))
    });
    for (file, line_no, raw) in lines {
        // In a directory of files, a rejected line's reason names its file.
        let reject = |stats: &mut Stats, line: usize, reason: String| match file {
            Some(f) => reject(stats, line, format!("{f}: {reason}")),
            None => reject(stats, line, reason),
        };
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
            stats.redactions += redactor.redact(text) as u64;
        }
        let normalized = example.normalized();
        let hash = Sha256::digest(normalized.as_bytes());
        if cfg.dedupe && !seen.insert(hash) {
            stats.duplicates_removed += 1;
            continue;
        }
        let mut tokens = 0;
        if let Some(tok) = &tokenizer {
            match example.rendered(template.as_ref()) {
                Ok(text) => tokens = tok.encode(&text, false)?.len(),
                Err(reason) => {
                    reject(&mut stats, line_no, reason);
                    continue;
                }
            }
            if let Some(max) = cfg.max_tokens_per_example
                && tokens > max
            {
                reject(
                    &mut stats,
                    line_no,
                    format!("{tokens} tokens, more than maxTokensPerExample ({max})"),
                );
                continue;
            }
        }
        if let Some(total) = stats.tokens.as_mut() {
            *total += tokens as u64;
        }
        let split = split_of(&hash, cfg.seed, cfg.validation_fraction, cfg.test_fraction);
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
    if stats.examples < cfg.min_examples.max(1) as u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::Format;
    use std::path::PathBuf;

    fn config(dir: &Path, lines: &[String]) -> PrepareConfig {
        let input = dir.join("in.jsonl");
        std::fs::write(&input, lines.join("\n")).expect("write input");
        PrepareConfig {
            input,
            format: Format::Text,
            output: dir.join("out"),
            dedupe: true,
            redact: vec![],
            validation_fraction: 0.3,
            test_fraction: 0.0,
            min_examples: 1,
            tokenizer: None,
            max_tokens_per_example: None,
            seed: 0,
        }
    }

    fn text(s: &str) -> String {
        serde_json::json!({ "text": s }).to_string()
    }

    /// A word-level tokenizer: one token per whitespace-separated word.
    fn word_tokenizer(dir: &Path) -> PathBuf {
        let tok = dir.join("tokenizer");
        std::fs::create_dir_all(&tok).expect("mkdir");
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}
        });
        std::fs::write(tok.join("tokenizer.json"), json.to_string()).expect("write tokenizer");
        tok
    }

    fn split_lines(out: &Path, split: &str) -> Vec<String> {
        std::fs::read_to_string(out.join(format!("{split}.jsonl")))
            .expect("split file")
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn long_examples_are_rejected_and_tokens_counted_with_a_tokenizer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = vec![text("a a a"), text(&"a ".repeat(10)), text("a a")];
        let mut cfg = config(dir.path(), &lines);
        cfg.tokenizer = Some(word_tokenizer(dir.path()));
        cfg.max_tokens_per_example = Some(5);
        let stats = run(&cfg).expect("prepares");
        assert_eq!(stats.examples, 2);
        assert_eq!(stats.invalid, 1);
        assert_eq!(stats.tokens, Some(5));
        assert_eq!(stats.invalid_samples[0].line, 2);
        assert!(
            stats.invalid_samples[0]
                .reason
                .contains("10 tokens, more than maxTokensPerExample (5)"),
            "{:?}",
            stats.invalid_samples
        );
        // Without a tokenizer nothing can be measured: the limit is not applied.
        cfg.tokenizer = None;
        cfg.output = dir.path().join("out2");
        let stats = run(&cfg).expect("prepares");
        assert_eq!((stats.examples, stats.invalid, stats.tokens), (3, 0, None));
    }

    #[test]
    fn a_directory_is_its_jsonl_files_in_name_order_and_rejects_name_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let whole: Vec<String> = (0..30).map(|i| text(&format!("example {i}"))).collect();
        let single = config(dir.path(), &whole);
        let one = run(&single).expect("one file");

        let parts = dir.path().join("parts");
        std::fs::create_dir_all(parts.join(".tailor-fetch")).expect("mkdir");
        std::fs::write(parts.join("b.jsonl"), whole[10..].join("\n")).expect("write");
        std::fs::write(
            parts.join("a.jsonl"),
            format!("{}\n{{broken\n", whole[..10].join("\n")),
        )
        .expect("write");
        std::fs::write(parts.join("notes.txt"), "not data").expect("write");
        std::fs::write(parts.join(".tailor-fetch/complete.json"), "{}").expect("write");
        let mut cfg = single.clone();
        cfg.input = parts.clone();
        cfg.output = dir.path().join("out-dir");
        let many = run(&cfg).expect("a directory");
        // The same examples in the same order as the one file: the same content and splits.
        assert_eq!(many.examples, 30);
        assert_eq!(many.content_hash, one.content_hash);
        assert_eq!(many.invalid, 1);
        assert_eq!(many.invalid_samples[0].line, 11);
        assert!(
            many.invalid_samples[0].reason.starts_with("a.jsonl: "),
            "{:?}",
            many.invalid_samples
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        cfg.input = empty;
        let e = run(&cfg).expect_err("nothing to read");
        assert!(e.to_string().contains("no *.jsonl files"), "{e}");
    }

    #[test]
    fn the_seed_draws_another_stable_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines: Vec<String> = (0..200).map(|i| text(&format!("example {i}"))).collect();
        let mut cfg = config(dir.path(), &lines);
        let unsalted = run(&cfg).expect("prepares");
        let base = split_lines(&cfg.output, "validation");
        cfg.seed = 7;
        cfg.output = dir.path().join("seed7");
        let salted = run(&cfg).expect("prepares");
        let seven = split_lines(&cfg.output, "validation");
        assert_ne!(base, seven, "another seed, another split");
        assert_eq!(unsalted.content_hash, salted.content_hash, "same content");
        assert!(
            seven.len() > 30 && seven.len() < 90,
            "{} of 200",
            seven.len()
        );
        // The same seed with more data keeps every example where it was.
        let mut more = lines.clone();
        more.extend((200..260).map(|i| text(&format!("example {i}"))));
        std::fs::write(&cfg.input, more.join("\n")).expect("write");
        cfg.output = dir.path().join("seed7-more");
        run(&cfg).expect("prepares");
        let grown = split_lines(&cfg.output, "validation");
        assert!(seven.iter().all(|l| grown.contains(l)));
    }

    #[test]
    fn config_names_match_the_operator() {
        let cfg: PrepareConfig = serde_json::from_value(serde_json::json!({
            "input": "/in", "format": "chat", "output": "/out", "dedupe": true,
            "redact": ["email", "phone", "creditCard", "ipAddress"],
            "validationFraction": 0.1, "testFraction": 0.0, "minExamples": 10,
            "maxTokensPerExample": 4096, "seed": 3, "tokenizer": "/models/base"
        }))
        .expect("the operator's prepare.json parses");
        assert_eq!(cfg.seed, 3);
        assert_eq!(cfg.max_tokens_per_example, Some(4096));
        assert_eq!(cfg.redact.len(), 4);
    }

    #[test]
    fn hostile_lines_cannot_make_the_stats_large() {
        let dir = tempfile::tempdir().expect("tmp");
        // 25 chat lines whose unknown role is 2 MB each: the rejection reasons quote it.
        let role = "r".repeat(2 << 20);
        let mut lines: Vec<String> = (0..25)
            .map(|_| serde_json::json!({"messages": [{"role": role, "content": "x"}]}).to_string())
            .collect();
        lines.push(serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}).to_string());
        let mut cfg = config(dir.path(), &lines);
        cfg.format = Format::Chat;
        let stats = run(&cfg).expect("prepares");
        assert_eq!(stats.invalid, 25);
        assert_eq!(stats.invalid_samples.len(), MAX_INVALID_SAMPLES);
        for s in &stats.invalid_samples {
            assert!(s.reason.len() <= MAX_REASON_BYTES, "{}", s.reason.len());
            assert!(s.reason.ends_with('…'), "{}", s.reason);
        }
        let on_disk = std::fs::metadata(cfg.output.join("stats.json")).expect("stats.json");
        assert!(
            on_disk.len() < 16 * 1024,
            "stats.json is {} bytes",
            on_disk.len()
        );
    }
}
