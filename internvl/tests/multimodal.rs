//! The whole InternVL pipeline (InternViT, projector, image rows in the `<IMG_CONTEXT>` positions, Qwen2)
//! against transformers' `InternVLForConditionalGeneration` (float32, eager attention) on the tiny
//! random-weight checkpoints of `scripts/fixtures/make_internvl.py`: 300M-like and 6B-like vision encoders,
//! each with three prompts (one image of 2 tiles, two images of 1 tile, a 4-frame video), built with the
//! `internvl2_5` template and its system message.
//!
//! Tolerance: f32 on both sides from the same bf16 weights; only summation order differs, through the ViT,
//! the projector and 2 LLM layers over prompts of 650-1221 tokens. Measured: at most 9e-7 of the largest
//! logit magnitude (prefill and every decode step; encoded images 7e-7). We allow 1e-4 of it (as the Qwen2 golden tests): the
//! greedy paths have top-1/top-2 gaps of at least 0.05, and an image row in the wrong place or order moves
//! the logits by far more (the fixture asserts that mirrored tiles move them by more than 0.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use awq_kernels::kv_cache::BlockTable;
use awq_kernels::sampling::{argmax, SamplingParams};
use awq_kernels::{DType, Tensor, Weights};
use internvl::engine::{Engine, EngineConfig, SeqRequest, StepEvent};
use internvl::{generate_with_images, Error, FinishReason, GenerationConfig, InternVlModel};
use qwen2::{ForwardOptions, SeqInput};

