//! The GPU ops of the Qwen2 forward against their CPU implementations, on random inputs, in f32, f16 and
//! bf16. Outputs are poisoned (NaN) before every launch, so an unwritten element fails.
//! Without a GPU these tests say so and pass; with `REQUIRE_GPU=1` a missing GPU fails them.
//!
//! Tolerance: the GPU computes in f32 like the CPU and rounds once when it stores, so the difference is the
//! storage rounding of the output (half an ulp of the dtype: 2^-11 for f16, 2^-8 for bf16, relative) plus
//! f32 summation-order differences; we allow 2 ulps of the dtype relative to the output's largest magnitude
//! (and 1e-5 for f32), the FA3 rule of "at most twice the rounding of the low precision".
#![cfg(feature = "cuda")]

use awq_kernels::cuda::{buffer::poison_outputs, gpu_for_tests};
use awq_kernels::kv_cache::{BlockTable, KvCacheConfig, PagedKvCache};
use awq_kernels::ops::attention::{paged_attention, AttnSeq};
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::{
    activation::{silu_mul, silu_mul_halves},
    add_inplace,
    embedding::embedding,
    gather_rows,
    norm::rms_norm,
    patch::patches_with_positions,
    rope::{rope_inplace, rope_inplace_prepared, RopeInputs},
    split_columns3,
};
use awq_kernels::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GPU: Device = Device::Cuda(0);
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn ulp(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2f32.powi(-10),
        DType::BF16 => 2f32.powi(-7),
        _ => 1e-5,
    }
}

/// A random CPU tensor whose values are exactly representable in `dtype` (so both sides see the same input).
fn random(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_f32()
        .unwrap()
}

fn on_gpu(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(GPU).unwrap()
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, dtype: DType) {
    assert_close_at(what, gpu, cpu, dtype, 0.0);
}

/// [`assert_close`] with the tolerance taken relative to at least `min_scale`.
fn assert_close_at(what: &str, gpu: &Tensor, cpu: &Tensor, dtype: DType, min_scale: f32) {
    assert_eq!(gpu.device(), GPU, "{what}: result left the GPU");
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    let g = gpu.to_f32_vec().unwrap();
    let c = cpu.to_f32_vec().unwrap();
    let scale = c
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(min_scale)
        .max(1e-3);
    let tol = 2.0 * ulp(dtype) * scale;
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(
            a.is_finite(),
            "{what} ({dtype}): element {i} is {a} (unwritten or overflow)"
        );
        assert!(
            (a - b).abs() <= tol,
            "{what} ({dtype}) [{i}]: gpu {a} cpu {b} tol {tol}"
        );
    }
}

#[test]
fn rms_norm_silu_add_embedding_and_gather_match_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in DTYPES {
        // Widths whose rows take the 16-byte path and ones that do not (13, 1003: element by element, and
        // element counts with a tail after the last whole vector); 8192 and 8200 around the widest row
        // a block holds in registers (4 vectors a thread: 8192 16-bit values, 4096 f32), past which the
        // kernels loop over the row.
        for &(rows, width) in &[
            (1usize, 64usize),
            (7, 896),
            (33, 1000),
            (3, 13),
            (2, 1003),
            (2, 8192),
            (2, 8200),
        ] {
            let x = random(&mut rng, &[rows, width], dtype, 3.0);
            let w = random(&mut rng, &[width], dtype, 1.0);
            assert_close(
                "rms_norm",
                &rms_norm(&on_gpu(&x, dtype), &on_gpu(&w, dtype), 1e-6).unwrap(),
                &rms_norm(&x, &w, 1e-6).unwrap(),
                dtype,
            );

            let up = random(&mut rng, &[rows, width], dtype, 2.0);
            assert_close(
                "silu_mul",
                &silu_mul(&on_gpu(&x, dtype), &on_gpu(&up, dtype)).unwrap(),
                &silu_mul(&x, &up).unwrap(),
                dtype,
            );

            let mut a_gpu = on_gpu(&x, dtype);
            add_inplace(&mut a_gpu, &on_gpu(&up, dtype)).unwrap();
            let mut a_cpu = x.clone();
            add_inplace(&mut a_cpu, &up).unwrap();
            assert_close("add_inplace", &a_gpu, &a_cpu, dtype);

            let rows_wanted: Vec<usize> = (0..rows).rev().step_by(2).collect();
            assert_close(
                "gather_rows",
                &gather_rows(&on_gpu(&x, dtype), &rows_wanted).unwrap(),
                &gather_rows(&x, &rows_wanted).unwrap(),
                dtype,
            );
        }
        for width in [128, 13, 8200] {
            let table = random(&mut rng, &[50, width], dtype, 1.0);
            let ids = [3u32, 0, 49, 3, 17];
            assert_close(
                "embedding",
                &embedding(&ids, &on_gpu(&table, dtype)).unwrap(),
                &embedding(&ids, &table).unwrap(),
                dtype,
            );
        }
    }
}

