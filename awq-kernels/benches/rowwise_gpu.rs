//! GPU row and element kernels (norms, activations, rotary, the q|k|v split into the cache, copies) on the
//! model shapes, as bytes moved per second against the copy bandwidth that `scripts/gpu/torch_peer.py`
//! measures in the same job (which also times torch's own versions of the ops it has: `torch_row`).
//!
//! `cargo bench -p awq-kernels --features cuda --bench rowwise_gpu [-- --quick]`. bf16 (the checkpoints'
//! dtype), random data; timing as the other GPU benches (L2 flush before each call, CUDA events, median
//! of 25 after 3 warm-ups). Bytes = what the op must read and write at least (weights of one row, reused
//! by every row, not counted). The one-row cells are the decode step's calls: launch-bound, so they are
//! the per-launch floor, not a bandwidth. One line per cell:
//! `RESULT {"impl":"row","op":"add_rms_norm","shape":"4096x8192","dtype":"bf16","us":..,"bytes":..,"tbps":..}`.
//! `--quick` skips the one-row cells.

use std::sync::Arc;

use awq_kernels::cuda::timing::{flushed_median_us, random_uniform};
use awq_kernels::cuda::Gpu;
use awq_kernels::kv_cache::{KvCacheConfig, PagedKvCache};
use awq_kernels::ops::activation::{gelu, silu_mul, silu_mul_halves};
use awq_kernels::ops::embedding::embedding;
use awq_kernels::ops::norm::{add_rms_norm, layer_norm, rms_norm};
use awq_kernels::ops::rope::{rope_inplace_prepared, RopeInputs};
use awq_kernels::ops::{add_inplace, scatter_rows};
use awq_kernels::{DType, Device, Result};

const WARMUP: usize = 3;
const TIMED: usize = 25;
const DT: DType = DType::BF16;

/// Qwen2.5-72B: hidden 8192, MLP 29568, 64 query / 8 KV heads of 128; InternViT-6B: 13 tiles of 1025
/// tokens, hidden 3200, MLP 12800.
const HIDDEN: usize = 8192;
const MLP: usize = 29568;
const HEADS: usize = 64;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const VIT_ROWS: usize = 13 * 1025;
const VIT_HIDDEN: usize = 3200;
const VIT_MLP: usize = 12800;

fn report(op: &str, shape: &str, us: f64, bytes: usize) {
    let tbps = bytes as f64 / (us * 1e-6) / 1e12;
    println!(
        "RESULT {{\"impl\":\"row\",\"op\":\"{op}\",\"shape\":\"{shape}\",\"dtype\":\"{DT}\",\"us\":{us:.2},\"bytes\":{bytes},\"tbps\":{tbps:.3}}}"
    );
}

fn time(gpu: &Arc<Gpu>, call: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    flushed_median_us(gpu, WARMUP, TIMED, call)
}

