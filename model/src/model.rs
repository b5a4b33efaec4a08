//! The causal language model: loading from a Hugging Face directory and the forward pass. One
//! decoder block serves every family; what differs is read from [`ModelConfig`] (norm style,
//! sandwich norms, activation, fused projections, RoPE per layer type, windows, soft-capping).
//!
//! Size (about 800 lines): the loader and the forward pass of the one decoder block every family
//! shares; per-family differences are data in [`ModelConfig`].

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::SafetensorsFiles;
use crate::config::{LayerType, ModelConfig, ProjectionLayout};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::layers::attention::{Attention, AttentionInput, AttentionMask, Heads, KvSlot};
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::moe::SparseMoe;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::lora::Adapters;
use crate::masks;
use crate::training::DropoutSeeds;

/// The MLP of one block: dense, or a mixture of experts.
#[derive(Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Self::Dense(m) => m.forward(layer, x, adapters, train),
            Self::Sparse(m) => Ok(m.forward(x)),
        }
    }
}

/// One transformer block (`model.layers.{i}`).
#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: FeedForward,
    pub input_layernorm: RmsNorm,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention output.
    pub post_attention_layernorm: RmsNorm,
    /// Gemma only.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
}

impl DecoderLayer {
    /// The MLP's `down_proj` weight (stacked over experts in a sparse layer).
    pub fn mlp_down_weight(&self) -> &Tensor {
        match &self.mlp {
            FeedForward::Dense(m) => &m.down_proj.weight,
            FeedForward::Sparse(m) => &m.down,
        }
    }

    /// The rest of the block after attention: `x` is the block's input, `a` the attention
    /// output after `o_proj` (both `[..., hidden]`).
    fn after_attention(
        &self,
        layer: usize,
        x: &Tensor,
        a: Tensor,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        // Out of place: the norms need `x` unchanged for backward.
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = x + self.post_attention_layernorm.forward(&a);
                let m = self.mlp.forward(layer, &pre.forward(&x), adapters, train)?;
                Ok(&x + post.forward(&m))
            }
            _ => {
                let x = x + a;
                let h = self.post_attention_layernorm.forward(&x);
                Ok(&x + self.mlp.forward(layer, &h, adapters, train)?)
            }
        }
    }
}

