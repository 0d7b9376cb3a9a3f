//! CPU attention: one rayon task per (query row, head); scores, softmax and the weighted sum in f32.

use rayon::prelude::*;

use super::AttnSeq;
use crate::kv_cache::PagedKvCache;
use crate::ops::softmax_row;

/// See [`super::paged_attention`]; shapes were validated there. `out` is `[t, h, d]`.
pub fn paged_attention(
    q: &[f32],
    heads: usize,
    cache: &PagedKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    scale: f32,
    out: &mut [f32],
) {
    let cfg = cache.config();
    let d = cfg.head_dim;
    let group = heads / cfg.kv_heads;
    let stride = cfg.token_stride();
    let (keys, values) = cache.layer(layer);
    let keys = keys.as_slice::<f32>().expect("a CPU cache holds f32");
    let values = values.as_slice::<f32>().expect("a CPU cache holds f32");

    // Map each output row to its sequence once, so the parallel loop can run over rows.
    let mut row_seq = vec![usize::MAX; q.len() / (heads * d)];
    for (si, s) in seqs.iter().enumerate() {
        row_seq[s.q_start..s.q_start + s.q_len].fill(si);
    }

    out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
        let (row, head) = (idx / heads, idx % heads);
        let Some(seq) = seqs.get(row_seq[row]) else {
            return; // a row no sequence claims stays zero
        };
        let pos = seq.kv_len - seq.q_len + (row - seq.q_start);
        let kv_head = head / group;
        let qv = &q[idx * d..(idx + 1) * d];
        let mut scores: Vec<f32> = (0..=pos)
            .map(|p| {
                let slot = cache.slot(seq.blocks, p);
                let k = &keys[slot * stride + kv_head * d..][..d];
                qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        softmax_row(&mut scores);
        o.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let slot = cache.slot(seq.blocks, p);
            let v = &values[slot * stride + kv_head * d..][..d];
            o.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
        }
    });
}
