//! Criterion bench of the GPU AWQ linear, beside the CPU ones (`linear_cpu`): the Qwen2.5-72B layer shapes
//! at m = 1, 16 and 1024, `awq_linear` (what a model calls: the autotuner's kernel) against the dense fp16
//! linear through cuBLAS in the same process, and the device-to-device copy bandwidth.
//!
//! `cargo bench -p awq-kernels --features cuda --bench awq_criterion_gpu` (about a minute on an H100).
//! Criterion's statistics over GPU time: every iteration is timed by CUDA events after an L2-flushing
//! memset (`FlushedTimer`, the do_bench method of `awq_gpu` and the torch peer), and the sum of those times
//! is what each sample reports (`iter_custom`), so neither the host's launch latency nor the flush counts.
//! Throughput: weight bytes per second at m ≤ 16 (memory-bound: compare with `copy`, which counts bytes
//! read + written), multiply-adds x 2 per second ("elements" = FLOPs) at m = 1024. `awq_gpu` prints the same
//! cells as tables with torch beside them; this one gives criterion's confidence intervals and baselines
//! (`--save-baseline`, `--baseline`) to compare two builds on one card. Without `--bench` (as `run.sh` calls
//! it, and `cargo test --benches`) each cell runs once, a smoke test. No GPU: prints so and exits.

use std::sync::Arc;
use std::time::Duration;

use awq_kernels::cuda::buffer::GpuBuffer;
use awq_kernels::cuda::timing::{random_uniform, FlushedTimer};
use awq_kernels::cuda::Gpu;
use awq_kernels::ops::awq::cuda::{awq_linear, AwqGpuWeights, Repacked};
use awq_kernels::ops::linear::Linear;
use awq_kernels::{DType, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;

/// (name, k = in features, n = out features): q|k|v, o, gate|up and down of Qwen2.5-72B.
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv_8192x10240", 8192, 10240),
    ("o_8192x8192", 8192, 8192),
    ("gate_up_8192x59136", 8192, 59136),
    ("down_29568x8192", 29568, 8192),
];
const MS: [usize; 3] = [1, 16, 1024];
const GROUP: usize = 128;
/// Bytes of the copy cell (each direction).
const COPY_BYTES: usize = 1 << 30;

/// GPU time of `iters` calls, each timed alone after an L2 flush.
fn gpu_time(timer: &mut FlushedTimer, iters: u64, mut call: impl FnMut()) -> Duration {
    let mut us = 0.0;
    for _ in 0..iters {
        us += timer
            .time_us(|| {
                call();
                Ok(())
            })
            .expect("timing a GPU call");
    }
    Duration::from_secs_f64(us * 1e-6)
}

fn copy(c: &mut Criterion, gpu: &Arc<Gpu>, timer: &mut FlushedTimer) {
    let stream = Arc::clone(gpu.stream());
    let src = stream.alloc_zeros::<u8>(COPY_BYTES).expect("copy source");
    let mut dst = stream.alloc_zeros::<u8>(COPY_BYTES).expect("copy target");
    let mut g = c.benchmark_group("copy");
    g.throughput(Throughput::Bytes(2 * COPY_BYTES as u64));
    g.bench_function("dtod_1GiB", |b| {
        b.iter_custom(|iters| {
            gpu_time(timer, iters, || {
                stream.memcpy_dtod(&src, &mut dst).expect("device copy")
            })
        })
    });
    g.finish();
}

fn linear_shapes(c: &mut Criterion, gpu: &Arc<Gpu>, timer: &mut FlushedTimer) {
    for (si, &(name, k, n)) in SHAPES.iter().enumerate() {
        let repacked = Repacked::random(k, n, GROUP, DType::F16, si as u64).expect("weights");
        let awq = AwqGpuWeights::from_repacked(gpu, &repacked).expect("uploading AWQ weights");
        drop(repacked);
        let dense_w =
            random_uniform(gpu, &[n, k], DType::F16, 100 + si as u64).expect("dense weights");
        let dense = Linear::dense_on_device(dense_w);
        let mut g = c.benchmark_group(format!("linear_gpu/{name}"));
        for m in MS {
            let x: Tensor = random_uniform(gpu, &[m, k], DType::F16, m as u64).expect("input");
            let mut y = GpuBuffer::zeros(gpu, DType::F16, m * n).expect("output");
            let flops = 2 * (m * k * n) as u64;
            g.throughput(if m <= 16 {
                Throughput::Bytes(awq.device_bytes() as u64)
            } else {
                Throughput::Elements(flops)
            });
            g.bench_function(BenchmarkId::new("awq", format!("m{m}")), |b| {
                let xv = x.gpu_buffer().and_then(|b| b.view::<f16>()).expect("x");
                b.iter_custom(|iters| {
                    gpu_time(timer, iters, || {
                        let mut yv = y.view_mut::<f16>().expect("y");
                        awq_linear(gpu, &xv, m, &awq, None, &mut yv).expect("awq_linear")
                    })
                })
            });
            g.throughput(if m <= 16 {
                Throughput::Bytes((n * k * 2) as u64)
            } else {
                Throughput::Elements(flops)
            });
            g.bench_function(BenchmarkId::new("cublas_fp16", format!("m{m}")), |b| {
                b.iter_custom(|iters| {
                    gpu_time(timer, iters, || {
                        // The output is freed into the caching allocator and reused by the next call.
                        dense.forward(&x).expect("dense linear");
                    })
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let gpu = match Gpu::shared() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU here ({e}); criterion GPU bench skipped");
            return;
        }
    };
    eprintln!("criterion GPU bench on {}", gpu.name());
    let mut timer = FlushedTimer::new(&gpu).expect("timer");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_millis(300))
        .configure_from_args();
    copy(&mut c, &gpu, &mut timer);
    linear_shapes(&mut c, &gpu, &mut timer);
    c.final_summary();
}
