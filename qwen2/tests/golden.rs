//! The Qwen2 decoder against transformers: tiny random-weight checkpoints made by
//! `scripts/fixtures/make_qwen2.py` (transformers `Qwen2ForCausalLM`, float32, eager attention), dense bf16
//! and AWQ, shaped like Qwen2.5-0.5B (14 query heads over 2 KV heads, d 64) and like the 72B (8 query heads
//! per KV head, d 128).
//!
//! Tolerance: our CPU path computes in f32 like the reference, from the same weights, so the only difference
//! is the order of f32 additions (dot products of length 896-1024, softmax sums). That error grows like
//! eps·sqrt(k) per dot product relative to the magnitudes involved; measured here it is at most 8.4e-6 of
//! the largest absolute reference value (logits, layer outputs, every decode step). We allow 1e-4 of it
//! (12x margin), which still catches any real mistake (a wrong rotation, head mapping, bias or nibble moves
//! values by 1e-2 or more).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use awq_kernels::kv_cache::BlockTable;
use awq_kernels::sampling::argmax;
use awq_kernels::{Tensor, Weights};
use qwen2::{ForwardOptions, Qwen2, Qwen2Config, SeqInput};

const REL_TOL: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

struct Fixture {
    model: Qwen2,
    reference: Arc<Weights>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let dir = fixture_dir(name);
        let config = Qwen2Config::from_file(&dir.join("config.json")).unwrap();
        let weights = Arc::new(Weights::from_dir(&dir).unwrap());
        let model = Qwen2::load(&config, &weights.scope("")).unwrap();
        let reference = Arc::new(Weights::from_file(&dir.join("reference.safetensors")).unwrap());
        Fixture { model, reference }
    }

    fn tensor(&self, name: &str) -> Tensor {
        let shape = self
            .reference
            .scope("")
            .shape_of(name)
            .unwrap_or_else(|| panic!("no {name}"));
        self.reference.scope("").get(name, &shape).unwrap()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.tensor(name)
            .as_slice::<i32>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect()
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.tensor(name).to_f32_vec().unwrap()
    }
}

fn prefill(f: &Fixture, ids: &[u32], options: ForwardOptions) -> qwen2::ForwardOutput {
    let mut cache = f.model.new_kv_cache(16, ids.len().div_ceil(16) + 1);
    let mut table = BlockTable::new();
    let mut seqs = [SeqInput {
        table: &mut table,
        len: ids.len(),
    }];
    f.model
        .forward_ids(ids, &mut cache, &mut seqs, options)
        .unwrap()
}

fn check_prefill_matches_reference(name: &str) {
    let f = Fixture::load(name);
    let ids = f.ids("prompt_ids");
    let out = prefill(
        &f,
        &ids,
        ForwardOptions {
            all_logits: true,
            keep_layer_outputs: true,
        },
    );
    assert_close(
        "hidden_after_layer_0",
        out.layer_outputs[0].as_slice().unwrap(),
        &f.floats("hidden_after_layer_0"),
    );
    let last = out.layer_outputs.last().unwrap();
    assert_close(
        "hidden_after_layer_last",
        last.as_slice().unwrap(),
        &f.floats("hidden_after_layer_last"),
    );
    assert_close(
        "prompt_logits",
        out.logits.as_slice().unwrap(),
        &f.floats("prompt_logits"),
    );
}

/// Decodes one token at a time through the KV cache, feeding the reference's greedy tokens, and checks
/// every step's logits against the reference's full-sequence forward; then checks our own greedy choice.
fn check_stepwise_decoding_matches_reference(name: &str) {
    let f = Fixture::load(name);
    let prompt = f.ids("prompt_ids");
    let greedy = f.ids("greedy_ids");
    let full_logits = f.floats("full_logits");
    let vocab = f.model.config().vocab_size;
    let total = prompt.len() + greedy.len();
    assert_eq!(full_logits.len(), total * vocab);

    let mut cache = f.model.new_kv_cache(16, total.div_ceil(16));
    let mut table = BlockTable::new();
    let mut generated = Vec::new();
    let mut input = prompt.clone();
    for (step, &reference_token) in greedy.iter().enumerate() {
        let mut seqs = [SeqInput {
            table: &mut table,
            len: input.len(),
        }];
        let out = f
            .model
            .forward_ids(&input, &mut cache, &mut seqs, ForwardOptions::default())
            .unwrap();
        let logits = out.logits.as_slice::<f32>().unwrap();
        let pos = prompt.len() + step - 1;
        assert_close(
            &format!("step {step} logits"),
            logits,
            &full_logits[pos * vocab..(pos + 1) * vocab],
        );
        let next = argmax(logits) as u32;
        generated.push(next);
        // Feed the reference token so a mismatch shows up above with its position, not as a cascade.
        input = vec![reference_token];
    }
    assert_eq!(generated, greedy, "greedy tokens differ from transformers");
    assert_eq!(table.len(), total - 1);
}