#[test]
fn rope_matches_the_cpu_at_short_and_long_positions() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for dtype in DTYPES {
        // d 6 and 20: half heads of 3 and 10, not whole 16-byte vectors (the element-by-element path); 40
        // heads of 128: more heads than one block pass covers.
        for &(heads, d) in &[(14usize, 64usize), (8, 128), (3, 6), (5, 20), (40, 128)] {
            let x = random(&mut rng, &[5, heads, d], dtype, 2.0);
            let positions = [0usize, 1, 17, 4095, 30000];
            let mut g = on_gpu(&x, dtype);
            rope_inplace(&mut g, &positions, 1e6).unwrap();
            let mut c = x.clone();
            rope_inplace(&mut c, &positions, 1e6).unwrap();
            assert_close("rope", &g, &c, dtype);
        }
    }
}

#[test]
fn dense_linear_through_cublas_matches_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for dtype in DTYPES {
        for &(m, k, n, bias) in &[
            (1usize, 64usize, 8usize, true),
            (5, 896, 128, true),
            (33, 256, 1000, false),
        ] {
            let x = random(&mut rng, &[m, k], dtype, 1.0);
            let w = random(&mut rng, &[n, k], dtype, 0.1);
            let b = bias.then(|| {
                (0..n)
                    .map(|i| (i as f32 * 0.37).sin() * 0.5)
                    .collect::<Vec<f32>>()
            });
            let b = b.map(|b| {
                Tensor::from_vec(b, &[n])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_f32_vec()
                    .unwrap()
            });
            let cpu_layer = Linear::Dense {
                weight: w.clone(),
                bias: b,
            };
            let gpu_layer = cpu_layer.to_device(GPU, dtype).unwrap();
            let y = gpu_layer.forward(&on_gpu(&x, dtype)).unwrap();
            let want = cpu_layer.forward(&x).unwrap();
            // A length-k dot in f32 with the output rounded once: allow the output ulp plus k·eps_f32.
            let tol_dtype = if dtype == DType::F32 {
                DType::F32
            } else {
                dtype
            };
            assert_close(&format!("dense {m}x{k}x{n}"), &y, &want, tol_dtype);
        }
    }
}

/// Half the spacing of `dtype`'s values at |v| (the most that one round-to-nearest moves v), with the smallest
/// subnormal step below the normal range.
fn half_ulp_at(v: f32, dtype: DType) -> f32 {
    let (mantissa_bits, min_exp) = match dtype {
        DType::F16 => (10, -14),
        _ => (7, -126),
    };
    let e = if v == 0.0 {
        min_exp
    } else {
        (v.abs().log2().floor() as i32).max(min_exp)
    };
    0.5 * 2f32.powi(e - mantissa_bits)
}

