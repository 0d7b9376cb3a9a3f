//! The Qwen2 decoder on the GPU against the same fixtures the CPU golden tests use (made by transformers):
//! the AWQ checkpoints (f16 activations on the GPU) must produce the reference greedy tokens, and every
//! checkpoint's prefill logits must match the float32 reference within the rounding of its dtype. A forward
//! plans its attention once for all layers (batch table, decode workspace, output buffer); batched decode of
//! sequences of different lengths and prefill chunks after a cached prefix go through that plan and must
//! equal each sequence alone and the one-shot prefill.
//!
//! Tolerance: the GPU path rounds activations to the checkpoint dtype after each op (about a dozen
//! roundings from the embedding to the logits through 2 layers), each at most half an ulp relative:
//! 2^-11 for f16, 2^-8 for bf16; we allow 12 such roundings of the largest logit (0.6% for f16, 4.7% for
//! bf16). The same bound holds between two GPU runs of the same tokens batched differently (same kernels and
//! roundings, only the summation order and the batch shapes differ). The greedy check is exact; the
//! fixtures' smallest top-1/top-2 logit gap is >= 0.06. In the batched-decode test the sequences (prompt
//! lengths 191, 17, 8 and 5, six tokens each) were chosen so that on the CPU (f32) every greedy choice leads
//! the runner-up by at least 2.1% of the row's largest logit, over three times the f16 tolerance, so a run
//! within the tolerance cannot flip a token alone or batched.
//! Fixtures are read from `INTERNVL_FIXTURES` when set (the GPU bundle), else from the source tree.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;

use awq_kernels::cuda::{buffer::poison_outputs, gpu_for_tests};
use awq_kernels::kv_cache::BlockTable;
use awq_kernels::sampling::argmax;
use awq_kernels::{DType, Device, Weights};
use qwen2::{ForwardOptions, Qwen2, Qwen2Config, SeqInput};

const AWQ_CHECKPOINTS: [&str; 2] = ["qwen2-0.5b-like-awq", "qwen2-72b-like-awq"];
const CHECKPOINTS: [&str; 4] = [
    "qwen2-0.5b-like",
    "qwen2-72b-like",
    "qwen2-0.5b-like-awq",
    "qwen2-72b-like-awq",
];

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
    for name in AWQ_CHECKPOINTS {
        check_greedy(name);
    }
}

#[test]
fn prefill_logits_on_the_gpu_match_the_reference_within_the_dtype_rounding() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    for name in CHECKPOINTS {
        check_prefill(name);
    }
}

/// Asserts `got` is within `tol` of `want` element by element (and finite).
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max error {worst} > {tol}");
}

/// The largest absolute value, the scale the tolerances are relative to.
fn largest(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The fixture prompt repeated to `len` tokens.
fn prompt_of_len(reference: &Arc<Weights>, len: usize) -> Vec<u32> {
    ids(reference, "prompt_ids")
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// Greedy generation of `steps` tokens from `prompt`, alone in its cache: the tokens and each forward's
/// logits (the prefill's last row, then every decode step's).
fn generate_alone(model: &Qwen2, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = model.try_new_kv_cache(16, 64).unwrap();
    let mut table = BlockTable::new();
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let mut seqs = [SeqInput {
            table: &mut table,
            len: input.len(),
        }];
        let out = model
            .forward_ids(&input, &mut cache, &mut seqs, ForwardOptions::default())
            .unwrap();
        let row = out.logits.to_f32_vec().unwrap();
        let next = argmax(&row) as u32;
        tokens.push(next);
        logits.push(row);
        input = vec![next];
    }
    (tokens, logits)
}

fn check_batched_decode(name: &str) {
    const LENGTHS: [usize; 4] = [191, 17, 8, 5];
    const STEPS: usize = 6;
    let (cpu_model, reference) = load(name);
    let model = cpu_model.to_device(Device::Cuda(0)).unwrap();
    let tol_rel = roundings_tolerance(cpu_model.config().dtype);
    let vocab = cpu_model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = LENGTHS
        .iter()
        .map(|&len| prompt_of_len(&reference, len))
        .collect();
    let cpu: Vec<_> = prompts
        .iter()
        .map(|p| generate_alone(&cpu_model, p, STEPS))
        .collect();
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate_alone(&model, p, STEPS))
        .collect();
    for (i, ((gpu_tokens, _), (cpu_tokens, _))) in alone.iter().zip(&cpu).enumerate() {
        assert_eq!(
            gpu_tokens, cpu_tokens,
            "{name}: sequence {i} alone: GPU greedy tokens differ from the CPU's"
        );
    }

    // All sequences in one cache and one forward per step: a prefill of four lengths, then pure decode
    // steps (one row each, different key counts, the longest split over several CTAs).
    let mut cache = model.try_new_kv_cache(16, 64).unwrap();
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    let mut inputs = prompts.clone();
    let mut tokens = vec![Vec::new(); prompts.len()];
    for step in 0..STEPS {
        let ids = inputs.concat();
        let mut seqs: Vec<SeqInput> = tables
            .iter_mut()
            .zip(&inputs)
            .map(|(table, input)| SeqInput {
                table,
                len: input.len(),
            })
            .collect();
        let out = model
            .forward_ids(&ids, &mut cache, &mut seqs, ForwardOptions::default())
            .unwrap();
        let logits = out.logits.to_f32_vec().unwrap();
        assert_eq!(logits.len(), prompts.len() * vocab);
        for (i, row) in logits.chunks(vocab).enumerate() {
            let what = format!("{name}: sequence {i} (length {}) step {step}", LENGTHS[i]);
            let want = &alone[i].1[step];
            assert_close(
                &format!("{what}, batched vs alone"),
                row,
                want,
                tol_rel * largest(want),
            );
            if step == 0 {
                let want = &cpu[i].1[0];
                assert_close(
                    &format!("{what}, batched prefill vs the CPU"),
                    row,
                    want,
                    tol_rel * largest(want),
                );
            }
            let next = argmax(row) as u32;
            tokens[i].push(next);
            inputs[i] = vec![next];
        }
    }
    for (i, got) in tokens.iter().enumerate() {
        assert_eq!(
            got, &alone[i].0,
            "{name}: sequence {i} batched: greedy tokens differ from the sequence alone"
        );
    }
    for (table, prompt) in tables.iter().zip(&prompts) {
        assert_eq!(table.len(), prompt.len() + STEPS - 1);
    }
}

