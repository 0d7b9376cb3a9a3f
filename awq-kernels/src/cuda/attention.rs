//! Launchers for `kernels/attention.cu`: flash attention forward (prefill; variable-length batches, causal
//! or not, grouped-query heads, keys contiguous or in the paged cache) and split-KV decode over the paged
//! cache. f16 and bf16, head dims 64 and 128.
//!
//! A batch's sequence table ([`AttnBatch`]) is uploaded once and can serve every layer of a forward; the
//! decode workspace ([`DecodePlan`]) likewise. The `*_into` launchers write into a caller's buffer and
//! allocate nothing, so a bench times only the kernels.
//!
//! Causal convention (bottom-right, as FlashAttention's varlen API): a sequence's `q_len` query rows are
//! its newest tokens, so query row `j` sits at key position `kv_len - q_len + j` and sees keys `0..=` that
//! position. With `kv_len == q_len` this is the plain lower-triangular mask (prefill over new tokens only,
//! keys = those tokens); with earlier tokens in the paged cache (a chunked prefill, a shared prefix) the
//! same kernel reads them through the block table.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::buffer::GpuBuffer;
pub use super::flash_tile::FlashTile;
use super::flash_tile::{self, ShapeClass};
use super::launch;
use super::{cuda_error, Gpu};
use crate::ops::attention::{AttnSeq, SeqRows};
use crate::{DType, Error, Result, Tensor};

const MODULE: &str = "attention";
/// Head dims the kernels are built for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// The decode kernel puts a KV head's whole query group in the 16 rows of one mma operand.
pub const DECODE_MAX_GROUP: usize = 16;
/// Keys per tile of the flash and decode kernels (`flash::BN`, `decode::BN` in the kernel file).
const BN: usize = 64;
const THREADS: u32 = 128;
/// K/V stages of the decode ring (`decode::STAGES`).
const DECODE_STAGES: usize = 3;

/// Whether [`flash_attention_into`] handles this dtype and head dim.
pub fn flash_supported(dtype: DType, d: usize) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && HEAD_DIMS.contains(&d)
}

/// Whether [`decode_attention_into`] handles this dtype, head dim and query group (`h / h_kv`).
pub fn decode_supported(dtype: DType, d: usize, group: usize) -> bool {
    flash_supported(dtype, d) && (1..=DECODE_MAX_GROUP).contains(&group)
}

/// A batch's sequence table on the GPU.
pub struct AttnBatch {
    /// i32 `[4][b]`: q_start, q_len, kv_start (first key row, or offset of the block table in `tables`),
    /// kv_len.
    meta: GpuBuffer,
    /// i32: every sequence's block table, concatenated (one unused entry when contiguous).
    tables: GpuBuffer,
    /// Tokens per cache block; 0 when the keys are contiguous rows.
    block_size: usize,
    b: usize,
    max_q_len: usize,
    max_kv_len: usize,
    /// Query rows the batch needs in `q` (max of q_start + q_len).
    q_rows: usize,
    /// Key rows the batch needs in `k` and `v` (max key row + 1, or (max block + 1) · block_size).
    k_rows: usize,
    /// Whether every row `0..q_rows` belongs to some sequence (otherwise outputs start zeroed).
    covers_all_rows: bool,
    /// Whether every sequence has one query row (a decode step).
    all_single_row: bool,
    /// Whether every sequence has at least as many keys as query rows (needed by the causal mask).
    keys_cover_queries: bool,
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Unsupported(format!("attention: {what} {v} exceeds i32")))
}

