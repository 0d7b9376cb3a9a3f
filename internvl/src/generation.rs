//! Autoregressive generation over a [`qwen2::Qwen2`]: prefill, then one token a step, streaming text out.

use awq_kernels::kv_cache::BlockTable;
use awq_kernels::sampling::{argmax_rows, Sampler, SamplingParams};
use awq_kernels::Tensor;
use qwen2::{ForwardOptions, SeqInput};

use crate::{Error, IncrementalDecoder, InternVlModel, Result, TextModel};

/// KV cache block size, in tokens.
const BLOCK_SIZE: usize = 16;

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past stop tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced, or the caller's `on_text` asked to stop.
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// The new tokens (a final stop token included).
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Generates from `prompt_ids`, calling `on_text` with each new piece of text as it is complete.
pub fn generate(
    model: &TextModel,
    prompt_ids: &[u32],
    config: &GenerationConfig,
    mut on_text: impl FnMut(&str),
) -> Result<GenerationOutput> {
    generate_from(model, prompt_ids, None, config, |piece| {
        on_text(piece);
        true
    })
}

/// Generates from `prompt_ids` whose `<IMG_CONTEXT>` positions receive the encoded tiles `pixels`
/// `[n, 3, 448, 448]` (all tiles of all images in prompt order; the prompt must hold 256 positions per
/// tile). Without pixels the prompt must hold no `<IMG_CONTEXT>`.
pub fn generate_with_images(
    model: &InternVlModel,
    prompt_ids: &[u32],
    pixels: Option<&Tensor>,
    config: &GenerationConfig,
    on_text: impl FnMut(&str),
) -> Result<GenerationOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let mut on_text = on_text;
    generate_with_images_until(model, prompt_ids, pixels, config, |piece| {
        on_text(piece);
        true
    })
}

/// As [`generate_with_images`], but `on_text` returns whether to go on: when it returns `false` generation
/// ends there (the caller found a stop string, or its client went away) with [`FinishReason::Stop`], and
/// `on_text` is not called again.
pub fn generate_with_images_until(
    model: &InternVlModel,
    prompt_ids: &[u32],
    pixels: Option<&Tensor>,
    config: &GenerationConfig,
    on_text: impl FnMut(&str) -> bool,
) -> Result<GenerationOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let embeddings = model.prompt_embeddings(prompt_ids, pixels)?;
    generate_from(&model.text, prompt_ids, Some(embeddings), config, on_text)
}

/// The generation loop. The prefill runs over `prompt_embeddings` `[prompt, H]` when given (the
/// embeddings of `prompt_ids` with image rows written in), over `prompt_ids` otherwise.
fn generate_from(
    model: &TextModel,
    prompt_ids: &[u32],
    mut prompt_embeddings: Option<Tensor>,
    config: &GenerationConfig,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<GenerationOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    config.sampling.validate()?;
    let limit = model.llm.config().max_position_embeddings;
    if prompt_ids.len() >= limit {
        return Err(Error::PromptTooLong {
            prompt: prompt_ids.len(),
            limit,
        });
    }
    let max_new = config.max_new_tokens.min(limit - prompt_ids.len());
    let mut cache = model.llm.try_new_kv_cache(
        BLOCK_SIZE,
        (prompt_ids.len() + max_new).div_ceil(BLOCK_SIZE),
    )?;
    // Embeddings made on the CPU (the image rows) move to the model's device and dtype.
    if let Some(x) = prompt_embeddings.take() {
        prompt_embeddings = Some(model.llm.to_model_input(x)?);
    }
    let mut table = BlockTable::new();
    let mut sampler = Sampler::new(config.sampling);
    let mut history = prompt_ids.to_vec();
    let mut decoder = IncrementalDecoder::new();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut finish_reason = FinishReason::Length;
    let mut stopped = false;

    let mut input = prompt_ids.to_vec();
    while tokens.len() < max_new {
        let mut seqs = [SeqInput {
            table: &mut table,
            len: input.len(),
        }];
        let options = ForwardOptions::default();
        let out = match prompt_embeddings.take() {
            Some(x) => model
                .llm
                .forward_embeds(x, &mut cache, &mut seqs, options)?,
            None => model
                .llm
                .forward_ids(&input, &mut cache, &mut seqs, options)?,
        };
        // Plain greedy decoding takes the argmax where the logits are (only the index leaves a GPU).
        let next = if config.sampling.is_plain_greedy() {
            argmax_rows(&out.logits)?[0]
        } else {
            sampler.sample(&out.logits.to_f32_vec()?, &history)
        };
        tokens.push(next);
        history.push(next);
        if !config.ignore_eos && model.stop_ids.contains(&next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        let piece = decoder.push(&model.tokenizer, next)?;
        if !piece.is_empty() {
            text.push_str(&piece);
            if !on_text(&piece) {
                stopped = true;
                finish_reason = FinishReason::Stop;
                break;
            }
        }
        input = vec![next];
    }
    cache.release(&mut table);
    let rest = decoder.finish(&model.tokenizer)?;
    if !rest.is_empty() && !stopped {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(GenerationOutput {
        tokens,
        text,
        finish_reason,
        prompt_tokens: prompt_ids.len(),
    })
}
