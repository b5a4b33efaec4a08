//! The causal language model: loading from a Hugging Face directory and the forward pass.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::attention::{Attention, AttentionInput, AttentionMask, KvSlot};
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::lora::Adapters;

/// One transformer block (`model.layers.{i}`).
#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// The `model.*` part of the checkpoint.
#[derive(Debug)]
pub struct LlamaModel {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

/// A Llama-family causal LM. Base weights are frozen (`requires_grad = false`); adapters are
/// passed into each forward call.
#[derive(Debug)]
pub struct CausalLm {
    pub config: ModelConfig,
    pub model: LlamaModel,
    /// `[vocab, hidden]`; the same tensor as `embed_tokens` when embeddings are tied.
    pub lm_head: Tensor,
    rope: Rope,
    kind: Kind,
    device: Device,
}

/// The KV cache of a batch of sequences, owned by the caller and passed to each forward call.
///
/// Keys and values are stored per layer as `[B, kv_heads, capacity, head_dim]` buffers (after
/// RoPE) whose first `columns()` columns are in use, so a decode step writes its column in place.
/// Rows of different lengths (ragged prefill, padding, rows joined later) share the buffers
/// right-aligned, with a `[B, columns]` mask of which columns hold real tokens; while every
/// column of every row is real (one sequence, or rows that started together without padding)
/// the mask is not kept and decoding needs none.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Columns in use (the longest row, padding included).
    cols: i64,
    /// Real tokens per row (one entry per row).
    lens: Vec<i64>,
    /// `[B, cols]` bool, true where a column holds a real token; `None` when all do.
    valid: Option<Tensor>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            cols: 0,
            lens: Vec::new(),
            valid: None,
        }
    }

    /// Columns held (the longest row, padding included).
    pub fn columns(&self) -> i64 {
        self.cols
    }

    /// Real tokens held per row.
    pub fn lengths(&self) -> Vec<i64> {
        self.lens.clone()
    }

    /// Rows held (0 for an empty cache).
    pub fn rows(&self) -> i64 {
        self.lens.len() as i64
    }

    /// Every column of every row holds a real token.
    fn dense(&self) -> bool {
        self.lens.iter().all(|&l| l == self.cols)
    }

    /// The validity mask `[B, cols]`, built when the cache is dense; `None` for an empty cache.
    fn valid_mask(&self, device: Device) -> Option<Tensor> {
        if self.lens.is_empty() {
            return None;
        }
        Some(match &self.valid {
            Some(v) => v.shallow_clone(),
            None => Tensor::ones([self.rows(), self.cols], (Kind::Bool, device)),
        })
    }

    /// Drops the mask once it says nothing (every column real).
    fn settle(&mut self) {
        if self.dense() {
            self.valid = None;
        }
    }

    /// Appends the rows of `other` after this cache's rows (continuous batching: a newly
    /// prefilled sequence joins a running batch). Rows stay right-aligned: the side with fewer
    /// columns is left-padded with invalid columns, which attention masks out and positions skip.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if other.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(
                "KV caches of different models".into(),
            ));
        }
        if other.lens.is_empty() {
            return Ok(());
        }
        if self.lens.is_empty() {
            *self = other;
            return Ok(());
        }
        if self.layers.iter().chain(&other.layers).any(Option::is_none) {
            return Err(ModelError::InvalidInput(
                "KV cache layers missing: both caches must have run a forward pass".into(),
            ));
        }
        let cols = self.cols.max(other.cols);
        let rows = self.rows() + other.rows();
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map_or(Device::Cpu, |(k, _)| k.device());
        let (Some(sv), Some(ov)) = (self.valid_mask(device), other.valid_mask(device)) else {
            return Ok(());
        };
        // Right-aligned: row block `part` lands in the last `part_cols` columns.
        let valid = Tensor::zeros([rows, cols], (Kind::Bool, device));
        valid
            .narrow(0, 0, self.rows())
            .narrow(1, cols - self.cols, self.cols)
            .copy_(&sv);
        valid
            .narrow(0, self.rows(), other.rows())
            .narrow(1, cols - other.cols, other.cols)
            .copy_(&ov);
        let capacity = crate::layers::attention::capacity_for(cols + 1);
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            let (Some((sk, svv)), Some((ok, ovv))) = (mine.take(), theirs) else {
                continue;
            };
            let join = |a: &Tensor, a_cols: i64, b: &Tensor, b_cols: i64| -> Tensor {
                let mut shape = a.size();
                shape[0] = rows;
                shape[2] = capacity;
                // Zeros, not garbage: padding columns are read (and masked) by attention.
                let out = Tensor::zeros(&shape, (a.kind(), a.device()));
                let na = a.size()[0];
                out.narrow(0, 0, na)
                    .narrow(2, cols - a_cols, a_cols)
                    .copy_(&a.narrow(2, 0, a_cols));
                out.narrow(0, na, rows - na)
                    .narrow(2, cols - b_cols, b_cols)
                    .copy_(&b.narrow(2, 0, b_cols));
                out
            };
            *mine = Some((
                join(&sk, self.cols, &ok, other.cols),
                join(&svv, self.cols, &ovv, other.cols),
            ));
        }
        self.lens.extend(other.lens);
        self.cols = cols;
        self.valid = Some(valid);
        self.settle();
        Ok(())
    }

    /// Drops leading columns no row uses (left after the longest rows left the batch).
    pub fn trim(&mut self) {
        let used = self.lens.iter().copied().max().unwrap_or(0);
        let drop = self.cols - used;
        if drop <= 0 {
            return;
        }
        if let Some(valid) = &self.valid {
            self.valid = Some(valid.narrow(1, drop, used));
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let cap = k.size()[2];
            *k = k.narrow(2, drop, cap - drop);
            *v = v.narrow(2, drop, cap - drop);
        }
        self.cols = used;
        self.settle();
    }

    /// Keeps only `rows` (in that order), e.g. to drop finished sequences from a batch.
    pub fn select_rows(&mut self, rows: &[i64]) {
        if self.lens.is_empty() {
            return;
        }
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else {
            return;
        };
        let idx = Tensor::from_slice(rows).to_device(device);
        if let Some(valid) = &self.valid {
            self.valid = Some(valid.index_select(0, &idx));
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, &idx);
            *v = v.index_select(0, &idx);
        }
        self.lens = rows
            .iter()
            .map(|&r| {
                usize::try_from(r)
                    .ok()
                    .and_then(|r| self.lens.get(r))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        self.settle();
    }
}

