//! Which keys each query sees in one forward pass, for full-attention layers and for
//! sliding-window layers. A token at position `p` in a window of `w` sees the keys at
//! positions `p - w + 1 ..= p` of its own sequence (`transformers`: `kv_idx > q_idx - w`).
//! Distances are in positions, not cache columns, so padding and rows joined later change
//! nothing: a row sees what it would see alone.

use tch::{Device, Kind, Tensor};

use crate::layers::attention::AttentionMask;

/// `[t, s]` bool: key column `j` visible from query `i` (at column `past + i`), causally and,
/// with a window, within it. Positions are column numbers (every token real).
pub(crate) fn dense(past: i64, t: i64, window: Option<i64>, device: Device) -> Tensor {
    let cols = Tensor::arange(past + t, (Kind::Int64, device)).unsqueeze(0);
    let rows = (Tensor::arange(t, (Kind::Int64, device)) + past).unsqueeze(1);
    let causal = cols.le_tensor(&rows);
    match window {
        Some(w) => causal.logical_and(&(&rows - &cols).lt(w)),
        None => causal,
    }
}

/// The mask of a sliding layer for a pass without padding (`past` cached columns, `t` new
/// ones); `None` when the window changes nothing.
pub(crate) fn dense_window(
    past: i64,
    t: i64,
    window: i64,
    device: Device,
) -> Option<AttentionMask> {
    if past + t <= window {
        return None;
    }
    Some(AttentionMask::Explicit(
        dense(past, t, Some(window), device).view([1, 1, t, past + t]),
    ))
}

/// The mask of a sliding layer when positions are per row: `full` (`[B, 1, T, S]`) restricted
/// to keys within `window` positions of each query. `query_pos` is `[B, T]`; `key_valid`
/// (`[B, S]`) marks real key columns, whose positions count the real columns before them.
pub(crate) fn window_by_position(
    full: &Tensor,
    query_pos: &Tensor,
    key_valid: &Tensor,
    window: i64,
) -> Tensor {
    let key_pos = key_valid.cumsum(1, Kind::Int64) - 1;
    let distance = query_pos.unsqueeze(2) - key_pos.unsqueeze(1);
    full.logical_and(&distance.lt(window).unsqueeze(1))
}

/// Per packed sequence: `None` for plain causal attention, or its `[1, 1, l, l]` window mask.
pub(crate) fn segments(
    lengths: &[i64],
    window: Option<i64>,
    device: Device,
) -> Vec<(i64, Option<Tensor>)> {
    lengths
        .iter()
        .map(|&l| {
            let mask = window
                .filter(|w| l > *w)
                .map(|w| dense(0, l, Some(w), device).view([1, 1, l, l]));
            (l, mask)
        })
        .collect()
}

/// Packed sequences laid out as a right-padded `[rows, width]` batch for one causal attention
/// call per layer (instead of one per sequence): `gather` picks, for every padded slot, a packed
/// token (its own, or for padding the row's first token), `scatter` picks each packed token's
/// slot back. Right padding is never visible to a real query under the causal mask, and the
/// padded queries' outputs are dropped, so values and gradients are the per-sequence ones.
#[derive(Debug)]
pub struct Padded {
    pub gather: Tensor,
    pub scatter: Tensor,
    pub rows: i64,
    pub width: i64,
}

pub(crate) fn padded(lengths: &[i64], device: Device) -> Padded {
    let width = lengths.iter().copied().max().unwrap_or(0);
    let mut gather = Vec::with_capacity(lengths.len() * width as usize);
    let mut scatter = Vec::with_capacity(lengths.iter().sum::<i64>() as usize);
    let mut offset = 0;
    for (row, &len) in lengths.iter().enumerate() {
        gather.extend((0..width).map(|j| offset + if j < len { j } else { 0 }));
        scatter.extend((0..len).map(|j| row as i64 * width + j));
        offset += len;
    }
    Padded {
        gather: Tensor::from_slice(&gather).to_device(device),
        scatter: Tensor::from_slice(&scatter).to_device(device),
        rows: lengths.len() as i64,
        width,
    }
}
