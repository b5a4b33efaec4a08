//! LoRA with PEFT's semantics: `y = W x + b + (B · A · dropout(x)) · scaling`, `A` initialised
//! kaiming-uniform with `a = √5` (that is U(−1/√in, 1/√in)), `B` zero, `scaling = alpha / r`
//! (`alpha / √r` with rsLoRA). Adapters are plain tensors owned by the caller, kept apart from the
//! base model, so one base model can serve many adapters and a trainer can optimise one.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// A projection LoRA can attach to; names are the Hugging Face module names. Which exist
/// depends on the family (`ModelConfig::lora_targets`): Phi-3 has the fused `qkv_proj` and
/// `gate_up_proj` instead of the separate ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetModule {
    QProj,
    KProj,
    VProj,
    QkvProj,
    OProj,
    GateProj,
    UpProj,
    GateUpProj,
    DownProj,
}

/// Number of [`TargetModule`]s (slots per layer).
const MODULES: usize = 9;

impl TargetModule {
    pub const ALL: [TargetModule; MODULES] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::QkvProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::GateUpProj,
        Self::DownProj,
    ];

    /// What `all-linear` means where the model is not known: the separate projections.
    const DENSE: [TargetModule; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::QkvProj => "qkv_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::GateUpProj => "gate_up_proj",
            Self::DownProj => "down_proj",
        }
    }

    /// The parent module in the HF tree (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            Self::QProj | Self::KProj | Self::VProj | Self::QkvProj | Self::OProj => "self_attn",
            _ => "mlp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Parses a target-module list as PEFT accepts it: names, or `all-linear` (here the
    /// separate projections; [`Self::resolve`] expands it for a given model).
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Vec<TargetModule>> {
        let mut out = Vec::new();
        for n in names {
            let n = n.as_ref().trim();
            if n.is_empty() {
                continue;
            }
            if n == tailor_wire::families::ALL_LINEAR {
                out.extend(Self::DENSE);
            } else {
                out.push(n.parse()?);
            }
        }
        if out.is_empty() {
            return Err(ModelError::Adapter(
                "target modules must not be empty".into(),
            ));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Parses a target-module list for `model`: every name must be a module the model's family
    /// has (the error names the family and what it allows); `all-linear` is all of them.
    pub fn resolve<S: AsRef<str>>(names: &[S], model: &ModelConfig) -> Result<Vec<TargetModule>> {
        let names: Vec<&str> = names
            .iter()
            .map(|n| n.as_ref().trim())
            .filter(|n| !n.is_empty())
            .collect();
        model.family.check_targets(&names)?;
        let mut out = Vec::new();
        for n in names {
            if n == tailor_wire::families::ALL_LINEAR {
                out.extend(model.lora_targets());
            } else {
                out.push(n.parse()?);
            }
        }
        if out.is_empty() {
            return Err(ModelError::Adapter(
                "target modules must not be empty".into(),
            ));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl FromStr for TargetModule {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ModelError::UnknownTargetModule(s.to_string()))
    }
}

impl fmt::Display for TargetModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hyperparameters of one adapter (the subset of PEFT's `LoraConfig` tailor implements).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<TargetModule>,
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r <= 0 {
            return Err(ModelError::Adapter(format!(
                "rank must be positive, got {}",
                self.r
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Adapter(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Adapter(
                "target modules must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// [`Self::validate`], and every target is a module `model` has.
    pub fn validate_for(&self, model: &ModelConfig) -> Result<()> {
        self.validate()?;
        let names: Vec<&str> = self.target_modules.iter().map(|m| m.name()).collect();
        model.family.check_targets(&names)?;
        Ok(())
    }
}

/// The two matrices of one adapted projection. `a` is `[r, in]`, `b` is `[out, r]` (PEFT layout).
#[derive(Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f64,
}

/// One LoRA adapter for a whole model.
#[derive(Debug)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// `layers[i][module]`, `None` where the module is not adapted.
    layers: Vec<[Option<LoraPair>; MODULES]>,
}

impl LoraAdapter {
    /// A fresh adapter with PEFT's default initialisation. Draws from libtorch's global RNG:
    /// seed it (`tch::manual_seed`) for reproducible weights.
    pub fn init(model: &ModelConfig, config: LoraConfig, device: Device) -> Result<Self> {
        config.validate_for(model)?;
        let scaling = config.scaling();
        let mut layers = Vec::with_capacity(model.num_hidden_layers as usize);
        for _ in 0..model.num_hidden_layers {
            let mut mods: [Option<LoraPair>; MODULES] = Default::default();
            for &m in &config.target_modules {
                let (fan_in, fan_out) = model.projection_shape(m);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a = Tensor::f_empty([config.r, fan_in], (Kind::Float, device))?
                    .f_uniform_(-bound, bound)?;
                let b = Tensor::f_zeros([fan_out, config.r], (Kind::Float, device))?;
                mods[m.index()] = Some(LoraPair { a, b, scaling });
            }
            layers.push(mods);
        }
        Ok(Self { config, layers })
    }

    /// Builds an adapter from loaded pairs, checking every shape against the base model.
    pub fn from_pairs(
        model: &ModelConfig,
        config: LoraConfig,
        pairs: Vec<(usize, TargetModule, Tensor, Tensor)>,
    ) -> Result<Self> {
        config.validate_for(model)?;
        let scaling = config.scaling();
        let mut layers: Vec<[Option<LoraPair>; MODULES]> = (0..model.num_hidden_layers)
            .map(|_| Default::default())
            .collect();
        for (layer, module, a, b) in pairs {
            let name = format!("model.layers.{layer}.{}.{}", module.parent(), module.name());
            let slot = layers
                .get_mut(layer)
                .ok_or_else(|| ModelError::AdapterShapeMismatch {
                    name: name.clone(),
                    found: vec![layer as i64],
                    expected: vec![model.num_hidden_layers],
                })?;
            let (fan_in, fan_out) = model.projection_shape(module);
            let expect_a = vec![config.r, fan_in];
            let expect_b = vec![fan_out, config.r];
            if a.size() != expect_a {
                return Err(ModelError::AdapterShapeMismatch {
                    name: format!("{name}.lora_A.weight"),
                    found: a.size(),
                    expected: expect_a,
                });
            }
            if b.size() != expect_b {
                return Err(ModelError::AdapterShapeMismatch {
                    name: format!("{name}.lora_B.weight"),
                    found: b.size(),
                    expected: expect_b,
                });
            }
            slot[module.index()] = Some(LoraPair { a, b, scaling });
        }
        Ok(Self { config, layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn pair(&self, layer: usize, module: TargetModule) -> Option<&LoraPair> {
        self.layers.get(layer)?.get(module.index())?.as_ref()
    }

    /// Every (layer, module, pair) in a stable order (layer, then module order).
    pub fn pairs(&self) -> impl Iterator<Item = (usize, TargetModule, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(i, mods)| {
            TargetModule::ALL
                .into_iter()
                .filter_map(move |m| mods[m.index()].as_ref().map(|p| (i, m, p)))
        })
    }

    /// The trainable tensors in a stable order: for each pair, A then B.
    pub fn parameters(&self) -> Vec<&Tensor> {
        self.pairs().flat_map(|(_, _, p)| [&p.a, &p.b]).collect()
    }

    /// Marks every adapter tensor as requiring gradients (training) or not (serving).
    pub fn set_requires_grad(&mut self, on: bool) {
        for mods in &mut self.layers {
            for p in mods.iter_mut().flatten() {
                p.a = p.a.detach().set_requires_grad(on);
                p.b = p.b.detach().set_requires_grad(on);
            }
        }
    }

    /// Moves the adapter to a device (values keep their kind, fp32 by default).
    pub fn to_device(&mut self, device: Device) {
        for mods in &mut self.layers {
            for p in mods.iter_mut().flatten() {
                p.a = p.a.to_device(device);
                p.b = p.b.to_device(device);
            }
        }
    }

    /// A handle sharing this adapter's tensors (no copy). `Tensor` is `Send` but not `Sync`, so
    /// a server keeps one adapter in a registry and hands each request its own handle.
    pub fn shallow_clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|mods| {
                    let mut out: [Option<LoraPair>; MODULES] = Default::default();
                    for (i, p) in mods.iter().enumerate() {
                        out[i] = p.as_ref().map(|p| LoraPair {
                            a: p.a.shallow_clone(),
                            b: p.b.shallow_clone(),
                            scaling: p.scaling,
                        });
                    }
                    out
                })
                .collect(),
        }
    }

    /// A deep copy with the same values, detached from any graph.
    pub fn clone_detached(&self) -> Self {
        Self {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|mods| {
                    let mut out: [Option<LoraPair>; MODULES] = Default::default();
                    for (i, p) in mods.iter().enumerate() {
                        out[i] = p.as_ref().map(|p| LoraPair {
                            a: p.a.detach().copy(),
                            b: p.b.detach().copy(),
                            scaling: p.scaling,
                        });
                    }
                    out
                })
                .collect(),
        }
    }

    /// `(B · A · dropout(x)) · scaling` for one projection, computed in the adapter's kind and
    /// returned in `x`'s kind. Without dropout, the one-module case of [`Self::group_delta`].
    pub(crate) fn delta(
        &self,
        layer: usize,
        module: TargetModule,
        x: &Tensor,
        train: bool,
    ) -> Option<Tensor> {
        let p = self.pair(layer, module)?;
        if !(train && self.config.dropout > 0.0) {
            return Some(self.group_delta(layer, &[(module, 0)], x));
        }
        let x_in = if x.kind() == p.a.kind() {
            x.shallow_clone()
        } else {
            x.to_kind(p.a.kind())
        };
        let d = x_in
            .dropout(self.config.dropout, true)
            .linear::<Tensor>(&p.a, None)
            .linear::<Tensor>(&p.b, None)
            * p.scaling;
        Some(if d.kind() == x.kind() {
            d
        } else {
            d.to_kind(x.kind())
        })
    }
}

impl LoraAdapter {
    /// The LoRA contributions of a group of projections that share the input `x` and whose
    /// outputs sit side by side (q/k/v, gate/up): `[…, Σ width]`, zeros where a module is not
    /// adapted. The A matrices of the group are one matmul (`x` cast once), the scaling is folded
    /// into them, and each B reads its slice. No dropout: with dropout, each module draws its own
    /// mask, as PEFT's separate `lora_dropout` modules do (see [`LoraAdapter::delta`]).
    fn group_delta(&self, layer: usize, group: &[(TargetModule, i64)], x: &Tensor) -> Tensor {
        let pairs: Vec<Option<&LoraPair>> =
            group.iter().map(|&(m, _)| self.pair(layer, m)).collect();
        let adapted: Vec<&LoraPair> = pairs.iter().flatten().copied().collect();
        let kind = adapted.first().map_or(Kind::Float, |p| p.a.kind());
        let a = match adapted.as_slice() {
            [p] => p.a.shallow_clone(),
            _ => Tensor::cat(&adapted.iter().map(|p| &p.a).collect::<Vec<_>>(), 0),
        } * self.config.scaling();
        let x_in = if x.kind() == kind {
            x.shallow_clone()
        } else {
            x.to_kind(kind)
        };
        // Split, not narrowed: the gradient of a split is one concatenation, where each narrow's
        // would be a zero-filled tensor of the full width.
        let ranks: Vec<i64> = adapted.iter().map(|p| p.a.size()[0]).collect();
        let xa = x_in.linear::<Tensor>(&a, None);
        let mut xa = match ranks.len() {
            1 => vec![xa],
            _ => xa.split_with_sizes(&ranks, -1),
        }
        .into_iter();
        let mut parts: Vec<Tensor> = group
            .iter()
            .zip(&pairs)
            .map(|(&(_, width), pair)| {
                let d = pair.and_then(|p| Some(xa.next()?.linear::<Tensor>(&p.b, None)));
                d.unwrap_or_else(|| {
                    let mut shape = x.size();
                    if let Some(last) = shape.last_mut() {
                        *last = width;
                    }
                    Tensor::zeros(shape, (kind, x.device()))
                })
            })
            .collect();
        let d = match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, -1),
        };
        if d.kind() == x.kind() {
            d
        } else {
            d.to_kind(x.kind())
        }
    }
}

/// One adapted projection packed for a batch: row `i` holds its adapter's `Aᵀ` (`[in, r]`) and
/// `Bᵀ` (`[r, out]`), zero-padded to the batch's largest rank (zeros where a row has no pair).
#[derive(Debug)]
struct StackedPair {
    /// `[B, in, r]`
    at: Tensor,
    /// `[B, r, out]`
    bt: Tensor,
    /// `[B, 1, 1]`: each row's scaling (0 where the row has no pair).
    scale: Tensor,
}

/// Per-row adapters packed once for a batch composition, so a forward pass with many distinct
/// adapters costs two batched matmuls per projection, whatever the number of adapters
/// (serving). Zero padding adds exact zeros, so each row's result is its adapter's.
#[derive(Debug)]
pub struct StackedAdapters {
    rows: usize,
    layers: Vec<[Option<StackedPair>; MODULES]>,
}

impl StackedAdapters {
    /// Packs `rows` (one entry per batch row; `None`: base model) on `device`.
    pub fn new(rows: &[Option<&LoraAdapter>], device: Device) -> Result<Self> {
        let num_layers = rows
            .iter()
            .flatten()
            .map(|a| a.num_layers())
            .max()
            .unwrap_or(0);
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut mods: [Option<StackedPair>; MODULES] = Default::default();
            for m in TargetModule::ALL {
                let pairs: Vec<Option<&LoraPair>> = rows
                    .iter()
                    .map(|r| r.and_then(|a| a.pair(layer, m)))
                    .collect();
                let Some(any) = pairs.iter().flatten().next() else {
                    continue;
                };
                let r_max = pairs
                    .iter()
                    .flatten()
                    .map(|p| p.a.size()[0])
                    .max()
                    .unwrap_or(0);
                let (fan_in, fan_out) = (any.a.size()[1], any.b.size()[0]);
                let kind = any.a.kind();
                let mut ats = Vec::with_capacity(rows.len());
                let mut bts = Vec::with_capacity(rows.len());
                let mut scales = Vec::with_capacity(rows.len());
                // Shared by every row without this pair.
                let mut zero: Option<(Tensor, Tensor)> = None;
                for p in &pairs {
                    match p {
                        // Already in shape: `stack` below copies straight from the views.
                        Some(p)
                            if p.a.size()[0] == r_max
                                && p.a.kind() == kind
                                && p.a.device() == device
                                && p.b.kind() == kind
                                && p.b.device() == device =>
                        {
                            ats.push(p.a.tr());
                            bts.push(p.b.tr());
                        }
                        Some(p) => {
                            let at = Tensor::f_zeros([fan_in, r_max], (kind, device))?;
                            let bt = Tensor::f_zeros([r_max, fan_out], (kind, device))?;
                            let r = p.a.size()[0];
                            at.narrow(1, 0, r)
                                .copy_(&p.a.to_device(device).to_kind(kind).tr());
                            bt.narrow(0, 0, r)
                                .copy_(&p.b.to_device(device).to_kind(kind).tr());
                            ats.push(at);
                            bts.push(bt);
                        }
                        None => {
                            if zero.is_none() {
                                zero = Some((
                                    Tensor::f_zeros([fan_in, r_max], (kind, device))?,
                                    Tensor::f_zeros([r_max, fan_out], (kind, device))?,
                                ));
                            }
                            if let Some((at, bt)) = &zero {
                                ats.push(at.shallow_clone());
                                bts.push(bt.shallow_clone());
                            }
                        }
                    }
                    scales.push(p.map_or(0.0, |p| p.scaling));
                }
                mods[m.index()] = Some(StackedPair {
                    at: Tensor::f_stack(&ats, 0)?,
                    bt: Tensor::f_stack(&bts, 0)?,
                    scale: Tensor::from_slice(&scales)
                        .to_kind(kind)
                        .to_device(device)
                        .view([-1, 1, 1]),
                });
            }
            layers.push(mods);
        }
        Ok(Self {
            rows: rows.len(),
            layers,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn delta(&self, layer: usize, module: TargetModule, x: &Tensor) -> Option<Tensor> {
        let p = self.layers.get(layer)?.get(module.index())?.as_ref()?;
        let x_in = if x.kind() == p.at.kind() {
            x.shallow_clone()
        } else {
            x.to_kind(p.at.kind())
        };
        let d = x_in.matmul(&p.at).matmul(&p.bt) * &p.scale;
        Some(if d.kind() == x.kind() {
            d
        } else {
            d.to_kind(x.kind())
        })
    }
}

/// Which adapter each batch row uses.
#[derive(Clone, Copy)]
pub enum Adapters<'a> {
    /// The base model alone.
    None,
    /// One adapter for every row (training, single-adapter serving).
    All(&'a LoraAdapter),
    /// One entry per batch row: rows with different adapters share one forward pass.
    PerRow(&'a [Option<&'a LoraAdapter>]),
    /// Per-row adapters packed by [`StackedAdapters::new`] (inference only; no dropout).
    Stacked(&'a StackedAdapters),
}

impl Adapters<'_> {
    /// Whether any row's adapter changes `module` in `layer`.
    pub(crate) fn touches(&self, layer: usize, module: TargetModule) -> bool {
        match self {
            Adapters::None => false,
            Adapters::All(a) => a.pair(layer, module).is_some(),
            Adapters::PerRow(rows) => rows
                .iter()
                .flatten()
                .any(|a| a.pair(layer, module).is_some()),
            Adapters::Stacked(st) => st
                .layers
                .get(layer)
                .is_some_and(|m| m[module.index()].is_some()),
        }
    }

    /// Whether some row's adapter applies dropout (in training).
    pub(crate) fn has_dropout(&self) -> bool {
        match self {
            Adapters::None | Adapters::Stacked(_) => false,
            Adapters::All(a) => a.config.dropout > 0.0,
            Adapters::PerRow(rows) => rows.iter().flatten().any(|a| a.config.dropout > 0.0),
        }
    }

    /// Adds the LoRA contributions of a group of projections of the same input `x` to `base`,
    /// their frozen outputs side by side in `group`'s order (`(module, width)`). One adapter
    /// without dropout takes the fused path ([`LoraAdapter::group_delta`]); otherwise each
    /// module is applied to its slice.
    pub(crate) fn apply_group(
        &self,
        layer: usize,
        group: &[(TargetModule, i64)],
        x: &Tensor,
        base: Tensor,
        train: bool,
    ) -> Result<Tensor> {
        if !group.iter().any(|&(m, _)| self.touches(layer, m)) {
            return Ok(base);
        }
        match self {
            Adapters::All(a) if !(train && a.config.dropout > 0.0) => {
                Ok(base + a.group_delta(layer, group, x))
            }
            _ => {
                let mut start = 0;
                let parts = group
                    .iter()
                    .map(|&(m, width)| {
                        let slice = base.narrow(-1, start, width);
                        start += width;
                        self.apply(layer, m, x, slice, train)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, -1))
            }
        }
    }

    /// Adds the LoRA contribution(s) of `module` in `layer` to `base` (the frozen projection's
    /// output for `x`).
    pub(crate) fn apply(
        &self,
        layer: usize,
        module: TargetModule,
        x: &Tensor,
        base: Tensor,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Adapters::None => Ok(base),
            Adapters::All(a) => Ok(match a.delta(layer, module, x, train) {
                Some(d) => base + d,
                None => base,
            }),
            Adapters::Stacked(st) => {
                let batch = x.size().first().copied().unwrap_or(0);
                if st.rows as i64 != batch {
                    return Err(ModelError::InvalidInput(format!(
                        "adapters stacked for {} rows, batch of {batch} rows",
                        st.rows
                    )));
                }
                Ok(match st.delta(layer, module, x) {
                    Some(d) => base + d,
                    None => base,
                })
            }
            Adapters::PerRow(rows) => {
                let batch = x.size().first().copied().unwrap_or(0);
                if rows.len() as i64 != batch {
                    return Err(ModelError::InvalidInput(format!(
                        "{} adapter selections for a batch of {batch} rows",
                        rows.len()
                    )));
                }
                let mut out = base;
                let mut seen: Vec<*const LoraAdapter> = Vec::new();
                for adapter in rows.iter().flatten() {
                    let ptr: *const LoraAdapter = *adapter;
                    if seen.contains(&ptr) {
                        continue;
                    }
                    seen.push(ptr);
                    let idx: Vec<i64> = rows
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.is_some_and(|r| std::ptr::eq(r, ptr)))
                        .map(|(i, _)| i as i64)
                        .collect();
                    let idx = Tensor::from_slice(&idx).to_device(x.device());
                    let xs = x.index_select(0, &idx);
                    if let Some(d) = adapter.delta(layer, module, &xs, train) {
                        out = out.index_add(0, &idx, &d);
                    }
                }
                Ok(out)
            }
        }
    }
}
