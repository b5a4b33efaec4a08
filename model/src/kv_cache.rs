//! The caller-owned KV cache of a batch of sequences.

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

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
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Columns in use (the longest row, padding included).
    pub(crate) cols: i64,
    /// Real tokens per row (one entry per row).
    pub(crate) lens: Vec<i64>,
    /// `[B, cols]` bool, true where a column holds a real token; `None` when all do.
    pub(crate) valid: Option<Tensor>,
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
    pub(crate) fn dense(&self) -> bool {
        self.lens.iter().all(|&l| l == self.cols)
    }

    /// The validity mask `[B, cols]`, built when the cache is dense; `None` for an empty cache.
    pub(crate) fn valid_mask(&self, device: Device) -> Option<Tensor> {
        if self.lens.is_empty() {
            return None;
        }
        Some(match &self.valid {
            Some(v) => v.shallow_clone(),
            None => Tensor::ones([self.rows(), self.cols], (Kind::Bool, device)),
        })
    }

    /// Drops the mask once it says nothing (every column real).
    pub(crate) fn settle(&mut self) {
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
