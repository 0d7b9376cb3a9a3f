//! `internvl chat` and the chat pipeline (image files -> tiles -> template -> tokens -> answer).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use awq_kernels::Weights;
use internvl::chat::{prepare, ChatRequest, VideoSource};
use internvl::prompt::{expand_images, with_placeholders, Conversation, ImageLayout};
use internvl::{embedded, InternVlModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn image(name: &str) -> PathBuf {
    fixtures().join("preprocess/src").join(name)
}

fn internvl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_internvl"))
        .args(args)
        .output()
        .unwrap()
}

fn reference_ids(model_dir: &Path, name: &str) -> Vec<u32> {
    let w = Arc::new(Weights::from_file(&model_dir.join("reference.safetensors")).unwrap());
    let s = w.scope("");
    let t = s.get(name, &s.shape_of(name).unwrap()).unwrap();
    t.as_slice::<i32>()
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect()
}

#[test]
fn the_template_and_placeholders_reproduce_the_reference_prompt_ids() {
    let dir = fixtures().join("internvl-300m-like");
    let model = InternVlModel::load(&dir).unwrap();
    let cases = [
        (
            "image",
            "Please describe the image in detail.",
            1,
            ImageLayout::Images,
            vec![2],
        ),
        (
            "multi_image",
            "What is shown in the picture?",
            2,
            ImageLayout::Images,
            vec![1, 1],
        ),
        (
            "video",
            "What are the people doing?",
            4,
            ImageLayout::Frames,
            vec![1, 1, 1, 1],
        ),
    ];
    for (name, question, count, layout, tiles) in cases {
        let question = with_placeholders(question, count, layout);
        let text = Conversation::default().render(&question);
        let expanded = expand_images(&text, &tiles, model.tokens_per_tile()).unwrap();
        let ids = model.text.tokenizer.encode(&expanded).unwrap();
        assert_eq!(
            ids,
            reference_ids(&dir, &format!("{name}.prompt_ids")),
            "{name}"
        );
    }
}

#[test]
fn preparing_an_image_request_gives_256_context_tokens_per_tile_and_matching_pixels() {
    let model = embedded::internvl_model().unwrap();
    let request = ChatRequest {
        question: "What is this?".into(),
        images: vec![image("wide900x60.png"), image("tiny7x5.png")],
        max_tiles: Some(6),
        ..Default::default()
    };
    let prepared = prepare(&model, &request).unwrap();
    let pixels = prepared.pixels.unwrap();
    let tiles = pixels.dim(0);
    // 900x60 with at most 6 tiles: a 6x1 grid plus the thumbnail; 7x5 (aspect 1.4): a 3x2 grid plus the
    // thumbnail (spec 5.1: small images are upscaled to the closest grid).
    assert_eq!(tiles, 7 + 7);
    let context = model.image_tokens.context;
    let count = prepared
        .prompt_ids
        .iter()
        .filter(|&&t| t == context)
        .count();
    assert_eq!(count, 256 * tiles);
    assert!(prepared
        .question
        .starts_with("Image-1: <image>\nImage-2: <image>\n"));
}

#[test]
fn a_gif_video_is_sampled_to_one_tile_per_frame() {
    let model = embedded::internvl_model().unwrap();
    let request = ChatRequest {
        question: "What happens?".into(),
        video: Some(VideoSource::Gif(image("anim.gif"))),
        num_segments: 4,
        ..Default::default()
    };
    let prepared = prepare(&model, &request).unwrap();
    assert_eq!(prepared.pixels.unwrap().dim(0), 4);
    assert!(prepared
        .question
        .starts_with("Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\n"));
}

#[test]
fn the_program_answers_about_an_image_with_the_embedded_checkpoint() {
    let path = image("photo.jpg");
    let out = internvl(&[
        "chat",
        "--image",
        path.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--ignore-eos",
        "Describe the image.",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RANDOM weights") && stderr.contains("6 new tokens"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn the_program_refuses_bad_images_and_placeholder_counts_clearly() {
    let not_an_image = fixtures().join("preprocess/grid.json");
    let out = internvl(&["chat", "--image", not_an_image.to_str().unwrap(), "Hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("grid.json") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let one = image("tiny7x5.png");
    let out = internvl(&[
        "chat",
        "--image",
        one.to_str().unwrap(),
        "<image> and <image>?",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("2 `<image>` placeholder(s) but 1 image(s)"),
        "{stderr}"
    );

    let out = internvl(&["chat"]);
    assert!(!out.status.success());
}

#[test]
fn batch_mode_answers_each_line_and_reports_bad_lines_without_stopping() {
    let dir = std::env::temp_dir().join(format!("internvl-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let requests = dir.join("requests.jsonl");
    let good = serde_json::json!({"question": "What is it?", "images": [image("tiny7x5.png")], "max_new_tokens": 3});
    let missing = serde_json::json!({"question": "And this?", "images": [dir.join("missing.png")]});
    std::fs::write(&requests, format!("{good}\n{missing}\nnot json\n")).unwrap();
    let out = internvl(&[
        "chat",
        "--batch",
        requests.to_str().unwrap(),
        "--ignore-eos",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["completion_tokens"], 3);
    assert_eq!(lines[0]["finish_reason"], "length");
    assert!(lines[1]["error"].as_str().unwrap().contains("missing.png"));
    assert!(lines[2]["error"].as_str().unwrap().contains("line 3"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interactive_mode_keeps_the_conversation_and_survives_a_bad_turn() {
    let path = image("tiny7x5.png");
    let mut child = Command::new(env!("CARGO_BIN_EXE_internvl"))
        .args([
            "chat",
            "--interactive",
            "--image",
            path.to_str().unwrap(),
            "--max-new-tokens",
            "3",
            "--ignore-eos",
            "First?",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Second?\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let prompts: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.split('[').nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(prompts.len(), 2, "{stderr}");
    // The second turn carries the first turn (with its image) as history.
    assert!(prompts[1] > prompts[0], "{prompts:?}");
}
