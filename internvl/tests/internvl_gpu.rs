//! The engine on the GPU (language model in the checkpoint's bf16, vision on the CPU) with the tiny
//! InternVL fixture made by transformers: three image prompts decoded together in one batch give exactly
//! the tokens each gives alone (batching over the paged KV cache changes nothing on the GPU either), and
//! the tokens agree with transformers' float32 greedy tokens as far as bf16 rounding allows (printed; the
//! CPU tests hold the exact comparison); a warm-up request before them changes nothing. Fixtures are read from `INTERNVL_FIXTURES` when set (the GPU
//! bundle), else from the source tree.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::sync::Arc;

use awq_kernels::cuda::gpu_for_tests;
use awq_kernels::sampling::SamplingParams;
use awq_kernels::{Device, Tensor, Weights};
use internvl::engine::{Engine, EngineConfig, SeqRequest, StepEvent};
use internvl::{GenerationConfig, InternVlModel};

fn fixtures() -> PathBuf {
    std::env::var_os("INTERNVL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"))
}

fn tensor(file: PathBuf, name: &str) -> Tensor {
    let w = Arc::new(Weights::from_file(&file).unwrap());
    let s = w.scope("");
    s.get(name, &s.shape_of(name).unwrap()).unwrap()
}

fn ids(name: &str) -> Vec<u32> {
    let t = tensor(
        fixtures().join("internvl-300m-like/reference.safetensors"),
        name,
    );
    t.as_slice::<i32>()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect()
}

/// The fixture's pixels: `(level - 128) / 64` of the stored u8 levels.
fn pixels(which: &str) -> Tensor {
    let levels = tensor(
        fixtures().join("internvl-pixels/pixels.safetensors"),
        &format!("{which}_levels"),
    );
    let values = levels
        .as_slice::<u8>()
        .unwrap()
        .iter()
        .map(|&l| (l as f32 - 128.0) / 64.0)
        .collect();
    Tensor::from_vec(values, levels.shape()).unwrap()
}

const PROMPTS: [(&str, &str); 3] = [
    ("image", "image"),
    ("multi_image", "image"),
    ("video", "video"),
];

fn run(model: &InternVlModel, max_running: usize, warm_up: bool) -> Vec<Vec<u32>> {
    let mut engine = Engine::new(
        model,
        EngineConfig {
            max_running,
            kv_cache_tokens: 4096,
            block_size: 16,
        },
    )
    .unwrap();
    if warm_up {
        // The server's start-up request: it must leave nothing behind.
        engine.warm_up().unwrap();
        assert!(engine.is_idle());
        let (free, total) = engine.kv_blocks();
        assert_eq!(free, total);
    }
    let mut seqs = Vec::new();
    for (prompt, which) in PROMPTS {
        let want = ids(&format!("{prompt}.greedy_ids"));
        let id = engine
            .add(SeqRequest {
                prompt_ids: ids(&format!("{prompt}.prompt_ids")),
                pixels: Some(pixels(which)),
                config: GenerationConfig {
                    max_new_tokens: want.len(),
                    sampling: SamplingParams::default(),
                    ignore_eos: true,
                },
            })
            .unwrap();
        seqs.push(id);
    }
    let mut tokens = vec![Vec::new(); seqs.len()];
    while !engine.is_idle() {
        for event in engine.step() {
            match event {
                StepEvent::Token { id, token, .. } => {
                    tokens[seqs.iter().position(|&s| s == id).unwrap()].push(token)
                }
                StepEvent::Finished { .. } => {}
                StepEvent::Failed { error, .. } => panic!("{error}"),
            }
        }
    }
    let (free, total) = engine.kv_blocks();
    assert_eq!(free, total);
    tokens
}

#[test]
fn the_engine_on_the_gpu_batches_without_changing_the_tokens() {
    if gpu_for_tests().is_none() {
        return;
    }
    let model = InternVlModel::load(&fixtures().join("internvl-300m-like"))
        .unwrap()
        .to_device(Device::Cuda(0))
        .unwrap();
    let batched = run(&model, 3, true);
    let alone = run(&model, 1, false);
    assert_eq!(batched, alone);
    for ((prompt, _), got) in PROMPTS.iter().zip(&batched) {
        let want = ids(&format!("{prompt}.greedy_ids"));
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{prompt}: the first {same} of {} tokens equal transformers' float32 greedy tokens",
            want.len()
        );
    }
}

/// Vision encoder and projector on the GPU (bf16, the rewritten encoder of `InternVit::to_device`)
/// against transformers' float32 projector output. Tolerance: bf16 rounds each stored activation to 2^-9
/// relative; through the embedding, 2 encoder layers (about 8 roundings each) and the projector (4) we
/// allow 24 such roundings of the largest value, 4.7%; a wrong row order or a missed layer scale moves
/// values by far more.
#[test]
fn vision_on_the_gpu_matches_transformers_within_bf16_rounding() {
    if gpu_for_tests().is_none() {
        return;
    }
    for name in ["internvl-300m-like", "internvl-6b-like"] {
        let model = InternVlModel::load(&fixtures().join(name))
            .unwrap()
            .to_device(Device::Cuda(0))
            .unwrap();
        let rows = model
            .encode_images(&pixels("image"))
            .unwrap()
            .to_device(Device::Cpu)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let want = tensor(
            fixtures().join(name).join("reference.safetensors"),
            "image.projector_output",
        )
        .to_f32_vec()
        .unwrap();
        assert_eq!(rows.len(), want.len(), "{name}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = rows
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name}: projector output on the GPU, max error {:.2e} of the largest value",
            worst / scale
        );
        assert!(
            worst.is_finite() && worst <= 24.0 * scale / 512.0,
            "{name}: {worst} (scale {scale})"
        );
    }
}