#[test]
fn dense_linear_rounds_once_with_its_bias() {
    // torch's addmm adds the bias in the GEMM's f32 accumulator and rounds once. Rounding the product
    // first and then the sum with the bias errs by up to a whole ulp; the bound here is half an ulp of the
    // result plus the f32 summation error of both sides, which only the single rounding meets for every
    // element (bias and product of similar size, so that both roundings matter).
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    for dtype in [DType::F16, DType::BF16] {
        // Short dot products keep the f32 summation error (bounded here for any order and for tensor cores
        // that truncate, 4 units of f32 per term) far below the product's own rounding step.
        // One row, a few, and more than a decode batch (cuBLAS's kernels for each, which for the bias as C
        // with beta = 1 rounded twice on an H100 at m = 1 and m = 40).
        // n = 36: not a multiple of 8, so the bias kernel takes one element a thread.
        for &(m, k, n) in &[
            (1usize, 16usize, 512usize),
            (7, 64, 640),
            (40, 64, 640),
            (5, 64, 36),
        ] {
            let x = random(&mut rng, &[m, k], dtype, 1.0);
            let w = random(&mut rng, &[n, k], dtype, 0.1);
            let b = random(&mut rng, &[n], dtype, 1.0).to_f32_vec().unwrap();
            let layer = Linear::Dense {
                weight: w.clone(),
                bias: Some(b.clone()),
            };
            let y = layer
                .to_device(GPU, dtype)
                .unwrap()
                .forward(&on_gpu(&x, dtype))
                .unwrap()
                .to_f32_vec()
                .unwrap();
            let (xs, ws) = (x.to_f32_vec().unwrap(), w.to_f32_vec().unwrap());
            for r in 0..m {
                for c in 0..n {
                    let (xr, wc) = (&xs[r * k..(r + 1) * k], &ws[c * k..(c + 1) * k]);
                    let exact: f64 = xr
                        .iter()
                        .zip(wc)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        + b[c] as f64;
                    let magnitude: f64 = xr
                        .iter()
                        .zip(wc)
                        .map(|(a, b)| (*a * *b).abs() as f64)
                        .sum::<f64>()
                        + b[c].abs() as f64;
                    let f32_error = (k + 1) as f64 * 2f64.powi(-22) * magnitude;
                    let got = y[r * n + c];
                    let bound = half_ulp_at(got, dtype) as f64 + f32_error;
                    assert!(
                        (got as f64 - exact).abs() <= bound,
                        "{dtype} {m}x{k}x{n} [{r}, {c}]: got {got}, exact {exact}, bound {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn paged_attention_over_scattered_blocks_matches_the_cpu_for_prefill_and_decode() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for dtype in DTYPES {
        for &(heads, kv_heads, d) in &[
            (14usize, 2usize, 64usize),
            (8, 1, 128),
            (5, 5, 64),
            (4, 2, 16),
            (6, 3, 40),
        ] {
            let config = KvCacheConfig {
                layers: 1,
                kv_heads,
                head_dim: d,
                block_size: 4,
                num_blocks: 16,
            };
            let mut cpu_cache = PagedKvCache::new(config);
            let mut gpu_cache = PagedKvCache::new_on(config, GPU, dtype).unwrap();
            // Two sequences; a third table takes blocks in between so the tables are not contiguous.
            let (mut a, mut b, mut filler) =
                (BlockTable::new(), BlockTable::new(), BlockTable::new());
            let (len_a, len_b) = (11usize, 6usize);
            // Both pools hand out the same block numbers for the same sequence of reservations.
            let mut reserve = |t: &mut BlockTable, len: usize| {
                gpu_cache.reserve(&mut t.clone(), len).unwrap();
                cpu_cache.reserve(t, len).unwrap();
            };
            reserve(&mut a, 3);
            reserve(&mut filler, 5);
            reserve(&mut b, len_b);
            reserve(&mut a, len_a);
            let stride = kv_heads * d;
            for (table, len) in [(&a, len_a), (&b, len_b)] {
                let k = random(&mut rng, &[len, stride], dtype, 1.0);
                let v = random(&mut rng, &[len, stride], dtype, 1.0);
                let slots = cpu_cache.slots(table, 0, len).unwrap();
                cpu_cache.write_rows(0, &k, &v, &slots).unwrap();
                gpu_cache
                    .write_rows(0, &on_gpu(&k, dtype), &on_gpu(&v, dtype), &slots)
                    .unwrap();
            }
            // a: the last 4 of its 11 tokens as queries (prefill chunk); b: its last token (decode).
            let q = random(&mut rng, &[5, heads, d], dtype, 1.0);
            let seqs = [
                AttnSeq {
                    blocks: a.blocks(),
                    q_start: 0,
                    q_len: 4,
                    kv_len: len_a,
                },
                AttnSeq {
                    blocks: b.blocks(),
                    q_start: 4,
                    q_len: 1,
                    kv_len: len_b,
                },
            ];
            let scale = 1.0 / (d as f32).sqrt();
            let g = paged_attention(&on_gpu(&q, dtype), &gpu_cache, 0, &seqs, scale).unwrap();
            let c = paged_attention(&q, &cpu_cache, 0, &seqs, scale).unwrap();
            // f16/bf16 go through the tensor-core kernels, which round the softmax weights to the dtype
            // before P·V (as FlashAttention does): up to one unit roundoff times the largest value (1 here)
            // on top of the output rounding, so the tolerance is taken relative to max |v| = 1.
            assert_close_at(
                &format!("attention h{heads}/kv{kv_heads}/d{d}"),
                &g,
                &c,
                dtype,
                1.0,
            );
        }
    }
}

#[test]
fn argmax_rows_on_the_gpu_equals_the_cpu_choice_with_ties_nan_and_a_full_vocabulary() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for dtype in DTYPES {
        for (rows, width) in [(1usize, 1usize), (3, 31), (5, 1000), (16, 151_674)] {
            let mut values: Vec<f32> = (0..rows * width)
                .map(|_| (rng.gen_range(-8.0f32..8.0) * 4.0).round() / 4.0) // coarse: ties happen
                .collect();
            // Row 0's largest value sits twice, NaNs in the last row, a row of -inf when there are 3.
            if width > 2 {
                values[width - 1] = 100.0;
                values[1] = 100.0;
                values[(rows - 1) * width] = f32::NAN;
            }
            if rows >= 3 {
                values[2 * width..3 * width].fill(f32::NEG_INFINITY);
            }
            let cpu = Tensor::from_vec(values, &[rows, width])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = awq_kernels::sampling::argmax_rows(&cpu).unwrap();
            let gpu = cpu.to_device(GPU).unwrap();
            let got = awq_kernels::sampling::argmax_rows(&gpu).unwrap();
            assert_eq!(got, want, "{dtype} {rows}x{width}");
            if width > 2 {
                assert_eq!(got[0], 1, "the first of two equal maxima");
            }
        }
    }
}

#[test]
fn ops_over_zero_rows_do_nothing_as_on_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    // CUDA refuses a zero-sized grid; the launchers skip such launches, so an empty batch is not an error.
    for dtype in DTYPES {
        let empty = Tensor::from_vec(Vec::<f32>::new(), &[0, 64]).unwrap();
        let x = on_gpu(&empty, dtype);
        let w = on_gpu(&Tensor::from_vec(vec![1.0f32; 64], &[64]).unwrap(), dtype);
        let y = rms_norm(&x, &w, 1e-6).unwrap();
        assert_eq!(y.shape(), &[0, 64]);
        let y = awq_kernels::ops::norm::layer_norm(&x, &w, &w, 1e-6).unwrap();
        assert_eq!(y.shape(), &[0, 64]);
        let mut x2 = x.clone();
        let y = awq_kernels::ops::norm::add_rms_norm(&mut x2, &x, &w, 1e-6).unwrap();
        assert_eq!(y.shape(), &[0, 64]);
        assert_eq!(
            awq_kernels::ops::activation::gelu(&x).unwrap().shape(),
            &[0, 64]
        );
        assert_eq!(silu_mul(&x, &x).unwrap().shape(), &[0, 64]);
        assert!(awq_kernels::sampling::argmax_rows(&x).unwrap().is_empty());
    }
}

#[test]
fn converting_a_gpu_tensor_keeps_it_on_the_gpu_and_rounds_as_the_host() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    // Values beyond f16's range and below its normal range, and ordinary ones.
    let mut v: Vec<f32> = (0..1000).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
    v.extend([
        1.5,
        -2.25,
        65504.0,
        7e4,
        -1e5,
        1e-3,
        3e-6,
        0.0,
        -0.0,
        f32::INFINITY,
    ]);
    let n = v.len();
    let cpu = Tensor::from_vec(v, &[n]).unwrap();
    for from in DTYPES {
        for to in DTYPES {
            let src = cpu.to_dtype(from).unwrap();
            let g = src.to_device(GPU).unwrap().to_dtype(to).unwrap();
            assert_eq!((g.device(), g.dtype()), (GPU, to));
            let want = src.to_dtype(to).unwrap();
            assert_eq!(
                g.to_device(Device::Cpu).unwrap().bytes(),
                want.bytes(),
                "{from} -> {to}"
            );
        }
    }
}

#[test]
fn fused_projection_helpers_match_the_cpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for dtype in DTYPES {
        // q|k|v of Qwen2.5-72B-like widths (scaled down) and odd ones; gate|up halves.
        for &(rows, widths) in &[
            (1usize, [64usize, 16, 16]),
            (9, [896, 128, 128]),
            (4, [3, 5, 1]),
        ] {
            let width: usize = widths.iter().sum();
            let x = random(&mut rng, &[rows, width], dtype, 2.0);
            let got = split_columns3(&on_gpu(&x, dtype), widths).unwrap();
            let want = split_columns3(&x, widths).unwrap();
            for (g, w) in got.iter().zip(&want) {
                // A copy: exact.
                assert_eq!(g.device(), GPU);
                assert_eq!(
                    g.to_f32_vec().unwrap(),
                    w.to_f32_vec().unwrap(),
                    "{dtype} {widths:?}"
                );
            }
            let halves = random(&mut rng, &[rows, 2 * width], dtype, 3.0);
            assert_close(
                "silu_mul_halves",
                &silu_mul_halves(&on_gpu(&halves, dtype)).unwrap(),
                &silu_mul_halves(&halves).unwrap(),
                dtype,
            );
        }
    }
}

