//! CPU attention, f32 throughout. Paged (causal): one rayon task per (query row, head). Bidirectional: one
//! task per (sequence, head, block of queries), whose two products run on the dense linear kernels.

use rayon::prelude::*;

use super::{AttnSeq, SeqRows};
use crate::kv_cache::PagedKvCache;
use crate::ops::linear::cpu::linear;
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

/// See [`super::flash_attention`]; shapes and offsets were validated there. `q`, `out` are `[t, h, d]`,
/// `k`, `v` `[t_k, h_kv, d]`. One rayon task per (query row, head), f32 throughout.
#[allow(clippy::too_many_arguments)]
pub fn varlen_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [h, h_kv, d]: [usize; 3],
    seqs: &[SeqRows],
    causal: bool,
    scale: f32,
    out: &mut [f32],
) {
    if d == 0 || h == 0 {
        return;
    }
    let group = h / h_kv;
    let mut row_seq = vec![usize::MAX; q.len() / (h * d)];
    for (si, s) in seqs.iter().enumerate() {
        row_seq[s.q_start..s.q_start + s.q_len].fill(si);
    }
    out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
        let (row, head) = (idx / h, idx % h);
        let Some(seq) = seqs.get(row_seq[row]) else {
            return; // a row no sequence claims stays zero
        };
        let j = row - seq.q_start;
        let seen = if causal {
            seq.k_len - seq.q_len + j + 1
        } else {
            seq.k_len
        };
        let kv_head = head / group;
        let qv = &q[idx * d..(idx + 1) * d];
        // Elements of key (or value) row p of this sequence and KV head.
        let key = |p: usize| {
            let off = ((seq.k_start + p) * h_kv + kv_head) * d;
            off..off + d
        };
        let mut scores: Vec<f32> = (0..seen)
            .map(|p| {
                let kr = &k[key(p)];
                qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        softmax_row(&mut scores);
        o.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let vr = &v[key(p)];
            o.iter_mut().zip(vr).for_each(|(o, v)| *o += w * v);
        }
    });
}

/// Query rows per task of [`bidirectional_attention`]: its score block (`QUERY_BLOCK × s`) stays in L2.
const QUERY_BLOCK: usize = 128;

