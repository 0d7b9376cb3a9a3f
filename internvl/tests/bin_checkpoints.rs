//! PyTorch `.bin` checkpoints end to end: generation, `inspect` and `convert`, on the tiny InternVL-layout
//! fixtures written by torch (`scripts/fixtures/make_bin_checkpoints.py`): each saved once as `.bin` shards
//! and once as safetensors from the same state dict.

use std::path::{Path, PathBuf};
use std::process::Command;

use awq_kernels::sampling::SamplingParams;
use awq_kernels::testing::{copy_dir, temp_dir};
use awq_kernels::weights::TensorProblem;
use awq_kernels::{WeightFormat, Weights};
use internvl::convert::{convert, ConvertOptions, Progress};
use internvl::inspect::inspect;
use internvl::{generate, GenerationConfig, TextModel};

const KINDS: [&str; 3] = [
    "internvl-tiny-bf16",
    "internvl-tiny-fp16",
    "internvl-tiny-awq",
];

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/bin")
        .join(rel)
}

fn greedy_tokens(dir: &Path, n: usize) -> Vec<u32> {
    let model = TextModel::load(dir).unwrap();
    let prompt = model
        .tokenizer
        .encode("<|im_start|>user\nHello, cats 42?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let config = GenerationConfig {
        max_new_tokens: n,
        sampling: SamplingParams::default(),
        ignore_eos: true,
    };
    generate(&model, &prompt, &config, |_| {}).unwrap().tokens
}

fn internvl(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_internvl"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn greedy_generation_on_the_bin_folder_equals_the_safetensors_folder() {
    for kind in KINDS {
        let bin = greedy_tokens(&fixture(&format!("{kind}/bin")), 16);
        let st = greedy_tokens(&fixture(&format!("{kind}/safetensors")), 16);
        assert_eq!(bin.len(), 16);
        assert_eq!(bin, st, "{kind}");
    }
}

