//! Generation through the public API and the `internvl` program, on the fixtures made by transformers.

use std::path::{Path, PathBuf};
use std::process::Command;

use awq_kernels::sampling::SamplingParams;
use awq_kernels::Weights;
use internvl::{embedded, generate, FinishReason, GenerationConfig, TextModel};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn reference_ids(dir: &Path, name: &str) -> Vec<u32> {
    let w = std::sync::Arc::new(Weights::from_file(&dir.join("reference.safetensors")).unwrap());
    let s = w.scope("");
    let t = s.get(name, &s.shape_of(name).unwrap()).unwrap();
    t.as_slice::<i32>()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect()
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        sampling: SamplingParams::default(),
        ignore_eos: true,
    }
}

#[test]
fn greedy_generation_from_a_directory_equals_transformers() {
    for name in ["qwen2-0.5b-like", "qwen2-72b-like-awq"] {
        let dir = fixture(name);
        let model = TextModel::load(&dir).unwrap();
        let prompt = reference_ids(&dir, "prompt_ids");
        let want = reference_ids(&dir, "greedy_ids");
        let out = generate(&model, &prompt, &greedy(want.len()), |_| {}).unwrap();
        assert_eq!(out.tokens, want, "{name}");
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert_eq!(out.text, model.tokenizer.decode(&want).unwrap());
    }
}

#[test]
fn the_embedded_checkpoint_is_the_dense_05b_like_fixture_and_generates_its_reference() {
    let model = embedded::text_model().unwrap();
    let dir = fixture("qwen2-0.5b-like");
    let want = reference_ids(&dir, "greedy_ids");
    let out = generate(
        &model,
        &reference_ids(&dir, "prompt_ids"),
        &greedy(want.len()),
        |_| {},
    )
    .unwrap();
    assert_eq!(out.tokens, want);
}

#[test]
fn generation_stops_at_a_stop_token_unless_told_to_ignore_it() {
    let dir = fixture("qwen2-0.5b-like");
    let mut model = TextModel::load(&dir).unwrap();
    assert_eq!(
        model.stop_ids,
        vec![402, 400],
        "stop ids come from generation_config.json"
    );
    let prompt = reference_ids(&dir, "prompt_ids");
    let want = reference_ids(&dir, "greedy_ids");
    // The random model never emits its real stop tokens, so make the 6th greedy token a stop token.
    let first_stop = 5;
    assert!(!want[..first_stop].contains(&want[first_stop]));
    model.stop_ids = vec![want[first_stop]];
    let config = GenerationConfig {
        ignore_eos: false,
        ..greedy(want.len())
    };
    let out = generate(&model, &prompt, &config, |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.tokens, want[..=first_stop]);
}

#[test]
fn seeded_sampling_repeats_and_differs_from_greedy() {
    let model = embedded::text_model().unwrap();
    let prompt = model.tokenizer.encode("Hello").unwrap();
    let sampling = SamplingParams {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 3,
    };
    let config = GenerationConfig {
        max_new_tokens: 12,
        sampling,
        ignore_eos: true,
    };
    let a = generate(&model, &prompt, &config, |_| {}).unwrap();
    let b = generate(&model, &prompt, &config, |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let g = generate(&model, &prompt, &greedy(12), |_| {}).unwrap();
    assert_ne!(a.tokens, g.tokens);
}

#[test]
fn an_empty_prompt_and_bad_sampling_values_are_errors() {
    let model = embedded::text_model().unwrap();
    assert!(generate(&model, &[], &greedy(4), |_| {}).is_err());
    let bad = GenerationConfig {
        sampling: SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        ..greedy(4)
    };
    let err = generate(&model, &[1, 2], &bad, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("top_p"), "{err}");
}

fn internvl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_internvl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_program_streams_text_from_the_embedded_checkpoint() {
    let out = internvl(&["generate", "--max-new-tokens", "8", "--ignore-eos", "Hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("RANDOM weights"), "{stderr}");
    assert!(stderr.contains("8 new tokens"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Hello"));
}

#[test]
fn the_program_reports_a_missing_or_broken_checkpoint_clearly() {
    let missing = internvl(&["generate", "--model", "/nonexistent/dir", "hi"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("config.json"), "{stderr}");

    // A checkpoint whose weights file is cut short.
    let src = fixture("qwen2-0.5b-like");
    let dir = std::env::temp_dir().join(format!("internvl-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let out = internvl(&["generate", "--model", dir.to_str().unwrap(), "hi"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_weight_with_the_wrong_shape_is_named_in_the_error() {
    let src = fixture("qwen2-0.5b-like");
    let dir = std::env::temp_dir().join(format!("internvl-wrong-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // Claim a larger intermediate size than the weights have.
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["intermediate_size"] = serde_json::json!(512);
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = TextModel::load(&dir).err().unwrap().to_string();
    assert!(
        err.contains("gate_proj.weight") && err.contains("[512, 896]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_synthetic_1b_loads_with_the_released_shapes_and_generates() {
    let model = internvl::synthetic::model("internvl2_5-1b").unwrap();
    let c = model.text.llm.config();
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.vocab_size),
        (896, 24, 151674)
    );
    assert_eq!(model.tokens_per_tile(), 256);
    let config = internvl::GenerationConfig {
        max_new_tokens: 3,
        ignore_eos: true,
        ..Default::default()
    };
    let ids = model.text.tokenizer.encode("Hello").unwrap();
    let out = internvl::generate(&model.text, &ids, &config, |_| {}).unwrap();
    assert_eq!(out.tokens.len(), 3);
    assert!(out.tokens.iter().all(|&t| (t as usize) < 151674));
}

/// `internvl bench-e2e` end to end on the tiny synthetic model: every figure it promises comes out (its
/// own checks hold: each timed decode step decodes the whole batch, so the KV cache it sizes must fit a
/// batch of 16 at once). The figures themselves are not checked (no timing in tests).
#[test]
fn the_end_to_end_bench_runs_and_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_internvl"))
        .args([
            "bench-e2e",
            "--synthetic",
            "tiny",
            "--tiles",
            "3",
            "--batch",
            "1,16",
            "--decode-steps",
            "2",
            "--repeats",
            "1",
            "--decode-sampling",
            "greedy,top_k40",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |figure: &str| figures.iter().filter(|f| f["figure"] == figure).count();
    assert_eq!(count("time_to_first_token_s"), 1, "{stdout}");
    assert_eq!(count("decode_tokens_per_s"), 4, "{stdout}");
    assert!(figures
        .iter()
        .all(|f| f["value"].as_f64().is_some_and(|v| v > 0.0)));
}
