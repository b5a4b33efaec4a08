//! The scheduler: one thread owns the model and the running batch's KV cache. New requests are
//! prefilled alone and join the batch between decode steps (continuous batching); each decode
//! step runs every row in one forward pass, with per-row adapter selection. A request whose
//! receiver is gone (client disconnect, stop string found) leaves the batch at the next step.
//!
//! Each scheduler step runs inside an unwind boundary: a panic (a failing libtorch op) marks the
//! engine dead in [`EngineHealth`] before the batch is dropped, so every waiting request sees a
//! closed channel while the probes already report the death (no `process::exit` here).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailor_model::{Adapters, CausalLm, ForwardInput, KvCache, LoraAdapter, StackedAdapters};
use tch::{Kind, Tensor};
use tokio::sync::mpsc;

use crate::health::EngineHealth;

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: Option<u64>,
}

/// A loaded adapter as a request carries it: a handle sharing the registry's tensors.
pub struct AdapterRef {
    /// Unique per load (a reloaded adapter gets a new id).
    pub id: u64,
    pub name: String,
    pub weights: LoraAdapter,
}

/// One generation job.
pub struct GenRequest {
    pub prompt: Vec<i64>,
    pub adapter: Option<AdapterRef>,
    /// At least 1.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// `Some(k)`: report each chosen token's logprob and the top `k` alternatives.
    pub logprobs: Option<usize>,
    /// Keep generating past end-of-sequence tokens (benchmarks; vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    /// The answer must be exactly one of these token sequences (vLLM's structured-output
    /// `choice`); it ends when it is one and no longer choice continues it.
    pub choices: Option<Vec<Vec<i64>>>,
    pub tx: mpsc::UnboundedSender<Event>,
}

#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

#[derive(Debug)]
pub enum Event {
    Token(TokenOut),
    Done(Finish),
    Error(String),
}

/// Requests per adapter name (the LoRA metric's labels).
pub type AdapterCounts = BTreeMap<String, usize>;

/// What the engine is doing, for `/metrics` (the Inference Extension's signals among them).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Requests submitted and not yet taken by the scheduler.
    pub waiting: AtomicUsize,
    /// Tokens (prompt and generated) the running batch holds in its KV cache.
    pub kv_tokens: AtomicU64,
    /// Batched decode forward passes, and the rows they decoded (rows / steps = mean batch).
    pub decode_steps: AtomicU64,
    pub decoded_rows: AtomicU64,
    /// Adapters of the running rows and of the waiting requests.
    pub running_adapters: Mutex<AdapterCounts>,
    pub waiting_adapters: Mutex<AdapterCounts>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EngineStats {
    /// A request is about to be queued for the engine.
    pub fn submitted(&self, adapter: Option<&str>) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Some(a) = adapter {
            *lock(&self.waiting_adapters)
                .entry(a.to_string())
                .or_default() += 1;
        }
    }

    /// A queued request left the queue (taken by the scheduler, or never delivered).
    pub fn dequeued(&self, adapter: Option<&str>) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_sub(1));
        if let Some(a) = adapter {
            let mut w = lock(&self.waiting_adapters);
            if let Some(n) = w.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    w.remove(a);
                }
            }
        }
    }

    pub fn running_adapters(&self) -> AdapterCounts {
        lock(&self.running_adapters).clone()
    }

    pub fn waiting_adapters(&self) -> AdapterCounts {
        lock(&self.waiting_adapters).clone()
    }

    fn publish_batch(&self, rows: &[Row]) {
        self.running.store(rows.len(), Ordering::Relaxed);
        self.kv_tokens
            .store(rows.iter().map(|r| r.total as u64).sum(), Ordering::Relaxed);
        let mut counts = AdapterCounts::new();
        for r in rows {
            if let Some(a) = &r.req.adapter {
                *counts.entry(a.name.clone()).or_default() += 1;
            }
        }
        *lock(&self.running_adapters) = counts;
    }
}

struct Row {
    req: GenRequest,
    rng: StdRng,
    generated: usize,
    total: usize,
    last: i64,
    /// The tokens generated so far, kept for a constrained choice only.
    out: Vec<i64>,
}

