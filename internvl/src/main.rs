//! The `internvl` command-line program.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use awq_kernels::sampling::SamplingParams;
use awq_kernels::Device;
use clap::{Args, Parser, Subcommand};
use internvl::convert::{convert, parse_size, ConvertOptions, Progress};
use internvl::inspect::{human_bytes, inspect};
use internvl::{embedded, generate, FinishReason, GenerationConfig, TextModel};

mod bench_cli;
mod chat_cli;

#[derive(Parser)]
#[command(name = "internvl", version, about = "InternVL 2.5 / Qwen2.5 inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt with a Qwen2 checkpoint (or the language model of an InternVL one).
    Generate(GenerateArgs),
    /// Show what a checkpoint folder holds (sizes, dtype, quantization, tokens), which needed tensors are
    /// missing or unused, and the memory it needs.
    Inspect(InspectArgs),
    /// Rewrite a checkpoint (PyTorch .bin or safetensors) as sharded safetensors, verified after writing.
    Convert(ConvertArgs),
    /// Chat with InternVL 2.5 about images and video: one question, an interactive conversation, or a batch.
    Chat(chat_cli::ChatArgs),
    /// Benchmark the whole model end to end on a synthetic full-size checkpoint: time to first token for
    /// one image, decode tokens/s at several batch sizes.
    #[command(name = "bench-e2e")]
    BenchE2e(bench_cli::BenchArgs),
}

#[derive(Args)]
struct InspectArgs {
    /// Checkpoint directory.
    dir: PathBuf,
    /// Context length (tokens) the KV-cache part of the memory estimate is sized for.
    #[arg(long, default_value_t = 8192)]
    context: usize,
}

#[derive(Args)]
struct ConvertArgs {
    /// Checkpoint directory to read (.bin shards or safetensors).
    dir: PathBuf,
    /// Output directory; must not exist unless --force is given.
    out: PathBuf,
    /// Write into an existing output directory (its safetensors weights are replaced).
    #[arg(long)]
    force: bool,
    /// Largest shard, e.g. 5GB, 2GiB, 500MB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
}

#[derive(Args)]
struct GenerateArgs {
    /// Checkpoint directory (config.json, *.safetensors or pytorch_model*.bin, tokenizer.json or vocab.json + merges.txt). Without it, the embedded tiny
    /// checkpoint with random weights is used.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Instead of a checkpoint, the language model of a synthetic family member (random weights; see
    /// `internvl chat --synthetic`).
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// Wrap the prompt in the Qwen2.5 chat template (system + user turn, assistant reply).
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// cpu (cuda comes with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The prompt.
    prompt: String,
}

/// Decoding options shared by `generate` and `chat`.
#[derive(Args)]
struct SamplingArgs {
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 means greedy decoding (the model card's setting).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at the end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            ignore_eos: self.ignore_eos,
        }
    }
}

const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Inspect(args) => {
            let report = inspect(&args.dir, args.context)
                .with_context(|| format!("inspecting {}", args.dir.display()))?;
            println!("{report}");
            Ok(())
        }
        Command::Convert(args) => run_convert(args),
        Command::Chat(args) => chat_cli::run(args),
        Command::BenchE2e(args) => bench_cli::run(args),
    }
}

fn run_convert(args: ConvertArgs) -> Result<()> {
    let max_shard_bytes = parse_size(&args.max_shard_size).with_context(|| {
        format!(
            "--max-shard-size `{}` is not a size such as 5GB, 2GiB or 500MB",
            args.max_shard_size
        )
    })?;
    let options = ConvertOptions {
        max_shard_bytes,
        force: args.force,
    };
    let mut last_tenth = 0;
    let summary = convert(&args.dir, &args.out, options, |p| match p {
        Progress::Start {
            tensors,
            bytes,
            shards,
        } => eprintln!(
            "converting {tensors} tensors ({}) into {shards} safetensors shard(s)",
            human_bytes(bytes)
        ),
        Progress::Written { done, total } => {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if tenth > last_tenth {
                last_tenth = tenth;
                eprintln!(
                    "  {:>3}% ({} of {})",
                    tenth * 10,
                    human_bytes(done),
                    human_bytes(total)
                );
            }
        }
        Progress::ShardVerified { file, tensors } => {
            eprintln!("  {file}: {tensors} tensors written and verified byte for byte")
        }
        Progress::Copied { file } => eprintln!("  copied {file}"),
    })
    .with_context(|| {
        format!(
            "converting {} into {}",
            args.dir.display(),
            args.out.display()
        )
    })?;
    eprintln!(
        "done: {} tensors ({}) in {} shard(s), {} other file(s) copied, into {}",
        summary.tensors,
        human_bytes(summary.bytes),
        summary.shards.len(),
        summary.copied.len(),
        args.out.display()
    );
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let model = match (&args.model, &args.synthetic) {
        (_, Some(name)) => {
            eprintln!("making the synthetic {name} (random weights) ...");
            internvl::synthetic::model(name)
                .with_context(|| format!("making the synthetic {name}"))?
                .text
        }
        (Some(dir), None) => {
            eprintln!("loading {} ...", dir.display());
            let mut printer = internvl::progress::ProgressPrinter::stderr();
            TextModel::load_with_progress(dir, &mut |p| printer.report(p))
                .with_context(|| format!("loading the checkpoint in {}", dir.display()))?
        }
        (None, None) => {
            eprintln!("no --model given: using the {}", embedded::DESCRIPTION);
            embedded::text_model().context("loading the embedded checkpoint")?
        }
    };
    let model = if device == Device::Cpu {
        model
    } else {
        eprintln!("moving the model to {device} ...");
        model
            .to_device(device)
            .with_context(|| format!("moving the model to {device}"))?
    };
    let prompt = if args.chat {
        format!(
            "<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            args.prompt
        )
    } else {
        args.prompt.clone()
    };
    let ids = model.tokenizer.encode(&prompt)?;
    let config = args.sampling.config();
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        // A plain continuation reads best after its prompt; a chat answer stands alone.
        print!("{}", args.prompt);
    }
    let out = generate(&model, &ids, &config, |piece| {
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
    })?;
    println!();
    let secs = start.elapsed().as_secs_f64();
    let reason = match out.finish_reason {
        FinishReason::Stop => "stop token",
        FinishReason::Length => "length",
    };
    eprintln!(
        "[{} prompt tokens, {} new tokens in {secs:.2} s ({:.1} tok/s), finished by {reason}]",
        out.prompt_tokens,
        out.tokens.len(),
        out.tokens.len() as f64 / secs
    );
    Ok(())
}
