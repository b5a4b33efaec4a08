//! A running generation on the HTTP side: the engine's token events turned into text pieces by
//! the incremental detokenizer, cut at stop strings by the stop matcher. Both do bounded work per
//! token, so a long answer costs linear time.

use std::sync::Arc;

use tailor_model::Tokenizer;
use tokio::sync::mpsc;

use crate::detokenize::IncrementalDecoder;
use crate::engine::{Event, Finish, TokenOut};
use crate::error::ApiError;
use crate::health::EngineHealth;
use crate::stop::{Scan, StopMatcher};

/// A piece of generated output.
#[derive(Debug)]
pub struct Piece {
    pub text: String,
    /// The tokens that produced `text` (held-back tokens join the next piece).
    pub tokens: Vec<TokenOut>,
    /// `stop` or `length` on the last piece.
    pub finish: Option<&'static str>,
}

pub struct Generation {
    tokenizer: Arc<Tokenizer>,
    health: Arc<EngineHealth>,
    rx: Option<mpsc::UnboundedReceiver<Event>>,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    tokens: Vec<TokenOut>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

fn reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

impl Generation {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        health: Arc<EngineHealth>,
        rx: mpsc::UnboundedReceiver<Event>,
        stops: Vec<String>,
        prompt_tokens: usize,
    ) -> Self {
        Self {
            tokenizer,
            health,
            rx: Some(rx),
            decoder: IncrementalDecoder::new(),
            stops: StopMatcher::new(stops),
            tokens: Vec::new(),
            prompt_tokens,
            completion_tokens: 0,
        }
    }

    /// The text of one token id alone (logprob entries).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    fn piece(&mut self, text: String, finish: Option<&'static str>) -> Piece {
        if finish.is_some() {
            // Dropping the receiver takes the row out of the batch at the next step.
            self.rx = None;
        }
        Piece {
            text,
            tokens: std::mem::take(&mut self.tokens),
            finish,
        }
    }

    /// The next piece: `None` after the last one. A token that completes no visible text yet is
    /// carried into the next piece.
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        let tokenizer = self.tokenizer.clone();
        let decode = move |ids: &[u32]| tokenizer.decode(ids, true);
        loop {
            let ev = self.rx.as_mut()?.recv().await;
            match ev {
                None => {
                    self.rx = None;
                    // The engine dropped the request: it died (503), or lost it (500).
                    let e = match self.health.unavailable() {
                        Some(why) => ApiError::Unavailable(why),
                        None => ApiError::Internal("generation stopped unexpectedly".into()),
                    };
                    return Some(Err(e));
                }
                Some(Event::Error(e)) => {
                    self.rx = None;
                    return Some(Err(ApiError::Internal(format!("generation failed: {e}"))));
                }
                Some(Event::Done(f)) => {
                    let rest = match self.decoder.finish(&decode) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(ApiError::Internal(e.to_string()))),
                    };
                    let piece = match self.stops.push(&rest) {
                        Scan::Stop(t) => self.piece(t, Some("stop")),
                        Scan::Emit(mut t) => {
                            t.push_str(&self.stops.finish());
                            self.piece(t, Some(reason(f)))
                        }
                    };
                    return Some(Ok(piece));
                }
                Some(Event::Token(t)) => {
                    self.completion_tokens += 1;
                    let id = t.id;
                    self.tokens.push(t);
                    let text = match self.decoder.step(id, &decode) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(ApiError::Internal(e.to_string()))),
                    };
                    match self.stops.push(&text) {
                        Scan::Stop(t) => return Some(Ok(self.piece(t, Some("stop")))),
                        Scan::Emit(t) if !t.is_empty() => return Some(Ok(self.piece(t, None))),
                        Scan::Emit(_) => {}
                    }
                }
            }
        }
    }
}
