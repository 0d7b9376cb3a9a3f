//! GPU AWQ linear on the Qwen2.5-72B layer shapes, next to `scripts/gpu/torch_peer.py` (cuBLAS fp16 and the
//! copy bandwidth, run on the same GPU in the same job).
//!
//! `cargo bench -p awq-kernels --features cuda --bench awq_gpu [-- --quick]`. Random weights (the kernels'
//! speed does not depend on the values), three weight copies rotated so that no timing is an L2 hit, CUDA
//! events around each call, median of 25 after 3 warm-up calls. As in `triton.testing.do_bench` (the torch
//! peer), a 256 MB memset runs before each timed call: it flushes L2 and keeps the GPU busy while the host
//! enqueues the call, so the start event fires when the GPU reaches the call, not while it waits for the host
//! (with an idle GPU the host's launch latency, several microseconds, would be timed too). One line per cell:
//! `RESULT {"impl":"awq","variant":"stream/spread","k":8192,"n":10240,"m":1,"dtype":"f16","us":12.34,...}`:
//! `awq` is `awq_linear` as a model calls it (the autotuner's choice, named in `variant`; its first call,
//! a warm-up, times the candidates). Beside it, every candidate forced (`awq_v:<variant>`): at every m ≤ 64
//! both streaming kernels with both plans, at m = 256 those (in row blocks) and every dequantization kernel
//! with the GEMM, at m = 1024 every dequantization kernel; at m = 64 the default dequantize + GEMM path
//! (`awq_dequant_gemm`) checks the threshold of `choose_path`. Last, one
//! `TUNED {...}` line per shape with the autotuner's own timings.
//! `--quick` runs m ∈ {1, 16, 1024} only; `--only K,N,M` one shape at one m (every candidate, f16; for a
//! profiler: `run.sh --profile`).

use std::sync::Arc;

use awq_kernels::cuda::timing::flushed_median_us;
use awq_kernels::cuda::Gpu;
use awq_kernels::ops::awq::cuda::{
    awq_linear_with, tuning_report, AwqFloat, AwqGpuWeights, AwqPath, Repacked, STREAM_MAX_M,
    STREAM_MAX_ROWS,
};
use awq_kernels::ops::awq::plan::m_tiles;
use awq_kernels::ops::awq::tune::{dequant_candidates, stream_candidates, TuneKey, Variant};
use awq_kernels::DType;
use cudarc::cublas::{CudaBlas, Gemm};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHAPES: [(usize, usize); 4] = [(8192, 10240), (8192, 8192), (8192, 59136), (29568, 8192)];
const GROUP: usize = 128;
const COPIES: usize = 3;
const WARMUP: usize = 3;
const TIMED: usize = 25;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn err(e: impl std::fmt::Debug) -> Box<dyn std::error::Error> {
    format!("{e:?}").into()
}

/// Random weights directly in the repacked layout (same bytes and the same kernels as real ones).
fn random_weights(gpu: &Gpu, k: usize, n: usize, dtype: DType, seed: u64) -> Res<AwqGpuWeights> {
    let r = Repacked::random(k, n, GROUP, dtype, seed)?;
    Ok(AwqGpuWeights::from_repacked(gpu, &r)?)
}

/// Median microseconds of `awq_linear_with(path)` over rotating weight copies.
fn time<T: AwqFloat>(gpu: &Arc<Gpu>, ws: &[AwqGpuWeights], m: usize, path: AwqPath) -> Res<f64>
where
    CudaBlas: Gemm<T>,
{
    let k = ws[0].k();
    let n = ws[0].n();
    let stream = gpu.stream();
    let mut rng = ChaCha8Rng::seed_from_u64(m as u64);
    let x: Vec<T> = (0..m * k)
        .map(|_| T::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect();
    let xd = stream.clone_htod(&x).map_err(err)?;
    let mut yd = stream.alloc_zeros::<T>(m * n).map_err(err)?;
    // Under a profiler (`--only`) a few calls of each variant are enough.
    let (warmup, timed) = if std::env::args().any(|a| a == "--only") {
        (1, 3)
    } else {
        (WARMUP, TIMED)
    };
    Ok(flushed_median_us(gpu, warmup, timed, |i| {
        let w = &ws[i % ws.len()];
        awq_linear_with(gpu, &xd.as_view(), m, w, None, &mut yd.as_view_mut(), path)
    })?)
}

fn report(name: &str, k: usize, n: usize, m: usize, dtype: &str, us: f64, weight_bytes: usize) {
    report_variant(name, "", k, n, m, dtype, us, weight_bytes)
}

#[allow(clippy::too_many_arguments)]
fn report_variant(
    name: &str,
    variant: &str,
    k: usize,
    n: usize,
    m: usize,
    dtype: &str,
    us: f64,
    weight_bytes: usize,
) {
    let tbps = weight_bytes as f64 / (us * 1e-6) / 1e12;
    let tflops = 2.0 * (m * k * n) as f64 / (us * 1e-6) / 1e12;
    println!(
        "RESULT {{\"impl\":\"{name}\",\"variant\":\"{variant}\",\"k\":{k},\"n\":{n},\"m\":{m},\"dtype\":\"{dtype}\",\"us\":{us:.2},\"weight_tbps\":{tbps:.3},\"tflops\":{tflops:.1}}}"
    );
}

/// The autotuner's choice for a call of m rows on weights `w` (after `awq_linear` ran once on them).
fn chosen(gpu: &Gpu, w: &AwqGpuWeights, m: usize) -> Res<String> {
    let key = TuneKey::new(w.k(), w.n(), w.group(), w.dtype(), m);
    Ok(tuning_report(gpu)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map_or_else(|| "default (untuned)".to_string(), |(_, t)| t.chosen.name()))
}

/// `--only K,N,M`, if given.
fn only() -> Res<Option<(usize, usize, usize)>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--only") else {
        return Ok(None);
    };
    let v: Vec<usize> = args
        .get(i + 1)
        .ok_or("--only needs K,N,M")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match v[..] {
        [k, n, m] if k % GROUP == 0 && n % 8 == 0 && m > 0 => Ok(Some((k, n, m))),
        _ => Err("--only K,N,M: K a multiple of 128, N of 8, M > 0".into()),
    }
}

