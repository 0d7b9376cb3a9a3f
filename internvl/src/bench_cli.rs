//! `internvl bench-e2e`: the whole model end to end on a synthetic full-size checkpoint. Time to first
//! token for one image of `--tiles` tiles and a `--question-tokens` question (vision encoder, projector,
//! prefill, first sample), and decode speed at each `--batch` size (sequences decoded together by the
//! engine over the paged KV cache). Prints a table, and one JSON object per figure with `--json`.
//!
//! The pixels are random (decoding and tiling a photo is not what is measured); each figure is the
//! median of `--repeats` runs after one warm-up.

use std::time::Instant;

use anyhow::{Context, Result};
use awq_kernels::{Device, Tensor};
use clap::Args;
use internvl::engine::{Engine, EngineConfig, SeqRequest, StepEvent};
use internvl::prompt::{expand_images, Conversation};
use internvl::source::ModelSource;
use internvl::{GenerationConfig, InternVlModel};
use serde_json::json;

#[derive(Args)]
pub struct BenchArgs {
    /// The family member (internvl2_5-1b, -4b, -38b, -78b, -78b-awq; `tiny` for a smoke run).
    #[arg(long, default_value = "internvl2_5-1b")]
    synthetic: String,
    /// cpu, or cuda (with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Tiles of the one image of the time-to-first-token prompt (13: 12 tiles and the thumbnail).
    #[arg(long, default_value_t = 13)]
    tiles: usize,
    /// Tokens of the question after the image.
    #[arg(long, default_value_t = 64)]
    question_tokens: usize,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    /// The AWQ decode kernels to time the decode with, one after the other on the same loaded model:
    /// `tuned` (the autotuner's choice per layer shape, what a user gets), or `stream` / `pipe` fixed for
    /// every layer (GPU only).
    #[arg(long, value_delimiter = ',', default_value = "tuned")]
    awq_decode_kernels: Vec<String>,
    /// How the timed decode steps choose tokens: `greedy`, and/or `top_k40` (temperature 0.7, top-k 40:
    /// lmdeploy's server defaults, which on a GPU rank the candidates on the device).
    #[arg(long, value_delimiter = ',', default_value = "greedy")]
    decode_sampling: Vec<String>,
    /// Timed decode steps per batch size.
    #[arg(long, default_value_t = 32)]
    decode_steps: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also print one JSON object per figure.
    #[arg(long)]
    json: bool,
}

