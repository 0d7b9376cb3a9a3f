//! The GPU AWQ linear (`ops::awq::cuda`) against the CPU reference (`ops::awq::cpu`) on the same inputs.
//!
//! - The repacking (CPU, runs everywhere with feature `cuda`): reading the repacked buffers back gives exactly
//!   the CPU dequantization (scales rounded to the activation type).
//! - The dequantization kernel: bit-identical to round_T(CPU dequantization); this pins the layout as the
//!   kernels read it (nibble order, strips, scales, zeros).
//! - `awq_linear`, every path (the streaming tensor-core kernel, its cp.async-pipelined twin, dequantize +
//!   cuBLAS) and the dispatched one, on random shapes (proptest) and on fixed shapes that reach every kernel variant: m-tiles 1/2/4,
//!   one or two strips per block, split-K with 1 to 8 splits, partial last strips, groups 32..256, large m.
//!   Outputs are poisoned with NaN first; every element must be written and finite. The pipelined kernel
//!   must also give the streaming kernel's bits exactly (same plan, same order of operations).
//! - Every candidate of the autotuner forced (both streaming kernels with both plans, every dequantization
//!   kernel), and the autotuner itself on a shape large enough to be timed: it records a choice among the
//!   candidates, with a time for each, and the result stays correct.
//!
//! Tolerance (the FA3 rule: at most about twice the error of the same computation done naively in the low
//! precision). The oracle `ref` is the CPU reference in f32 on the same T-rounded inputs (its own error is
//! ~1e-6·S, S = Σ_k |x_k·w_k| + |bias|). The naive low-precision computation is `naive` = round_T(Σ_k x_k ·
//! round_T(w_k) + bias) in f64: the weight rounded to T as any f16/bf16 GEMM on dequantized weights has it,
//! exact products, one final rounding. We accept |gpu − ref| ≤ 2·|naive − ref| + 2·u·|ref| + 1e-5·S, where
//! u is T's unit roundoff: the 2·u·|ref| term allows the final rounding to land on the other neighbour of a
//! value that the naive one rounds the other way (f32 accumulation order), 1e-5·S covers f32 accumulation
//! over k ≤ 4096 and the oracle's own error. On the dequantize + cuBLAS path with a bias, cuBLAS rounds the
//! product to T before adding C = the bias rows (measured on an H200), so that path also gets 2·u·|x·w|, the
//! extra rounding of a naive "matmul, then add the bias" in T. A wrong nibble, scale or zero anywhere shifts a result by about
//! |x|·s, far above this bound for f16 and, summed over a row, for bf16.
//!
//! Without a GPU the device tests print a note and pass; `REQUIRE_GPU=1` makes that a failure.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use awq_kernels::awq_format::pack_word;
use awq_kernels::cuda::buffer::poison_outputs;
use awq_kernels::cuda::{gpu_for_tests, Gpu};
use awq_kernels::ops::awq::cpu::{self, AwqWeights};
use awq_kernels::ops::awq::cuda::{
    awq_linear, awq_linear_with, dequantize, dequantize_with, repack, tuning_report,
    unpack_dequantize, AwqFloat, AwqGpuWeights, AwqPath, PlanShape,
};
use awq_kernels::ops::awq::plan::m_tiles;
use awq_kernels::ops::awq::tune::{
    dequant_candidates, set_autotune, stream_candidates, DequantKernel, StreamKernel, SwapLoads,
    SwapTile, TuneKey, Variant,
};
use awq_kernels::ops::linear::Linear;
use awq_kernels::{DType, Device, FloatElement, Tensor};
use cudarc::cublas::{CudaBlas, Gemm};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// AutoAWQ tensors of a random layer: codes uniform in 0..16, zero points with 0 and 15 in every group,
/// positive scales like AWQ's (2e-3 .. 3e-2).
struct Layer<S> {
    qweight: Vec<u32>,
    qzeros: Vec<u32>,
    scales: Vec<S>,
    k: usize,
    n: usize,
    group: usize,
}

impl<S: FloatElement> Layer<S> {
    fn random(k: usize, n: usize, group: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ng = k / group;
        let pack = |codes: &[u32]| -> Vec<u32> {
            codes
                .chunks_exact(8)
                .map(|c| pack_word([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        };
        let q: Vec<u32> = (0..k * n).map(|_| rng.gen_range(0..16)).collect();
        let z: Vec<u32> = (0..ng * n)
            .map(|i| match i % 7 {
                0 => 0,
                1 => 15,
                _ => rng.gen_range(0..16),
            })
            .collect();
        let scales = (0..ng * n)
            .map(|_| S::from_f32(rng.gen_range(0.002f32..0.03)))
            .collect();
        Layer {
            qweight: pack(&q),
            qzeros: pack(&z),
            scales,
            k,
            n,
            group,
        }
    }

    fn weights(&self) -> AwqWeights<'_, S> {
        AwqWeights {
            qweight: &self.qweight,
            qzeros: &self.qzeros,
            scales: &self.scales,
            k: self.k,
            n: self.n,
            group: self.group,
        }
    }
}

fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-11),
    }
}

