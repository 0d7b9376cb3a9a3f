//! The AWQ linear against independent data: tensors packed by AutoAWQ's `WQLinear_GEMM` (or, for shapes it
//! cannot pack, by the fixture script's packer cross-checked with a second unpacker), the weights those
//! packers dequantize to, and outputs computed by torch in float64 (`fixtures/awq-linear`, and the
//! dequantized weights the transformers reference used for the AWQ Qwen2 fixtures).

use std::path::Path;
use std::sync::Arc;

use awq_kernels::ops::awq::cpu::{dequantize, AwqWeights};
use awq_kernels::ops::linear::{AwqConfig, Linear};
use awq_kernels::{DType, Tensor, Weights, WeightsScope};
use half::{bf16, f16};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

fn open(path: &Path) -> WeightsScope {
    Arc::new(Weights::from_file(path).unwrap()).scope("")
}

fn get(scope: &WeightsScope, name: &str) -> Tensor {
    scope
        .get(
            name,
            &scope
                .shape_of(name)
                .unwrap_or_else(|| panic!("missing {name}")),
        )
        .unwrap()
}

/// Dequantizes with our code, whatever the scales' dtype.
fn our_dequantize(qweight: &Tensor, qzeros: &Tensor, scales: &Tensor, group: usize) -> Vec<f32> {
    let (k, n) = (qweight.dim(0), scales.dim(1));
    let (qweight, qzeros) = (
        qweight.as_u32_bits().unwrap(),
        qzeros.as_u32_bits().unwrap(),
    );
    match scales.dtype() {
        DType::F16 => dequantize(AwqWeights {
            qweight,
            qzeros,
            scales: scales.as_slice::<f16>().unwrap(),
            k,
            n,
            group,
        }),
        DType::BF16 => dequantize(AwqWeights {
            qweight,
            qzeros,
            scales: scales.as_slice::<bf16>().unwrap(),
            k,
            n,
            group,
        }),
        other => panic!("unexpected scales dtype {other}"),
    }
}

const CASES: [&str; 6] = [
    "m1_k256_n64_f16",
    "m1_k256_n64_bf16",
    "m3_k384_n40_f16",
    "m3_k384_n40_bf16",
    "m17_k128_n8_f16",
    "m17_k128_n8_bf16",
];

#[test]
fn dequantization_equals_the_independent_packers_weights_exactly() {
    let cases = open(&fixtures().join("awq-linear/cases.safetensors"));
    for case in CASES {
        let s = cases.pp(case);
        let ours = our_dequantize(
            &get(&s, "qweight"),
            &get(&s, "qzeros"),
            &get(&s, "scales"),
            128,
        );
        let want = get(&s, "weight").to_f32_vec().unwrap();
        // (q - z) * s is exact in f32 for 4-bit codes and 16-bit scales, so equality is exact.
        assert_eq!(ours, want, "{case}");
    }
}

#[test]
fn the_awq_linear_equals_torch_in_float64() {
    let cases = open(&fixtures().join("awq-linear/cases.safetensors"));
    for case in CASES {
        let s = cases.pp(case);
        let x = get(&s, "x");
        let weight = get(&s, "weight").to_f32_vec().unwrap();
        let want = get(&s, "y").to_f32_vec().unwrap();
        let (m, k) = (x.dim(0), x.dim(1));
        let n = want.len() / m;
        let linear = Linear::load(&s, k, n, true, Some(AwqConfig { group_size: 128 })).unwrap();
        let y = linear.forward(&x).unwrap();
        let got = y.as_slice::<f32>().unwrap();
        let xs = x.as_slice::<f32>().unwrap();
        // f32 accumulation error bound: k * eps * sum |x||w| for each output.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (row, col) = (i / n, i % n);
            let mag: f32 = (0..k)
                .map(|j| (xs[row * k + j] * weight[col * k + j]).abs())
                .sum();
            let tol = k as f32 * f32::EPSILON * mag + 1e-6;
            assert!(
                (g - w).abs() <= tol,
                "{case}[{row},{col}]: got {g}, want {w}, tol {tol}"
            );
        }
    }
}

#[test]
fn the_awq_qwen2_fixtures_dequantize_to_the_weights_transformers_ran() {
    for (model, layer_names) in [
        (
            "qwen2-0.5b-like-awq",
            ["layers.0.self_attn.k_proj", "layers.1.mlp.down_proj"],
        ),
        (
            "qwen2-72b-like-awq",
            ["layers.0.self_attn.k_proj", "layers.1.mlp.down_proj"],
        ),
    ] {
        let dir = fixtures().join(model);
        let weights = Arc::new(Weights::from_dir(&dir).unwrap()).scope("model.");
        let reference = open(&dir.join("reference.safetensors"));
        for name in layer_names {
            let l = weights.pp(name);
            let ours = our_dequantize(
                &get(&l, "qweight"),
                &get(&l, "qzeros"),
                &get(&l, "scales"),
                128,
            );
            let want = get(&reference, &format!("dequant.{name}.weight"))
                .to_f32_vec()
                .unwrap();
            assert_eq!(ours, want, "{model} {name}");
        }
    }
}