/// A synthetic model moved to the GPU unread (its weights made there by kernels, the AWQ codes repacked
/// and the fused projections joined there; the host makes only small tensors) computes the same bits as
/// the same checkpoint made on the host and loaded from its bytes, for a prompt with an image; and it is
/// the CPU's model (logits within a loose bound: f16 and bf16 activations against f32, on logits of order
/// 0.1).
#[test]
fn a_synthetic_model_made_on_the_gpu_is_the_one_made_on_the_host() {
    if gpu_for_tests().is_none() {
        return;
    }
    use internvl::synthetic;
    let shape = synthetic::tiny();
    let (tokenizer, generation) = internvl::embedded::internvl_tokenizer_files();
    let from_bytes = || {
        InternVlModel::from_shared(
            "tiny synthetic checkpoint (bytes)",
            &synthetic::config_json(&shape).to_string(),
            Arc::new(synthetic::checkpoint_image(&shape).unwrap()),
            tokenizer,
            Some(generation),
        )
        .unwrap()
    };
    let before = awq_kernels::synthetic::host_bytes_made();
    let made_on_gpu = synthetic::model_of_shape("tiny", &shape)
        .unwrap()
        .to_device(Device::Cuda(0))
        .unwrap();
    // Of its 80 MB (mostly the embedding table and the head, 39 MB each), the host made only the small
    // tensors: the patch embedding (64 x 588 bf16, 75 KB), norms, biases, layer scales and positions (4
    // KB). No other test of this binary makes synthetic tensors.
    let host_made = awq_kernels::synthetic::host_bytes_made() - before;
    assert!(host_made < 128 << 10, "{host_made} bytes made on the host");
    let loaded = from_bytes().to_device(Device::Cuda(0)).unwrap();
    let cpu = from_bytes();

    let context = made_on_gpu.image_tokens.context;
    let text = made_on_gpu
        .text
        .tokenizer
        .encode("Describe the image.")
        .unwrap();
    let mut ids = vec![context];
    ids.extend(text);
    let values: Vec<f32> = (0..3 * 28 * 28)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let pixels = Tensor::from_vec(values, &[1, 3, 28, 28]).unwrap();
    let logits = |model: &InternVlModel| -> Vec<f32> {
        let llm = &model.text.llm;
        let x = model.prompt_embeddings(&ids, Some(&pixels)).unwrap();
        let x = llm.to_model_input(x).unwrap();
        let mut cache = llm.new_kv_cache(16, 4);
        let mut table = awq_kernels::kv_cache::BlockTable::new();
        let mut seqs = [qwen2::SeqInput {
            table: &mut table,
            len: ids.len(),
        }];
        let out = llm
            .forward_embeds(x, &mut cache, &mut seqs, Default::default())
            .unwrap();
        out.logits.to_f32_vec().unwrap()
    };
    let (a, b, c) = (logits(&made_on_gpu), logits(&loaded), logits(&cpu));
    assert_eq!(a.len(), 151674);
    assert!(a.iter().all(|v| v.is_finite()));
    let max = c.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max > 0.01, "degenerate logits (max |logit| {max})");
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "the GPU-made and the host-made model differ"
    );
    let worst = a
        .iter()
        .zip(&c)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst <= 0.05 * max,
        "GPU vs CPU: {worst} against max |logit| {max}"
    );
}

/// The encoder's load-time rewrites done on the GPU (the qkv rows split there, the layer scales folded
/// there by a kernel) give the bits of the same rewrites done on the host in f32 and then moved, for both
/// encoder designs (the 300M's fused qkv with bias, the 6B's RMSNorm and q/k norms).
#[test]
fn vision_rewrites_on_the_gpu_give_the_bits_of_the_host_rewrites() {
    if gpu_for_tests().is_none() {
        return;
    }
    let gpu = Device::Cuda(0);
    for name in ["internvl-300m-like", "internvl-6b-like"] {
        let model = InternVlModel::load(&fixtures().join(name)).unwrap();
        let dtype = awq_kernels::DType::BF16;
        let rewritten_on_gpu = model.vit.to_device(gpu, dtype).unwrap();
        let rewritten_on_host = model
            .vit
            .rewritten()
            .unwrap()
            .to_device(gpu, dtype)
            .unwrap();
        let px = pixels("image");
        let a = rewritten_on_gpu.forward(&px).unwrap();
        let b = rewritten_on_host.forward(&px).unwrap();
        let (a, b) = (
            a.to_device(Device::Cpu).unwrap(),
            b.to_device(Device::Cpu).unwrap(),
        );
        assert!(a.to_f32_vec().unwrap().iter().all(|v| v.is_finite()));
        assert_eq!(a.bytes(), b.bytes(), "{name}");
    }
}