#[test]
fn dense_05b_like_prefill_matches_transformers() {
    check_prefill_matches_reference("qwen2-0.5b-like");
}

#[test]
fn dense_72b_like_prefill_matches_transformers() {
    check_prefill_matches_reference("qwen2-72b-like");
}

#[test]
fn awq_05b_like_prefill_matches_transformers_on_dequantized_weights() {
    check_prefill_matches_reference("qwen2-0.5b-like-awq");
}

#[test]
fn awq_72b_like_prefill_matches_transformers_on_dequantized_weights() {
    check_prefill_matches_reference("qwen2-72b-like-awq");
}

#[test]
fn dense_05b_like_decoding_with_the_cache_matches_and_greedy_tokens_are_equal() {
    check_stepwise_decoding_matches_reference("qwen2-0.5b-like");
}

#[test]
fn dense_72b_like_decoding_with_the_cache_matches_and_greedy_tokens_are_equal() {
    check_stepwise_decoding_matches_reference("qwen2-72b-like");
}

#[test]
fn awq_05b_like_decoding_with_the_cache_matches_and_greedy_tokens_are_equal() {
    check_stepwise_decoding_matches_reference("qwen2-0.5b-like-awq");
}

#[test]
fn awq_72b_like_decoding_with_the_cache_matches_and_greedy_tokens_are_equal() {
    check_stepwise_decoding_matches_reference("qwen2-72b-like-awq");
}

#[test]
fn fused_projections_give_the_same_logits_bit_for_bit() {
    // The GPU runs q|k|v and gate|up as one GEMM each; on the CPU the fused layers must change nothing.
    for name in [
        "qwen2-0.5b-like",
        "qwen2-0.5b-like-awq",
        "qwen2-72b-like-awq",
    ] {
        let f = Fixture::load(name);
        let ids = f.ids("prompt_ids");
        let options = ForwardOptions {
            all_logits: true,
            keep_layer_outputs: false,
        };
        let separate = prefill(&f, &ids, options).logits.to_f32_vec().unwrap();
        let fused = Fixture {
            model: Fixture::load(name).model.with_fused_projections().unwrap(),
            reference: Arc::clone(&f.reference),
        };
        let got = prefill(&fused, &ids, options).logits.to_f32_vec().unwrap();
        assert!(got == separate, "{name}: fused logits differ");
        assert_close("fused prompt_logits", &got, &f.floats("prompt_logits"));
    }
}

#[test]
fn two_sequences_in_one_batch_give_the_same_logits_as_alone() {
    let f = Fixture::load("qwen2-0.5b-like");
    let prompt = f.ids("prompt_ids");
    let (a, b) = prompt.split_at(prompt.len() / 2);
    let alone_a = prefill(&f, a, ForwardOptions::default()).logits;
    let alone_b = prefill(&f, b, ForwardOptions::default()).logits;

    let mut cache = f.model.new_kv_cache(4, 16);
    let (mut ta, mut tb) = (BlockTable::new(), BlockTable::new());
    let ids: Vec<u32> = a.iter().chain(b).copied().collect();
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
    let batched = f
        .model
        .forward_ids(&ids, &mut cache, &mut seqs, ForwardOptions::default())
        .unwrap();
    let vocab = f.model.config().vocab_size;
    let both = batched.logits.as_slice::<f32>().unwrap();
    assert_close("batched a", &both[..vocab], alone_a.as_slice().unwrap());
    assert_close("batched b", &both[vocab..], alone_b.as_slice().unwrap());
}

#[test]
fn the_expected_tensor_list_names_exactly_the_tensors_of_each_checkpoint() {
    for name in [
        "qwen2-0.5b-like",
        "qwen2-72b-like",
        "qwen2-0.5b-like-awq",
        "qwen2-72b-like-awq",
    ] {
        let dir = fixture_dir(name);
        let config = Qwen2Config::from_file(&dir.join("config.json")).unwrap();
        let weights = Weights::from_dir(&dir).unwrap();
        let specs = qwen2::expected_tensors(&config, "");
        assert_eq!(weights.check(&specs), vec![], "{name}");
        let mut expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(expected, weights.names(), "{name}");
    }
}

/// [`awq_kernels::testing::assert_close`] at this suite's tolerance.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    awq_kernels::testing::assert_close(what, got, want, REL_TOL)
}