const REL_TOL: f32 = 1e-4;
const VARIANTS: [&str; 2] = ["internvl-300m-like", "internvl-6b-like"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn tensor(file: &Path, name: &str) -> Tensor {
    let w = Arc::new(Weights::from_file(file).unwrap());
    let s = w.scope("");
    s.get(name, &s.shape_of(name).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixture's pixels `[tiles, 3, 448, 448]`: `(level - 128) / 64` of the stored u8 levels.
fn pixels(which: &str) -> Tensor {
    let levels = tensor(
        &fixtures().join("internvl-pixels/pixels.safetensors"),
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

struct Reference {
    file: PathBuf,
}

impl Reference {
    fn new(variant: &str) -> Reference {
        Reference {
            file: fixtures().join(variant).join("reference.safetensors"),
        }
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        tensor(&self.file, name).to_f32_vec().unwrap()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        tensor(&self.file, name)
            .as_slice::<i32>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect()
    }
}

/// The prompts of the fixture and the pixels each uses.
const PROMPTS: [(&str, &str); 3] = [
    ("image", "image"),
    ("multi_image", "image"),
    ("video", "video"),
];

fn load(variant: &str) -> InternVlModel {
    InternVlModel::load(&fixtures().join(variant)).unwrap()
}

#[test]
fn encoded_images_of_both_flavours_match_the_transformers_projector_output() {
    for variant in VARIANTS {
        let model = load(variant);
        let rows = model.encode_images(&pixels("image")).unwrap();
        assert_eq!(model.tokens_per_tile(), 256);
        assert_eq!(rows.shape(), &[512, model.config.llm.hidden_size]);
        let rel = assert_close(
            variant,
            rows.as_slice().unwrap(),
            &Reference::new(variant).floats("image.projector_output"),
        );
        eprintln!("{variant}: encoded images max error {rel:.2e}");
    }
}

/// Prefill with the images, then greedy decode steps through the KV cache, comparing every step's logits.
fn check_logits_along_the_greedy_path(variant: &str) {
    let model = load(variant);
    let reference = Reference::new(variant);
    let llm = &model.text.llm;
    for (prompt, which) in PROMPTS {
        let ids = reference.ids(&format!("{prompt}.prompt_ids"));
        let greedy = reference.ids(&format!("{prompt}.greedy_ids"));
        let want = reference.floats(&format!("{prompt}.greedy_logits"));
        let vocab = want.len() / greedy.len();
        let x = model.prompt_embeddings(&ids, Some(&pixels(which))).unwrap();
        let mut cache = llm.new_kv_cache(16, (ids.len() + greedy.len()).div_ceil(16));
        let mut table = BlockTable::new();
        let mut worst = 0.0f32;
        let mut logits = llm
            .forward_embeds(
                x,
                &mut cache,
                &mut [SeqInput {
                    table: &mut table,
                    len: ids.len(),
                }],
                ForwardOptions::default(),
            )
            .unwrap()
            .logits;
        for (step, &token) in greedy.iter().enumerate() {
            let got = logits.to_f32_vec().unwrap();
            let what = format!("{variant} {prompt} step {step}");
            worst = worst.max(assert_close(
                &what,
                &got,
                &want[step * vocab..(step + 1) * vocab],
            ));
            assert_eq!(argmax(&got) as u32, token, "{what}: greedy token");
            logits = llm
                .forward_ids(
                    &[token],
                    &mut cache,
                    &mut [SeqInput {
                        table: &mut table,
                        len: 1,
                    }],
                    ForwardOptions::default(),
                )
                .unwrap()
                .logits;
        }
        let last = reference.floats(&format!("{prompt}.prompt_last_logits"));
        assert_eq!(
            &last[..],
            &want[..vocab],
            "row 0 of greedy_logits is the prefill"
        );
        eprintln!("{variant} {prompt}: logits max error {worst:.2e} of the largest logit");
    }
}

#[test]
fn prefill_and_decode_logits_of_the_300m_like_pipeline_match_transformers_for_three_prompts() {
    check_logits_along_the_greedy_path("internvl-300m-like");
}

#[test]
fn prefill_and_decode_logits_of_the_6b_like_pipeline_match_transformers_for_three_prompts() {
    check_logits_along_the_greedy_path("internvl-6b-like");
}

#[test]
fn greedy_generation_with_images_equals_transformers_for_both_flavours_and_three_prompts() {
    for variant in VARIANTS {
        let model = load(variant);
        let reference = Reference::new(variant);
        for (prompt, which) in PROMPTS {
            let ids = reference.ids(&format!("{prompt}.prompt_ids"));
            let want = reference.ids(&format!("{prompt}.greedy_ids"));
            let config = GenerationConfig {
                max_new_tokens: want.len(),
                sampling: SamplingParams::default(),
                ignore_eos: true,
            };
            let out =
                generate_with_images(&model, &ids, Some(&pixels(which)), &config, |_| {}).unwrap();
            assert_eq!(out.tokens, want, "{variant} {prompt}");
            assert_eq!(out.prompt_tokens, ids.len());
        }
    }
}

#[test]
fn expanding_the_image_placeholders_of_each_templated_prompt_gives_the_reference_ids() {
    for variant in VARIANTS {
        let model = load(variant);
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(variant).join("meta.json")).unwrap(),
        )
        .unwrap();
        let reference = Reference::new(variant);
        for (prompt, _) in PROMPTS {
            let p = &meta["prompts"][prompt];
            let tiles: Vec<usize> = p["num_patches_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let text = model
                .expand_image_placeholders(
                    p["templated_before_expansion"].as_str().unwrap(),
                    &tiles,
                )
                .unwrap();
            let ids = model.text.tokenizer.encode(&text).unwrap();
            assert_eq!(
                ids,
                reference.ids(&format!("{prompt}.prompt_ids")),
                "{variant} {prompt}"
            );
        }
        let err = model
            .expand_image_placeholders("Image-1: <image>\nImage-2: <image>\nHi", &[1])
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ImageCount {
                    placeholders: 2,
                    images: 1
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn image_token_ids_come_from_the_tokenizer_and_the_config_is_read() {
    let model = load("internvl-6b-like");
    let t = model.image_tokens;
    assert_eq!((t.start, t.end, t.context), (403, 404, 405));
    let c = &model.config;
    assert_eq!(c.template.as_deref(), Some("internvl2_5"));
    assert_eq!(c.ps_version, projector::PsVersion::V2);
    assert_eq!((c.select_layer, c.downsample_ratio), (-1, 0.5));
    assert_eq!((c.min_dynamic_patch, c.max_dynamic_patch), (1, 12));
    assert!(c.dynamic_image_size && c.use_thumbnail);
    assert_eq!(c.vision.image_size, 448);
    assert_eq!(model.text.stop_ids, vec![402, 401, 400]);
}

#[test]
fn a_prompt_whose_image_positions_do_not_match_the_tiles_is_refused_with_both_counts() {
    let model = load("internvl-300m-like");
    let ids = Reference::new("internvl-300m-like").ids("image.prompt_ids"); // 512 positions
    let one_tile = pixels("image").narrow_rows(0, 1).unwrap();
    let err = model.prompt_embeddings(&ids, Some(&one_tile)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageTokenMismatch {
                positions: 512,
                rows: 256,
                per_tile: 256
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("512") && msg.contains("256"), "{msg}");
    // Image positions without images are refused too, and so is generation from them.
    let err = model.prompt_embeddings(&ids, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageTokenMismatch {
                positions: 512,
                rows: 0,
                ..
            }
        ),
        "{err}"
    );
    let config = GenerationConfig::default();
    assert!(generate_with_images(&model, &ids, Some(&one_tile), &config, |_| {}).is_err());
}

#[test]
fn pixels_of_the_wrong_shape_are_refused_with_the_shape_given_and_expected() {
    let model = load("internvl-6b-like");
    for shape in [
        vec![2, 3, 224, 224],
        vec![1, 4, 448, 448],
        vec![3, 448, 448],
    ] {
        let err = model
            .encode_images(&Tensor::zeros(DType::F32, &shape))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Vision(vit::Error::PixelShape { .. }))
                && msg.contains(&format!("{shape:?}"))
                && msg.contains("448"),
            "{msg}"
        );
    }
}

#[test]
fn a_checkpoint_missing_a_vision_tensor_is_refused_naming_the_tensor() {
    let src = fixtures().join("internvl-300m-like");
    let dir = std::env::temp_dir().join(format!("internvl-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let missing = "vision_model.encoder.layers.1.attn.qkv.bias";
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != missing)
        .collect();
    assert_eq!(kept.len() + 1, st.len());
    safetensors::serialize_to_file(kept, &None, &dir.join("model.safetensors")).unwrap();
    let err = InternVlModel::load(&dir)
        .err()
        .expect("must fail")
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains(missing) && err.contains("missing"), "{err}");
}

#[test]
fn a_plain_qwen2_checkpoint_is_not_taken_for_an_internvl_one() {
    let err = InternVlModel::load(&fixtures().join("qwen2-0.5b-like"))
        .err()
        .expect("no vision_config")
        .to_string();
    assert!(err.contains("vision_config"), "{err}");
}

/// Runs the three reference prompts through one [`Engine`] at once and returns each one's tokens (in prompt
/// order), checking the event order and that every KV block is free at the end.
fn engine_tokens(model: &InternVlModel, config: EngineConfig) -> (Vec<Vec<u32>>, u64) {
    let reference = Reference::new("internvl-300m-like");
    let mut engine = Engine::new(model, config).unwrap();
    let mut ids = Vec::new();
    for (prompt, which) in PROMPTS {
        let want = reference.ids(&format!("{prompt}.greedy_ids"));
        let request = SeqRequest {
            prompt_ids: reference.ids(&format!("{prompt}.prompt_ids")),
            pixels: Some(pixels(which)),
            config: GenerationConfig {
                max_new_tokens: want.len(),
                sampling: SamplingParams::default(),
                ignore_eos: true,
            },
        };
        ids.push(engine.add(request).unwrap());
    }
    let mut tokens = vec![Vec::new(); ids.len()];
    let mut finished = vec![false; ids.len()];
    for _ in 0..200 {
        if engine.is_idle() {
            break;
        }
        assert!(engine.running() <= config.max_running);
        for event in engine.step() {
            match event {
                StepEvent::Token { id, token, .. } => {
                    let i = ids.iter().position(|&x| x == id).unwrap();
                    assert!(!finished[i], "a token after Finished");
                    tokens[i].push(token);
                }
                StepEvent::Finished {
                    id,
                    reason,
                    completion_tokens,
                    ..
                } => {
                    let i = ids.iter().position(|&x| x == id).unwrap();
                    assert_eq!(reason, FinishReason::Length);
                    assert_eq!(completion_tokens, tokens[i].len());
                    finished[i] = true;
                }
                StepEvent::Failed { error, .. } => panic!("{error}"),
            }
        }
    }
    assert!(engine.is_idle() && finished.iter().all(|&f| f));
    let (free, total) = engine.kv_blocks();
    assert_eq!(free, total, "every KV block is returned");
    (tokens, engine.preemptions())
}

fn reference_greedy() -> Vec<Vec<u32>> {
    let reference = Reference::new("internvl-300m-like");
    PROMPTS
        .iter()
        .map(|(prompt, _)| reference.ids(&format!("{prompt}.greedy_ids")))
        .collect()
}

#[test]
fn the_engine_decodes_three_image_prompts_in_one_batch_with_the_transformers_greedy_tokens() {
    let model = load("internvl-300m-like");
    let config = EngineConfig {
        max_running: 3,
        kv_cache_tokens: 4096,
        block_size: 16,
    };
    let (tokens, preemptions) = engine_tokens(&model, config);
    assert_eq!(tokens, reference_greedy());
    assert_eq!(preemptions, 0);
    // One at a time gives the same tokens.
    let serial = EngineConfig {
        max_running: 1,
        ..config
    };
    assert_eq!(engine_tokens(&model, serial).0, reference_greedy());
}

#[test]
fn a_kv_cache_too_small_for_all_preempts_and_recomputes_without_changing_the_tokens() {
    let model = load("internvl-300m-like");
    // Prompts of 671 and 682 tokens take 42 + 43 of the 86 blocks; the one block left cannot hold both
    // sequences' growth over 16 tokens, so the newer one is preempted; the 1221-token video waits.
    let config = EngineConfig {
        max_running: 3,
        kv_cache_tokens: 86 * 16,
        block_size: 16,
    };
    let (tokens, preemptions) = engine_tokens(&model, config);
    assert_eq!(tokens, reference_greedy());
    assert!(preemptions > 0);
}

#[test]
fn cancelling_frees_the_blocks_and_a_prompt_over_the_cache_is_refused() {
    let model = load("internvl-300m-like");
    let reference = Reference::new("internvl-300m-like");
    let config = EngineConfig {
        max_running: 2,
        kv_cache_tokens: 2048,
        block_size: 16,
    };
    let mut engine = Engine::new(&model, config).unwrap();
    let request = |prompt: &str, which: &str| SeqRequest {
        prompt_ids: reference.ids(&format!("{prompt}.prompt_ids")),
        pixels: Some(pixels(which)),
        config: GenerationConfig {
            max_new_tokens: 50,
            sampling: SamplingParams::default(),
            ignore_eos: true,
        },
    };
    let a = engine.add(request("image", "image")).unwrap();
    let b = engine.add(request("multi_image", "image")).unwrap();
    engine.step();
    engine.step();
    assert_eq!(engine.running(), 2);
    let (free, total) = engine.kv_blocks();
    assert!(free < total);
    assert!(engine.cancel(a) && engine.cancel(b));
    assert!(!engine.cancel(a), "a cancelled sequence is gone");
    assert!(engine.is_idle());
    assert_eq!(engine.kv_blocks(), (total, total));
    // 1221 tokens do not fit in a 1024-token cache.
    let mut small = Engine::new(
        &model,
        EngineConfig {
            kv_cache_tokens: 1024,
            ..config
        },
    )
    .unwrap();
    let err = small.add(request("video", "video")).unwrap_err();
    assert!(
        matches!(err, Error::PromptTooLong { limit: 1024, .. }),
        "{err}"
    );
}

/// [`awq_kernels::testing::assert_close`] at this suite's tolerance.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    awq_kernels::testing::assert_close(what, got, want, REL_TOL)
}