fn round_to<T: FloatElement>(v: f64) -> f64 {
    T::from_f32(v as f32).to_f32() as f64
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    group: usize,
    bias: bool,
    seed: u64,
}

/// The random inputs of a case: the layer, x [m, k] and the bias, in T.
struct Inputs<T> {
    layer: Layer<T>,
    x: Vec<T>,
    bias: Option<Vec<T>>,
}

impl<T: AwqFloat> Inputs<T> {
    fn random(case: Case) -> Self {
        let Case {
            m,
            k,
            n,
            group,
            seed,
            ..
        } = case;
        let layer = Layer::<T>::random(k, n, group, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let x: Vec<T> = (0..m * k)
            .map(|_| T::from_f32(rng.gen_range(-1.0f32..1.0)))
            .collect();
        let bias = case.bias.then(|| {
            (0..n)
                .map(|_| T::from_f32(rng.gen_range(-1.0f32..1.0)))
                .collect()
        });
        Inputs { layer, x, bias }
    }

    /// y through `path` on the GPU, into an output poisoned with NaN first.
    fn run_gpu(&self, gpu: &Arc<Gpu>, case: Case, path: AwqPath) -> Result<Vec<T>, String>
    where
        CudaBlas: Gemm<T>,
    {
        let Case { m, k, n, group, .. } = case;
        let layer = &self.layer;
        let w = AwqGpuWeights::upload(
            gpu,
            &layer.qweight,
            &layer.qzeros,
            &layer.scales,
            k,
            n,
            group,
            T::DTYPE,
        )
        .map_err(|e| e.to_string())?;
        let stream = gpu.stream();
        let xd = stream.clone_htod(&self.x).map_err(|e| format!("{e:?}"))?;
        let bd = match &self.bias {
            Some(b) => Some(stream.clone_htod(b).map_err(|e| format!("{e:?}"))?),
            None => None,
        };
        let mut yd = stream
            .clone_htod(&vec![T::from_f32(f32::NAN); m * n])
            .map_err(|e| format!("{e:?}"))?;
        let bv = bd.as_ref().map(|b| b.as_view());
        awq_linear_with(
            gpu,
            &xd.as_view(),
            m,
            &w,
            bv.as_ref(),
            &mut yd.as_view_mut(),
            path,
        )
        .map_err(|e| e.to_string())?;
        gpu.synchronize().map_err(|e| e.to_string())?;
        stream.clone_dtoh(&yd).map_err(|e| format!("{e:?}"))
    }
}

/// Runs `case` on the GPU through `path` and checks it against the CPU reference.
fn check<T: AwqFloat>(gpu: &Arc<Gpu>, case: Case, path: AwqPath) -> Result<(), String>
where
    CudaBlas: Gemm<T>,
{
    let Case { m, k, n, .. } = case;
    let inputs = Inputs::<T>::random(case);
    let (layer, x, b) = (&inputs.layer, &inputs.x, &inputs.bias);

    // CPU oracle on the same (T-rounded) inputs, in f32.
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let bf: Option<Vec<f32>> = b.as_ref().map(|b| b.iter().map(|v| v.to_f32()).collect());
    let mut want = vec![f32::NAN; m * n];
    cpu::awq_linear(&xf, m, layer.weights(), bf.as_deref(), &mut want);
    let wd = cpu::dequantize(layer.weights()); // [n, k], exact (q - z)·s

    let got = inputs.run_gpu(gpu, case, path)?;

    let u = unit_roundoff(T::DTYPE);
    // The bias is added to the f32 product before the one rounding on every path (the dequantize + GEMM path
    // too: cuBLAS with the bias rows as C and beta = 1 rounded the product first, seen on an H200 and an
    // H100, which needed a tolerance of 2u·|x·w| more here).
    for i in 0..m {
        for col in 0..n {
            let g = got[i * n + col].to_f32() as f64;
            let r = want[i * n + col] as f64;
            let (mut naive, mut s) = (0.0f64, 0.0f64);
            for row in 0..k {
                let xv = xf[i * k + row] as f64;
                let wv = wd[col * k + row] as f64;
                naive += xv * round_to::<T>(wv);
                s += (xv * wv).abs();
            }
            if let Some(bf) = &bf {
                naive += bf[col] as f64;
                s += (bf[col] as f64).abs();
            }
            let naive = round_to::<T>(naive);
            let tol = 2.0 * (naive - r).abs() + 2.0 * u * r.abs() + 1e-5 * s + 1e-30;
            if !g.is_finite() || (g - r).abs() > tol {
                return Err(format!(
                    "{case:?} {} {path:?}: y[{i}][{col}] = {g}, reference {r}, naive {naive}, tolerance {tol}",
                    T::NAME
                ));
            }
        }
    }
    Ok(())
}

/// The dequantize + GEMM path with a bias rounds x·Wᵀ + b once: every element within half an ulp of the
/// exact sum (W as the kernel makes it, T-rounded), plus the f32 summation error of a short dot product.
fn check_one_rounding<T: AwqFloat>(gpu: &Arc<Gpu>, case: Case)
where
    CudaBlas: Gemm<T>,
{
    let Case { m, k, n, .. } = case;
    let inputs = Inputs::<T>::random(case);
    let got = inputs.run_gpu(gpu, case, AwqPath::DequantGemm).unwrap();
    let wd = cpu::dequantize(inputs.layer.weights());
    let bias = inputs.bias.as_ref().expect("a case with a bias");
    let u = unit_roundoff(T::DTYPE);
    for i in 0..m {
        for col in 0..n {
            let (mut exact, mut magnitude) =
                (bias[col].to_f32() as f64, bias[col].to_f32().abs() as f64);
            for row in 0..k {
                let p =
                    inputs.x[i * k + row].to_f32() as f64 * round_to::<T>(wd[col * k + row] as f64);
                exact += p;
                magnitude += p.abs();
            }
            let g = got[i * n + col].to_f32() as f64;
            // Half an ulp of the result (u·2^⌊log2 |g|⌋ ≤ u·|g|, so u·|g| is at least that), plus (k + 1)
            // f32 roundings of the running sum; the double rounding misses this bound in 10-20% of elements.
            let half_ulp = u * 2f64.powi(g.abs().log2().floor() as i32);
            let bound = half_ulp + (k + 1) as f64 * 2f64.powi(-22) * magnitude;
            assert!(
                (g - exact).abs() <= bound,
                "{case:?} {}: y[{i}][{col}] = {g}, exact {exact}, bound {bound}",
                T::NAME
            );
        }
    }
}

#[test]
fn the_dequantize_and_gemm_path_rounds_once_with_its_bias() {
    let Some(gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Short dot products (k = 64) keep the f32 summation error far below the result's rounding step.
    for (m, seed) in [(40, 1u64), (100, 2), (300, 3)] {
        let case = Case {
            m,
            k: 64,
            n: 520,
            group: 32,
            bias: true,
            seed,
        };
        check_one_rounding::<f16>(&gpu, case);
        check_one_rounding::<bf16>(&gpu, case);
    }
}

fn check_both_dtypes(gpu: &Arc<Gpu>, case: Case, path: AwqPath) {
    check::<f16>(gpu, case, path).unwrap();
    check::<bf16>(gpu, case, path).unwrap();
}

#[test]
fn repacking_reads_back_as_the_cpu_dequantization() {
    for (k, n, group, seed) in [
        (128, 8, 128, 1),
        (256, 72, 64, 2),
        (96, 136, 32, 3),
        (512, 64, 256, 4),
    ] {
        let layer = Layer::<f32>::random(k, n, group, seed);
        let wd = cpu::dequantize(layer.weights());
        for dtype in [DType::F16, DType::BF16] {
            let r = repack(
                &layer.qweight,
                &layer.qzeros,
                &layer.scales,
                k,
                n,
                group,
                dtype,
            )
            .unwrap();
            assert_eq!(r.qw.len(), n.div_ceil(64) * (k / 16) * 128);
            let back = unpack_dequantize(&r);
            for col in 0..n {
                for row in 0..k {
                    let g = row / group;
                    // The reference with the scale rounded to the activation type, as the GPU stores it.
                    let s = match dtype {
                        DType::BF16 => bf16::from_f32(layer.scales[g * n + col]).to_f32(),
                        _ => f16::from_f32(layer.scales[g * n + col]).to_f32(),
                    };
                    let orig_s = layer.scales[g * n + col];
                    let q_minus_z = (wd[col * k + row] / orig_s).round(); // exact: wd = (q - z)·s in f32
                    let want = q_minus_z * s;
                    assert_eq!(
                        back[col * k + row],
                        want,
                        "k={k} n={n} group={group} {dtype} at ({col},{row})"
                    );
                }
            }
        }
    }
}

#[test]
fn unsupported_shapes_are_rejected_before_any_device_work() {
    let layer = Layer::<f16>::random(48, 8, 8, 5);
    let err = repack(
        &layer.qweight,
        &layer.qzeros,
        &layer.scales,
        48,
        8,
        8,
        DType::F16,
    )
    .unwrap_err();
    assert!(err.to_string().contains("multiple of 16"), "{err}");
    let layer = Layer::<f16>::random(128, 16, 128, 6);
    assert!(repack(
        &layer.qweight,
        &layer.qzeros,
        &layer.scales[1..],
        128,
        16,
        128,
        DType::F16
    )
    .is_err());
    assert!(repack(
        &layer.qweight,
        &layer.qzeros,
        &layer.scales,
        128,
        16,
        128,
        DType::F32
    )
    .is_err());
}

fn dequant_exact<T: AwqFloat>(gpu: &Arc<Gpu>, k: usize, n: usize, group: usize, seed: u64) {
    let layer = Layer::<T>::random(k, n, group, seed);
    let wd = cpu::dequantize(layer.weights());
    let w = AwqGpuWeights::upload(
        gpu,
        &layer.qweight,
        &layer.qzeros,
        &layer.scales,
        k,
        n,
        group,
        T::DTYPE,
    )
    .unwrap();
    // The repacked buffers survive the round trip.
    let r = w.download(gpu).unwrap();
    let back = unpack_dequantize(&r);
    assert_eq!(back, wd, "repacked buffers read back from the GPU");
    let stream = gpu.stream();
    // Every dequantization kernel (the default through `dequantize`, then each by name) writes the same
    // bits: round_T of the CPU dequantization.
    for kernel in std::iter::once(None).chain(DequantKernel::ALL.map(Some)) {
        let mut out = stream
            .clone_htod(&vec![T::from_f32(f32::NAN); n * k])
            .unwrap();
        match kernel {
            None => dequantize(gpu, &w, &mut out.as_view_mut()).unwrap(),
            Some(d) => dequantize_with(gpu, &w, &mut out.as_view_mut(), d).unwrap(),
        }
        gpu.synchronize().unwrap();
        let got: Vec<T> = stream.clone_dtoh(&out).unwrap();
        for col in 0..n {
            for row in 0..k {
                let want = T::from_f32(wd[col * k + row]);
                let g = got[col * k + row];
                assert!(
                    bytemuck::bytes_of(&g) == bytemuck::bytes_of(&want),
                    "{} {kernel:?} k={k} n={n} group={group}: W[{col}][{row}] = {}, want {}",
                    T::NAME,
                    g.to_f32(),
                    want.to_f32()
                );
            }
        }
    }
}

#[test]
fn the_dequantization_kernel_is_bit_exact() {
    let Some(gpu) = gpu_for_tests() else { return };
    for (k, n, group, seed) in [
        (128, 8, 128, 11),
        (256, 200, 64, 12),
        (96, 64, 32, 13),
        (512, 72, 256, 14),
        // 104 chunks: the last tile of the tiled kernels (8 and 16 chunks) is partial; 3 strips, the last
        // partly padding.
        (1664, 136, 128, 15),
    ] {
        dequant_exact::<f16>(&gpu, k, n, group, seed);
        dequant_exact::<bf16>(&gpu, k, n, group, seed + 100);
    }
}

#[test]
fn random_shapes_match_the_cpu_reference_on_both_paths() {
    let Some(gpu) = gpu_for_tests() else { return };
    let strategy = (
        1usize..=40,
        1usize..=4,
        prop_oneof![Just(32usize), Just(64), Just(128)],
        1usize..=40,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |(m, ng, group, n8, bias, use_bf16, seed)| {
            let case = Case {
                m,
                k: ng * group,
                n: 8 * n8,
                group,
                bias,
                seed,
            };
            for path in [AwqPath::Auto, AwqPath::DequantGemm, AwqPath::Pipe] {
                if path == AwqPath::Pipe && m > 64 {
                    continue;
                }
                let r = if use_bf16 {
                    check::<bf16>(&gpu, case, path)
                } else {
                    check::<f16>(&gpu, case, path)
                };
                r.map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn split_k_and_every_m_tile_match() {
    let Some(gpu) = gpu_for_tests() else { return };
    // 64 groups along k on few strips: the plan splits k (up to 8 ways) and the last block sums partials.
    for (m, k, n, group, bias) in [
        (1, 4096, 72, 64, true),
        (16, 4096, 72, 64, false),
        (37, 4096, 72, 64, true),
        (64, 2048, 136, 32, true),
        (5, 512, 64, 256, false),
        (23, 8192, 8, 128, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: (m * 31 + k) as u64,
        };
        check_both_dtypes(&gpu, case, AwqPath::Stream);
        check_both_dtypes(&gpu, case, AwqPath::Pipe);
    }
}

#[test]
fn wide_layers_use_two_strips_per_block_and_match() {
    let Some(gpu) = gpu_for_tests() else { return };
    // n ≥ 64 strips selects two strips per block; 4104 columns = 64 full strips and a partial one, so the
    // last column block holds one strip that is partly padding and one that does not exist.
    for (m, k, n, bias) in [
        (1, 512, 4104, true),
        (16, 256, 4104, false),
        (20, 256, 4160, true),
        (64, 128, 4104, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group: 128,
            bias,
            seed: (m + n) as u64,
        };
        check_both_dtypes(&gpu, case, AwqPath::Stream);
        check_both_dtypes(&gpu, case, AwqPath::Pipe);
    }
}

/// y of one forced path on the GPU for the case's random inputs, as raw bits.
fn gpu_bits<T: AwqFloat>(gpu: &Arc<Gpu>, case: Case, path: AwqPath) -> Vec<u16>
where
    CudaBlas: Gemm<T>,
{
    let y = Inputs::<T>::random(case).run_gpu(gpu, case, path).unwrap();
    y.iter()
        .map(|v| u16::from_le_bytes(bytemuck::bytes_of(v).try_into().unwrap()))
        .collect()
}

/// Two paths give the same bits for the case's random inputs, in f16 and bf16.
fn assert_same_bits(gpu: &Arc<Gpu>, case: Case, a: AwqPath, b: AwqPath) {
    for dtype in [DType::F16, DType::BF16] {
        let (ya, yb) = match dtype {
            DType::F16 => (gpu_bits::<f16>(gpu, case, a), gpu_bits::<f16>(gpu, case, b)),
            _ => (
                gpu_bits::<bf16>(gpu, case, a),
                gpu_bits::<bf16>(gpu, case, b),
            ),
        };
        assert_eq!(ya.len(), case.m * case.n);
        if let Some(i) = (0..ya.len()).find(|&i| ya[i] != yb[i]) {
            panic!(
                "{case:?} {dtype:?}: y[{}][{}] bits {:#06x} ({a:?}) vs {:#06x} ({b:?})",
                i / case.n,
                i % case.n,
                ya[i],
                yb[i]
            );
        }
    }
}

#[test]
fn the_pipelined_staggered_and_batched_kernels_are_bit_identical_to_the_streaming_one() {
    let Some(gpu) = gpu_for_tests() else { return };
    // Same plan, same warp <-> group assignment, same order of mma: the same bits, on every m-tile count,
    // one and two strips per block, split-K, every group size (256 at m > 16 falls back to the register
    // kernel where its four stages exceed shared memory), a layer whose k-lanes get unequal group counts.
    for (m, k, n, group, bias) in [
        (1, 8192, 512, 128, false),
        (4, 3584, 4160, 128, true),
        (16, 1024, 72, 32, true),
        (17, 2048, 200, 64, false),
        (33, 1280, 4104, 128, true),
        (64, 512, 136, 16, false),
        (2, 4096, 64, 256, true),
        (40, 2048, 64, 256, false),
        (1, 1664, 8, 128, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: (7 * m + n + k) as u64,
        };
        assert_same_bits(&gpu, case, AwqPath::Stream, AwqPath::Pipe);
        for kernel in [StreamKernel::Staggered, StreamKernel::Batched] {
            let other = AwqPath::Variant(Variant::Stream {
                kernel,
                shape: PlanShape::Spread,
            });
            assert_same_bits(&gpu, case, AwqPath::Stream, other);
        }
    }
}

#[test]
fn every_autotuner_candidate_matches_the_cpu_reference() {
    let Some(gpu) = gpu_for_tests() else { return };
    // Each variant the autotuner may pick, forced: every streaming kernel with both plans on the decode
    // shapes (split-K with many or few splits, one or two strips per block, every m-tile count), every
    // dequantization kernel on the GEMM path.
    for (m, k, n, group, bias) in [
        (1, 4096, 72, 64, true),
        (16, 1024, 4104, 128, false),
        (33, 2048, 200, 32, true),
        (64, 3584, 136, 128, false),
        (1, 14848, 128, 128, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: (3 * m + k + n) as u64,
        };
        for v in stream_candidates(true, m_tiles(m)) {
            check_both_dtypes(&gpu, case, AwqPath::Variant(v));
        }
    }
    for (m, k, n, group, bias) in [(65, 1664, 136, 128, true), (300, 256, 8, 32, false)] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: m as u64,
        };
        for v in dequant_candidates() {
            check_both_dtypes(&gpu, case, AwqPath::Variant(v));
        }
    }
}

#[test]
fn short_prompts_through_the_streaming_kernels_in_row_blocks_match() {
    let Some(gpu) = gpu_for_tests() else { return };
    // 65..256 rows: row blocks of 64 (the last one partial), with and without split-K, one and two strips
    // per block, every candidate; and the two kernels agree bit for bit there too.
    for (m, k, n, group, bias) in [
        (65, 2048, 136, 128, true),
        (100, 4096, 72, 64, false),
        (96, 256, 4104, 128, true),
        (200, 512, 200, 32, true),
        (256, 1536, 64, 128, false),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: (5 * m + k + n) as u64,
        };
        for v in stream_candidates(true, m_tiles(m)) {
            check_both_dtypes(&gpu, case, AwqPath::Variant(v));
        }
        for shape in [PlanShape::Spread, PlanShape::Balanced] {
            let with = |kernel| AwqPath::Variant(Variant::Stream { kernel, shape });
            for other in [StreamKernel::Pipelined, StreamKernel::Staggered] {
                assert_same_bits(&gpu, case, with(StreamKernel::Registers), with(other));
            }
        }
    }
}

#[test]
fn the_pipelined_staggered_and_batched_kernels_are_bit_identical_under_the_balanced_plan_too() {
    let Some(gpu) = gpu_for_tests() else { return };
    let balanced = |kernel| {
        AwqPath::Variant(Variant::Stream {
            kernel,
            shape: PlanShape::Balanced,
        })
    };
    for (m, k, n) in [(1, 8192, 1024), (12, 4096, 4160), (48, 2048, 520)] {
        let case = Case {
            m,
            k,
            n,
            group: 128,
            bias: true,
            seed: (m + k) as u64,
        };
        for other in [
            StreamKernel::Pipelined,
            StreamKernel::Staggered,
            StreamKernel::Batched,
        ] {
            assert_same_bits(
                &gpu,
                case,
                balanced(StreamKernel::Registers),
                balanced(other),
            );
        }
    }
}

#[test]
fn the_swapped_tile_kernels_match_the_cpu_reference() {
    let Some(gpu) = gpu_for_tests() else { return };
    // The weights as the A operand, the tokens as B: one token tile up to 8 rows, two up to 16 (the edges 8
    // and 9 included), split-K with many and few splits, one and two strips per block, a partial last
    // strip, every load batch (groups of 16, 32, 64 and 128 values: batches of 1, 2, 4 and 8 chunks) and a
    // group of 256; both plans; the weights rounded to T before the mma (as the reference) or the group's
    // scale applied to the f32 sums after them, each with or without whole batches in flight. Above 16 rows
    // the register kernel runs in their place.
    for (m, k, n, group, bias) in [
        (1, 4096, 72, 64, true),
        (1, 8192, 512, 128, false),
        (3, 1024, 4104, 128, true),
        (8, 2048, 200, 32, false),
        (9, 1536, 136, 16, true),
        (16, 3584, 4160, 128, true),
        (5, 512, 64, 256, false),
        (12, 1664, 8, 128, true),
        (20, 1024, 72, 64, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: (11 * m + k + n) as u64,
        };
        for shape in [PlanShape::Spread, PlanShape::Balanced] {
            for tile in SwapTile::ALL {
                let kernel = StreamKernel::Swapped(tile);
                check_both_dtypes(
                    &gpu,
                    case,
                    AwqPath::Variant(Variant::Stream { kernel, shape }),
                );
            }
        }
    }
}

#[test]
fn the_swapped_tile_kernels_give_the_same_bits_however_they_load() {
    let Some(gpu) = gpu_for_tests() else { return };
    // Under the spread plan (which does not depend on the kernels' residency) the batched and the
    // double-buffered kernels run the plain kernel's arithmetic in its order: the same bits, with and without
    // the group scale. Odd and even batch counts per warp (groups of 16 values: one batch a group; 256: four),
    // split-K, two strips per block, and 9..16 rows (where double buffering falls back to whole batches).
    for (m, k, n, group) in [
        (1, 8192, 512, 128),
        (4, 2048, 4160, 16),
        (8, 3584, 200, 32),
        (2, 4096, 64, 256),
        (7, 1280, 136, 64),
        (13, 2048, 72, 128),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias: true,
            seed: (13 * m + k + n) as u64,
        };
        for group_scale in [false, true] {
            let with = |loads| {
                AwqPath::Variant(Variant::Stream {
                    kernel: StreamKernel::Swapped(SwapTile::new(group_scale, loads)),
                    shape: PlanShape::Spread,
                })
            };
            for loads in [SwapLoads::Batched, SwapLoads::DoubleBuffered] {
                assert_same_bits(&gpu, case, with(SwapLoads::Default), with(loads));
            }
        }
    }
}

#[test]
fn the_autotuner_times_a_large_shape_once_and_keeps_a_correct_choice() {
    let Some(gpu) = gpu_for_tests() else { return };
    set_autotune(true);
    // 4096 x 2048 at group 128 is 4.3 MB of weights: above the autotuner's threshold.
    let (k, n) = (4096, 2048);
    for m in [1, 65] {
        let case = Case {
            m,
            k,
            n,
            group: 128,
            bias: true,
            seed: 99 + m as u64,
        };
        // The first call times the candidates (and its result is right); later calls run the recorded
        // choice, bit for bit.
        check::<f16>(&gpu, case, AwqPath::Auto).unwrap();
        let again = gpu_bits::<f16>(&gpu, case, AwqPath::Auto);
        let report = tuning_report(&gpu).unwrap();
        // m = 65: a short prompt, where the streaming kernels (two row blocks of 4 m-tiles) compete with
        // dequantize + GEMM.
        let key = TuneKey {
            k,
            n,
            group: 128,
            dtype: DType::F16,
            mt: if m <= 64 { 1 } else { 4 },
            row_blocks: m.div_ceil(64),
            token_tiles: if m <= 16 { 1 } else { 0 },
        };
        let (_, tuned) = report
            .iter()
            .find(|(kk, _)| *kk == key)
            .unwrap_or_else(|| panic!("no choice recorded for {key:?}: {report:?}"));
        let candidates = if m <= 64 {
            stream_candidates(true, m_tiles(m))
        } else {
            let mut c = dequant_candidates();
            c.extend(stream_candidates(true, 4));
            c
        };
        assert_eq!(
            tuned.timings.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            candidates
        );
        assert!(candidates.contains(&tuned.chosen));
        assert_eq!(
            again,
            gpu_bits::<f16>(&gpu, case, AwqPath::Variant(tuned.chosen)),
            "m = {m}: Auto must run the recorded choice"
        );
        assert!(
            tuned.timings[0].1.is_finite() && tuned.timings[0].1 > 0.0,
            "{tuned:?}"
        );
        eprintln!(
            "autotuner, {k}x{n} m={m}: {} of {:?}",
            tuned.chosen.name(),
            tuned
                .timings
                .iter()
                .map(|(v, t)| format!("{} {t:.1} us", v.name()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn large_m_goes_through_the_gemm_path_and_matches() {
    let Some(gpu) = gpu_for_tests() else { return };
    for (m, k, n, group, bias) in [
        (300, 256, 136, 128, true),
        (1100, 128, 64, 64, false),
        (65, 384, 24, 128, true),
    ] {
        let case = Case {
            m,
            k,
            n,
            group,
            bias,
            seed: m as u64,
        };
        check_both_dtypes(&gpu, case, AwqPath::Auto);
    }
}

#[test]
fn bad_calls_are_errors() {
    let Some(gpu) = gpu_for_tests() else { return };
    let layer = Layer::<f16>::random(128, 16, 128, 21);
    let w = AwqGpuWeights::upload(
        &gpu,
        &layer.qweight,
        &layer.qzeros,
        &layer.scales,
        128,
        16,
        128,
        DType::F16,
    )
    .unwrap();
    let stream = gpu.stream();
    let x = stream.alloc_zeros::<f16>(2 * 128).unwrap();
    let mut y = stream.alloc_zeros::<f16>(2 * 16).unwrap();
    // Wrong m for x, wrong y length, a bias of the wrong length, bf16 activations for f16 weights.
    assert!(awq_linear(&gpu, &x.as_view(), 3, &w, None, &mut y.as_view_mut()).is_err());
    assert!(awq_linear(&gpu, &x.as_view(), 2, &w, None, &mut y.slice_mut(0..30)).is_err());
    let bias = stream.alloc_zeros::<f16>(15).unwrap();
    assert!(awq_linear(
        &gpu,
        &x.as_view(),
        2,
        &w,
        Some(&bias.as_view()),
        &mut y.as_view_mut()
    )
    .is_err());
    let xb = stream.alloc_zeros::<bf16>(2 * 128).unwrap();
    let mut yb = stream.alloc_zeros::<bf16>(2 * 16).unwrap();
    assert!(awq_linear(&gpu, &xb.as_view(), 2, &w, None, &mut yb.as_view_mut()).is_err());
    // The streaming kernel refuses more than 256 rows; m = 0 is a no-op.
    let x257 = stream.alloc_zeros::<f16>(257 * 128).unwrap();
    let mut y257 = stream.alloc_zeros::<f16>(257 * 16).unwrap();
    assert!(awq_linear_with(
        &gpu,
        &x257.as_view(),
        257,
        &w,
        None,
        &mut y257.as_view_mut(),
        AwqPath::Stream
    )
    .is_err());
    let x0 = stream.alloc_zeros::<f16>(0).unwrap();
    let mut y0 = stream.alloc_zeros::<f16>(0).unwrap();
    awq_linear(&gpu, &x0.as_view(), 0, &w, None, &mut y0.as_view_mut()).unwrap();
    // Zero inputs give exactly zero (and the kernels leave their split-K counters consistent).
    awq_linear(&gpu, &x.as_view(), 2, &w, None, &mut y.as_view_mut()).unwrap();
    gpu.synchronize().unwrap();
    let got: Vec<f16> = stream.clone_dtoh(&y).unwrap();
    assert!(got.iter().all(|v| v.to_f32() == 0.0));
}

/// The layer as the checkpoint stores it: i32 words and scales of `S`, on the host.
fn host_tensors<S: FloatElement>(layer: &Layer<S>) -> (Tensor, Tensor, Tensor) {
    let (k, n, group) = (layer.k, layer.n, layer.group);
    let words = |w: &[u32], rows: usize| {
        Tensor::from_vec(
            w.iter().map(|&v| v as i32).collect::<Vec<i32>>(),
            &[rows, n / 8],
        )
        .unwrap()
    };
    (
        words(&layer.qweight, k),
        words(&layer.qzeros, k / group),
        Tensor::from_vec(layer.scales.clone(), &[k / group, n]).unwrap(),
    )
}

#[test]
fn repacking_on_the_gpu_gives_the_host_repack_bit_for_bit() {
    let Some(gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    // Partial last strips (n = 8, 72, 200), several strips, every group size the kernels take.
    for (k, n, group, seed) in [
        (128, 8, 128, 1),
        (256, 72, 64, 2),
        (96, 200, 32, 3),
        (512, 128, 256, 4),
    ] {
        let layer = Layer::<f32>::random(k, n, group, seed);
        let (qw, qz, sc) = host_tensors(&layer);
        for dtype in [DType::F16, DType::BF16] {
            let want = repack(
                &layer.qweight,
                &layer.qzeros,
                &layer.scales,
                k,
                n,
                group,
                dtype,
            )
            .unwrap();
            let on_gpu = |t: &Tensor| t.to_device(Device::Cuda(0)).unwrap();
            let got = AwqGpuWeights::repack_on_device(
                &on_gpu(&qw),
                &on_gpu(&qz),
                &on_gpu(&sc.to_dtype(dtype).unwrap()),
                k,
                n,
                group,
            )
            .unwrap()
            .download(&gpu)
            .unwrap();
            let case = format!("k={k} n={n} group={group} {dtype}");
            assert_eq!(got.qw, want.qw, "codes, {case}");
            assert_eq!(got.scales, want.scales, "scales, {case}");
            assert_eq!(got.zeros, want.zeros, "zeros, {case}");
        }
    }
    // Wrong lengths and dtypes are errors, not reads out of bounds.
    let layer = Layer::<f32>::random(128, 64, 128, 5);
    let (qw, qz, sc) = host_tensors(&layer);
    let g = |t: &Tensor| t.to_device(Device::Cuda(0)).unwrap();
    let sc16 = g(&sc.to_dtype(DType::F16).unwrap());
    assert!(AwqGpuWeights::repack_on_device(&g(&qw), &g(&qz), &sc16, 128, 72, 128).is_err());
    assert!(AwqGpuWeights::repack_on_device(&g(&qw), &g(&qz), &g(&sc), 128, 64, 128).is_err());
    assert!(AwqGpuWeights::repack_on_device(&sc16, &g(&qz), &sc16, 128, 64, 128).is_err());
}

#[test]
fn layers_joined_on_the_gpu_equal_layers_fused_on_the_host() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    let gpu_dev = Device::Cuda(0);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let k = 256;
    let bias = |n: usize, rng: &mut ChaCha8Rng| -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-0.5f32..0.5)).collect()
    };
    // AWQ: whole strips then a partial one (joined on the GPU), and widths the GPU cannot join (a
    // partial strip first: fused on the host), each with a bias on some parts only.
    for widths in [vec![128, 64, 72], vec![72, 64]] {
        let parts: Vec<Linear> = widths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let layer = Layer::<f16>::random(k, n, 128, 30 + i as u64);
                let (qweight, qzeros, scales) = host_tensors(&layer);
                Linear::Awq {
                    qweight,
                    qzeros,
                    scales,
                    bias: (i == 1).then(|| bias(n, &mut rng)),
                    k,
                    n,
                    group: 128,
                }
            })
            .collect();
        check_joined(&parts, gpu_dev, &mut rng, &format!("AWQ {widths:?}"));
    }
    // Dense, any widths.
    let parts: Vec<Linear> = [48, 16, 24]
        .iter()
        .enumerate()
        .map(|(i, &n)| Linear::Dense {
            weight: Tensor::from_vec(
                (0..n * k).map(|_| rng.gen_range(-0.1f32..0.1)).collect(),
                &[n, k],
            )
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
            bias: (i == 0).then(|| bias(n, &mut rng)),
        })
        .collect();
    check_joined(&parts, gpu_dev, &mut rng, "dense");
}

fn check_joined(parts: &[Linear], device: Device, rng: &mut ChaCha8Rng, what: &str) {
    let refs: Vec<&Linear> = parts.iter().collect();
    let k = parts[0].in_features();
    for m in [1, 5] {
        for dtype in [DType::F16, DType::BF16] {
            let joined = Linear::concat_out_to_device(&refs, device, dtype).unwrap();
            let fused = Linear::concat_out(&refs)
                .unwrap()
                .to_device(device, dtype)
                .unwrap();
            let x = Tensor::from_vec(
                (0..m * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect(),
                &[m, k],
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .to_device(device)
            .unwrap();
            let a = joined.forward(&x).unwrap().to_device(Device::Cpu).unwrap();
            let b = fused.forward(&x).unwrap().to_device(Device::Cpu).unwrap();
            assert_eq!(a.shape(), b.shape());
            assert!(a.to_f32_vec().unwrap().iter().all(|v| v.is_finite()));
            assert_eq!(a.bytes(), b.bytes(), "{what}, m = {m}, {dtype}");
        }
    }
}