pub struct Engine {
    pub model: CausalLm,
    pub eos: Vec<i64>,
    pub max_batch: usize,
    pub max_seq: usize,
    pub stats: Arc<EngineStats>,
    pub health: Arc<EngineHealth>,
    /// TEST-ONLY fault injection: panic at this decode step (0: never).
    pub panic_at_step: Arc<AtomicU64>,
}

/// The scheduler's state between steps.
struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
    pending: Vec<GenRequest>,
    /// Adapters packed for the current batch composition; `epoch` changes with it.
    stacked: Option<(u64, StackedAdapters)>,
    epoch: u64,
    threads: Threads,
}

enum Next {
    Continue,
    /// Every sender is gone: the server is shutting down.
    Stop,
}

impl Engine {
    /// Runs until every sender of `rx` is gone, or until a step panics (the engine is then
    /// marked dead, and the batch dropped so its requests see their channels close).
    pub fn run(self, mut rx: mpsc::Receiver<GenRequest>) {
        let _guard = tch::no_grad_guard();
        let mut batch = Batch {
            rows: Vec::new(),
            cache: self.model.new_cache(),
            pending: Vec::new(),
            stacked: None,
            epoch: 0,
            threads: Threads::new(&self.model),
        };
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.step(&mut batch, &mut rx))) {
                Ok(Next::Continue) => {}
                Ok(Next::Stop) => return,
                Err(payload) => {
                    let why = panic_message(payload.as_ref());
                    tracing::error!(error = %why, "the inference engine panicked; it is dead");
                    self.health.died(format!("engine panicked: {why}"));
                    self.stats.publish_batch(&[]);
                    return;
                }
            }
        }
    }

    fn take(&self, req: GenRequest, batch: &mut Batch) {
        self.stats
            .dequeued(req.adapter.as_ref().map(|a| a.name.as_str()));
        batch.pending.push(req);
    }

    fn step(&self, b: &mut Batch, rx: &mut mpsc::Receiver<GenRequest>) -> Next {
        self.stats.publish_batch(&b.rows);
        if b.rows.is_empty() && b.pending.is_empty() {
            match rx.blocking_recv() {
                Some(r) => self.take(r, b),
                None => return Next::Stop,
            }
        }
        while b.rows.len() + b.pending.len() < self.max_batch {
            match rx.try_recv() {
                Ok(r) => self.take(r, b),
                Err(_) => break,
            }
        }
        // Rows whose client is gone leave the batch.
        let keep: Vec<usize> = (0..b.rows.len())
            .filter(|&i| !b.rows[i].req.tx.is_closed())
            .collect();
        if keep.len() != b.rows.len() {
            self.keep_rows(&mut b.rows, &mut b.cache, &keep);
            b.epoch += 1;
        }
        if !b.pending.is_empty() {
            b.epoch += 1;
        }
        for req in std::mem::take(&mut b.pending) {
            if req.tx.is_closed() {
                continue;
            }
            b.threads.fit(req.prompt.len());
            if let Some((row, row_cache)) = self.prefill(req) {
                if let Err(e) = b.cache.append_rows(row_cache) {
                    let _ = row.req.tx.send(Event::Error(e.to_string()));
                    continue;
                }
                b.rows.push(row);
            }
        }
        self.stats.publish_batch(&b.rows);
        if b.rows.is_empty() {
            b.cache = self.model.new_cache();
            b.stacked = None;
            return Next::Continue;
        }
        let step = self.stats.decode_steps.fetch_add(1, Ordering::Relaxed) + 1;
        let at = self.panic_at_step.load(Ordering::Relaxed);
        if at > 0 && step >= at {
            // TEST-ONLY (faultInjection.enginePanicAtStep): what a failing libtorch op does.
            panic!("test-only fault injection: engine panic at decode step {step}");
        }
        self.stats
            .decoded_rows
            .fetch_add(b.rows.len() as u64, Ordering::Relaxed);
        let before = b.rows.len();
        b.threads.fit(b.rows.len());
        let result = self.decode(&mut b.rows, &mut b.cache, &mut b.stacked, b.epoch);
        if b.rows.len() != before {
            b.epoch += 1;
        }
        if let Err(e) = result {
            for r in b.rows.drain(..) {
                let _ = r.req.tx.send(Event::Error(e.clone()));
            }
            b.cache = self.model.new_cache();
        }
        Next::Continue
    }

    fn keep_rows(&self, rows: &mut Vec<Row>, cache: &mut KvCache, keep: &[usize]) {
        if keep.is_empty() {
            rows.clear();
            *cache = self.model.new_cache();
            return;
        }
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        cache.select_rows(&idx);
        cache.trim();
        let mut old: Vec<Option<Row>> = rows.drain(..).map(Some).collect();
        for &i in keep {
            if let Some(r) = old[i].take() {
                rows.push(r);
            }
        }
    }

    /// Prefills one request alone; sends its first token. `None` when it is already finished.
    fn prefill(&self, req: GenRequest) -> Option<(Row, KvCache)> {
        let mut c = self.model.new_cache();
        let ids = Tensor::from_slice(&req.prompt).view([1, -1]);
        let adapters = match &req.adapter {
            Some(a) => Adapters::All(&a.weights),
            None => Adapters::None,
        };
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(&ids)
        };
        let logits = match self.model.forward(&input, Some(&mut c)) {
            Ok(l) => l.select(1, -1),
            Err(e) => {
                let _ = req.tx.send(Event::Error(e.to_string()));
                return None;
            }
        };
        let rng = match req.sampling.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let total = req.prompt.len();
        let mut row = Row {
            req,
            rng,
            generated: 0,
            total,
            last: 0,
            out: Vec::new(),
        };
        let argmax = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap_or_default();
        let lp = needs_logprobs(std::slice::from_ref(&row)).then(|| log_probs(&logits));
        if self.emit(
            &mut row,
            lp.as_ref(),
            0,
            argmax.first().copied().unwrap_or(0),
        ) {
            Some((row, c))
        } else {
            None
        }
    }

    fn decode(
        &self,
        rows: &mut Vec<Row>,
        cache: &mut KvCache,
        stacked: &mut Option<(u64, StackedAdapters)>,
        epoch: u64,
    ) -> Result<(), String> {
        let last: Vec<i64> = rows.iter().map(|r| r.last).collect();
        let ids = Tensor::from_slice(&last).view([-1, 1]);
        let sel: Vec<Option<&LoraAdapter>> = rows
            .iter()
            .map(|r| r.req.adapter.as_ref().map(|a| &a.weights))
            .collect();
        let key: Vec<u64> = rows
            .iter()
            .map(|r| r.req.adapter.as_ref().map_or(0, |a| a.id))
            .collect();
        let same = key.iter().all(|k| *k == key[0]);
        let adapters = match (same, sel[0]) {
            (true, None) => Adapters::None,
            (true, Some(a)) => Adapters::All(a),
            (false, _) => {
                // Packed once per batch composition, reused by every decode step until it changes.
                if stacked.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    *stacked = None;
                    let st = StackedAdapters::new(&sel, self.model.device())
                        .map_err(|e| e.to_string())?;
                    *stacked = Some((epoch, st));
                }
                match stacked.as_ref() {
                    Some((_, st)) => Adapters::Stacked(st),
                    None => Adapters::PerRow(&sel),
                }
            }
        };
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(&ids)
        };
        let logits = self
            .model
            .forward(&input, Some(cache))
            .map_err(|e| e.to_string())?
            .select(1, -1);
        let argmax = Vec::<i64>::try_from(logits.argmax(-1, false)).map_err(|e| e.to_string())?;
        // Greedy rows without logprobs need only the argmax.
        let lp = needs_logprobs(rows).then(|| log_probs(&logits));
        let mut keep = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            if self.emit(row, lp.as_ref(), i as i64, argmax[i]) {
                keep.push(i);
            }
        }
        if keep.len() != rows.len() {
            self.keep_rows(rows, cache, &keep);
        }
        Ok(())
    }

    /// Picks and sends row `i`'s next token; false when the row is finished.
    fn emit(&self, row: &mut Row, lp: Option<&Tensor>, i: i64, argmax: i64) -> bool {
        let s = row.req.sampling;
        let values: Vec<f32> = match lp {
            Some(lp) if row.needs_logprobs() => {
                Vec::<f32>::try_from(lp.get(i).to_device(tch::Device::Cpu)).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let token = match &row.req.choices {
            Some(choices) => {
                let (mut allowed, complete) = choice_step(choices, &row.out);
                if complete {
                    allowed.extend(self.eos.first());
                }
                match constrained(&values, &allowed, s, &mut row.rng) {
                    Some(t) => t,
                    None => {
                        let _ = row.req.tx.send(Event::Done(Finish::Stop));
                        return false;
                    }
                }
            }
            None if s.temperature > 0.0 && !values.is_empty() => {
                sample(&values, s.temperature, s.top_p, &mut row.rng)
            }
            None => argmax,
        };
        let (logprob, top) = match row.req.logprobs {
            Some(k) if !values.is_empty() => {
                let chosen = values
                    .get(token as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY);
                (chosen, top_k(&values, k))
            }
            _ => (0.0, Vec::new()),
        };
        row.generated += 1;
        row.total += 1;
        row.last = token;
        if row.req.choices.is_some() {
            row.out.push(token);
        }
        let sent = row.req.tx.send(Event::Token(TokenOut {
            id: token as u32,
            logprob,
            top,
        }));
        if sent.is_err() {
            return false;
        }
        // A constrained row ends on a whole choice that no longer one continues, or on an
        // end-of-sequence token it was allowed (ignore_eos does not apply to it).
        let chosen = row
            .req
            .choices
            .as_ref()
            .is_some_and(|c| choice_step(c, &row.out) == (Vec::new(), true));
        let eos = (!row.req.ignore_eos || row.req.choices.is_some()) && self.eos.contains(&token);
        let finish = if chosen || eos {
            Some(Finish::Stop)
        } else if row.generated >= row.req.max_tokens || row.total >= self.max_seq {
            Some(Finish::Length)
        } else {
            None
        };
        if let Some(f) = finish {
            let _ = row.req.tx.send(Event::Done(f));
            return false;
        }
        true
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Below this many multiply-adds a forward pass runs on one thread. Smaller work (decode steps
/// of a small model, even at batch 16-32: a millisecond or two on one core) costs more in
/// fork/join and spin-waiting than splitting saves, and it leaves the other cores to the HTTP
/// side; far more so when other processes compete for the cores, as idle OpenMP workers spin
/// on a barrier while the thread they wait for is descheduled. Measured on 2 shared cores:
/// a 3M-parameter model decoded 16 rows faster on one thread than on two.
const PARALLEL_MIN_MACS: i64 = 128 << 20;

/// libtorch's intra-op thread count for the engine thread, chosen per forward pass by its size.
struct Threads {
    /// The configured count (`--threads`, or libtorch's default).
    full: i32,
    current: i32,
    macs_per_token: i64,
    /// On a GPU the CPU threads only launch kernels: left alone.
    gpu: bool,
}

impl Threads {
    fn new(model: &CausalLm) -> Self {
        let full = tch::get_num_threads().max(1);
        Self {
            full,
            current: full,
            macs_per_token: model.config.macs_per_token().max(1),
            gpu: model.device().is_cuda(),
        }
    }

    /// Sets the thread count for a pass over `tokens` tokens (only on CPU; a change only).
    fn fit(&mut self, tokens: usize) {
        if self.gpu {
            return;
        }
        let work = self.macs_per_token.saturating_mul(tokens as i64);
        let want = if work < PARALLEL_MIN_MACS {
            1
        } else {
            self.full
        };
        if want != self.current {
            tch::set_num_threads(want);
            self.current = want;
        }
    }
}

impl Row {
    /// Sampling and logprobs read the whole distribution; greedy decoding needs the argmax only.
    fn needs_logprobs(&self) -> bool {
        self.req.sampling.temperature > 0.0
            || self.req.logprobs.is_some()
            || self.req.choices.is_some()
    }
}

fn needs_logprobs(rows: &[Row]) -> bool {
    rows.iter().any(Row::needs_logprobs)
}

/// Log-probabilities `[B, vocab]` in fp32.
fn log_probs(logits: &Tensor) -> Tensor {
    logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float)
}

/// The `k` most likely tokens, most likely first (ties: lower id first, as torch.topk on CPU).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| (i as u32, values[i]))
        .collect()
}

/// Constrained choice: the tokens that keep `out` on the way to one of `choices` (each once,
/// in first-seen order), and whether `out` already is one of them.
pub fn choice_step(choices: &[Vec<i64>], out: &[i64]) -> (Vec<i64>, bool) {
    let mut next = Vec::new();
    let mut complete = false;
    for c in choices.iter().filter(|c| c.starts_with(out)) {
        match c.get(out.len()) {
            Some(t) if !next.contains(t) => next.push(*t),
            Some(_) => {}
            None => complete = true,
        }
    }
    (next, complete)
}

/// The next token among `allowed` only: the most likely one (greedy), or sampled from the
/// model's distribution renormalised over them. `None` when nothing is allowed.
fn constrained(logprobs: &[f32], allowed: &[i64], s: Sampling, rng: &mut StdRng) -> Option<i64> {
    let lp = |t: i64| {
        usize::try_from(t)
            .ok()
            .and_then(|i| logprobs.get(i))
            .copied()
            .unwrap_or(f32::NEG_INFINITY)
    };
    if s.temperature > 0.0 {
        let masked: Vec<f32> = allowed.iter().map(|&t| lp(t)).collect();
        if masked.iter().all(|l| *l == f32::NEG_INFINITY) {
            return allowed.first().copied();
        }
        let i = sample(&masked, s.temperature, s.top_p, rng);
        return allowed.get(i as usize).copied();
    }
    // The lowest id among equally likely tokens, as argmax does.
    allowed.iter().copied().reduce(|best, t| {
        let (a, b) = (lp(t), lp(best));
        if a > b || (a == b && t < best) {
            t
        } else {
            best
        }
    })
}

/// Samples from `softmax(logprobs / temperature)` restricted to the top-p nucleus.
fn sample(logprobs: &[f32], temperature: f64, top_p: f64, rng: &mut StdRng) -> i64 {
    let scaled: Vec<f64> = logprobs.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(usize, f64)> = scaled
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (l - max).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    for p in &mut probs {
        p.1 /= sum;
    }
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = Vec::new();
    let mut cum = 0.0;
    for p in probs {
        kept.push(p);
        cum += p.1;
        if cum >= top_p {
            break;
        }
    }
    let total: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * total;
    for (i, p) in &kept {
        r -= p;
        if r <= 0.0 {
            return *i as i64;
        }
    }
    kept.last().map_or(0, |p| p.0 as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_allows_the_tokens_that_continue_some_choice_and_ends_on_a_whole_one() {
        let choices = vec![vec![1, 2, 3], vec![1, 2, 4], vec![1, 5], vec![1, 2]];
        assert_eq!(choice_step(&choices, &[]), (vec![1], false));
        assert_eq!(choice_step(&choices, &[1]), (vec![2, 5], false));
        // [1, 2] is a choice, and two longer ones continue it.
        assert_eq!(choice_step(&choices, &[1, 2]), (vec![3, 4], true));
        assert_eq!(choice_step(&choices, &[1, 2, 4]), (vec![], true));
        assert_eq!(choice_step(&choices, &[7]), (vec![], false));
    }

    #[test]
    fn constrained_picks_the_likeliest_allowed_token_or_samples_among_the_allowed_only() {
        let lp = [-0.1f32, -5.0, -2.0, -2.0, -0.5];
        let greedy = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
        };
        let mut rng = StdRng::seed_from_u64(1);
        // Token 0 is the likeliest overall, but not allowed.
        assert_eq!(constrained(&lp, &[1, 3, 2], greedy, &mut rng), Some(2));
        assert_eq!(constrained(&lp, &[], greedy, &mut rng), None);
        let hot = Sampling {
            temperature: 1.0,
            ..greedy
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(constrained(&lp, &[1, 4], hot, &mut rng).expect("a token"));
        }
        assert_eq!(seen, [1, 4].into_iter().collect());
    }
}
