//! GPU attention on the model shapes, next to `scripts/gpu/torch_peer.py` (torch
//! `scaled_dot_product_attention`, run on the same GPU in the same job).
//!
//! `cargo bench -p awq-kernels --features cuda --bench attention_gpu [-- --quick]`. Cases:
//!  - `vit6b_tiles`: InternViT-6B on 13 tiles, 13 sequences x 1025 tokens, 25 heads, d 128, non-causal;
//!  - `qwen72b_prefill`: Qwen2.5-72B prefill of 4096 tokens, 64 query / 8 KV heads, d 128, causal, keys
//!    contiguous (`flash`) and read through the paged cache's block tables (`flash_paged`, 16-token blocks);
//!    `flash` is the CTA tile the launcher picks for the batch, `flash/r64` and `flash/r128` each tile forced;
//!  - `qwen72b_decode`: one decode step for batch 1 and 32 at contexts 1k, 8k, 32k (64 / 8 heads, d 128),
//!    paged cache with 16-token blocks in shuffled order.
//!
//! Random data (uniform, so no timing is of zeros) in bf16 (the checkpoints' dtype), the prefill also in
//! f16. CUDA events around each call, median of 25 after 3 warm-ups; a 256 MB memset before each call
//! flushes L2 and keeps the GPU busy while the host enqueues (as `triton.testing.do_bench`, the peer's
//! timer, does). Metadata (sequence tables, decode plan) is uploaded once, outside the timing.
//! One line per cell, e.g.
//! `RESULT {"impl":"flash","case":"qwen72b_prefill","b":1,"s":4096,"ctx":4096,"h":64,"h_kv":8,"d":128,
//! "causal":true,"dtype":"bf16","us":..,"tflops":..,"kv_tbps":..}`:
//! FLOPs = 4·h·d·(query-key pairs seen) (QKᵀ and PV, 2 each), KV bytes = the keys and values a kernel
//! must read at least once (2·b·ctx·h_kv·d·2). `--quick` skips the 32k decode at batch 32.

use std::sync::Arc;

use awq_kernels::cuda::attention::{
    decode_attention_into, flash_attention_into, flash_attention_tile_into, AttnBatch, DecodePlan,
    FlashTile,
};
use awq_kernels::cuda::buffer::GpuBuffer;
use awq_kernels::cuda::flash_tile::{self, ShapeClass};
use awq_kernels::cuda::timing::{flushed_median_us, random_uniform};
use awq_kernels::cuda::Gpu;
use awq_kernels::ops::attention::{AttnSeq, SeqRows};
use awq_kernels::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const WARMUP: usize = 3;
const TIMED: usize = 25;
const BLOCK: usize = 16;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Median microseconds of `call`, each after an L2-flushing memset.
fn time(gpu: &Arc<Gpu>, mut call: impl FnMut() -> awq_kernels::Result<()>) -> Res<f64> {
    Ok(flushed_median_us(gpu, WARMUP, TIMED, |_| call())?)
}

struct Cell<'a> {
    imp: &'a str,
    case: &'a str,
    b: usize,
    s: usize,
    ctx: usize,
    h: usize,
    h_kv: usize,
    d: usize,
    causal: bool,
    dtype: DType,
    /// Query-key pairs seen, per head.
    pairs: f64,
    extra: String,
}

fn report(c: &Cell, us: f64) {
    let secs = us * 1e-6;
    let tflops = 4.0 * (c.h * c.d) as f64 * c.pairs / secs / 1e12;
    let kv_bytes = 2.0 * (c.b * c.ctx * c.h_kv * c.d * 2) as f64;
    println!(
        "RESULT {{\"impl\":\"{}\",\"case\":\"{}\",\"b\":{},\"s\":{},\"ctx\":{},\"h\":{},\"h_kv\":{},\"d\":{},\"causal\":{},\"dtype\":\"{}\",\"us\":{us:.2},\"tflops\":{tflops:.1},\"kv_tbps\":{:.3}{}}}",
        c.imp, c.case, c.b, c.s, c.ctx, c.h, c.h_kv, c.d, c.causal, c.dtype,
        kv_bytes / secs / 1e12, c.extra
    );
}