/// See [`super::bidirectional_attention`]; shapes were validated there. `q`, `k`, `v`, `out` are
/// `[b, s, h, d]`.
pub fn bidirectional_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [b, s, h, d]: [usize; 4],
    scale: f32,
    out: &mut [f32],
) {
    if b * s * h * d == 0 {
        return;
    }
    // Rows `rows` of head `head` of sequence `seq` of a `[b, s, h, d]` tensor, as a contiguous `[len, d]`.
    let head_rows = |x: &[f32], seq: usize, head: usize, rows: std::ops::Range<usize>| {
        let mut m = Vec::with_capacity(rows.len() * d);
        for t in rows {
            let off = ((seq * s + t) * h + head) * d;
            m.extend_from_slice(&x[off..off + d]);
        }
        m
    };
    let blocks = s.div_ceil(QUERY_BLOCK);
    let results: Vec<Vec<f32>> = (0..b * h * blocks)
        .into_par_iter()
        .map(|task| {
            let (seq, head, blk) = (task / (h * blocks), (task / blocks) % h, task % blocks);
            let rows = blk * QUERY_BLOCK..((blk + 1) * QUERY_BLOCK).min(s);
            let m = rows.len();
            let qh = head_rows(q, seq, head, rows);
            let kh = head_rows(k, seq, head, 0..s);
            // vᵀ [d, s], so that `scores · v` is a linear with weight vᵀ.
            let mut vt = vec![0.0f32; d * s];
            for t in 0..s {
                let off = ((seq * s + t) * h + head) * d;
                for (j, &x) in v[off..off + d].iter().enumerate() {
                    vt[j * s + t] = x;
                }
            }
            let mut scores = vec![0.0f32; m * s];
            linear(&qh, m, d, &kh, s, None, &mut scores);
            for row in scores.chunks_exact_mut(s) {
                row.iter_mut().for_each(|x| *x *= scale);
                softmax_row(row);
            }
            let mut o = vec![0.0f32; m * d];
            linear(&scores, m, s, &vt, d, None, &mut o);
            o
        })
        .collect();
    for (task, o) in results.iter().enumerate() {
        let (seq, head, blk) = (task / (h * blocks), (task / blocks) % h, task % blocks);
        for (i, row) in o.chunks_exact(d).enumerate() {
            let t = blk * QUERY_BLOCK + i;
            let off = ((seq * s + t) * h + head) * d;
            out[off..off + d].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward per-(sequence, head, query) attention, f64, for comparison.
    fn naive(q: &[f32], k: &[f32], v: &[f32], [b, s, h, d]: [usize; 4], scale: f32) -> Vec<f32> {
        let at = |x: &[f32], seq: usize, t: usize, head: usize, j: usize| {
            x[((seq * s + t) * h + head) * d + j] as f64
        };
        let mut out = vec![0.0f32; b * s * h * d];
        for seq in 0..b {
            for head in 0..h {
                for i in 0..s {
                    let scores: Vec<f64> = (0..s)
                        .map(|t| {
                            (0..d)
                                .map(|j| at(q, seq, i, head, j) * at(k, seq, t, head, j))
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for j in 0..d {
                        let o: f64 = (0..s).map(|t| e[t] / sum * at(v, seq, t, head, j)).sum();
                        out[((seq * s + i) * h + head) * d + j] = o as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn bidirectional_attention_matches_a_naive_f64_computation_across_query_blocks() {
        // s = 130 spans two query blocks (128 + 2); 2 sequences, 3 heads, d = 5.
        let dims = [2, 130, 3, 5];
        let n: usize = dims.iter().product();
        let gen = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 250.0
                        - 2.0
                })
                .collect()
        };
        let (q, k, v) = (gen(1), gen(2), gen(3));
        let mut out = vec![0.0f32; n];
        bidirectional_attention(&q, &k, &v, dims, 0.4, &mut out);
        let want = naive(&q, &k, &v, dims, 0.4);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn varlen_non_causal_attention_equals_bidirectional_attention_on_equal_lengths() {
        let dims = [3, 37, 2, 8];
        let n: usize = dims.iter().product();
        let gen = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    ((i.wrapping_mul(2246822519).wrapping_add(seed) >> 7) % 997) as f32 / 300.0
                        - 1.6
                })
                .collect()
        };
        let (q, k, v) = (gen(5), gen(6), gen(7));
        let mut want = vec![0.0f32; n];
        bidirectional_attention(&q, &k, &v, dims, 0.3, &mut want);
        let seqs: Vec<SeqRows> = (0..3)
            .map(|i| SeqRows {
                q_start: i * 37,
                q_len: 37,
                k_start: i * 37,
                k_len: 37,
            })
            .collect();
        let mut got = vec![0.0f32; n];
        varlen_attention(&q, &k, &v, [2, 2, 8], &seqs, false, 0.3, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn a_causal_row_depends_only_on_keys_up_to_its_position_and_groups_share_kv_heads() {
        // One sequence, 3 queries over 5 keys (2 earlier tokens), 4 query heads on 2 KV heads, d = 2.
        let (h, h_kv, d, t_k) = (4usize, 2usize, 2usize, 5usize);
        let q: Vec<f32> = (0..3 * h * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..t_k * h_kv * d)
            .map(|i| (i as f32 * 0.61).cos())
            .collect();
        let v: Vec<f32> = (0..t_k * h_kv * d).map(|i| i as f32 * 0.1 - 0.5).collect();
        let seqs = [SeqRows {
            q_start: 0,
            q_len: 3,
            k_start: 0,
            k_len: t_k,
        }];
        let mut out = vec![0.0f32; 3 * h * d];
        varlen_attention(&q, &k, &v, [h, h_kv, d], &seqs, true, 0.8, &mut out);
        // Query row 0 sits at position 2: changing keys and values 3 and 4 leaves it unchanged.
        let (mut k2, mut v2) = (k.clone(), v.clone());
        k2[3 * h_kv * d..].iter_mut().for_each(|x| *x += 3.0);
        v2[3 * h_kv * d..].iter_mut().for_each(|x| *x -= 2.0);
        let mut out2 = vec![0.0f32; 3 * h * d];
        varlen_attention(&q, &k2, &v2, [h, h_kv, d], &seqs, true, 0.8, &mut out2);
        assert_eq!(out[..h * d], out2[..h * d]);
        assert_ne!(out[2 * h * d..], out2[2 * h * d..]);
        // Heads 0 and 1 share KV head 0: with equal queries they give equal outputs.
        let mut q3 = q.clone();
        q3.copy_within(0..d, d);
        varlen_attention(&q3, &k, &v, [h, h_kv, d], &seqs, true, 0.8, &mut out2);
        assert_eq!(out2[..d], out2[d..2 * d]);
        // The last row sees every key: softmax weights of a row sum to 1, so a constant value row is
        // returned as is.
        let ones = vec![1.5f32; t_k * h_kv * d];
        varlen_attention(&q, &k, &ones, [h, h_kv, d], &seqs, true, 0.8, &mut out2);
        assert!(out2.iter().all(|x| (x - 1.5).abs() < 1e-6));
    }

    #[test]
    fn a_single_key_is_returned_as_is_whatever_the_query() {
        let (q, k, v) = ([3.0f32, -1.0], [0.5f32, 2.0], [7.0f32, -8.0]);
        let mut out = [0.0f32; 2];
        bidirectional_attention(&q, &k, &v, [1, 1, 1, 2], 1.0, &mut out);
        assert_eq!(out, [7.0, -8.0]);
    }
}