impl AttnBatch {
    fn build(
        gpu: &Arc<Gpu>,
        rows: &[(usize, usize, usize, usize)],
        tables: &[i32],
        block_size: usize,
        k_rows: usize,
    ) -> Result<AttnBatch> {
        let b = rows.len();
        if b == 0 {
            return Err(Error::shape("attention", "a batch needs a sequence"));
        }
        let mut meta = vec![0i32; 4 * b];
        for (i, &(qs, ql, ks, kl)) in rows.iter().enumerate() {
            if kl == 0 {
                return Err(Error::shape(
                    "attention",
                    format!("sequence {i} has no keys"),
                ));
            }
            meta[i] = to_i32("q row", qs)?;
            meta[b + i] = to_i32("q length", ql)?;
            meta[2 * b + i] = to_i32("key start", ks)?;
            meta[3 * b + i] = to_i32("key length", kl)?;
        }
        let q_rows = rows.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        let covered: usize = rows.iter().map(|r| r.1).sum();
        let mut seen = vec![false; q_rows];
        for r in rows {
            seen[r.0..r.0 + r.1].iter_mut().for_each(|s| *s = true);
        }
        to_i32("key rows", k_rows)?;
        let tables = if tables.is_empty() { &[0][..] } else { tables };
        Ok(AttnBatch {
            meta: GpuBuffer::from_slice(gpu, &meta)?,
            tables: GpuBuffer::from_slice(gpu, tables)?,
            block_size,
            b,
            max_q_len: rows.iter().map(|r| r.1).max().unwrap_or(0),
            max_kv_len: rows.iter().map(|r| r.3).max().unwrap_or(0),
            q_rows,
            k_rows,
            covers_all_rows: covered == q_rows && seen.iter().all(|&s| s),
            all_single_row: rows.iter().all(|r| r.1 == 1),
            keys_cover_queries: rows.iter().all(|r| r.3 >= r.1),
        })
    }

    /// A batch whose keys and values are contiguous rows of `[t_k, h_kv, d]` tensors.
    pub fn contiguous(gpu: &Arc<Gpu>, seqs: &[SeqRows]) -> Result<AttnBatch> {
        let rows: Vec<_> = seqs
            .iter()
            .map(|s| (s.q_start, s.q_len, s.k_start, s.k_len))
            .collect();
        let k_rows = seqs.iter().map(|s| s.k_start + s.k_len).max().unwrap_or(0);
        AttnBatch::build(gpu, &rows, &[], 0, k_rows)
    }

    /// A batch whose keys and values are in a paged cache of `block_size`-token blocks.
    pub fn paged(gpu: &Arc<Gpu>, seqs: &[AttnSeq], block_size: usize) -> Result<AttnBatch> {
        if block_size == 0 {
            return Err(Error::shape("attention", "block size 0"));
        }
        let mut tables = Vec::new();
        let mut rows = Vec::with_capacity(seqs.len());
        let mut max_block = 0usize;
        for s in seqs {
            let needed = s.kv_len.div_ceil(block_size);
            if needed > s.blocks.len() {
                return Err(Error::shape(
                    "attention",
                    format!(
                        "{} keys need {needed} blocks, the table has {}",
                        s.kv_len,
                        s.blocks.len()
                    ),
                ));
            }
            rows.push((s.q_start, s.q_len, tables.len(), s.kv_len));
            for &blk in &s.blocks[..needed] {
                max_block = max_block.max(blk as usize);
                tables.push(to_i32("block", blk as usize)?);
            }
        }
        AttnBatch::build(
            gpu,
            &rows,
            &tables,
            block_size,
            (max_block + 1) * block_size,
        )
    }

    pub fn len(&self) -> usize {
        self.b
    }

    pub fn is_empty(&self) -> bool {
        self.b == 0
    }

    /// Whether every sequence has exactly one query row (a decode step).
    pub fn is_decode(&self) -> bool {
        self.all_single_row
    }

    /// Whether every row of `q` up to the last sequence's belongs to a sequence.
    pub fn covers_all_rows(&self) -> bool {
        self.covers_all_rows
    }
}

/// The f16/bf16 kernel-name suffix of a dtype.
fn suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::DType {
            op,
            expected: DType::F16,
            got: other,
        }),
    }
}

/// Checks q `[t, h, d]`, keys and values `rows x (h_kv·d)` of q's dtype, and the batch against them.
fn check_operands(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
) -> Result<(usize, usize, usize)> {
    let &[t, h, d] = q.shape() else {
        return Err(Error::shape(
            op,
            format!("q must be [t, h, d], got {:?}", q.shape()),
        ));
    };
    if !flash_supported(q.dtype(), d) {
        return Err(Error::Unsupported(format!(
            "{op}: the GPU kernels take f16 or bf16 with head dim 64 or 128, got {} and {d}",
            q.dtype()
        )));
    }
    if h_kv == 0 || !h.is_multiple_of(h_kv) {
        return Err(Error::shape(
            op,
            format!("{h} query heads are not a multiple of {h_kv} KV heads"),
        ));
    }
    for (name, x) in [("k", k), ("v", v)] {
        if x.dtype() != q.dtype() {
            return Err(Error::DType {
                op,
                expected: q.dtype(),
                got: x.dtype(),
            });
        }
        let row = h_kv * d;
        if x.elem_count() % row != 0 || x.elem_count() / row < batch.k_rows {
            return Err(Error::shape(
                op,
                format!(
                    "{name} {:?} does not hold {} rows of {h_kv} x {d}",
                    x.shape(),
                    batch.k_rows
                ),
            ));
        }
    }
    if batch.q_rows > t {
        return Err(Error::shape(
            op,
            format!("the batch needs {} query rows, q has {t}", batch.q_rows),
        ));
    }
    Ok((t, h, d))
}

