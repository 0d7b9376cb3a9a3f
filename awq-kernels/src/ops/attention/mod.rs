//! Causal attention with grouped-query heads over the paged KV cache, for prefill and decode alike, and
//! full (bidirectional) attention over a batch of sequences held in memory (the vision encoder).

pub mod cpu;

use crate::kv_cache::PagedKvCache;
use crate::{Error, Result, Tensor};

/// One sequence's part of a batched attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    /// The sequence's block table.
    pub blocks: &'a [u32],
    /// Its first query row in `q`.
    pub q_start: usize,
    /// Its query rows: the newest `q_len` tokens.
    pub q_len: usize,
    /// Tokens in the cache for it, the new ones included; query row `j` sits at position
    /// `kv_len - q_len + j` and sees keys `0..=` that position.
    pub kv_len: usize,
}

/// `softmax(q·kᵀ·scale + causal mask)·v` for `q` `[t, h, d]`, reading keys and values of `layer` from the cache.
/// Query head `i` uses KV head `i / (h / h_kv)`. Returns `[t, h, d]`.
pub fn paged_attention(
    q: &Tensor,
    cache: &PagedKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    scale: f32,
) -> Result<Tensor> {
    let op = "paged_attention";
    let &[t, heads, d] = q.shape() else {
        return Err(Error::shape(
            op,
            format!("q must be [t, h, d], got {:?}", q.shape()),
        ));
    };
    let cfg = cache.config();
    if d != cfg.head_dim || !heads.is_multiple_of(cfg.kv_heads) || layer >= cfg.layers {
        return Err(Error::shape(
            op,
            format!(
                "q [{t}, {heads}, {d}] does not fit a cache of {} layers, {} KV heads of dim {} (layer {layer})",
                cfg.layers, cfg.kv_heads, cfg.head_dim
            ),
        ));
    }
    for s in seqs {
        if s.q_start + s.q_len > t
            || s.q_len > s.kv_len
            || s.kv_len > s.blocks.len() * cfg.block_size
        {
            return Err(Error::shape(
                op,
                format!("sequence {s:?} does not fit q rows {t} or its blocks"),
            ));
        }
    }
    #[cfg(feature = "cuda")]
    if q.device() != crate::Device::Cpu {
        let mut tables = Vec::new();
        let (mut row_table, mut row_pos) = (vec![0i32; t], vec![0i32; t]);
        for s in seqs {
            let offset = tables.len() as i32;
            tables.extend(s.blocks.iter().map(|&b| b as i32));
            for j in 0..s.q_len {
                row_table[s.q_start + j] = offset;
                row_pos[s.q_start + j] = (s.kv_len - s.q_len + j) as i32;
            }
        }
        let (kc, vc) = cache.layer(layer);
        let rows = crate::cuda::ops::AttentionRows {
            tables: &tables,
            row_table: &row_table,
            row_pos: &row_pos,
        };
        return crate::cuda::ops::paged_attention(
            q,
            kc,
            vc,
            &rows,
            cfg.kv_heads,
            cfg.block_size,
            scale,
        );
    }
    let q_data = super::f32_slice(op, q)?;
    let mut out = vec![0.0f32; t * heads * d];
    cpu::paged_attention(q_data, heads, cache, layer, seqs, scale, &mut out);
    Tensor::from_vec(out, &[t, heads, d])
}

/// `softmax(q·kᵀ·scale)·v` without a mask, independently for each of `b` sequences and `h` heads, for `q`, `k`,
/// `v` `[b, s, h, d]` (f32). Returns `[b, s, h, d]` (InternViT: every patch sees every patch of its tile).
pub fn bidirectional_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let op = "bidirectional_attention";
    let &[b, s, h, d] = q.shape() else {
        return Err(Error::shape(
            op,
            format!("q must be [b, s, h, d], got {:?}", q.shape()),
        ));
    };
    super::expect_shape(op, "k", k, q.shape())?;
    super::expect_shape(op, "v", v, q.shape())?;
    let (qs, ks, vs) = (
        super::f32_slice(op, q)?,
        super::f32_slice(op, k)?,
        super::f32_slice(op, v)?,
    );
    let mut out = vec![0.0f32; b * s * h * d];
    cpu::bidirectional_attention(qs, ks, vs, [b, s, h, d], scale, &mut out);
    Tensor::from_vec(out, &[b, s, h, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn bidirectional_attention_refuses_mismatched_or_non_4d_inputs() {
        let q = Tensor::zeros(DType::F32, &[1, 5, 2, 4]);
        let k = Tensor::zeros(DType::F32, &[1, 6, 2, 4]);
        let err = bidirectional_attention(&q, &k, &q, 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[1, 6, 2, 4]") && err.contains("[1, 5, 2, 4]"),
            "{err}"
        );
        let flat = Tensor::zeros(DType::F32, &[5, 8]);
        assert!(bidirectional_attention(&flat, &flat, &flat, 1.0).is_err());
        let half = Tensor::zeros(DType::BF16, &[1, 5, 2, 4]);
        assert!(bidirectional_attention(&half, &half, &half, 1.0).is_err());
    }

    #[test]
    fn identical_keys_average_the_values_of_every_position() {
        // With equal scores every query gets the mean of the values, whatever the scale.
        let q = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3, 1, 1]).unwrap();
        let k = Tensor::from_vec(vec![0.0f32; 3], &[1, 3, 1, 1]).unwrap();
        let v = Tensor::from_vec(vec![3.0f32, 6.0, 9.0], &[1, 3, 1, 1]).unwrap();
        let o = bidirectional_attention(&q, &k, &v, 0.7).unwrap();
        for x in o.as_slice::<f32>().unwrap() {
            assert!((x - 6.0).abs() < 1e-6, "{x}");
        }
    }
}