/// Flash prefill over `b` sequences of `s` tokens, keys contiguous or (`paged`) in a shuffled cache.
#[allow(clippy::too_many_arguments)]
fn prefill(
    gpu: &Arc<Gpu>,
    case: &str,
    b: usize,
    s: usize,
    h: usize,
    h_kv: usize,
    causal: bool,
    dtype: DType,
    paged: bool,
) -> Res<()> {
    let d = 128;
    let t = b * s;
    let q = random_uniform(gpu, &[t, h, d], dtype, 1)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = GpuBuffer::zeros(gpu, dtype, q.elem_count())?;
    let (k, v, batch);
    if paged {
        let per_seq = s.div_ceil(BLOCK);
        let mut blocks: Vec<u32> = (0..(b * per_seq) as u32).collect();
        blocks.shuffle(&mut ChaCha8Rng::seed_from_u64(4));
        let tables: Vec<Vec<u32>> = blocks.chunks(per_seq).map(|c| c.to_vec()).collect();
        let slots = b * per_seq * BLOCK;
        k = random_uniform(gpu, &[slots, h_kv * d], dtype, 2)?;
        v = random_uniform(gpu, &[slots, h_kv * d], dtype, 3)?;
        let seqs: Vec<AttnSeq> = (0..b)
            .map(|i| AttnSeq {
                blocks: &tables[i],
                q_start: i * s,
                q_len: s,
                kv_len: s,
            })
            .collect();
        batch = AttnBatch::paged(gpu, &seqs, BLOCK)?;
    } else {
        k = random_uniform(gpu, &[t, h_kv, d], dtype, 2)?;
        v = random_uniform(gpu, &[t, h_kv, d], dtype, 3)?;
        let seqs: Vec<SeqRows> = (0..b)
            .map(|i| SeqRows {
                q_start: i * s,
                q_len: s,
                k_start: i * s,
                k_len: s,
            })
            .collect();
        batch = AttnBatch::contiguous(gpu, &seqs)?;
    }
    let pairs = if causal {
        (b * s * (s + 1) / 2) as f64
    } else {
        (b * s * s) as f64
    };
    // What a model runs (the launcher's tile for the batch: timed on this GPU at its first call, one of
    // the warm-ups), then, keys contiguous, each tile forced.
    let class = ShapeClass::of(s, b, h, d, dtype, causal, paged);
    let forced: &[FlashTile] = if paged {
        &[]
    } else {
        &[FlashTile::Rows64, FlashTile::Rows128]
    };
    for tile in std::iter::once(None).chain(forced.iter().copied().map(Some)) {
        let us = time(gpu, || match tile {
            None => flash_attention_into(&q, &k, &v, h_kv, &batch, causal, scale, &mut out),
            Some(tile) => {
                flash_attention_tile_into(&q, &k, &v, h_kv, &batch, causal, scale, tile, &mut out)
            }
        })?;
        let ran = match tile {
            Some(tile) => tile,
            None => flash_tile::current(gpu, class)?,
        };
        let imp = match (paged, tile) {
            (true, _) => "flash_paged".to_string(),
            (false, None) => "flash".to_string(),
            (false, Some(t)) => format!("flash/r{}", t.rows()),
        };
        report(
            &Cell {
                imp: &imp,
                case,
                b,
                s,
                ctx: s,
                h,
                h_kv,
                d,
                causal,
                dtype,
                pairs,
                extra: format!(",\"tile\":{}", ran.rows()),
            },
            us,
        );
    }
    Ok(())
}

/// One decode step for `b` sequences of `ctx` cached tokens (64 / 8 heads, d 128).
fn decode(gpu: &Arc<Gpu>, b: usize, ctx: usize, dtype: DType) -> Res<()> {
    let (h, h_kv, d) = (64, 8, 128);
    let per_seq = ctx.div_ceil(BLOCK);
    let mut blocks: Vec<u32> = (0..(b * per_seq) as u32).collect();
    blocks.shuffle(&mut ChaCha8Rng::seed_from_u64(5));
    let tables: Vec<Vec<u32>> = blocks.chunks(per_seq).map(|c| c.to_vec()).collect();
    let slots = b * per_seq * BLOCK;
    let kc = random_uniform(gpu, &[slots, h_kv * d], dtype, 6)?;
    let vc = random_uniform(gpu, &[slots, h_kv * d], dtype, 7)?;
    let q = random_uniform(gpu, &[b, h, d], dtype, 8)?;
    let seqs: Vec<AttnSeq> = (0..b)
        .map(|i| AttnSeq {
            blocks: &tables[i],
            q_start: i,
            q_len: 1,
            kv_len: ctx,
        })
        .collect();
    let batch = AttnBatch::paged(gpu, &seqs, BLOCK)?;
    let mut plan = DecodePlan::new(gpu, &batch, h, h_kv, d)?;
    let (splits, chunk) = (plan.splits, plan.chunk);
    let mut out = GpuBuffer::zeros(gpu, dtype, q.elem_count())?;
    let scale = 1.0 / (d as f32).sqrt();
    let us = time(gpu, || {
        decode_attention_into(&q, &kc, &vc, h_kv, &batch, &mut plan, scale, &mut out)
    })?;
    report(
        &Cell {
            imp: "decode",
            case: "qwen72b_decode",
            b,
            s: 1,
            ctx,
            h,
            h_kv,
            d,
            causal: true,
            dtype,
            pairs: (b * ctx) as f64,
            extra: format!(",\"splits\":{splits},\"chunk\":{chunk}"),
        },
        us,
    );
    Ok(())
}

fn run() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU here ({e}); attention GPU bench skipped");
            return Ok(());
        }
    };
    eprintln!("attention GPU bench on {}", gpu.name());
    prefill(
        &gpu,
        "vit6b_tiles",
        13,
        1025,
        25,
        25,
        false,
        DType::BF16,
        false,
    )?;
    for dtype in [DType::BF16, DType::F16] {
        prefill(&gpu, "qwen72b_prefill", 1, 4096, 64, 8, true, dtype, false)?;
    }
    prefill(
        &gpu,
        "qwen72b_prefill",
        1,
        4096,
        64,
        8,
        true,
        DType::BF16,
        true,
    )?;
    for b in [1, 32] {
        for ctx in [1024, 8192, 32768] {
            if quick && b == 32 && ctx == 32768 {
                continue;
            }
            decode(&gpu, b, ctx, DType::BF16)?;
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("attention GPU bench failed: {e}");
        std::process::exit(1);
    }
}