/// The `model.*` part of the checkpoint.
#[derive(Debug)]
pub struct LlamaModel {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

/// A causal LM of any supported family. Base weights are frozen (`requires_grad = false`);
/// adapters are passed into each forward call.
#[derive(Debug)]
pub struct CausalLm {
    pub config: ModelConfig,
    pub model: LlamaModel,
    /// `[vocab, hidden]`; the same tensor as `embed_tokens` when embeddings are tied.
    pub lm_head: Tensor,
    /// The full-attention layers' RoPE, then the sliding layers' when it differs.
    ropes: Vec<Rope>,
    /// 0-dim, in the model's kind (Gemma's √hidden, rounded as `transformers` rounds it).
    embed_scale: Option<Tensor>,
    kind: Kind,
    device: Device,
}

/// Logit elements the LM-head loss holds at once: 16 MiB in fp32 on the CPU (cache-sized); on
/// a GPU 256 MiB, so a chunk is thousands of rows and a step a handful of kernels, not hundreds.
const HEAD_CHUNK_ELEMENTS: i64 = 1 << 22;
const HEAD_CHUNK_ELEMENTS_GPU: i64 = 1 << 26;

/// Token positions of one forward pass.
pub(crate) enum Positions {
    /// `start..start + len` in every row.
    Range(i64, i64),
    /// Per token (`[B, T]`), every one below the bound.
    Rows(Tensor, i64),
    /// One row of sequences of these lengths back to back (`[1, N]` positions).
    Packed(Tensor, Vec<i64>),
}

/// The masks of one pass: full-attention layers', and sliding layers' where it differs.
pub(crate) struct PassMasks {
    full: AttentionMask,
    sliding: Option<AttentionMask>,
}

/// A packed pass's inputs on the model's device (see [`CausalLm::hidden_states_packed`]).
pub(crate) struct PackedPass {
    /// `[1, N]`
    pub(crate) ids: Tensor,
    pub(crate) positions: Positions,
    pub(crate) masks: PassMasks,
    /// `[K]` int64
    pub(crate) keep: Tensor,
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

fn load_layer(
    c: &ModelConfig,
    files: &SafetensorsFiles,
    i: i64,
    kind: Kind,
    device: Device,
) -> Result<DecoderLayer> {
    let h = c.hidden_size;
    let q_dim = c.num_attention_heads * c.head_dim;
    let kv_dim = c.num_key_value_heads * c.head_dim;
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
            c.norm_style,
            kind,
            device,
        )
    };
    let qk_norm = if c.qk_norm {
        Some((
            norm("self_attn.q_norm", c.head_dim)?,
            norm("self_attn.k_norm", c.head_dim)?,
        ))
    } else {
        None
    };
    let heads = Heads {
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        scale: c.attention_scale,
        softcap: c.attn_logit_softcap,
    };
    let o_proj = lin("self_attn.o_proj", q_dim, h, c.o_bias)?;
    let self_attn = match c.layout {
        ProjectionLayout::Separate => Attention::from_separate(
            [
                lin("self_attn.q_proj", h, q_dim, c.qkv_bias)?,
                lin("self_attn.k_proj", h, kv_dim, c.qkv_bias)?,
                lin("self_attn.v_proj", h, kv_dim, c.qkv_bias)?,
            ],
            o_proj,
            qk_norm,
            heads,
        ),
        ProjectionLayout::Fused => Attention::from_fused(
            lin("self_attn.qkv_proj", h, q_dim + 2 * kv_dim, c.qkv_bias)?,
            o_proj,
            qk_norm,
            heads,
        ),
    };
    let sparse = c
        .moe
        .as_ref()
        .filter(|m| m.sparse_layers.get(i as usize).copied().unwrap_or(false));
    let mlp = match (sparse, c.layout) {
        (Some(moe), _) => FeedForward::Sparse(SparseMoe::load(
            files,
            &format!("{p}.mlp"),
            c,
            moe,
            kind,
            device,
        )?),
        (None, ProjectionLayout::Separate) => FeedForward::Dense(Mlp::from_separate(
            lin("mlp.gate_proj", h, c.intermediate_size, c.mlp_bias)?,
            lin("mlp.up_proj", h, c.intermediate_size, c.mlp_bias)?,
            lin("mlp.down_proj", c.intermediate_size, h, c.mlp_bias)?,
            c.activation,
        )),
        (None, ProjectionLayout::Fused) => FeedForward::Dense(Mlp::from_fused(
            lin("mlp.gate_up_proj", h, 2 * c.intermediate_size, c.mlp_bias)?,
            lin("mlp.down_proj", c.intermediate_size, h, c.mlp_bias)?,
            c.activation,
        )),
    };
    let (pre_ff, post_ff) = if c.sandwich_norms {
        (
            Some(norm("pre_feedforward_layernorm", h)?),
            Some(norm("post_feedforward_layernorm", h)?),
        )
    } else {
        (None, None)
    };
    Ok(DecoderLayer {
        self_attn,
        mlp,
        input_layernorm: norm("input_layernorm", h)?,
        post_attention_layernorm: norm("post_attention_layernorm", h)?,
        pre_feedforward_layernorm: pre_ff,
        post_feedforward_layernorm: post_ff,
    })
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
        let embed_tokens = files.tensor_with_shape(
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            kind,
            device,
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| load_layer(c, files, i, kind, device))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            files,
            "model.norm",
            h,
            c.rms_norm_eps,
            c.norm_style,
            kind,
            device,
        )?;
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
        let mut ropes = vec![Rope::new(&c.rope, c.max_position_embeddings, kind, device)];
        if let Some(r) = &c.sliding_rope {
            ropes.push(Rope::new(r, c.max_position_embeddings, kind, device));
        }
        let embed_scale = c.embed_scale.map(|s| {
            // transformers: torch.tensor(√hidden) (fp32), then cast to the weights' dtype.
            Tensor::scalar_tensor(f64::from(s as f32), (Kind::Float, device)).to_kind(kind)
        });
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            ropes,
            embed_scale,
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

    /// The window of sliding layers, when some layer slides.
    fn window(&self) -> Option<i64> {
        self.config
            .layer_types
            .contains(&LayerType::Sliding)
            .then_some(self.config.sliding_window)
            .flatten()
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
        let window = self.window();
        let (positions, masks) = if input.valid.is_none() && dense {
            // Every token real, before and now: positions are column numbers, shared by all rows.
            let full = if past == 0 {
                AttentionMask::Causal
            } else if t == 1 {
                AttentionMask::Full
            } else {
                AttentionMask::Explicit(masks::dense(past, t, None, dev).view([1, 1, t, past + t]))
            };
            let sliding = window.and_then(|w| masks::dense_window(past, t, w, dev));
            if let Some(c) = cache.as_deref_mut() {
                c.cols += t;
                c.lens = vec![past + t; b as usize];
            }
            (Positions::Range(past, t), PassMasks { full, sliding })
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
            let sliding = window.filter(|w| past + t > *w).map(|w| {
                AttentionMask::Explicit(masks::window_by_position(&m, &pos, &key_valid, w))
            });
            if let Some(c) = cache.as_deref_mut() {
                c.cols = past + t;
                c.lens = new_lens;
                c.valid = Some(key_valid);
                c.settle();
            }
            let full = AttentionMask::Explicit(m);
            (Positions::Rows(pos, past + t), PassMasks { full, sliding })
        };
        self.layers_pass(
            &input.input_ids.to_device(dev),
            &positions,
            &masks,
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
    ///
    /// With `train` and LoRA dropout, each layer reseeds libtorch's global generator from one
    /// number drawn from it (see `DropoutSeeds`), so the masks follow from the generator's state
    /// before the call, and a checkpointed pass ([`Self::packed_loss_backward`]) draws the same.
    pub fn hidden_states_packed(
        &self,
        input_ids: &Tensor,
        lengths: &[i64],
        adapters: &Adapters<'_>,
        train: bool,
        keep: &Tensor,
    ) -> Result<Tensor> {
        let pass = self.packed_pass(input_ids, lengths, adapters, keep)?;
        self.layers_pass(
            &pass.ids,
            &pass.positions,
            &pass.masks,
            None,
            Some(&pass.keep),
            adapters,
            train,
        )
    }

    /// Ids, positions, masks and kept indices of a packed pass (see [`Self::hidden_states_packed`]).
    pub(crate) fn packed_pass(
        &self,
        input_ids: &Tensor,
        lengths: &[i64],
        adapters: &Adapters<'_>,
        keep: &Tensor,
    ) -> Result<PackedPass> {
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
        let positions = Positions::Packed(
            Tensor::from_slice(&pos).to_device(self.device).unsqueeze(0),
            lengths.to_vec(),
        );
        let masks = PassMasks {
            // Several causal sequences: one padded attention call per layer.
            full: if lengths.len() > 1 {
                AttentionMask::Padded(masks::padded(lengths, self.device))
            } else {
                AttentionMask::Segments(masks::segments(lengths, None, self.device))
            },
            sliding: self
                .window()
                .map(|w| AttentionMask::Segments(masks::segments(lengths, Some(w), self.device))),
        };
        Ok(PackedPass {
            ids: input_ids.to_device(self.device).unsqueeze(0),
            positions,
            masks,
            keep: keep.to_device(self.device).to_kind(Kind::Int64),
        })
    }

    /// `(cos, sin)` of `rope` for this pass's positions.
    fn cos_sin(&self, rope: &Rope, positions: &Positions) -> (Tensor, Tensor) {
        match positions {
            Positions::Range(start, len) => rope.cos_sin_range(*start, *len),
            Positions::Rows(pos, bound) => {
                // A row's extent is its largest position, plus one.
                let extent = rope.needs_extent(*bound).then(|| pos.amax([1], true) + 1);
                rope.cos_sin(pos, *bound, extent.as_ref())
            }
            Positions::Packed(pos, lengths) => {
                let longest = lengths.iter().copied().max().unwrap_or(0);
                let extent = rope.needs_extent(longest).then(|| {
                    let per_token: Vec<i64> = lengths
                        .iter()
                        .flat_map(|&l| (0..l).map(move |_| l))
                        .collect();
                    Tensor::from_slice(&per_token)
                        .to_device(self.device)
                        .unsqueeze(0)
                });
                rope.cos_sin(pos, longest, extent.as_ref())
            }
        }
    }

    /// The RoPE tables of this pass: the full-attention layers', then the sliding layers'.
    pub(crate) fn rotations(&self, positions: &Positions) -> Vec<(Tensor, Tensor)> {
        self.ropes
            .iter()
            .map(|r| self.cos_sin(r, positions))
            .collect()
    }

    /// Token embeddings `[B, T, hidden]`, scaled where the family scales them.
    pub(crate) fn embed(&self, ids: &Tensor) -> Tensor {
        let embedded = Tensor::embedding(&self.model.embed_tokens, ids, -1, false, false);
        match &self.embed_scale {
            Some(scale) => embedded * scale,
            None => embedded,
        }
    }

    /// Decoder layer `i` over `x` (`[B, T, hidden]`). With `keep` (the last layer of a pass that
    /// keeps only some positions), every position is still a key/value, but only the kept ones
    /// get the attention output, o_proj and the MLP: the result is `[K, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        rotations: &[(Tensor, Tensor)],
        masks: &PassMasks,
        slot: Option<KvSlot<'_>>,
        keep: Option<&Tensor>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let layer = &self.model.layers[i];
        let sliding = self.config.layer_types.get(i) == Some(&LayerType::Sliding);
        let (cos, sin) = &rotations[if sliding { rotations.len() - 1 } else { 0 }];
        let mask = match (&masks.sliding, sliding) {
            (Some(m), true) => m,
            _ => &masks.full,
        };
        let ctx = AttentionInput { cos, sin, mask };
        let h = layer.input_layernorm.forward(x);
        if let Some(pos) = keep {
            let y = layer.self_attn.attend(i, &h, &ctx, slot, adapters, train)?;
            let width = y.size()[2];
            let y = y.view([-1, width]).index_select(0, pos);
            let hidden = x.size()[2];
            let xs = x.view([-1, hidden]).index_select(0, pos);
            let a = layer.self_attn.project_out(i, &y, adapters, train)?;
            return layer.after_attention(i, &xs, a, adapters, train);
        }
        let a = layer
            .self_attn
            .forward(i, &h, &ctx, slot, adapters, train)?;
        layer.after_attention(i, x, a, adapters, train)
    }

    /// The final norm over the last layer's output; then, unless the last layer already kept
    /// only those (`pruned`), the positions `keep` (`[K, hidden]`).
    pub(crate) fn finish(&self, x: Tensor, pruned: bool, keep: &Tensor) -> Tensor {
        let out = self.model.norm.forward(&x);
        if pruned {
            return out;
        }
        let hidden = out.size()[2];
        out.view([-1, hidden]).index_select(0, keep)
    }

    #[allow(clippy::too_many_arguments)]
    fn layers_pass(
        &self,
        ids: &Tensor,
        positions: &Positions,
        masks: &PassMasks,
        mut cache: Option<&mut KvCache>,
        keep: Option<&Tensor>,
        adapters: &Adapters<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let rotations = self.rotations(positions);
        let new_cols = ids.size().get(1).copied().unwrap_or(0);
        let seeds = DropoutSeeds::draw(adapters, train);
        let mut x = self.embed(ids);
        let count = self.model.layers.len();
        for i in 0..count {
            // `run` has already counted this pass's columns in the cache.
            let slot = cache.as_deref_mut().map(|c| KvSlot {
                past: c.cols - new_cols,
                buffers: &mut c.layers[i],
            });
            let last_keep = keep.filter(|_| i + 1 == count);
            seeds.enter_layer(i);
            x = self.layer_forward(i, &x, &rotations, masks, slot, last_keep, adapters, train)?;
        }
        seeds.leave();
        Ok(match keep {
            Some(pos) => self.finish(x, count > 0, pos),
            None => self.model.norm.forward(&x),
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

    /// Logits for hidden states of any leading shape (`[..., hidden] -> [..., vocab]`), soft-capped
    /// where the family caps them.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = hidden.linear::<Tensor>(&self.lm_head, None);
        match self.config.final_logit_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
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
        let chunk = if self.device.is_cuda() {
            HEAD_CHUNK_ELEMENTS_GPU
        } else {
            HEAD_CHUNK_ELEMENTS
        };
        let rows = (chunk / vocab.max(1)).max(16);
        let targets = targets.f_to_device(self.device)?.f_to_kind(Kind::Int64)?;
        let mut out = if grad {
            Some(hidden.f_empty_like()?)
        } else {
            None
        };
        // The loss is summed on the device and read once, not once per chunk.
        let mut loss = Tensor::f_zeros([], (Kind::Double, self.device))?;
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let h = hidden.f_narrow(0, start, len)?;
            let t = targets.f_narrow(0, start, len)?.f_unsqueeze(1)?;
            let logits = h.f_linear::<Tensor>(&self.lm_head, None)?;
            // Soft-capping `c·tanh(z/c)`, as `transformers` computes it (in the model's kind);
            // its derivative is `1 - tanh²`.
            let (logits, tanh) = match self.config.final_logit_softcap {
                Some(cap) => {
                    let t = logits.f_div_scalar(cap)?.f_tanh()?;
                    (t.f_mul_scalar(cap)?, Some(t))
                }
                None => (logits, None),
            };
            let mut lsm = logits.f_log_softmax(-1, Kind::Float)?;
            drop(logits);
            loss = loss.f_sub(&lsm.f_gather(1, &t, false)?.f_sum(Kind::Double)?)?;
            if let Some(out) = out.as_mut() {
                let mut probs = lsm.f_exp_()?;
                let minus_one = Tensor::f_full([len, 1], -1.0, (Kind::Float, self.device))?;
                let _ = probs.f_scatter_add_(1, &t, &minus_one)?;
                if let Some(tanh) = &tanh {
                    let tanh = tanh.f_to_kind(Kind::Float)?;
                    let slope = tanh.f_square()?.f_neg()?.f_add_scalar(1.0)?;
                    let _ = probs.f_mul_(&slope)?;
                }
                let g = probs
                    .f_to_kind(self.lm_head.kind())?
                    .f_matmul(&self.lm_head)?;
                out.f_narrow(0, start, len)?.f_copy_(&g)?;
            }
            start += len;
        }
        crate::profile::sync();
        Ok((loss.f_double_value(&[])?, out))
    }

    /// Logits `[B, T, vocab]` for every input position.
    pub fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden_states(input, cache)?;
        Ok(self.logits(&h))
    }
}