fn gpu_of(t: &Tensor) -> Result<Arc<Gpu>> {
    Ok(Arc::clone(&t.gpu_buffer()?.gpu))
}

fn launch_err(kernel: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| cuda_error(&format!("launching {kernel}"), e)
}

/// Runs `$body` with `$T` bound to the Rust element type of f16/bf16 `$dtype`.
macro_rules! half_dispatch {
    ($dtype:expr, |$T:ident| $body:block) => {
        match $dtype {
            DType::F16 => {
                type $T = f16;
                $body
            }
            _ => {
                type $T = bf16;
                $body
            }
        }
    };
}

/// Flash attention forward into `out` (`[t, h, d]`, q's dtype). Keys and values: contiguous
/// `[t_k, h_kv, d]` tensors or a layer of the paged cache `[slots, h_kv·d]`, as the batch says. The CTA
/// tile: `FLASH_TILE` if set, else 64 rows for batches with few CTAs, else the faster tile on this GPU for
/// this class of shape (timed at its first batch; `cuda/flash_tile.rs`).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_into(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
    causal: bool,
    scale: f32,
    out: &mut GpuBuffer,
) -> Result<()> {
    let gpu = gpu_of(q)?;
    let (h, d) = (q.dim(1), q.dim(2));
    let class = ShapeClass::of(
        batch.max_q_len,
        batch.b,
        h,
        d,
        q.dtype(),
        causal,
        batch.block_size > 0,
    );
    let tile = flash_tile::choose(&gpu, class, |tile| {
        flash_attention_tile_into(q, k, v, h_kv, batch, causal, scale, tile, out)
    })?;
    flash_attention_tile_into(q, k, v, h_kv, batch, causal, scale, tile, out)
}