#[test]
fn the_fused_qkv_rope_write_gives_the_bits_of_the_separate_steps() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for dtype in DTYPES {
        // GQA 7:1 at d 64 (Qwen2-0.5B), 8:1 at d 128 (Qwen2.5-72B), MHA at d 32; prefill and decode rows.
        for &(t, heads, kv_heads, d) in &[
            (5usize, 14usize, 2usize, 64usize),
            (1, 64, 8, 128),
            (3, 4, 4, 32),
            (2, 6, 3, 20),
        ] {
            let config = KvCacheConfig {
                layers: 2,
                kv_heads,
                head_dim: d,
                block_size: 4,
                num_blocks: 8,
            };
            let mut fused = PagedKvCache::new_on(config, GPU, dtype).unwrap();
            let mut steps = PagedKvCache::new_on(config, GPU, dtype).unwrap();
            let mut cpu = PagedKvCache::new(config);
            let qkv = random(&mut rng, &[t, (heads + 2 * kv_heads) * d], dtype, 2.0);
            let positions: Vec<usize> = [3usize, 0, 4095, 30000, 17][..t].to_vec();
            let slots: Vec<usize> = [9usize, 30, 2, 17, 11][..t].to_vec();
            let rope_gpu = RopeInputs::new(&positions, d, 1e6, GPU).unwrap();
            let slots_gpu = fused.prepare_slots(&slots).unwrap();

            let q_fused = fused
                .write_qkv_rope(1, &on_gpu(&qkv, dtype), heads, &rope_gpu, &slots_gpu)
                .unwrap();
            // The same through the separate GPU steps.
            let stride = kv_heads * d;
            let [q, k, v] =
                split_columns3(&on_gpu(&qkv, dtype), [heads * d, stride, stride]).unwrap();
            let mut q = q.reshape(&[t, heads, d]).unwrap();
            let mut k = k.reshape(&[t, kv_heads, d]).unwrap();
            rope_inplace_prepared(&mut q, &rope_gpu).unwrap();
            rope_inplace_prepared(&mut k, &rope_gpu).unwrap();
            steps
                .write_rows_prepared(1, &k.reshape(&[t, stride]).unwrap(), &v, &slots_gpu)
                .unwrap();
            assert_eq!(q_fused.shape(), [t, heads, d]);
            let bytes = |x: &Tensor| x.to_device(Device::Cpu).unwrap().bytes().to_vec();
            assert_eq!(bytes(&q_fused), bytes(&q), "{dtype} q");
            for layer in 0..2 {
                let (fk, fv) = fused.layer(layer);
                let (sk, sv) = steps.layer(layer);
                assert_eq!(bytes(fk), bytes(sk), "{dtype} keys of layer {layer}");
                assert_eq!(bytes(fv), bytes(sv), "{dtype} values of layer {layer}");
            }
            // And against the CPU (f32), within the dtype's rounding.
            let rope_cpu = RopeInputs::new(&positions, d, 1e6, Device::Cpu).unwrap();
            let slots_cpu = cpu.prepare_slots(&slots).unwrap();
            let q_cpu = cpu
                .write_qkv_rope(1, &qkv, heads, &rope_cpu, &slots_cpu)
                .unwrap();
            assert_close("qkv_rope_write q", &q_fused, &q_cpu, dtype);
            let (fk, fv) = fused.layer(1);
            let (ck, cv) = cpu.layer(1);
            assert_close("qkv_rope_write keys", fk, ck, dtype);
            assert_close("qkv_rope_write values", fv, cv, dtype);
        }
    }
}

