//! GPU AWQ linear on the Qwen2.5-72B layer shapes, next to `scripts/gpu/torch_peer.py` (cuBLAS fp16 and the
//! copy bandwidth, run on the same GPU in the same job).
//!
//! `cargo bench -p awq-kernels --features cuda --bench awq_gpu [-- --quick]`. Random weights (the kernels'
//! speed does not depend on the values), three weight copies rotated so that no timing is an L2 hit, CUDA
//! events around each call, median of 25 after 3 warm-up calls. As in `triton.testing.do_bench` (the torch
//! peer), a 256 MB memset runs before each timed call: it flushes L2 and keeps the GPU busy while the host
//! enqueues the call, so the start event fires when the GPU reaches the call, not while it waits for the host
//! (with an idle GPU the host's launch latency, several microseconds, would be timed too). One line per cell:
//! `RESULT {"impl":"awq","k":8192,"n":10240,"m":1,"dtype":"f16","us":12.34,...}`; at m = 64 and 256 both
//! paths are also printed (`awq_stream`, `awq_dequant_gemm`) to check the threshold of `choose_path`, and at every
//! m ≤ 64 the cp.async-pipelined streaming kernel (`awq_pipe`) beside the dispatched one.
//! `--quick` runs m ∈ {1, 16, 1024} only.

use std::sync::Arc;

use awq_kernels::cuda::Gpu;
use awq_kernels::ops::awq::cuda::{
    awq_linear_with, AwqFloat, AwqGpuWeights, AwqPath, Repacked, STREAM_MAX_M,
};
use awq_kernels::DType;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::sys::CUevent_flags;
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
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (ns, ng) = (n.div_ceil(64), k / GROUP);
    let qw: Vec<u32> = (0..ns * (k / 16) * 128).map(|_| rng.gen()).collect();
    let scales: Vec<u16> = (0..ns * ng * 64)
        .map(|_| {
            let s: f32 = rng.gen_range(0.002..0.03);
            match dtype {
                DType::BF16 => bf16::from_f32(s).to_bits(),
                _ => f16::from_f32(s).to_bits(),
            }
        })
        .collect();
    let zeros: Vec<u32> = (0..ns * ng * 8).map(|_| rng.gen()).collect();
    let r = Repacked {
        qw,
        scales,
        zeros,
        k,
        n,
        group: GROUP,
        dtype,
    };
    Ok(AwqGpuWeights::from_repacked(gpu, &r)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median microseconds of `awq_linear_with(path)` over rotating weight copies.
fn time<T: AwqFloat>(gpu: &Arc<Gpu>, ws: &[AwqGpuWeights], m: usize, path: AwqPath) -> Res<f64>
where
    CudaBlas: Gemm<T>,
{
    let (k, n) = (ws[0].k(), ws[0].n());
    let stream = gpu.stream();
    let mut rng = ChaCha8Rng::seed_from_u64(m as u64);
    let x: Vec<T> = (0..m * k)
        .map(|_| T::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect();
    let xd = stream.clone_htod(&x).map_err(err)?;
    let mut yd = stream.alloc_zeros::<T>(m * n).map_err(err)?;
    let mut flush = stream.alloc_zeros::<u8>(256 << 20).map_err(err)?;
    let ctx = gpu.context();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(err)?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(err)?;
    let mut times = Vec::with_capacity(TIMED);
    for i in 0..WARMUP + TIMED {
        let w = &ws[i % ws.len()];
        stream.memset_zeros(&mut flush).map_err(err)?;
        start.record(stream).map_err(err)?;
        awq_linear_with(gpu, &xd.as_view(), m, w, None, &mut yd.as_view_mut(), path)?;
        end.record(stream).map_err(err)?;
        let ms = start.elapsed_ms(&end).map_err(err)?;
        if i >= WARMUP {
            times.push(ms as f64 * 1e3);
        }
    }
    gpu.synchronize()?;
    Ok(median(times))
}

fn report(name: &str, k: usize, n: usize, m: usize, dtype: &str, us: f64, weight_bytes: usize) {
    let tbps = weight_bytes as f64 / (us * 1e-6) / 1e12;
    let tflops = 2.0 * (m * k * n) as f64 / (us * 1e-6) / 1e12;
    println!(
        "RESULT {{\"impl\":\"{name}\",\"k\":{k},\"n\":{n},\"m\":{m},\"dtype\":\"{dtype}\",\"us\":{us:.2},\"weight_tbps\":{tbps:.3},\"tflops\":{tflops:.1}}}"
    );
}

fn run() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU here ({e}); AWQ GPU bench skipped");
            return Ok(());
        }
    };
    eprintln!("AWQ GPU bench on {}", gpu.name());
    let ms: &[usize] = if quick {
        &[1, 16, 1024]
    } else {
        &[1, 4, 16, 64, 256, 1024, 4096]
    };
    for (si, &(k, n)) in SHAPES.iter().enumerate() {
        let first = random_weights(&gpu, k, n, DType::F16, si as u64)?;
        let mut ws = vec![first];
        for _ in 1..COPIES {
            let c = ws[0].try_clone(&gpu)?;
            ws.push(c);
        }
        let bytes = ws[0].device_bytes();
        for &m in ms {
            let us = time::<f16>(&gpu, &ws, m, AwqPath::Auto)?;
            report("awq", k, n, m, "f16", us, bytes);
            // The cp.async-pipelined streaming kernel beside the dispatched one, on every decode shape.
            if m <= STREAM_MAX_M {
                let us = time::<f16>(&gpu, &ws, m, AwqPath::Pipe)?;
                report("awq_pipe", k, n, m, "f16", us, bytes);
            }
            if m == 64 || m == 256 {
                let us = time::<f16>(&gpu, &ws, m, AwqPath::DequantGemm)?;
                report("awq_dequant_gemm", k, n, m, "f16", us, bytes);
                if m <= STREAM_MAX_M {
                    let us = time::<f16>(&gpu, &ws, m, AwqPath::Stream)?;
                    report("awq_stream", k, n, m, "f16", us, bytes);
                }
            }
        }
        drop(ws);
        if si == 0 {
            let first = random_weights(&gpu, k, n, DType::BF16, 100)?;
            let mut wb = vec![first];
            for _ in 1..COPIES {
                let c = wb[0].try_clone(&gpu)?;
                wb.push(c);
            }
            for m in [1, 1024] {
                let us = time::<bf16>(&gpu, &wb, m, AwqPath::Auto)?;
                report("awq", k, n, m, "bf16", us, wb[0].device_bytes());
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("AWQ GPU bench failed: {e}");
        std::process::exit(1);
    }
}