/// [`flash_attention_into`] with the CTA tile given.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_tile_into(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
    causal: bool,
    scale: f32,
    tile: FlashTile,
    out: &mut GpuBuffer,
) -> Result<()> {
    let op = "flash_attention (GPU)";
    let (_, h, d) = check_operands(op, q, k, v, h_kv, batch)?;
    if out.len() != q.elem_count() || out.dtype() != q.dtype() {
        return Err(Error::shape(op, "output buffer does not match q"));
    }
    if causal && !batch.keys_cover_queries {
        return Err(Error::shape(
            op,
            "causal attention needs at least as many keys as query rows in every sequence",
        ));
    }
    let gpu = gpu_of(q)?;
    let sfx = suffix(op, q.dtype())?;
    let name = tile.kernel(sfx, d);
    let smem = tile.shared_bytes(d);
    let f = gpu.function_with_shared(MODULE, &name, smem)?;
    let m_blocks = batch.max_q_len.div_ceil(tile.rows()).max(1);
    let cfg = LaunchConfig {
        grid_dim: (m_blocks as u32, h as u32, batch.b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (b, bs, hh, hkv, c) = (
        batch.b as i32,
        batch.block_size as i32,
        h as i32,
        h_kv as i32,
        causal as i32,
    );
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    half_dispatch!(q.dtype(), |T| {
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(q.gpu_buffer()?.slice::<T>()?)
            .arg(k.gpu_buffer()?.slice::<T>()?)
            .arg(v.gpu_buffer()?.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(batch.meta.slice::<i32>()?)
            .arg(batch.tables.slice::<i32>()?)
            .arg(&b)
            .arg(&bs)
            .arg(&hh)
            .arg(&hkv)
            .arg(&c)
            .arg(&scale_log2);
        // SAFETY: check_operands verified that q holds every query row the batch names and k, v every key
        // row (contiguous rows or whole cache blocks); the block tables hold a block for every key
        // (AttnBatch::paged); out has q's size and dtype; the grid covers max q_len, h and b, and the
        // dynamic shared memory matches the kernel's (rows + 4·64)·d·2 bytes (opted in above).
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })
}

/// [`flash_attention_into`] with a new output `[t, h, d]`.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
    causal: bool,
    scale: f32,
) -> Result<Tensor> {
    let gpu = gpu_of(q)?;
    let mut out = new_output(&gpu, q, batch)?;
    flash_attention_into(q, k, v, h_kv, batch, causal, scale, &mut out)?;
    Tensor::from_gpu_buffer(out, q.shape())
}

fn new_output(gpu: &Arc<Gpu>, q: &Tensor, batch: &AttnBatch) -> Result<GpuBuffer> {
    if batch.covers_all_rows && batch.q_rows == q.dim(0) {
        GpuBuffer::output(gpu, q.dtype(), q.elem_count())
    } else {
        // Rows no sequence claims stay zero, as on the CPU.
        GpuBuffer::zeros(gpu, q.dtype(), q.elem_count())
    }
}

/// How a decode step splits each sequence's keys, and the workspace for the partial results.
pub struct DecodePlan {
    /// CTAs per (sequence, KV head); 1 means no combine step (otherwise the last CTA of each pair combines).
    pub splits: usize,
    /// Keys per split, a multiple of the 64-key tile.
    pub chunk: usize,
    /// f32 `[b, h, splits, d]` normalized partial outputs.
    part_o: GpuBuffer,
    /// f32 `[b, h, splits]` log2-sum-exp of each partial.
    part_lse: GpuBuffer,
    /// u32 `[b, h_kv]` arrival counters of the splits; zero between launches (the last CTA resets its own).
    counters: GpuBuffer,
    b: usize,
    h: usize,
    h_kv: usize,
    d: usize,
}

/// The split-KV tuning, in one place. Decode reads every key once and does little math per byte, so the
/// goal is enough CTAs in flight to keep HBM busy: two per SM (each 96 KB of shared memory at d = 128,
/// so two fit the 228 KB of an H100/H200 SM; with 3 stages of 32 KB two tiles are loading while one is
/// read, 128 KB in flight per SM, well above the ~40 KB an SM needs to cover HBM latency at full
/// bandwidth). Splits are added only while the
/// (sequence, KV head) pairs alone give fewer CTAs than that, and never below 128 keys per split (two
/// tiles: shorter chunks cost more in prologue and combine than they gain in parallelism).
pub fn decode_splits(sms: usize, b: usize, h_kv: usize, max_kv_len: usize) -> (usize, usize) {
    const MIN_CHUNK: usize = 128;
    let target = 2 * sms.max(1);
    let pairs = (b * h_kv).max(1);
    let max_splits = max_kv_len.div_ceil(MIN_CHUNK).max(1);
    let splits = target.div_ceil(pairs).clamp(1, max_splits);
    let chunk = max_kv_len.div_ceil(splits).div_ceil(BN).max(1) * BN;
    (max_kv_len.div_ceil(chunk).max(1), chunk)
}

impl DecodePlan {
    /// The plan for `batch` (a decode batch) with `h` query heads, `h_kv` KV heads and head dim `d`.
    pub fn new(gpu: &Arc<Gpu>, batch: &AttnBatch, h: usize, h_kv: usize, d: usize) -> Result<Self> {
        let sms = gpu.multiprocessors()?;
        let (splits, chunk) = decode_splits(sms, batch.b, h_kv, batch.max_kv_len);
        let parts = if splits > 1 { batch.b * h * splits } else { 1 };
        let pairs = if splits > 1 { batch.b * h_kv } else { 1 };
        Ok(DecodePlan {
            splits,
            chunk,
            part_o: GpuBuffer::zeros(gpu, DType::F32, parts * d)?,
            part_lse: GpuBuffer::zeros(gpu, DType::F32, parts)?,
            counters: GpuBuffer::zeros(gpu, DType::U32, pairs)?,
            b: batch.b,
            h,
            h_kv,
            d,
        })
    }
}

/// One decode step over the paged cache into `out` (`[t, h, d]`): every sequence of `batch` (a paged
/// batch) has one query row. `kc`, `vc` are one layer of the cache, `[slots, h_kv·d]`.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_into(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
    plan: &mut DecodePlan,
    scale: f32,
    out: &mut GpuBuffer,
) -> Result<()> {
    let op = "decode_attention (GPU)";
    let (_, h, d) = check_operands(op, q, kc, vc, h_kv, batch)?;
    if !batch.all_single_row || batch.block_size == 0 {
        return Err(Error::shape(
            op,
            "decode takes one query row per sequence and a paged cache",
        ));
    }
    if !decode_supported(q.dtype(), d, h / h_kv) {
        return Err(Error::Unsupported(format!(
            "{op}: query groups of at most {DECODE_MAX_GROUP} heads, got {}",
            h / h_kv
        )));
    }
    if (plan.b, plan.h, plan.h_kv, plan.d) != (batch.b, h, h_kv, d)
        || plan.chunk * plan.splits < batch.max_kv_len
    {
        return Err(Error::shape(
            op,
            "the decode plan was made for another batch",
        ));
    }
    if out.len() != q.elem_count() || out.dtype() != q.dtype() {
        return Err(Error::shape(op, "output buffer does not match q"));
    }
    let gpu = gpu_of(q)?;
    let sfx = suffix(op, q.dtype())?;
    let name = format!("decode_split_{sfx}_d{d}");
    let smem = DECODE_STAGES * 2 * BN * d * 2;
    let f = gpu.function_with_shared(MODULE, &name, smem)?;
    let cfg = LaunchConfig {
        grid_dim: (plan.splits as u32, h_kv as u32, batch.b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (b, bs, hh, hkv, chunk) = (
        batch.b as i32,
        batch.block_size as i32,
        h as i32,
        h_kv as i32,
        plan.chunk as i32,
    );
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    half_dispatch!(q.dtype(), |T| {
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(q.gpu_buffer()?.slice::<T>()?)
            .arg(kc.gpu_buffer()?.slice::<T>()?)
            .arg(vc.gpu_buffer()?.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(plan.part_o.slice_mut::<f32>()?)
            .arg(plan.part_lse.slice_mut::<f32>()?)
            .arg(plan.counters.slice_mut::<u32>()?)
            .arg(batch.meta.slice::<i32>()?)
            .arg(batch.tables.slice::<i32>()?)
            .arg(&b)
            .arg(&bs)
            .arg(&hh)
            .arg(&hkv)
            .arg(&chunk)
            .arg(&scale_log2);
        // SAFETY: as in flash_attention_into (operands checked against the batch); the group h / h_kv is at
        // most 16 rows; with splits > 1 the workspace holds b·h·splits partials of d floats and b·h_kv
        // counters, zero between launches (the plan matches this batch and these heads),
        // and chunk·splits covers the longest sequence; shared memory is the kernel's 3·2·64·d·2 bytes
        // (opted in above).
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })
}

/// [`decode_attention_into`] with a new plan and output.
pub fn decode_attention(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    h_kv: usize,
    batch: &AttnBatch,
    scale: f32,
) -> Result<Tensor> {
    let gpu = gpu_of(q)?;
    let (h, d) = (q.dim(1), q.dim(2));
    let mut plan = DecodePlan::new(&gpu, batch, h, h_kv, d)?;
    let mut out = new_output(&gpu, q, batch)?;
    decode_attention_into(q, kc, vc, h_kv, batch, &mut plan, scale, &mut out)?;
    Tensor::from_gpu_buffer(out, q.shape())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_fill_the_card_without_tiny_chunks() {
        // One sequence, 8 KV heads, 32k keys, 132 SMs: 33 splits of ~1k keys (a multiple of 64).
        let (splits, chunk) = decode_splits(132, 1, 8, 32768);
        assert_eq!(chunk % BN, 0);
        assert!(splits * chunk >= 32768 && (splits - 1) * chunk < 32768);
        assert!((32..=34).contains(&splits), "{splits}");
        // Enough (sequence, head) pairs: no split at all.
        assert_eq!(decode_splits(132, 64, 8, 8192), (1, 8192));
        // Short contexts keep at least 128 keys per split.
        let (splits, chunk) = decode_splits(132, 1, 8, 1000);
        assert!(chunk >= 128 && splits * chunk >= 1000, "{splits} x {chunk}");
        assert_eq!(decode_splits(132, 1, 8, 1), (1, 64));
    }
}
