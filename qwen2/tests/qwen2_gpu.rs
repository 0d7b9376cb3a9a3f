//! The Qwen2 decoder on the GPU against the same fixtures the CPU golden tests use (made by transformers):
//! the AWQ checkpoints (f16 activations on the GPU) must produce the reference greedy tokens, and every
//! checkpoint's prefill logits must match the float32 reference within the rounding of its dtype.
//!
//! Tolerance: the GPU path rounds activations to the checkpoint dtype after each op (about a dozen
//! roundings from the embedding to the logits through 2 layers), each at most half an ulp relative:
//! 2^-11 for f16, 2^-8 for bf16; we allow 12 such roundings of the largest logit (0.6% for f16, 4.7% for
//! bf16). The greedy check is exact; the fixtures' smallest top-1/top-2 logit gap is >= 0.06.
//! Fixtures are read from `INTERNVL_FIXTURES` when set (the GPU bundle), else from the source tree.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;

use awq_kernels::cuda::{buffer::poison_outputs, gpu_for_tests};
use awq_kernels::kv_cache::BlockTable;
use awq_kernels::sampling::argmax;
use awq_kernels::{DType, Device, Weights};
use qwen2::{ForwardOptions, Qwen2, Qwen2Config, SeqInput};

fn fixture_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("INTERNVL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"));
    root.join(name)
}

fn load(name: &str) -> (Qwen2, Arc<Weights>) {
    let dir = fixture_dir(name);
    let config = Qwen2Config::from_file(&dir.join("config.json")).unwrap();
    let weights = Arc::new(Weights::from_dir(&dir).unwrap());
    let model = Qwen2::load(&config, &weights.scope("")).unwrap();
    let reference = Arc::new(Weights::from_file(&dir.join("reference.safetensors")).unwrap());
    (model, reference)
}

fn ids(reference: &Arc<Weights>, name: &str) -> Vec<u32> {
    let s = reference.scope("");
    let t = s.get(name, &s.shape_of(name).unwrap()).unwrap();
    t.as_slice::<i32>()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect()
}

fn floats(reference: &Arc<Weights>, name: &str) -> Vec<f32> {
    let s = reference.scope("");
    s.get(name, &s.shape_of(name).unwrap())
        .unwrap()
        .to_f32_vec()
        .unwrap()
}

fn roundings_tolerance(dtype: Option<DType>) -> f32 {
    let half_ulp = match dtype {
        Some(DType::BF16) => 2f32.powi(-8),
        _ => 2f32.powi(-11),
    };
    12.0 * half_ulp
}

fn check_prefill(name: &str) {
    let (cpu_model, reference) = load(name);
    let model = cpu_model.to_device(Device::Cuda(0)).unwrap();
    let prompt = ids(&reference, "prompt_ids");
    let mut cache = model.try_new_kv_cache(16, 4).unwrap();
    let mut table = BlockTable::new();
    let mut seqs = [SeqInput {
        table: &mut table,
        len: prompt.len(),
    }];
    let options = ForwardOptions {
        all_logits: true,
        keep_layer_outputs: false,
    };
    let out = model
        .forward_ids(&prompt, &mut cache, &mut seqs, options)
        .unwrap();
    let got = out.logits.to_f32_vec().unwrap();
    let want = floats(&reference, "prompt_logits");
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = roundings_tolerance(cpu_model.config().dtype) * scale;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{name}: non-finite logits"
    );
    eprintln!("{name}: max |gpu - reference| = {worst} (tolerance {tol}, largest logit {scale})");
    assert!(worst <= tol, "{name}: max error {worst} > {tol}");
}

fn check_greedy(name: &str) {
    let (cpu_model, reference) = load(name);
    let model = cpu_model.to_device(Device::Cuda(0)).unwrap();
    let prompt = ids(&reference, "prompt_ids");
    let want = ids(&reference, "greedy_ids");
    let mut cache = model.try_new_kv_cache(16, 4).unwrap();
    let mut table = BlockTable::new();
    let mut input = prompt.clone();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let mut seqs = [SeqInput {
            table: &mut table,
            len: input.len(),
        }];
        let out = model
            .forward_ids(&input, &mut cache, &mut seqs, ForwardOptions::default())
            .unwrap();
        let next = argmax(&out.logits.to_f32_vec().unwrap()) as u32;
        got.push(next);
        input = vec![next];
    }
    assert_eq!(
        got, want,
        "{name}: GPU greedy tokens differ from transformers (and the CPU)"
    );
}

#[test]
fn awq_checkpoints_generate_the_reference_greedy_tokens_on_the_gpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    check_greedy("qwen2-0.5b-like-awq");
    check_greedy("qwen2-72b-like-awq");
}

#[test]
fn prefill_logits_on_the_gpu_match_the_reference_within_the_dtype_rounding() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    for name in [
        "qwen2-0.5b-like",
        "qwen2-72b-like",
        "qwen2-0.5b-like-awq",
        "qwen2-72b-like-awq",
    ] {
        check_prefill(name);
    }
}