#[test]
fn batched_decode_of_sequences_of_different_lengths_equals_each_sequence_alone() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    for name in AWQ_CHECKPOINTS {
        check_batched_decode(name);
    }
}

fn check_chunked_prefill(name: &str) {
    let (cpu_model, reference) = load(name);
    let model = cpu_model.to_device(Device::Cuda(0)).unwrap();
    let prompt = ids(&reference, "prompt_ids");
    let vocab = cpu_model.config().vocab_size;
    let want = floats(&reference, "prompt_logits"); // [24, vocab]
    let tol = roundings_tolerance(cpu_model.config().dtype) * largest(&want);
    let all_logits = ForwardOptions {
        all_logits: true,
        keep_layer_outputs: false,
    };

    let mut cache = model.try_new_kv_cache(4, 16).unwrap();
    let mut table = BlockTable::new();
    let mut seqs = [SeqInput {
        table: &mut table,
        len: prompt.len(),
    }];
    let one_shot = model
        .forward_ids(&prompt, &mut cache, &mut seqs, all_logits)
        .unwrap()
        .logits
        .to_f32_vec()
        .unwrap();
    assert_close(&format!("{name}: one-shot prefill"), &one_shot, &want, tol);
    let rows = |r: std::ops::Range<usize>| &one_shot[r.start * vocab..r.end * vocab];

    // Sequence a is prefilled in chunks of 5, 11 and 8 tokens (4-token blocks: the chunks start and end
    // inside blocks); sequence b shares each forward: a 9-token prefill, then one token at a time.
    let (mut ta, mut tb) = (BlockTable::new(), BlockTable::new());
    let chunks = [(0..5, 0..9), (5..16, 9..10), (16..24, 10..11)];
    for (a, b) in chunks {
        let ids: Vec<u32> = prompt[a.clone()]
            .iter()
            .chain(&prompt[b.clone()])
            .copied()
            .collect();
        let mut seqs = [
            SeqInput {
                table: &mut ta,
                len: a.len(),
            },
            SeqInput {
                table: &mut tb,
                len: b.len(),
            },
        ];
        let got = model
            .forward_ids(&ids, &mut cache, &mut seqs, all_logits)
            .unwrap()
            .logits
            .to_f32_vec()
            .unwrap();
        let (got_a, got_b) = got.split_at(a.len() * vocab);
        let what = format!("{name}: chunk {a:?} after {} cached tokens", a.start);
        assert_close(&what, got_a, rows(a.clone()), tol);
        let reference_rows = &want[a.start * vocab..a.end * vocab];
        assert_close(
            &format!("{what} vs the reference"),
            got_a,
            reference_rows,
            tol,
        );
        let what = format!("{name}: batched sequence b, rows {b:?}");
        assert_close(&what, got_b, rows(b), tol);
    }
    assert_eq!((ta.len(), tb.len()), (24, 11));
}

#[test]
fn prefill_chunks_after_a_cached_prefix_equal_the_one_shot_prefill_on_the_gpu() {
    let Some(_gpu) = gpu_for_tests() else { return };
    poison_outputs(true);
    for name in CHECKPOINTS {
        check_chunked_prefill(name);
    }
}
