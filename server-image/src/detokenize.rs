//! Incremental detokenization: the text each new token adds, decoded from a small window of
//! ids instead of the whole output (the prefix-offset algorithm of `tokenizers`' `DecodeStream`,
//! vLLM and TGI). Decoding cost per token stays flat however long the answer grows, and the
//! concatenated pieces equal a decode of all ids at once.
//!
//! The window starts where the previous piece's context began (`prefix`) and ends at the new
//! token: decoding `window[..read]` and `window[..]` and taking the difference gives the new text
//! with the context a decoder needs (a SentencePiece leading space, the other bytes of a
//! character split over byte-fallback tokens). Text ending in U+FFFD is an incomplete UTF-8
//! sequence: nothing is emitted until its last byte arrives.

/// One generation's decoder state. `decode` is the tokenizer's batch decode of a slice of ids.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    /// Ids from the start of the last emitted piece's context.
    window: Vec<u32>,
    /// `window[..read]` has been emitted; `window[read..]` not yet.
    read: usize,
    /// Ids handed to `decode` so far (what a step costs, independent of the clock).
    decoded_ids: u64,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The text `id` completes (often empty while a multi-byte character is incomplete).
    pub fn step<E>(
        &mut self,
        id: u32,
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<String, E> {
        self.window.push(id);
        let (prefix, full) = self.decode_window(&decode)?;
        match new_text(&prefix, &full) {
            Some(text) if !text.ends_with('\u{FFFD}') => {
                let text = text.to_string();
                // The next piece's context starts where this piece's unread part began.
                self.window.drain(..self.read);
                self.read = self.window.len();
                Ok(text)
            }
            _ => Ok(String::new()),
        }
    }

    /// The text still held at the end of the generation (an incomplete character decodes as
    /// U+FFFD, as a decode of all ids would show it).
    pub fn finish<E>(&mut self, decode: impl Fn(&[u32]) -> Result<String, E>) -> Result<String, E> {
        if self.read == self.window.len() {
            return Ok(String::new());
        }
        let (prefix, full) = self.decode_window(&decode)?;
        let text = new_text(&prefix, &full).unwrap_or_default().to_string();
        self.window.clear();
        self.read = 0;
        Ok(text)
    }

    /// Ids passed to the tokenizer so far.
    pub fn decoded_ids(&self) -> u64 {
        self.decoded_ids
    }

    fn decode_window<E>(
        &mut self,
        decode: &impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<(String, String), E> {
        let prefix = decode(&self.window[..self.read])?;
        let full = decode(&self.window)?;
        self.decoded_ids += (self.read + self.window.len()) as u64;
        Ok((prefix, full))
    }
}

/// What `full` adds after `prefix`, if it adds anything at a character boundary.
fn new_text<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    (full.len() > prefix.len() && full.is_char_boundary(prefix.len()))
        .then(|| &full[prefix.len()..])
}

#[cfg(test)]
pub(crate) mod tests {
    use tokenizers::Tokenizer;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::{BPE, Vocab};
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    use super::*;