/// Logit elements the LM-head loss holds at once (16 MiB in fp32).
const HEAD_CHUNK_ELEMENTS: i64 = 1 << 22;

/// Token positions of one forward pass.
enum Positions {
    /// `start..start + len` in every row.
    Range(i64, i64),
    /// Per token (`[B, T]`), every one below the bound.
    Rows(Tensor, i64),
}

/// One forward call's input.
pub struct ForwardInput<'a> {
    /// Token ids `[B, T]` (int64).
    pub input_ids: &'a Tensor,
    /// `[B, T]` bool, false on padding; `None` when every token is real. Positions count only
    /// real tokens, so both left and right padding work.
    pub valid: Option<&'a Tensor>,
    /// The adapter(s) to apply.
    pub adapters: Adapters<'a>,
    /// Enables LoRA dropout.
    pub train: bool,
}

impl<'a> ForwardInput<'a> {
    /// Every token real, no adapter, inference mode.
    pub fn new(input_ids: &'a Tensor) -> Self {
        Self {
            input_ids,
            valid: None,
            adapters: Adapters::None,
            train: false,
        }
    }
}

impl CausalLm {
    /// Loads `DIR/config.json` and the safetensors weights in `kind` on `device`.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let files = SafetensorsFiles::open_model_dir(dir)?;
        Self::from_files(config, &files, kind, device)
    }

    pub fn from_files(
        config: ModelConfig,
        files: &SafetensorsFiles,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let c = &config;
        let h = c.hidden_size;
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let embed_tokens = files.tensor_with_shape(
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            kind,
            device,
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers as usize);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, i_f: i64, o_f: i64, bias: bool| {
                Linear::load(files, &format!("{p}.{name}"), i_f, o_f, bias, kind, device)
            };
            let norm = |name: &str, dim: i64| {
                RmsNorm::load(
                    files,
                    &format!("{p}.{name}"),
                    dim,
                    c.rms_norm_eps,
                    kind,
                    device,
                )
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(norm("self_attn.q_norm", c.head_dim)?),
                    Some(norm("self_attn.k_norm", c.head_dim)?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                self_attn: Attention::new(
                    lin("self_attn.q_proj", h, q_dim, c.qkv_bias)?,
                    lin("self_attn.k_proj", h, kv_dim, c.qkv_bias)?,
                    lin("self_attn.v_proj", h, kv_dim, c.qkv_bias)?,
                    lin("self_attn.o_proj", q_dim, h, c.o_bias)?,
                    q_norm,
                    k_norm,
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.head_dim,
                ),
                mlp: Mlp::new(
                    lin("mlp.gate_proj", h, c.intermediate_size, c.mlp_bias)?,
                    lin("mlp.up_proj", h, c.intermediate_size, c.mlp_bias)?,
                    lin("mlp.down_proj", c.intermediate_size, h, c.mlp_bias)?,
                ),
                input_layernorm: norm("input_layernorm", h)?,
                post_attention_layernorm: norm("post_attention_layernorm", h)?,
            });
        }
        let norm = RmsNorm::load(files, "model.norm", h, c.rms_norm_eps, kind, device)?;
        let lm_head = if c.tie_word_embeddings || !files.contains("lm_head.weight") {
            if !c.tie_word_embeddings {
                return Err(ModelError::MissingTensor {
                    name: "lm_head.weight".into(),
                });
            }
            embed_tokens.shallow_clone()
        } else {
            files.tensor_with_shape("lm_head.weight", &[c.vocab_size, h], kind, device)?
        };
        let rope = Rope::new(c, kind, device);
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            rope,
            kind,
            device,
            config,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.model.layers.len())
    }

    /// Final hidden states `[B, T, hidden]` (after the last norm). With a cache, the new tokens
    /// continue each row's cached sequence and are appended to the cache.
    pub fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run(input, cache, None)
    }

    fn run(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let size = input.input_ids.size();
        let [b, t] = size[..] else {
            return Err(ModelError::InvalidInput(format!(
                "input_ids must be [batch, seq], got {size:?}"
            )));
        };
        if let Some(v) = input.valid
            && v.size() != size
        {
            return Err(ModelError::InvalidInput(format!(
                "valid mask has shape {:?}, input_ids {size:?}",
                v.size()
            )));
        }
        if let Some(c) = cache.as_deref()
            && c.layers.len() != self.model.layers.len()
        {
            return Err(ModelError::InvalidInput(
                "KV cache built for another model".into(),
            ));
        }
        let dev = self.device;
        if let Some(c) = cache.as_deref()
            && c.rows() != 0
            && c.rows() != b
        {
            return Err(ModelError::InvalidInput(format!(
                "batch of {b} rows but the KV cache holds {}",
                c.rows()
            )));
        }
        let past = cache.as_deref().map_or(0, |c| c.cols);
        let dense = cache.as_deref().is_none_or(KvCache::dense);
        let (positions, mask) = if input.valid.is_none() && dense {
            // Every token real, before and now: positions are column numbers, shared by all rows.
            let mask = if past == 0 {
                AttentionMask::Causal
            } else if t == 1 {
                AttentionMask::Full
            } else {
                let cols = Tensor::arange(past + t, (Kind::Int64, dev)).unsqueeze(0);
                let rows = (Tensor::arange(t, (Kind::Int64, dev)) + past).unsqueeze(1);
                AttentionMask::Explicit(cols.le_tensor(&rows).view([1, 1, t, past + t]))
            };
            if let Some(c) = cache.as_deref_mut() {
                c.cols += t;
                c.lens = vec![past + t; b as usize];
            }
            (Positions::Range(past, t), mask)
        } else {
            let prev_valid = cache.as_deref().and_then(|c| c.valid_mask(dev));
            let prev_lens = cache
                .as_deref()
                .map(|c| c.lens.clone())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| vec![0; b as usize]);
            let (pos, key_valid, m, new_lens) = match input.valid {
                None if t == 1 => {
                    // One new real token per row: it sees every valid column and itself.
                    let pos = Tensor::from_slice(&prev_lens).to_device(dev).view([b, 1]);
                    let key_valid = match &prev_valid {
                        Some(v) => Tensor::cat(&[v, &Tensor::ones([b, 1], (Kind::Bool, dev))], 1),
                        None => Tensor::ones([b, 1], (Kind::Bool, dev)),
                    };
                    let m = key_valid.view([b, 1, 1, past + 1]);
                    let lens = prev_lens.iter().map(|l| l + 1).collect();
                    (pos, key_valid, m, lens)
                }
                _ => {
                    let new_valid = match input.valid {
                        Some(v) => v.to_device(dev).to_kind(Kind::Bool),
                        None => Tensor::ones([b, t], (Kind::Bool, dev)),
                    };
                    let prev_count = Tensor::from_slice(&prev_lens).to_device(dev).view([b, 1]);
                    let counts = new_valid.cumsum(1, Kind::Int64);
                    let pos = (&prev_count + &counts - 1).clamp_min(0);
                    let lens = if cache.is_some() {
                        let added = counts.select(1, t - 1).to_device(Device::Cpu);
                        let added = Vec::<i64>::try_from(added)
                            .map_err(|e| ModelError::InvalidInput(format!("valid mask: {e}")))?;
                        prev_lens.iter().zip(&added).map(|(p, a)| p + a).collect()
                    } else {
                        Vec::new()
                    };
                    let key_valid = match &prev_valid {
                        Some(v) => Tensor::cat(&[v, &new_valid], 1),
                        None => new_valid,
                    };
                    let cols = Tensor::arange(past + t, (Kind::Int64, dev)).unsqueeze(0);
                    let rows = (Tensor::arange(t, (Kind::Int64, dev)) + past).unsqueeze(1);
                    let causal = cols.le_tensor(&rows);
                    let own = cols.eq_tensor(&rows);
                    let m = causal
                        .unsqueeze(0)
                        .logical_and(&key_valid.unsqueeze(1).logical_or(&own.unsqueeze(0)))
                        .unsqueeze(1);
                    (pos, key_valid, m, lens)
                }
            };
            if let Some(c) = cache.as_deref_mut() {
                c.cols = past + t;
                c.lens = new_lens;
                c.valid = Some(key_valid);
                c.settle();
            }
            (Positions::Rows(pos, past + t), AttentionMask::Explicit(m))
        };
        self.layers_pass(
            &input.input_ids.to_device(dev),
            &positions,
            &mask,
            cache,
            keep,
            &input.adapters,
            input.train,
        )
    }

    /// Training without padding: `lengths` sequences packed back to back in `input_ids` (`[N]`,
    /// `N = sum(lengths)`), each attending causally to itself only, with its own positions.
    /// Returns final hidden states `[K, hidden]` at the packed indices `keep` (`[K]`). Equal to
    /// running the sequences padded in a batch, without computing the padding.
    pub fn hidden_states_packed(
        &self,
        input_ids: &Tensor,
        lengths: &[i64],
        adapters: &Adapters<'_>,
        train: bool,
        keep: &Tensor,
    ) -> Result<Tensor> {
        if !matches!(adapters, Adapters::None | Adapters::All(_)) {
            return Err(ModelError::InvalidInput(
                "packed sequences take one adapter for all (Adapters::None or Adapters::All)"
                    .into(),
            ));
        }
        let n = input_ids.size().first().copied().unwrap_or(0);
        if input_ids.dim() != 1
            || lengths.iter().sum::<i64>() != n
            || lengths.iter().any(|&l| l <= 0)
        {
            return Err(ModelError::InvalidInput(format!(
                "packed input_ids must be [sum(lengths)] with positive lengths, got {:?} and {lengths:?}",
                input_ids.size()
            )));
        }
        let pos: Vec<i64> = lengths.iter().flat_map(|&l| 0..l).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let positions = Positions::Rows(
            Tensor::from_slice(&pos).to_device(self.device).unsqueeze(0),
            longest,
        );
        let ids = input_ids.to_device(self.device).unsqueeze(0);
        let keep = keep.to_device(self.device).to_kind(Kind::Int64);
        self.layers_pass(
            &ids,
            &positions,
            &AttentionMask::Segments(lengths.to_vec()),
            None,
            Some(&keep),
            adapters,
            train,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layers_pass(
        &self,
        ids: &Tensor,
        positions: &Positions,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
        keep: Option<&Tensor>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (cos, sin) = match positions {
            Positions::Range(start, len) => self.rope.cos_sin_range(*start, *len),
            Positions::Rows(pos, bound) => self.rope.cos_sin(pos, *bound),
        };
        let ctx = AttentionInput {
            cos: &cos,
            sin: &sin,
            mask,
        };
        let new_cols = ids.size().get(1).copied().unwrap_or(0);
        let mut x = Tensor::embedding(&self.model.embed_tokens, ids, -1, false, false);
        let last = self.model.layers.len().saturating_sub(1);
        for (i, layer) in self.model.layers.iter().enumerate() {
            // `run` has already counted this pass's columns in the cache.
            let slot = cache.as_deref_mut().map(|c| KvSlot {
                past: c.cols - new_cols,
                buffers: &mut c.layers[i],
            });
            let h = layer.input_layernorm.forward(&x);
            if i == last
                && let Some(pos) = keep
            {
                // Every position is still a key/value, but only the kept ones need the
                // attention output, o_proj, the MLP and the final norm.
                let y = layer.self_attn.attend(i, &h, &ctx, slot, adapters, train)?;
                let width = y.size()[2];
                let y = y.view([-1, width]).index_select(0, pos);
                let hidden = x.size()[2];
                let xs = x.view([-1, hidden]).index_select(0, pos);
                let xs = &xs + layer.self_attn.project_out(i, &y, adapters, train)?;
                let h = layer.post_attention_layernorm.forward(&xs);
                let xs = &xs + layer.mlp.forward(i, &h, adapters, train)?;
                return Ok(self.model.norm.forward(&xs));
            }
            let a = layer
                .self_attn
                .forward(i, &h, &ctx, slot, adapters, train)?;
            // Out of place: the norm above needs `x` unchanged for backward.
            x = &x + a;
            let h = layer.post_attention_layernorm.forward(&x);
            x = &x + layer.mlp.forward(i, &h, adapters, train)?;
        }
        let out = self.model.norm.forward(&x);
        Ok(match keep {
            Some(pos) => {
                let hidden = out.size()[2];
                out.view([-1, hidden]).index_select(0, pos)
            }
            None => out,
        })
    }

    /// Final hidden states `[N, hidden]` at flat positions `b * T + t` only (training: the
    /// positions whose next token counts in the loss). Equal to gathering from
    /// [`Self::hidden_states`], but the last layer's o_proj, MLP and norm run only there.
    pub fn hidden_states_at(&self, input: &ForwardInput<'_>, positions: &Tensor) -> Result<Tensor> {
        let positions = positions.to_device(self.device).to_kind(Kind::Int64);
        // Per-row adapters (PerRow, Stacked) need whole rows; gather after the full pass instead.
        let prune = matches!(input.adapters, Adapters::None | Adapters::All(_));
        if prune {
            self.run(input, None, Some(&positions))
        } else {
            let h = self.run(input, None, None)?;
            let hidden = h.size()[2];
            Ok(h.view([-1, hidden]).index_select(0, &positions))
        }
    }

    /// Logits for hidden states of any leading shape (`[..., hidden] -> [..., vocab]`).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(&self.lm_head, None)
    }

    /// Summed token cross-entropy of the LM head's logits at `hidden` (`[N, hidden]`) against
    /// `targets` (`[N]`, int64, each in `0..vocab`), with `log_softmax` in fp32 as
    /// `transformers` computes it; with `grad`, also its gradient with respect to `hidden`
    /// (`[N, hidden]`, in `hidden`'s kind): `(softmax(logits) - onehot(target)) · lm_head`.
    ///
    /// Runs a few rows at a time, so the `[N, vocab]` logits, their log-softmax and their
    /// gradient never exist whole (with a large vocabulary they dominate a training step's
    /// memory and, allocated fresh each step, its page faults), and each chunk's logits are
    /// still in cache when their gradient is formed. The head is frozen: no weight gradient.
    /// Call it outside autograd (on a detached `hidden`) and backpropagate the gradient into
    /// the layers, e.g. through `(hidden * grad).sum()`.
    pub fn head_cross_entropy(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
        grad: bool,
    ) -> Result<(f64, Option<Tensor>)> {
        let size = hidden.size();
        let (n, vocab) = (size.first().copied().unwrap_or(0), self.config.vocab_size);
        if hidden.dim() != 2 || targets.size() != [n] {
            return Err(ModelError::InvalidInput(format!(
                "head_cross_entropy takes hidden [N, hidden] and targets [N], got {size:?} and {:?}",
                targets.size()
            )));
        }
        let rows = (HEAD_CHUNK_ELEMENTS / vocab.max(1)).max(16);
        let targets = targets.f_to_device(self.device)?.f_to_kind(Kind::Int64)?;
        let mut out = if grad {
            Some(hidden.f_empty_like()?)
        } else {
            None
        };
        let mut loss = 0.0;
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let h = hidden.f_narrow(0, start, len)?;
            let t = targets.f_narrow(0, start, len)?.f_unsqueeze(1)?;
            let logits = h.f_linear::<Tensor>(&self.lm_head, None)?;
            let mut lsm = logits.f_log_softmax(-1, Kind::Float)?;
            drop(logits);
            loss -= lsm
                .f_gather(1, &t, false)?
                .f_sum(Kind::Double)?
                .f_double_value(&[])?;
            if let Some(out) = out.as_mut() {
                let mut probs = lsm.f_exp_()?;
                let minus_one = Tensor::f_full([len, 1], -1.0, (Kind::Float, self.device))?;
                let _ = probs.f_scatter_add_(1, &t, &minus_one)?;
                let g = probs
                    .f_to_kind(self.lm_head.kind())?
                    .f_matmul(&self.lm_head)?;
                out.f_narrow(0, start, len)?.f_copy_(&g)?;
            }
            start += len;
        }
        Ok((loss, out))
    }

    /// Logits `[B, T, vocab]` for every input position.
    pub fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden_states(input, cache)?;
        Ok(self.logits(&h))
    }
}
