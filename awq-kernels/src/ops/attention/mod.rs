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