    /// A byte-level BPE (GPT-2, Llama 3, Qwen): every byte is a token, plus a few merges.
    pub(crate) fn byte_level() -> Tokenizer {
        let mut vocab = Vocab::default();
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        for c in alphabet {
            let n = vocab.len() as u32;
            vocab.insert(c.to_string(), n);
        }
        let mut merges = Vec::new();
        for (a, b) in [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")] {
            let n = vocab.len() as u32;
            vocab.insert(format!("{a}{b}"), n);
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .expect("bpe");
        let mut t = Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevel::default()));
        t
    }

    /// A SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama): `▁` for
    /// spaces, stripped at the start of a decode; characters outside the vocabulary as
    /// `<0xNN>` byte tokens.
    pub(crate) fn sentencepiece() -> Tokenizer {
        let mut vocab = Vocab::default();
        for s in [
            "<unk>", "▁", "h", "e", "l", "o", "w", "r", "d", "▁hello", "▁world",
        ] {
            let n = vocab.len() as u32;
            vocab.insert(s.to_string(), n);
        }
        for b in 0..=255u8 {
            let n = vocab.len() as u32;
            vocab.insert(format!("<0x{b:02X}>"), n);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .unk_token("<unk>".into())
            .byte_fallback(true)
            .build()
            .expect("bpe");
        let mut t = Tokenizer::new(bpe);
        t.with_normalizer(Some(Replace::new(" ", "▁").expect("replace")));
        t.with_decoder(Some(Sequence::new(vec![
            tokenizers::decoders::DecoderWrapper::Replace(Replace::new("▁", " ").expect("replace")),
            ByteFallback::default().into(),
            Fuse::default().into(),
            Strip::new(' ', 1, 0).into(),
        ])));
        t
    }

    fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, false).expect("encode").get_ids().to_vec()
    }

    /// Streams `ids` through the decoder; returns the pieces and the ids decoded at each step.
    fn stream(t: &Tokenizer, ids: &[u32]) -> (Vec<String>, Vec<u64>) {
        let decode = |ids: &[u32]| t.decode(ids, true);
        let mut d = IncrementalDecoder::new();
        let mut pieces = Vec::new();
        let mut per_step = Vec::new();
        for &id in ids {
            let before = d.decoded_ids();
            pieces.push(d.step(id, decode).expect("step"));
            per_step.push(d.decoded_ids() - before);
        }
        pieces.push(d.finish(decode).expect("finish"));
        (pieces, per_step)
    }

    #[test]
    fn pieces_concatenate_to_the_full_decode() {
        for (name, t) in [
            ("byte-level", byte_level()),
            ("sentencepiece", sentencepiece()),
        ] {
            for text in [
                "hello world",
                " hello  world ",
                "héllo wörld — ünïcödé ✓ 日本語 🎉 done",
                "🎉",
                "a\nb\tc",
            ] {
                let ids = ids(&t, text);
                let (pieces, _) = stream(&t, &ids);
                let whole = t.decode(&ids, true).expect("decode");
                assert_eq!(pieces.concat(), whole, "{name}: {text:?} as {ids:?}");
                // A character split over byte tokens never shows as U+FFFD mid-stream.
                assert!(
                    pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                    "{name}: {pieces:?}"
                );
            }
        }
    }

    #[test]
    fn sentencepiece_spaces_survive_token_by_token_decoding() {
        let t = sentencepiece();
        let ids = ids(&t, "hello world hello");
        let (pieces, _) = stream(&t, &ids);
        assert_eq!(pieces.concat(), "hello world hello");
        // Decoding each token alone would lose the spaces ("helloworldhello").
        assert!(pieces.iter().any(|p| p.starts_with(' ')), "{pieces:?}");
    }

    #[test]
    fn an_incomplete_character_at_the_end_shows_as_the_full_decode_does() {
        let t = byte_level();
        let mut ids = ids(&t, "ok 🎉");
        ids.pop(); // the last byte of the emoji
        let (pieces, _) = stream(&t, &ids);
        assert_eq!(pieces.concat(), t.decode(&ids, true).expect("decode"));
        assert!(pieces.last().is_some_and(|p| p.ends_with('\u{FFFD}')));
    }

    /// The work per token is flat: the ids decoded per step do not grow with the output.
    #[test]
    fn decoded_ids_per_step_are_flat_in_output_length() {
        for t in [byte_level(), sentencepiece()] {
            let short = ids(&t, &"hello world héllo 🎉 ".repeat(4));
            let long = ids(&t, &"hello world héllo 🎉 ".repeat(400));
            assert!(long.len() >= 2048, "{} ids", long.len());
            let (_, short_steps) = stream(&t, &short);
            let (pieces, long_steps) = stream(&t, &long);
            assert_eq!(pieces.concat(), t.decode(&long, true).expect("decode"));
            let max_short = short_steps.iter().copied().max().unwrap_or(0);
            let max_long = long_steps.iter().copied().max().unwrap_or(0);
            // A window spans at most one character's byte tokens plus the token before it.
            assert!(max_long <= 12, "max ids per step {max_long}");
            assert_eq!(max_long, max_short, "per-step cost grew with the output");
            let mean = long_steps.iter().sum::<u64>() as f64 / long_steps.len() as f64;
            assert!(mean < 6.0, "mean ids per step {mean}");
        }
    }
}
