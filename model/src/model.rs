//! The causal language model: loading from a Hugging Face directory and the forward pass.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::attention::{Attention, AttentionInput, AttentionMask};
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
/// Keys and values are stored per layer as `[B, kv_heads, S, head_dim]` (after RoPE) together
/// with a `[B, S]` mask of which columns hold real tokens, so rows of different lengths (ragged
/// prefill, padding) share one tensor.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    valid: Option<Tensor>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            valid: None,
        }
    }

    /// Columns held (the longest row, padding included).
    pub fn columns(&self) -> i64 {
        self.valid.as_ref().map_or(0, |v| v.size()[1])
    }

    /// Real tokens held per row.
    pub fn lengths(&self) -> Vec<i64> {
        match &self.valid {
            None => Vec::new(),
            Some(v) => {
                Vec::<i64>::try_from(v.sum_dim_intlist(1, false, Kind::Int64)).unwrap_or_default()
            }
        }
    }

    /// Rows held (0 for an empty cache).
    pub fn rows(&self) -> i64 {
        self.valid.as_ref().map_or(0, |v| v.size()[0])
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
        let Some(ov) = other.valid else { return Ok(()) };
        let Some(sv) = self.valid.take() else {
            *self = Self {
                layers: other.layers,
                valid: Some(ov),
            };
            return Ok(());
        };
        let (s_cols, o_cols) = (sv.size()[1], ov.size()[1]);
        let cols = s_cols.max(o_cols);
        let pad = |t: &Tensor, dim: i64| -> Tensor {
            let have = t.size()[dim as usize];
            if have == cols {
                return t.shallow_clone();
            }
            let mut shape = t.size();
            shape[dim as usize] = cols - have;
            Tensor::cat(&[&Tensor::zeros(&shape, (t.kind(), t.device())), t], dim)
        };
        self.valid = Some(Tensor::cat(&[pad(&sv, 1), pad(&ov, 1)], 0));
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((sk, sv)), Some((ok, ov))) => Some((
                    Tensor::cat(&[pad(&sk, 2), pad(&ok, 2)], 0),
                    Tensor::cat(&[pad(&sv, 2), pad(&ov, 2)], 0),
                )),
                _ => {
                    return Err(ModelError::InvalidInput(
                        "KV cache layers missing: both caches must have run a forward pass".into(),
                    ));
                }
            };
        }
        Ok(())
    }

    /// Drops leading columns no row uses (left after the longest rows left the batch).
    pub fn trim(&mut self) {
        let Some(valid) = &self.valid else { return };
        let cols = valid.size()[1];
        let used = Vec::<i64>::try_from(valid.sum_dim_intlist(1, false, Kind::Int64))
            .unwrap_or_default()
            .into_iter()
            .max()
            .unwrap_or(cols);
        let drop = cols - used;
        if drop <= 0 {
            return;
        }
        self.valid = Some(valid.narrow(1, drop, used));
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, drop, used);
            *v = v.narrow(2, drop, used);
        }
    }

    /// Keeps only `rows` (in that order), e.g. to drop finished sequences from a batch.
    pub fn select_rows(&mut self, rows: &[i64]) {
        let Some(valid) = &self.valid else { return };
        let idx = Tensor::from_slice(rows).to_device(valid.device());
        self.valid = Some(valid.index_select(0, &idx));
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, &idx);
            *v = v.index_select(0, &idx);
        }
    }
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
        let rope = Rope::new(c, device);
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
        let prev_valid = cache
            .as_deref()
            .and_then(|c| c.valid.as_ref().map(|v| v.shallow_clone()));
        if let Some(pv) = &prev_valid
            && pv.size()[0] != b
        {
            return Err(ModelError::InvalidInput(format!(
                "batch of {b} rows but the KV cache holds {}",
                pv.size()[0]
            )));
        }
        let (positions, mask) = if cache.is_none() && input.valid.is_none() {
            let pos = Tensor::arange(t, (Kind::Int64, dev))
                .unsqueeze(0)
                .expand([b, t], true);
            (pos, AttentionMask::Causal)
        } else {
            let new_valid = match input.valid {
                Some(v) => v.to_device(dev).to_kind(Kind::Bool),
                None => Tensor::ones([b, t], (Kind::Bool, dev)),
            };
            let s = prev_valid.as_ref().map_or(0, |v| v.size()[1]);
            let prev_count = match &prev_valid {
                Some(v) => v.sum_dim_intlist(1, true, Kind::Int64),
                None => Tensor::zeros([b, 1], (Kind::Int64, dev)),
            };
            let pos = (prev_count + new_valid.cumsum(1, Kind::Int64) - 1).clamp_min(0);
            let key_valid = match &prev_valid {
                Some(v) => Tensor::cat(&[v, &new_valid], 1),
                None => new_valid,
            };
            let cols = Tensor::arange(s + t, (Kind::Int64, dev)).unsqueeze(0);
            let rows = (Tensor::arange(t, (Kind::Int64, dev)) + s).unsqueeze(1);
            let causal = cols.le_tensor(&rows);
            let own = cols.eq_tensor(&rows);
            let m = causal
                .unsqueeze(0)
                .logical_and(&key_valid.unsqueeze(1).logical_or(&own.unsqueeze(0)));
            if let Some(c) = cache.as_deref_mut() {
                c.valid = Some(key_valid);
            }
            (pos, AttentionMask::Explicit(m.unsqueeze(1)))
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
        let positions = Tensor::from_slice(&pos).to_device(self.device).unsqueeze(0);
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
        positions: &Tensor,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
        keep: Option<&Tensor>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (cos, sin) = self.rope.cos_sin(positions, self.kind);
        let ctx = AttentionInput {
            cos: &cos,
            sin: &sin,
            mask,
        };
        let mut x = Tensor::embedding(&self.model.embed_tokens, ids, -1, false, false);
        let last = self.model.layers.len().saturating_sub(1);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
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

    /// Logits `[B, T, vocab]` for every input position.
    pub fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden_states(input, cache)?;
        Ok(self.logits(&h))
    }
}
