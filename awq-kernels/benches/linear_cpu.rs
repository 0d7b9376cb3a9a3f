//! CPU linear throughput on the real Qwen2.5 layer shapes, in weight bytes per second, next to the machine's
//! copy bandwidth measured in the same run.
//!
//! - `copy`: a 256 MiB f32 `copy_from_slice` split over the rayon threads; throughput counts bytes read plus
//!   bytes written (divide by 2 for "bytes copied").
//! - `awq/<shape>/m<M>`: `awq_linear`, group 128, f16 scales; throughput = qweight + qzeros + scales bytes.
//! - `dense_bf16/<shape>/m<M>`: `linear` with bf16 weights; throughput = weight bytes.
//! - `awq_from_dram/<shape>/m1`: the same AWQ linear cycling through enough copies of the weights
//!   (640 MiB) that they cannot stay in the last-level cache between calls, as in a real decode step where
//!   every layer's weights are read once; this is the figure to hold against the copy bandwidth, which also
//!   streams from memory.
//!
//! `cargo bench -p awq-kernels --bench linear_cpu` (about 2 to 3 minutes).

use std::hint::black_box;
use std::time::Duration;

use awq_kernels::ops::awq::cpu::{awq_linear, AwqWeights};
use awq_kernels::ops::linear::cpu::linear;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// (name, k = in features, n = out features).
const SHAPES: [(&str, usize, usize); 7] = [
    ("0.5b_q_896x896", 896, 896),
    ("0.5b_kv_896x128", 896, 128),
    ("0.5b_gate_up_896x4864", 896, 4864),
    ("0.5b_down_4864x896", 4864, 896),
    ("3b_q_2048x2048", 2048, 2048),
    ("3b_gate_up_2048x11008", 2048, 11008),
    ("3b_down_11008x2048", 11008, 2048),
];
const GROUP: usize = 128;
const MS: [usize; 2] = [1, 16];

fn copy(c: &mut Criterion) {
    let len = 256 << 20 >> 2; // 256 MiB of f32
    let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut dst = vec![1.0f32; len];
    let half = len.div_ceil(rayon::current_num_threads());
    let mut g = c.benchmark_group("copy");
    g.throughput(Throughput::Bytes(2 * 4 * len as u64));
    g.bench_function("256MiB_read+write", |b| {
        b.iter(|| {
            dst.par_chunks_mut(half)
                .zip(src.par_chunks(half))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&mut dst);
        })
    });
    g.finish();
}

fn awq(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut g = c.benchmark_group("awq");
    for (name, k, n) in SHAPES {
        let qweight: Vec<u32> = (0..k * n / 8).map(|_| rng.gen()).collect();
        let qzeros: Vec<u32> = (0..k / GROUP * n / 8).map(|_| rng.gen()).collect();
        let scales: Vec<f16> = (0..k / GROUP * n)
            .map(|_| f16::from_f32(rng.gen_range(0.001..0.02)))
            .collect();
        let w = AwqWeights {
            qweight: &qweight,
            qzeros: &qzeros,
            scales: &scales,
            k,
            n,
            group: GROUP,
        };
        let bytes = 4 * (qweight.len() + qzeros.len()) + 2 * scales.len();
        g.throughput(Throughput::Bytes(bytes as u64));
        for m in MS {
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![0.0f32; m * n];
            g.bench_with_input(BenchmarkId::new(name, format!("m{m}")), &m, |b, &m| {
                b.iter(|| awq_linear(black_box(&x), m, w, None, &mut y))
            });
        }
    }
    g.finish();
}

/// Bytes of weights cycled through by `awq_from_dram`: more than the largest last-level cache we run on.
const COLD_SET_BYTES: usize = 640 << 20;

fn awq_from_dram(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut g = c.benchmark_group("awq_from_dram");
    for (name, k, n) in [SHAPES[5], SHAPES[6]] {
        let bytes = 4 * (k * n / 8 + k / GROUP * n / 8) + 2 * (k / GROUP * n);
        let copies = COLD_SET_BYTES.div_ceil(bytes);
        let sets: Vec<(Vec<u32>, Vec<u32>, Vec<f16>)> = (0..copies)
            .map(|_| {
                (
                    (0..k * n / 8).map(|_| rng.gen()).collect(),
                    (0..k / GROUP * n / 8).map(|_| rng.gen()).collect(),
                    (0..k / GROUP * n)
                        .map(|_| f16::from_f32(rng.gen_range(0.001..0.02)))
                        .collect(),
                )
            })
            .collect();
        let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut y = vec![0.0f32; n];
        let mut next = 0;
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(BenchmarkId::new(name, "m1"), |b| {
            b.iter(|| {
                let (qweight, qzeros, scales) = &sets[next];
                next = (next + 1) % sets.len();
                let w = AwqWeights {
                    qweight,
                    qzeros,
                    scales,
                    k,
                    n,
                    group: GROUP,
                };
                awq_linear(black_box(&x), 1, w, None, &mut y)
            })
        });
    }
    g.finish();
}

fn dense_bf16(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut g = c.benchmark_group("dense_bf16");
    for (name, k, n) in SHAPES {
        let w: Vec<bf16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.gen_range(-0.05..0.05)))
            .collect();
        g.throughput(Throughput::Bytes(2 * w.len() as u64));
        for m in MS {
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut y = vec![0.0f32; m * n];
            g.bench_with_input(BenchmarkId::new(name, format!("m{m}")), &m, |b, &m| {
                b.iter(|| linear(black_box(&x), m, k, &w, n, None, &mut y))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = copy, awq, awq_from_dram, dense_bf16
}
criterion_main!(benches);
