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
        return paged_attention_gpu(q, cache, layer, seqs, scale);
    }
    let q_data = super::f32_slice(op, q)?;
    let mut out = vec![0.0f32; t * heads * d];
    cpu::paged_attention(q_data, heads, cache, layer, seqs, scale, &mut out);
    Tensor::from_vec(out, &[t, heads, d])
}

/// The GPU side of [`paged_attention`]: one decode step (every sequence one query row) runs the split-KV
/// decode kernel, anything else the flash kernel reading keys through the block tables (causal, with the
/// offset of earlier cached tokens); f32 activations or other head dims take the straightforward kernel.
#[cfg(feature = "cuda")]
fn paged_attention_gpu(
    q: &Tensor,
    cache: &PagedKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    scale: f32,
) -> Result<Tensor> {
    use crate::cuda::attention as gpu_attn;
    let cfg = cache.config();
    let (kc, vc) = cache.layer(layer);
    let (t, heads, d) = (q.dim(0), q.dim(1), q.dim(2));
    let seqs: Vec<AttnSeq> = seqs.iter().copied().filter(|s| s.q_len > 0).collect();
    if seqs.is_empty() || t == 0 {
        let gpu = std::sync::Arc::clone(&q.gpu_buffer()?.gpu);
        let zeros = crate::cuda::buffer::GpuBuffer::zeros(&gpu, q.dtype(), q.elem_count())?;
        return Tensor::from_gpu_buffer(zeros, q.shape());
    }
    if gpu_attn::flash_supported(q.dtype(), d) {
        let gpu = std::sync::Arc::clone(&q.gpu_buffer()?.gpu);
        let batch = gpu_attn::AttnBatch::paged(&gpu, &seqs, cfg.block_size)?;
        if batch.is_decode() && gpu_attn::decode_supported(q.dtype(), d, heads / cfg.kv_heads) {
            return gpu_attn::decode_attention(q, kc, vc, cfg.kv_heads, &batch, scale);
        }
        return gpu_attn::flash_attention(q, kc, vc, cfg.kv_heads, &batch, true, scale);
    }
    let mut tables = Vec::new();
    let (mut row_table, mut row_pos) = (vec![0i32; t], vec![0i32; t]);
    for s in &seqs {
        let offset = tables.len() as i32;
        tables.extend(s.blocks.iter().map(|&b| b as i32));
        for j in 0..s.q_len {
            row_table[s.q_start + j] = offset;
            row_pos[s.q_start + j] = (s.kv_len - s.q_len + j) as i32;
        }
    }
    let rows = crate::cuda::ops::AttentionRows {
        tables: &tables,
        row_table: &row_table,
        row_pos: &row_pos,
    };
    crate::cuda::ops::paged_attention(q, kc, vc, &rows, cfg.kv_heads, cfg.block_size, scale)
}

