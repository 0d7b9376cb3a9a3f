//! Choosing one token on the CPU from a Qwen2.5 vocabulary row (151674 logits), per sampling setting: the
//! host-side cost of each decode step per sequence when the logits come back from the device.
//!
//! - `greedy`: temperature 0 (what the engine does on the device instead, with `argmax_rows`).
//! - `top_k40_t0.7`: lmdeploy's server defaults (top-k selection in O(vocab), then a sort of 40).
//! - `top_p0.9_t0.7`: top-k off, top-p 0.9 (the best tokens ranked until they hold the mass).
//! - `t1.0`: temperature only (OpenAI's defaults: no ranking at all).
//!
//! `cargo bench -p awq-kernels --bench sampling_cpu` (about 20 s).

use std::hint::black_box;
use std::time::Duration;

use awq_kernels::sampling::{Sampler, SamplingParams};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 151_674;

fn sampling(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Logits shaped like a model's: most mass on a few tokens, a long tail.
    let logits: Vec<f32> = (0..VOCAB)
        .map(|_| rng.gen_range(-4.0f32..4.0) + if rng.gen_bool(0.001) { 8.0 } else { 0.0 })
        .collect();
    let history: Vec<u32> = (0..512).map(|i| (i * 97 % VOCAB) as u32).collect();
    let settings = [
        ("greedy", SamplingParams::default()),
        (
            "top_k40_t0.7",
            SamplingParams {
                temperature: 0.7,
                top_k: 40,
                ..SamplingParams::default()
            },
        ),
        (
            "top_p0.9_t0.7",
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
        (
            "t1.0",
            SamplingParams {
                temperature: 1.0,
                ..SamplingParams::default()
            },
        ),
    ];
    let mut group = c.benchmark_group("sample_151674");
    group.measurement_time(Duration::from_secs(4));
    for (name, params) in settings {
        let mut sampler = Sampler::new(params);
        group.bench_function(name, |b| {
            b.iter(|| black_box(sampler.sample(black_box(&logits), &history)))
        });
    }
    group.finish();
}

criterion_group!(benches, sampling);
criterion_main!(benches);
