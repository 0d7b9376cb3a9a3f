//! `internvl chat`: one question, an interactive conversation (`--interactive`), or a JSONL batch.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use awq_kernels::Device;
use clap::Args;
use internvl::chat::{chat, ChatRequest, VideoSource};
use internvl::image::ImageOptions;
use internvl::source::ModelSource;
use internvl::{FinishReason, GenerationConfig, GenerationOutput, InternVlModel};
use serde::Deserialize;

use crate::SamplingArgs;

#[derive(Args)]
pub struct ChatArgs {
    /// InternVL 2.5 checkpoint directory (any of 1B, 4B, 38B, 78B, 78B-AWQ). Without it, the small embedded
    /// checkpoint with random weights is used.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Instead of a checkpoint, a model with the exact shapes of a family member and random weights
    /// (internvl2_5-1b, -4b, -38b, -78b, -78b-awq), made in memory: for benchmarks at the real scale.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// An image (JPEG, PNG, WebP, GIF, BMP); repeat for several (`Image-1: <image>` ...).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Video frames in order (images), or one animated GIF; sampled to --num-segments frames of one tile.
    #[arg(long, num_args = 1..)]
    video: Vec<PathBuf>,
    /// Frames taken from the video.
    #[arg(long, default_value_t = 8)]
    num_segments: usize,
    /// Tiles per image at most (default: the checkpoint's max_dynamic_patch, 12 for InternVL 2.5).
    #[arg(long)]
    max_tiles: Option<usize>,
    /// Replace the template's system message.
    #[arg(long)]
    system: Option<String>,
    /// Turn images upright by their EXIF orientation first. Off by default: the reference preprocessing
    /// (Pillow `Image.open` + `convert('RGB')`) does not, and the model was trained that way.
    #[arg(long)]
    exif_orientation: bool,
    /// Keep asking: read questions from standard input, one per line, keeping the conversation.
    #[arg(long)]
    interactive: bool,
    /// Answer every request of a JSONL file (one JSON object per line: question, images, video,
    /// max_tiles, system, max_new_tokens) and write one JSON answer per line to standard output.
    #[arg(long, conflicts_with = "interactive")]
    batch: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// cpu, or cuda (with the `cuda` feature: the language model runs on the GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The question (optional with --interactive or --batch).
    question: Option<String>,
}

fn load(args: &ChatArgs) -> Result<InternVlModel> {
    let device = Device::parse(&args.device)?;
    let source = ModelSource::from_args(args.model.as_deref(), args.synthetic.as_deref());
    source
        .load(device)
        .with_context(|| format!("loading {} on {device}", source.describe()))
}

fn image_options(args: &ChatArgs) -> ImageOptions {
    ImageOptions {
        apply_exif_orientation: args.exif_orientation,
        ..ImageOptions::default()
    }
}

fn video_source(paths: &[PathBuf]) -> Option<VideoSource> {
    match paths {
        [] => None,
        [one]
            if one
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gif")) =>
        {
            Some(VideoSource::Gif(one.clone()))
        }
        many => Some(VideoSource::Frames(many.to_vec())),
    }
}

fn summary(out: &GenerationOutput, secs: f64) -> String {
    let reason = match out.finish_reason {
        FinishReason::Stop => "stop token",
        FinishReason::Length => "length",
    };
    format!(
        "[{} prompt tokens, {} new tokens in {secs:.2} s ({:.1} tok/s), finished by {reason}]",
        out.prompt_tokens,
        out.tokens.len(),
        out.tokens.len() as f64 / secs.max(1e-9)
    )
}

/// Asks one question, streaming the answer to standard output.
fn ask(
    model: &InternVlModel,
    request: &ChatRequest,
    config: &GenerationConfig,
) -> Result<(String, String)> {
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    let (out, question) = chat(model, request, config, |piece| {
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!("{}", summary(&out, start.elapsed().as_secs_f64()));
    Ok((question, out.text.trim().to_string()))
}

pub fn run(args: ChatArgs) -> Result<()> {
    let model = load(&args)?;
    let config = args.sampling.config();
    if let Some(path) = &args.batch {
        return run_batch(&model, &args, path, &config);
    }
    let mut request = ChatRequest {
        system: args.system.clone(),
        image_options: image_options(&args),
        images: args.images.clone(),
        video: video_source(&args.video),
        num_segments: args.num_segments,
        max_tiles: args.max_tiles,
        ..Default::default()
    };
    if !args.interactive {
        let Some(question) = &args.question else {
            bail!("give a question (or use --interactive or --batch)");
        };
        request.question = question.clone();
        ask(&model, &request, &config)?;
        return Ok(());
    }
    // Interactive: the first question may come from the command line; the images stay with the first turn.
    let mut pending = args.question.clone();
    let stdin = std::io::stdin();
    loop {
        let question = match pending.take() {
            Some(q) => q,
            None => {
                eprint!("> ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let line = line.trim().to_string();
                if line == "exit" || line == "quit" {
                    return Ok(());
                }
                if line.is_empty() {
                    continue;
                }
                line
            }
        };
        request.question = question;
        match ask(&model, &request, &config) {
            Ok((asked, answer)) => request.history.push((asked, answer)),
            // A bad turn (an unreadable image, a prompt over the context) does not end the conversation.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
}

/// One line of a `--batch` file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    question: String,
    #[serde(default)]
    images: Vec<PathBuf>,
    #[serde(default)]
    video: Vec<PathBuf>,
    max_tiles: Option<usize>,
    system: Option<String>,
    max_new_tokens: Option<usize>,
}

fn run_batch(
    model: &InternVlModel,
    args: &ChatArgs,
    path: &PathBuf,
    config: &GenerationConfig,
) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut stdout = std::io::stdout().lock();
    let (mut done, mut failed) = (0, 0);
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serde_json::from_str::<BatchRequest>(&line)
            .map_err(|e| anyhow::anyhow!("line {}: not a valid request: {e}", index + 1))
            .and_then(|req| {
                let request = ChatRequest {
                    system: req.system.or_else(|| args.system.clone()),
                    image_options: image_options(args),
                    question: req.question,
                    images: req.images,
                    video: video_source(&req.video),
                    num_segments: args.num_segments,
                    max_tiles: req.max_tiles.or(args.max_tiles),
                    ..Default::default()
                };
                let config = GenerationConfig {
                    max_new_tokens: req.max_new_tokens.unwrap_or(config.max_new_tokens),
                    ..config.clone()
                };
                Ok(chat(model, &request, &config, |_| {})?)
            });
        let json = match answer {
            Ok((out, _)) => {
                done += 1;
                serde_json::json!({
                    "index": index,
                    "answer": out.text.trim(),
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.tokens.len(),
                    "finish_reason": match out.finish_reason { FinishReason::Stop => "stop", FinishReason::Length => "length" },
                })
            }
            Err(e) => {
                failed += 1;
                serde_json::json!({ "index": index, "error": format!("{e:#}") })
            }
        };
        writeln!(stdout, "{json}")?;
        stdout.flush()?;
    }
    eprintln!("[{done} answered, {failed} failed]");
    Ok(())
}