/// Attention over a variable-length batch held in memory (prefill without a cache, or the vision
/// encoder): `q` `[t, h, d]`, `k` and `v` `[t_k, h_kv, d]`; sequence `i` has query rows
/// `cu_seqlens_q[i]..cu_seqlens_q[i+1]` and key rows `cu_seqlens_k[i]..cu_seqlens_k[i+1]` (cumulative
/// offsets, `b + 1` entries each, starting at 0 and ending at `t` and `t_k`). Query head `i` uses KV head
/// `i / (h / h_kv)`. Causal: a sequence's query rows are its newest tokens, so its query row `j` sees keys
/// `0..=k_len - q_len + j` (with `k_len == q_len`, the lower triangle); this needs `k_len ≥ q_len`.
/// Non-causal: every query row sees every key of its sequence. Returns `[t, h, d]`.
/// CPU: f32. GPU: f16/bf16 with head dim 64 or 128 run the tensor-core flash kernel, anything else (f32,
/// other head dims up to 256) a straightforward kernel.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    causal: bool,
    scale: f32,
) -> Result<Tensor> {
    let op = "flash_attention";
    let &[t, h, d] = q.shape() else {
        return Err(Error::shape(
            op,
            format!("q must be [t, h, d], got {:?}", q.shape()),
        ));
    };
    let &[t_k, h_kv, dk] = k.shape() else {
        return Err(Error::shape(
            op,
            format!("k must be [t_k, h_kv, d], got {:?}", k.shape()),
        ));
    };
    super::expect_shape(op, "v", v, k.shape())?;
    if dk != d || h_kv == 0 || !h.is_multiple_of(h_kv) {
        return Err(Error::shape(
            op,
            format!(
                "q {:?} and k {:?}: head dims must match and h must be a multiple of h_kv",
                q.shape(),
                k.shape()
            ),
        ));
    }
    let seqs = varlen_seqs(op, cu_seqlens_q, cu_seqlens_k, t, t_k, causal)?;
    #[cfg(feature = "cuda")]
    if q.device() != crate::Device::Cpu {
        use crate::cuda::attention as gpu_attn;
        let gpu = std::sync::Arc::clone(&q.gpu_buffer()?.gpu);
        if seqs.is_empty() {
            let zeros = crate::cuda::buffer::GpuBuffer::zeros(&gpu, q.dtype(), q.elem_count())?;
            return Tensor::from_gpu_buffer(zeros, q.shape());
        }
        if gpu_attn::flash_supported(q.dtype(), d) {
            let batch = gpu_attn::AttnBatch::contiguous(&gpu, &seqs)?;
            return gpu_attn::flash_attention(q, k, v, h_kv, &batch, causal, scale);
        }
        return varlen_attention_fallback(q, k, v, h_kv, &seqs, causal, scale);
    }
    let (qs, ks, vs) = (
        super::f32_slice(op, q)?,
        super::f32_slice(op, k)?,
        super::f32_slice(op, v)?,
    );
    let mut out = vec![0.0f32; t * h * d];
    cpu::varlen_attention(qs, ks, vs, [h, h_kv, d], &seqs, causal, scale, &mut out);
    Tensor::from_vec(out, &[t, h, d])
}

/// [`flash_attention`] on the GPU where the flash kernel does not apply (f32, or a head dim other than 64
/// and 128: small test checkpoints): the straightforward kernel, with the keys in memory read as a paged
/// cache of block size 1 whose table is the list of key rows.
#[cfg(feature = "cuda")]
fn varlen_attention_fallback(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h_kv: usize,
    seqs: &[SeqRows],
    causal: bool,
    scale: f32,
) -> Result<Tensor> {
    let rows_of = |n: usize| {
        i32::try_from(n).map_err(|_| Error::Unsupported(format!("GPU attention over {n} rows")))
    };
    let tables: Vec<i32> = (0..rows_of(k.dim(0))?).collect();
    let (mut row_table, mut row_pos) = (vec![0i32; q.dim(0)], vec![0i32; q.dim(0)]);
    for s in seqs {
        for j in 0..s.q_len {
            row_table[s.q_start + j] = rows_of(s.k_start)?;
            // Causal: query row j is token k_len - q_len + j of its sequence; otherwise it sees every key.
            let last = if causal {
                s.k_len - s.q_len + j
            } else {
                s.k_len - 1
            };
            row_pos[s.q_start + j] = rows_of(last)?;
        }
    }
    let rows = crate::cuda::ops::AttentionRows {
        tables: &tables,
        row_table: &row_table,
        row_pos: &row_pos,
    };
    crate::cuda::ops::paged_attention(q, k, v, &rows, h_kv, 1, scale)
}

/// One sequence of a [`flash_attention`] batch: its query and key rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRows {
    pub q_start: usize,
    pub q_len: usize,
    pub k_start: usize,
    pub k_len: usize,
}