#[test]
fn top_k_rows_on_the_gpu_equals_the_cpu_ranking_with_ties_nan_and_signed_zeros() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for dtype in DTYPES {
        for (rows, width) in [(1usize, 5usize), (3, 1000), (4, 4099), (8, 151_674)] {
            let mut values: Vec<f32> = (0..rows * width)
                .map(|i| {
                    let v = rng.gen_range(-8.0f32..8.0);
                    if i % 2 == 0 {
                        (v * 4.0).round() / 4.0 // coarse: ties at the k-th place
                    } else {
                        v
                    }
                })
                .collect();
            // NaN, -inf, both zeros as the best values of row 0, a row of equal values.
            values[0] = f32::NAN;
            if width > 4 {
                values[1] = f32::NEG_INFINITY;
                values[2] = 20.0;
                values[3] = 20.0;
            }
            if rows > 1 {
                values[width..2 * width].fill(-0.0);
                values[width + width / 2] = 0.0;
            }
            if rows > 2 {
                values[2 * width..3 * width].fill(1.5);
            }
            let cpu = Tensor::from_vec(values, &[rows, width])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let inv_t: Vec<f32> = (0..rows)
                .map(|r| [1.0, 1.0 / 0.7, 2.5, 1.0 / 3.0][r % 4])
                .collect();
            let k: Vec<usize> = (0..rows).map(|r| [1usize, 7, 40, 64][r % 4]).collect();
            let want = awq_kernels::sampling::top_k_rows(&cpu, &inv_t, &k).unwrap();
            let got = awq_kernels::sampling::top_k_rows(&cpu.to_device(GPU).unwrap(), &inv_t, &k)
                .unwrap();
            for r in 0..rows {
                let (g, w) = (&got[r], &want[r]);
                assert_eq!(g.len(), w.len(), "{dtype} {rows}x{width} row {r}");
                for (a, b) in g.iter().zip(w) {
                    // The same tokens in the same order, and the same f32 values bit for bit.
                    assert_eq!(
                        (a.0, a.1.to_bits()),
                        (b.0, b.1.to_bits()),
                        "{dtype} {rows}x{width} row {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn synthetic_tensors_made_on_the_gpu_have_the_bits_made_on_the_host() {
    use awq_kernels::synthetic::Fill;
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Lengths around the block size and past one grid-stride pass of a small grid are covered by the
    // lengths 1, 255, 257 and 70001.
    for len in [1usize, 255, 257, 70_001] {
        for (dtype, fill) in [
            (DType::F32, Fill::Uniform(1.0)),
            (DType::F16, Fill::Uniform(0.0346)),
            (DType::BF16, Fill::Uniform(0.003)),
            (DType::BF16, Fill::Constant(0.1)),
            (DType::F16, Fill::Constant(1.0)),
            (DType::I32, Fill::Nibbles),
            (DType::U32, Fill::Nibbles),
            (DType::I32, Fill::Eights),
        ] {
            let seed = len as u64 * 31 + 7;
            let made_on_gpu = Tensor::synthetic(dtype, &[len], fill, seed)
                .unwrap()
                .to_device(GPU)
                .unwrap();
            let made_on_host = Tensor::synthetic(dtype, &[len], fill, seed).unwrap();
            assert_eq!(
                made_on_gpu.to_device(Device::Cpu).unwrap().bytes(),
                made_on_host.bytes(),
                "{dtype} {fill:?} over {len}"
            );
            // Once read on the host, moving it uploads those bytes.
            let uploaded = made_on_host.to_device(GPU).unwrap();
            assert_eq!(
                uploaded.to_device(Device::Cpu).unwrap().bytes(),
                made_on_host.bytes()
            );
        }
    }
    // The values are not all alike (a constant kernel would pass the comparison with a constant host).
    let t = Tensor::synthetic(DType::F16, &[1000], Fill::Uniform(1.0), 3).unwrap();
    let v = t.to_device(GPU).unwrap().to_f32_vec().unwrap();
    assert!(v.iter().any(|&x| x > 0.5) && v.iter().any(|&x| x < -0.5));
    assert!(Tensor::synthetic(DType::F16, &[4], Fill::Nibbles, 1).is_err());
}

#[test]
fn patch_rows_with_positions_made_on_the_gpu_have_the_bits_made_on_the_host() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // InternViT's tiles in miniature (3 channels, square, patch 14) and a rectangular image with patches of
    // 4; rows padded past the patch and the positions; random pixel values (not exact in 16 bits, so the
    // GPU must round them as the host does).
    for (shape, p, pad) in [
        ([3usize, 3, 28, 28], 14usize, 3usize),
        ([2, 2, 8, 12], 4, 0),
    ] {
        let n: usize = shape.iter().product();
        let pixels: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.5f32..2.5)).collect();
        let pixels = Tensor::from_vec(pixels, &shape).unwrap();
        let tokens = 1 + (shape[2] / p) * (shape[3] / p);
        let width = shape[1] * p * p + tokens + pad;
        let on_device = pixels.to_device(GPU).unwrap();
        for dtype in DTYPES {
            let want = patches_with_positions(&pixels, p, width, dtype).unwrap();
            let got = patches_with_positions(&on_device, p, width, dtype).unwrap();
            assert_eq!(got.device(), GPU);
            assert_eq!(got.shape(), want.shape());
            assert_eq!(got.dtype(), dtype);
            let (got, want) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
            if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{shape:?} p{p} {dtype:?}: row {} column {}: GPU {} host {}",
                    i / width,
                    i % width,
                    got[i],
                    want[i]
                );
            }
        }
    }
}