#[test]
fn the_program_answers_the_same_text_from_the_bin_and_the_safetensors_folder() {
    let cwd = std::env::temp_dir();
    let run = |dir: PathBuf| {
        let out = internvl(
            &[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--chat",
                "--max-new-tokens",
                "12",
                "--ignore-eos",
                "Hello",
            ],
            &cwd,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for kind in KINDS {
        let bin = run(fixture(&format!("{kind}/bin")));
        let st = run(fixture(&format!("{kind}/safetensors")));
        // A chat answer is printed without the question; 12 random tokens make some text.
        assert!(bin.trim_end_matches('\n').chars().count() >= 3, "{bin:?}");
        assert_eq!(bin, st, "{kind}");
    }
}

#[test]
fn a_malicious_pickle_is_refused_by_the_program_without_running_its_command() {
    let dir = temp_dir("malicious");
    copy_dir(&fixture("malicious"), &dir);
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(fixture("internvl-tiny-bf16/bin").join(f), dir.join(f)).unwrap();
    }
    for args in [
        vec!["generate", "--model", dir.to_str().unwrap(), "hi"],
        vec!["inspect", dir.to_str().unwrap()],
    ] {
        let out = internvl(&args, &dir);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("posix.system") && stderr.contains("refusing"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!dir.join("internvl_pickle_pwned").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_describes_the_awq_bin_checkpoint() {
    let r = inspect(&fixture("internvl-tiny-awq/bin"), 4096).unwrap();
    assert_eq!(r.architecture, "InternVLChatModel");
    assert_eq!(r.format, WeightFormat::TorchBin);
    assert_eq!(r.files.len(), 7);
    let v = r.vision.as_ref().unwrap();
    assert_eq!(
        (v.hidden_size, v.num_hidden_layers, v.image_size),
        (32, 1, 448)
    );
    assert_eq!((r.llm.hidden_size, r.llm.num_hidden_layers), (128, 2));
    assert_eq!(r.llm.awq.map(|a| a.group_size), Some(128));
    assert_eq!(r.llm_prefix, "language_model.");
    assert_eq!(r.tensor_count, 79);
    assert_eq!(r.dtypes["I32"].0, 28, "qweight and qzeros of 14 linears");
    assert_eq!(r.dtypes["F16"].0, 51);
    assert_eq!(r.problems, vec![]);
    assert_eq!(r.unused, Vec::<String>::new());
    assert_eq!(r.stop_ids, vec![402, 400]);
    assert!(r
        .special_tokens
        .contains(&("<IMG_CONTEXT>".to_string(), 405)));
    // KV: 2 (k, v) x 2 layers x 2 KV heads x head dim 32 x 4096 tokens.
    assert_eq!(r.memory.kv_cpu_bytes, 2 * 2 * 2 * 32 * 4096 * 4);
    assert_eq!(r.memory.kv_gpu_bytes, 2 * 2 * 2 * 32 * 4096 * 2);
    let safetensors_size =
        std::fs::metadata(fixture("internvl-tiny-awq/safetensors/model.safetensors"))
            .unwrap()
            .len();
    assert!(
        r.memory.weight_bytes < safetensors_size
            && r.memory.weight_bytes > safetensors_size - 16_384
    );
    let text = r.to_string();
    assert!(
        text.contains("AWQ 4-bit, group size 128") && text.contains("all tensors"),
        "{text}"
    );
}

#[test]
fn inspect_lists_missing_and_unused_tensors() {
    let dir = temp_dir("inspect-mismatch");
    copy_dir(&fixture("internvl-tiny-bf16/bin"), &dir);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // Two ViT layers (layer 1 is missing), one LLM layer (layer 1 is unused).
    config["vision_config"]["num_hidden_layers"] = 2.into();
    config["llm_config"]["num_hidden_layers"] = 1.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let r = inspect(&dir, 128).unwrap();
    assert_eq!(
        r.problems.len(),
        14,
        "every tensor of ViT layer 1: {:?}",
        r.problems
    );
    assert!(
        r.problems.iter().all(|p| matches!(p,
        TensorProblem::Missing { name, .. } if name.starts_with("vision_model.encoder.layers.1.")))
    );
    assert_eq!(r.unused.len(), 12, "{:?}", r.unused);
    assert!(r
        .unused
        .iter()
        .all(|n| n.starts_with("language_model.model.layers.1.")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_reports_every_tensor_problem_at_once_before_any_compute() {
    let dir = temp_dir("problems");
    copy_dir(&fixture("internvl-tiny-fp16/bin"), &dir);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["llm_config"]["intermediate_size"] = 96.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = TextModel::load(&dir).err().unwrap().to_string();
    assert!(
        err.contains("6 problems"),
        "gate, up, down of 2 layers: {err}"
    );
    assert!(
        err.contains("language_model.model.layers.1.mlp.down_proj.weight")
            && err.contains("expected [64, 96]")
            && err.contains("pytorch_model-0000"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_writes_verified_safetensors_shards_that_generate_the_same_text() {
    let out = temp_dir("convert").join("out");
    let src = fixture("internvl-tiny-awq/bin");
    let mut events = Vec::new();
    let options = ConvertOptions {
        max_shard_bytes: 200_000,
        force: false,
    };
    let summary = convert(&src, &out, options, |p| events.push(p)).unwrap();
    assert_eq!(summary.tensors, 79);
    assert_eq!(summary.shards.len(), 4);
    assert_eq!(
        summary.copied,
        vec![
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert!(matches!(
        events[0],
        Progress::Start {
            tensors: 79,
            shards: 4,
            ..
        }
    ));
    let verified = events
        .iter()
        .filter(|e| matches!(e, Progress::ShardVerified { .. }))
        .count();
    assert_eq!(verified, 4);
    assert!(out.join("model.safetensors.index.json").exists());

    let a = Weights::from_dir(&src).unwrap();
    let b = Weights::from_dir(&out).unwrap();
    assert_eq!(b.format(), WeightFormat::Safetensors);
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        assert_eq!(a.raw(n).unwrap().data, b.raw(n).unwrap().data, "{n}");
    }
    assert_eq!(greedy_tokens(&out, 8), greedy_tokens(&src, 8));

    // An existing output is refused unless forced.
    let err = convert(&src, &out, options, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    let forced = ConvertOptions {
        max_shard_bytes: u64::MAX,
        force: true,
    };
    let summary = convert(&src, &out, forced, |_| {}).unwrap();
    assert_eq!(summary.shards, vec!["model.safetensors"]);
    assert!(!out.join("model-00001-of-00004.safetensors").exists());
    assert!(!out.join("model.safetensors.index.json").exists());
    assert_eq!(Weights::from_dir(&out).unwrap().names(), a.names());
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

#[test]
fn the_program_converts_with_progress_and_refuses_to_overwrite() {
    let tmp = temp_dir("convert-cli");
    let out = tmp.join("out");
    let src = fixture("internvl-tiny-bf16/bin");
    let args = [
        "convert",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--max-shard-size",
        "150KB",
    ];
    let first = internvl(&args, &tmp);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("100%") && stderr.contains("verified byte for byte"),
        "{stderr}"
    );
    let second = internvl(&args, &tmp);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("--force"));
    let inspect = internvl(&["inspect", out.to_str().unwrap()], &tmp);
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success() && stdout.contains("safetensors, 3 file(s)"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn chat_about_an_image_answers_the_same_from_the_bin_and_the_safetensors_folder() {
    let cwd = std::env::temp_dir();
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/preprocess/src/wide900x60.png");
    let run = |dir: PathBuf| {
        let out = internvl(
            &[
                "chat",
                "--model",
                dir.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--max-tiles",
                "4",
                "--max-new-tokens",
                "10",
                "--ignore-eos",
                "What is in the picture?",
            ],
            &cwd,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The answer and the statistics line (prompt tokens: the image's tiles are in the prompt).
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stats = stderr
            .lines()
            .last()
            .unwrap_or_default()
            .split(" in ")
            .next()
            .unwrap_or_default()
            .to_string();
        (String::from_utf8(out.stdout).unwrap(), stats)
    };
    for kind in KINDS {
        let (bin_answer, bin_stats) = run(fixture(&format!("{kind}/bin")));
        let (st_answer, st_stats) = run(fixture(&format!("{kind}/safetensors")));
        assert!(bin_stats.contains("10 new tokens"), "{bin_stats}");
        assert_eq!(bin_answer, st_answer, "{kind}");
        assert_eq!(bin_stats, st_stats, "{kind}");
    }
}