/// Checks cumulative offsets and turns them into sequences.
fn varlen_seqs(
    op: &'static str,
    cu_q: &[usize],
    cu_k: &[usize],
    t: usize,
    t_k: usize,
    causal: bool,
) -> Result<Vec<SeqRows>> {
    let ok = |cu: &[usize], total: usize| {
        cu.len() >= 2
            && cu[0] == 0
            && cu.last() == Some(&total)
            && cu.windows(2).all(|w| w[0] <= w[1])
    };
    if cu_q.len() != cu_k.len() || !ok(cu_q, t) || !ok(cu_k, t_k) {
        return Err(Error::shape(
            op,
            format!(
                "cu_seqlens_q {cu_q:?} and cu_seqlens_k {cu_k:?} must be non-decreasing offsets of the same                  number of sequences, from 0 to {t} and {t_k}"
            ),
        ));
    }
    let seqs: Vec<SeqRows> = (0..cu_q.len() - 1)
        .map(|i| SeqRows {
            q_start: cu_q[i],
            q_len: cu_q[i + 1] - cu_q[i],
            k_start: cu_k[i],
            k_len: cu_k[i + 1] - cu_k[i],
        })
        .collect();
    if let Some((i, s)) = seqs
        .iter()
        .enumerate()
        .find(|(_, s)| s.q_len > 0 && (s.k_len == 0 || (causal && s.k_len < s.q_len)))
    {
        return Err(Error::shape(
            op,
            format!(
                "sequence {i} has {} query rows and {} keys; every query needs a key (causal: k_len ≥ q_len)",
                s.q_len, s.k_len
            ),
        ));
    }
    Ok(seqs.into_iter().filter(|s| s.q_len > 0).collect())
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
    #[cfg(feature = "cuda")]
    if q.device() != crate::Device::Cpu && b * s > 0 {
        let rows = b * s;
        let cu: Vec<usize> = (0..=b).map(|i| i * s).collect();
        let flat = |x: &Tensor| x.clone().reshape(&[rows, h, d]);
        let o = flash_attention(&flat(q)?, &flat(k)?, &flat(v)?, &cu, &cu, false, scale)?;
        return o.reshape(&[b, s, h, d]);
    }
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
    fn causal_flash_attention_over_keys_in_memory_equals_paged_attention_over_the_cache() {
        // Two sequences with cached prefixes (3 new of 9 keys, 2 new of 2), 6 query heads on 2 KV heads.
        use crate::kv_cache::{BlockTable, KvCacheConfig};
        let (h, h_kv, d) = (6usize, 2usize, 4usize);
        let gen = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.731 + seed).sin()).collect()
        };
        let (t, t_k) = (5usize, 11usize);
        let q = gen(t * h * d, 0.1);
        let (k, v) = (gen(t_k * h_kv * d, 0.2), gen(t_k * h_kv * d, 0.3));
        let qt = Tensor::from_vec(q, &[t, h, d]).unwrap();
        let kt = Tensor::from_vec(k.clone(), &[t_k, h_kv, d]).unwrap();
        let vt = Tensor::from_vec(v.clone(), &[t_k, h_kv, d]).unwrap();
        let flash = flash_attention(&qt, &kt, &vt, &[0, 3, 5], &[0, 9, 11], true, 0.6).unwrap();

        let mut cache = PagedKvCache::new(KvCacheConfig {
            layers: 1,
            kv_heads: h_kv,
            head_dim: d,
            block_size: 4,
            num_blocks: 6,
        });
        let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
        cache.reserve(&mut a, 4).unwrap();
        cache.reserve(&mut b, 2).unwrap();
        cache.reserve(&mut a, 9).unwrap();
        let row = h_kv * d;
        cache.write(0, &a, 0, &k[..9 * row], &v[..9 * row]).unwrap();
        cache.write(0, &b, 0, &k[9 * row..], &v[9 * row..]).unwrap();
        let seqs = [
            AttnSeq {
                blocks: a.blocks(),
                q_start: 0,
                q_len: 3,
                kv_len: 9,
            },
            AttnSeq {
                blocks: b.blocks(),
                q_start: 3,
                q_len: 2,
                kv_len: 2,
            },
        ];
        let paged = paged_attention(&qt, &cache, 0, &seqs, 0.6).unwrap();
        let (f, p) = (
            flash.as_slice::<f32>().unwrap(),
            paged.as_slice::<f32>().unwrap(),
        );
        for (i, (x, y)) in f.iter().zip(p).enumerate() {
            assert!((x - y).abs() < 1e-6, "element {i}: {x} vs {y}");
        }
        // Offsets that do not add up, or a causal sequence with fewer keys than queries, are refused.
        assert!(flash_attention(&qt, &kt, &vt, &[0, 3, 4], &[0, 9, 11], true, 0.6).is_err());
        assert!(flash_attention(&qt, &kt, &vt, &[0, 3, 5], &[0, 10, 11], true, 0.6).is_err());
        assert!(flash_attention(&qt, &kt, &vt, &[0, 3, 5], &[0, 10, 11], false, 0.6).is_ok());
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