/// The cells at `rows` token rows (prefill-sized, or 1 for decode).
fn cells(gpu: &Arc<Gpu>, rows: usize) -> Result<()> {
    let e = DT.size();
    let shape = |w: usize| format!("{rows}x{w}");
    let x = random_uniform(gpu, &[rows, HIDDEN], DT, 1)?;
    let w = random_uniform(gpu, &[HIDDEN], DT, 2)?;

    let us = time(gpu, |_| rms_norm(&x, &w, 1e-6).map(drop))?;
    report("rms_norm", &shape(HIDDEN), us, 2 * rows * HIDDEN * e);

    let mut resid = random_uniform(gpu, &[rows, HIDDEN], DT, 3)?;
    let us = time(gpu, |_| add_rms_norm(&mut resid, &x, &w, 1e-6).map(drop))?;
    report("add_rms_norm", &shape(HIDDEN), us, 4 * rows * HIDDEN * e);

    let us = time(gpu, |_| add_inplace(&mut resid, &x))?;
    report("add_inplace", &shape(HIDDEN), us, 3 * rows * HIDDEN * e);

    let gate_up = random_uniform(gpu, &[rows, 2 * MLP], DT, 4)?;
    let us = time(gpu, |_| silu_mul_halves(&gate_up).map(drop))?;
    report("silu_mul_halves", &shape(2 * MLP), us, 3 * rows * MLP * e);

    let (g, u) = (
        random_uniform(gpu, &[rows, MLP], DT, 5)?,
        random_uniform(gpu, &[rows, MLP], DT, 6)?,
    );
    let us = time(gpu, |_| silu_mul(&g, &u).map(drop))?;
    report("silu_mul", &shape(MLP), us, 3 * rows * MLP * e);

    // Rotary on q in place, and the fused q|k|v split + rotary + cache write of a forward pass.
    let positions: Vec<usize> = (0..rows).map(|i| 1000 + i).collect();
    let rope = RopeInputs::new(&positions, HEAD_DIM, 1e6, Device::Cuda(0))?;
    let mut q = random_uniform(gpu, &[rows, HEADS, HEAD_DIM], DT, 7)?;
    let us = time(gpu, |_| rope_inplace_prepared(&mut q, &rope))?;
    report(
        "rope",
        &format!("{rows}x{HEADS}x{HEAD_DIM}"),
        us,
        2 * rows * HEADS * HEAD_DIM * e,
    );

    let width = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
    let qkv = random_uniform(gpu, &[rows, width], DT, 8)?;
    let mut cache = PagedKvCache::new_on(
        KvCacheConfig {
            layers: 1,
            kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            block_size: 16,
            num_blocks: rows.div_ceil(16),
        },
        Device::Cuda(0),
        DT,
    )?;
    let slots = cache.prepare_slots(&(0..rows).collect::<Vec<_>>())?;
    let us = time(gpu, |_| {
        cache
            .write_qkv_rope(0, &qkv, HEADS, &rope, &slots)
            .map(drop)
    })?;
    report("qkv_rope_write", &shape(width), us, 2 * rows * width * e);

    // The embedding gather from a 32k-row table (the real one has 152k rows; the rows read are what count).
    let table = random_uniform(gpu, &[32768, HIDDEN], DT, 9)?;
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 7919) % 32768).collect();
    let us = time(gpu, |_| embedding(&ids, &table).map(drop))?;
    report("embedding", &shape(HIDDEN), us, 2 * rows * HIDDEN * e);
    Ok(())
}

/// InternViT-6B's row ops on 13 tiles, and the image rows scattered into the prompt's embeddings.
fn vision_cells(gpu: &Arc<Gpu>) -> Result<()> {
    let e = DT.size();
    let x = random_uniform(gpu, &[VIT_ROWS, VIT_HIDDEN], DT, 11)?;
    let (w, b) = (
        random_uniform(gpu, &[VIT_HIDDEN], DT, 12)?,
        random_uniform(gpu, &[VIT_HIDDEN], DT, 13)?,
    );
    let us = time(gpu, |_| layer_norm(&x, &w, &b, 1e-6).map(drop))?;
    report(
        "layer_norm",
        &format!("{VIT_ROWS}x{VIT_HIDDEN}"),
        us,
        2 * VIT_ROWS * VIT_HIDDEN * e,
    );
    let h = random_uniform(gpu, &[VIT_ROWS, VIT_MLP], DT, 14)?;
    let us = time(gpu, |_| gelu(&h).map(drop))?;
    report(
        "gelu",
        &format!("{VIT_ROWS}x{VIT_MLP}"),
        us,
        2 * VIT_ROWS * VIT_MLP * e,
    );
    // 13 tiles of 256 image tokens into a 3392-row prompt (64 question tokens after them).
    let image_rows = 13 * 256;
    let mut prompt = random_uniform(gpu, &[image_rows + 64, HIDDEN], DT, 15)?;
    let src = random_uniform(gpu, &[image_rows, HIDDEN], DT, 16)?;
    let rows: Vec<usize> = (2..2 + image_rows).collect();
    let us = time(gpu, |_| scatter_rows(&mut prompt, &rows, &src))?;
    report(
        "scatter_rows",
        &format!("{image_rows}x{HIDDEN}"),
        us,
        2 * image_rows * HIDDEN * e,
    );
    Ok(())
}

fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU here ({e}); row-kernel GPU bench skipped");
            return Ok(());
        }
    };
    eprintln!("row-kernel GPU bench on {}", gpu.name());
    cells(&gpu, 4096)?;
    vision_cells(&gpu)?;
    if !quick {
        cells(&gpu, 1)?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("row-kernel GPU bench failed: {e}");
        std::process::exit(1);
    }
}