fn run() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let only = only()?;
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU here ({e}); AWQ GPU bench skipped");
            return Ok(());
        }
    };
    eprintln!("AWQ GPU bench on {}", gpu.name());
    let (shapes, ms): (Vec<(usize, usize)>, Vec<usize>) = match only {
        Some((k, n, m)) => (vec![(k, n)], vec![m]),
        None if quick => (SHAPES.to_vec(), vec![1, 16, 1024]),
        None => (SHAPES.to_vec(), vec![1, 4, 16, 64, 256, 1024, 4096]),
    };
    for (si, &(k, n)) in shapes.iter().enumerate() {
        let first = random_weights(&gpu, k, n, DType::F16, si as u64)?;
        let mut ws = vec![first];
        for _ in 1..COPIES {
            let c = ws[0].try_clone(&gpu)?;
            ws.push(c);
        }
        let bytes = ws[0].device_bytes();
        for &m in &ms {
            let us = time::<f16>(&gpu, &ws, m, AwqPath::Auto)?;
            report_variant("awq", &chosen(&gpu, &ws[0], m)?, k, n, m, "f16", us, bytes);
            // Every candidate of the autotuner, forced, on the decode shapes and at m = 1024.
            let candidates: Vec<Variant> = if m <= STREAM_MAX_M {
                stream_candidates(true, m_tiles(m))
            } else if m <= STREAM_MAX_ROWS {
                let mut c = dequant_candidates();
                c.extend(stream_candidates(true, m_tiles(m)));
                c
            } else if m == 1024 || only.is_some() {
                dequant_candidates()
            } else {
                Vec::new()
            };
            for v in candidates {
                let us = time::<f16>(&gpu, &ws, m, AwqPath::Variant(v))?;
                report(&format!("awq_v:{}", v.name()), k, n, m, "f16", us, bytes);
            }
            if m == 64 {
                let us = time::<f16>(&gpu, &ws, m, AwqPath::DequantGemm)?;
                report("awq_dequant_gemm", k, n, m, "f16", us, bytes);
            }
        }
        drop(ws);
        if si == 0 && only.is_none() {
            let first = random_weights(&gpu, k, n, DType::BF16, 100)?;
            let mut wb = vec![first];
            for _ in 1..COPIES {
                let c = wb[0].try_clone(&gpu)?;
                wb.push(c);
            }
            for m in [1, 1024] {
                let us = time::<bf16>(&gpu, &wb, m, AwqPath::Auto)?;
                let v = chosen(&gpu, &wb[0], m)?;
                report_variant("awq", &v, k, n, m, "bf16", us, wb[0].device_bytes());
            }
        }
    }
    for (key, tuned) in tuning_report(&gpu)? {
        let times: Vec<String> = tuned
            .timings
            .iter()
            .map(|(v, us)| format!("\"{}\":{us:.2}", v.name()))
            .collect();
        println!(
            "TUNED {{\"k\":{},\"n\":{},\"mt\":{},\"row_blocks\":{},\"token_tiles\":{},\"dtype\":\"{}\",\"chosen\":\"{}\",\"us\":{{{}}}}}",
            key.k,
            key.n,
            key.mt,
            key.row_blocks,
            key.token_tiles,
            key.dtype,
            tuned.chosen.name(),
            times.join(",")
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("AWQ GPU bench failed: {e}");
        std::process::exit(1);
    }
}