/// Selects the AWQ streaming kernel for the decode steps that follow (`tuned` is the default everywhere).
fn choose_awq_decode_kernel(name: &str) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        use awq_kernels::ops::awq::cuda::{set_decode_kernel, AwqPath};
        match name {
            "tuned" => set_decode_kernel(AwqPath::Auto),
            "stream" => set_decode_kernel(AwqPath::Stream),
            "pipe" => set_decode_kernel(AwqPath::Pipe),
            other => anyhow::bail!("unknown AWQ decode kernel `{other}` (tuned, stream, pipe)"),
        }
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    {
        anyhow::ensure!(
            name == "tuned",
            "AWQ decode kernel `{name}`: only `tuned` (no GPU kernels) without the cuda feature"
        );
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A question of exactly `tokens` tokens (a repeated word, cut to length).
fn question_ids(model: &InternVlModel, tokens: usize) -> Result<Vec<u32>> {
    let tokenizer = &model.text.tokenizer;
    let mut text = String::from("Describe");
    while tokenizer.encode(&text)?.len() < tokens {
        text.push_str(" the picture");
    }
    let mut ids = tokenizer.encode(&text)?;
    ids.truncate(tokens);
    Ok(ids)
}

/// The templated prompt ids: `<image>` with `tiles` tiles (when any), then the question ids.
fn prompt_ids(model: &InternVlModel, tiles: usize, question: &[u32]) -> Result<Vec<u32>> {
    let marker = "QUESTION_GOES_HERE";
    let text = if tiles > 0 {
        format!("<image>\n{marker}")
    } else {
        marker.to_string()
    };
    let rendered = Conversation::default().render(&text);
    let tiles_per_image: Vec<usize> = if tiles > 0 { vec![tiles] } else { vec![] };
    let expanded = expand_images(&rendered, &tiles_per_image, model.tokens_per_tile())?;
    let (before, after) = expanded
        .split_once(marker)
        .context("the template keeps the question")?;
    let tokenizer = &model.text.tokenizer;
    let mut ids = tokenizer.encode(before)?;
    ids.extend_from_slice(question);
    ids.extend(tokenizer.encode(after)?);
    Ok(ids)
}

fn random_pixels(tiles: usize, side: usize) -> Result<Tensor> {
    let n = tiles * 3 * side * side;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Normalized pixels lie within about ±2.6.
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect();
    Ok(Tensor::from_vec(values, &[tiles, 3, side, side])?)
}

/// Runs engine steps until `expected` sequences have finished; returns the tokens seen. A failed
/// sequence fails the bench, and so does an engine left with nothing to do before then.
fn drain(engine: &mut Engine, expected: usize) -> Result<usize> {
    let mut finished = 0;
    let mut tokens = 0;
    while finished < expected {
        anyhow::ensure!(
            !engine.is_idle(),
            "the engine ran out of work with {finished} of {expected} sequences finished"
        );
        let (step_tokens, step_finished) = step_counted(engine)?;
        tokens += step_tokens;
        finished += step_finished;
    }
    Ok(tokens)
}

/// One engine step: the tokens it produced and the sequences it finished, or the first failure.
fn step_counted(engine: &mut Engine) -> Result<(usize, usize)> {
    let (mut tokens, mut finished) = (0, 0);
    for event in engine.step() {
        match event {
            StepEvent::Token { .. } => tokens += 1,
            StepEvent::Finished { .. } => finished += 1,
            StepEvent::Failed { error, .. } => return Err(error.into()),
        }
    }
    Ok((tokens, finished))
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

/// The generation settings of a `--decode-sampling` name.
fn decode_config(name: &str, max_new_tokens: usize) -> Result<GenerationConfig> {
    let mut config = greedy(max_new_tokens);
    match name {
        "greedy" => {}
        "top_k40" => {
            config.sampling.temperature = 0.7;
            config.sampling.top_k = 40;
        }
        other => anyhow::bail!("unknown decode sampling `{other}` (greedy, top_k40)"),
    }
    Ok(config)
}

/// The median time of one decode step of `batch` sequences of `prompt` (each step decodes one token of
/// every sequence), over `--repeats` runs after a warm-up run.
fn time_decode(
    engine: &mut Engine,
    prompt: &[u32],
    batch: usize,
    config: GenerationConfig,
    args: &BenchArgs,
) -> Result<f64> {
    let mut per_step = Vec::new();
    for run in 0..=args.repeats {
        for _ in 0..batch {
            engine.add(SeqRequest {
                prompt_ids: prompt.to_vec(),
                pixels: None,
                config: config.clone(),
            })?;
        }
        // The first step prefills everyone; the second is the first batched decode (warm-up).
        let (_, finished_early) = step_counted(engine)?;
        let (_, more) = step_counted(engine)?;
        anyhow::ensure!(
            finished_early + more == 0,
            "a sequence finished in the untimed steps; --decode-steps must leave steps to time"
        );
        let t0 = Instant::now();
        let tokens = drain(engine, batch)?;
        let elapsed = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            tokens == batch * args.decode_steps,
            "expected {} tokens in the timed steps, saw {tokens}",
            batch * args.decode_steps
        );
        if run > 0 {
            per_step.push(elapsed / args.decode_steps as f64);
        }
    }
    Ok(median(per_step))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let started = Instant::now();
    let source = ModelSource::Synthetic(&args.synthetic);
    let model = source
        .load(device)
        .with_context(|| format!("making {} on {device}", source.describe()))?;
    eprintln!("ready in {:.1} s", started.elapsed().as_secs_f64());
    let question = question_ids(&model, args.question_tokens)?;
    let prompt = prompt_ids(&model, args.tiles, &question)?;
    let text_prompt = prompt_ids(&model, 0, &question)?;
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    // Room for the image prompt, or for the largest decode batch all at once (each sequence's prompt, its
    // decode steps and the two untimed tokens), plus a partly filled block per sequence: a batch that did
    // not fit would be prefilled in pieces and the timed steps would not all decode `batch` sequences.
    let block_size = 16;
    let kv_cache_tokens = (prompt.len() + 1)
        .max(max_batch * (text_prompt.len() + args.decode_steps + 2))
        + (max_batch + 1) * block_size;
    let mut engine = Engine::new(
        &model,
        EngineConfig {
            max_running: max_batch,
            kv_cache_tokens,
            block_size,
        },
    )?;
    let mut rows = Vec::new();

    // Time to first token: one image, one sequence, one token.
    let pixels = random_pixels(args.tiles, model.config.vision.image_size)?;
    let mut ttft = Vec::new();
    for run in 0..=args.repeats {
        let t0 = Instant::now();
        engine.add(SeqRequest {
            prompt_ids: prompt.clone(),
            pixels: Some(pixels.clone()),
            config: greedy(1),
        })?;
        drain(&mut engine, 1)?;
        if run > 0 {
            ttft.push(t0.elapsed().as_secs_f64());
        }
    }
    let ttft = median(ttft);
    rows.push(json!({
        "figure": "time_to_first_token_s", "model": args.synthetic, "device": args.device,
        "tiles": args.tiles, "prompt_tokens": prompt.len(), "value": ttft,
    }));

    // Decode: `batch` text-only sequences; the timed steps each decode one token of every sequence.
    for kernel in &args.awq_decode_kernels {
        choose_awq_decode_kernel(kernel)?;
        for sampling in &args.decode_sampling {
            for &batch in &args.batch {
                let config = decode_config(sampling, args.decode_steps + 2)?;
                let step = time_decode(&mut engine, &text_prompt, batch, config, &args)?;
                rows.push(json!({
                    "figure": "decode_tokens_per_s", "model": args.synthetic, "device": args.device,
                    "batch": batch, "context": text_prompt.len() + args.decode_steps,
                    "awq_kernel": kernel, "sampling": sampling,
                    "step_ms": step * 1e3, "value": batch as f64 / step, "per_sequence": 1.0 / step,
                }));
            }
        }
    }

    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>12} {:>14}",
        "figure", "kernel", "sampling", "batch", "step ms", "value"
    );
    for r in &rows {
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>12} {:>14.3}",
            r["figure"].as_str().unwrap_or(""),
            r["awq_kernel"].as_str().unwrap_or("-"),
            r["sampling"].as_str().unwrap_or("-"),
            r["batch"].as_u64().map_or("-".into(), |b| b.to_string()),
            r["step_ms"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.2}")),
            r["value"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if args.json {
        for r in &rows {
            println!("{r}");
        }
    }
    print_awq_choices(device);
    Ok(())
}

/// What the AWQ autotuner chose for each layer shape of the model on the GPU (the variant behind the
/// figures above), with every candidate's median time.
fn print_awq_choices(device: Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(i) = device {
        let Ok(Ok(choices)) = awq_kernels::cuda::Gpu::shared_ordinal(i)
            .map(|gpu| awq_kernels::ops::awq::cuda::tuning_report(&gpu))
        else {
            return;
        };
        for (key, tuned) in choices {
            let times: Vec<String> = tuned
                .timings
                .iter()
                .map(|(v, us)| format!("{} {us:.1} us", v.name()))
                .collect();
            println!(
                "awq {}x{} {} m-tiles {} row blocks {}: {} ({})",
                key.k,
                key.n,
                key.dtype,
                key.mt,
                key.row_blocks,
                tuned.chosen.name(),
                times.join(", ")
            );
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_engine(model: &InternVlModel) -> Engine<'_> {
        let config = EngineConfig {
            max_running: 2,
            kv_cache_tokens: 256,
            block_size: 16,
        };
        Engine::new(model, config).unwrap()
    }

    #[test]
    fn draining_an_engine_with_nothing_to_do_fails_instead_of_waiting_forever() {
        let model = ModelSource::Synthetic("tiny").load(Device::Cpu).unwrap();
        let mut engine = tiny_engine(&model);
        let error = drain(&mut engine, 1).unwrap_err().to_string();
        assert!(error.contains("ran out of work"), "{error}");
    }

    #[test]
    fn a_sequence_failing_while_drained_fails_the_bench() {
        let model = ModelSource::Synthetic("tiny").load(Device::Cpu).unwrap();
        let mut engine = tiny_engine(&model);
        // A prompt that is fine, and one whose token id the model does not have.
        for prompt_ids in [vec![1, 2, 3], vec![1, u32::MAX]] {
            let request = SeqRequest {
                prompt_ids,
                pixels: None,
                config: greedy(4),
            };
            engine.add(request).unwrap();
        }
        assert!(drain(&mut engine, 2).is_err());
    }

    #[test]
    fn draining_counts_every_token_of_every_sequence() {
        let model = ModelSource::Synthetic("tiny").load(Device::Cpu).unwrap();
        let mut engine = tiny_engine(&model);
        for _ in 0..2 {
            let request = SeqRequest {
                prompt_ids: vec![1, 2, 3],
                pixels: None,
                config: greedy(5),
            };
            engine.add(request).unwrap();
        }
        assert_eq!(drain(&mut engine, 2).unwrap(), 10);
        assert!(engine.is_idle());
    }
}
