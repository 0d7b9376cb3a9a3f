//! From a parsed request to a queued job: images read (data, http, local), decoded and tiled, the prompt
//! templated and tokenized (on a blocking thread: this is CPU work), the length checked against the
//! context, and the job handed to the model thread.

use std::sync::Arc;
use std::time::Instant;

use awq_kernels::sampling::SamplingParams;
use awq_kernels::Tensor;
use internvl::chat::{prepare_decoded, ChatRequest, ImageInput};
use internvl::engine::SeqRequest;
use internvl::image::{load_image, ImageError, ImageOptions};
use internvl::{GenerationConfig, InternVlModel};
use tokio::sync::mpsc;

use axum::response::{IntoResponse, Response};

use crate::api::{Conversation, GenerationFields, RequestImage};
use crate::error::ApiError;
use crate::reply::{Kind, Reply};
use crate::worker::{Event, Job};
use crate::{stop_strings, unix_now, Inner, Options};

/// An image's bytes, read, with its tile limit.
pub struct ImageData {
    pub bytes: Vec<u8>,
    pub max_tiles: Option<usize>,
}

/// Reads every image of a request, in order.
pub async fn read_images(
    state: &Inner,
    images: Vec<RequestImage>,
) -> Result<Vec<ImageData>, ApiError> {
    let mut out = Vec::with_capacity(images.len());
    for image in images {
        out.push(ImageData {
            bytes: state.media.read(image.source).await?,
            max_tiles: image.max_tiles,
        });
    }
    Ok(out)
}

/// The prompt ids and tiles of a chat conversation: images decoded (pixel limit) and tiled (tile limit),
/// the `internvl2_5` template applied.
pub fn chat_prompt(
    model: &InternVlModel,
    conversation: Conversation,
    images: Vec<ImageData>,
    options: &Options,
) -> Result<(Vec<u32>, Option<Tensor>), ApiError> {
    let image_options = ImageOptions {
        max_pixels: options.max_image_pixels,
        ..ImageOptions::default()
    };
    let decoded = images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            let decoded = load_image(&image.bytes, &image_options).map_err(|e| {
                let message = format!("image {}: {e}", i + 1);
                match e {
                    ImageError::TooManyPixels { .. } => {
                        ApiError::image_too_large(format!("{message} (--max-image-pixels)"))
                    }
                    _ => ApiError::bad_param("image_url", message),
                }
            })?;
            Ok(ImageInput {
                image: decoded,
                max_tiles: image.max_tiles,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let request = ChatRequest {
        system: conversation.system,
        history: conversation.history,
        question: conversation.question,
        ..Default::default()
    };
    let prepared = prepare_decoded(model, &request, &decoded)?;
    if let Some(pixels) = &prepared.pixels {
        let tiles = pixels.dim(0);
        if tiles > options.max_tiles_per_request {
            return Err(ApiError::image_too_large(format!(
                "the images make {tiles} tiles of 448x448, over this server's limit of {} per request \
                 (--max-tiles-per-request); send fewer or smaller images, or lower max_dynamic_patch",
                options.max_tiles_per_request
            )));
        }
    }
    Ok((prepared.prompt_ids, prepared.pixels))
}

/// Runs `work` on the blocking pool with the model.
pub async fn with_model<T, F>(state: &Inner, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&InternVlModel) -> Result<T, ApiError> + Send + 'static,
{
    let model: Arc<InternVlModel> = state.worker.model.clone();
    tokio::task::spawn_blocking(move || work(&model))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// How many tokens to generate: `requested`, or `default`, or up to the end of the context; refused
/// when the prompt and `requested` do not fit.
pub fn max_new_tokens(
    prompt_tokens: usize,
    requested: Option<usize>,
    default: Option<usize>,
    context: usize,
) -> Result<usize, ApiError> {
    let room = context.saturating_sub(prompt_tokens);
    if room == 0 {
        return Err(ApiError::bad_request(format!(
            "the prompt has {prompt_tokens} tokens, which fills the model's context of {context}"
        )));
    }
    match requested {
        Some(0) => Err(ApiError::bad_param(
            "max_tokens",
            "max_tokens must be at least 1",
        )),
        Some(n) if n > room => Err(ApiError::bad_param(
            "max_tokens",
            format!(
                "the prompt has {prompt_tokens} tokens and max_tokens is {n}: together over the model's \
                 context of {context} tokens; lower max_tokens to at most {room}"
            ),
        )),
        Some(n) => Ok(n),
        None => Ok(default.unwrap_or(room).min(room)),
    }
}

/// A prepared request, ready to queue.
pub struct Prepared {
    pub prompt_ids: Vec<u32>,
    pub pixels: Option<Tensor>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub received: Instant,
}

/// Queues the job and waits until the engine has taken it (errors found there, such as a prompt over the
/// KV cache, come back as the request's error). Returns the prompt length and the job's events.
pub async fn submit(
    state: &Inner,
    prepared: Prepared,
) -> Result<(usize, mpsc::UnboundedReceiver<Event>), ApiError> {
    let (events, mut receiver) = mpsc::unbounded_channel();
    let job = Job {
        request: SeqRequest {
            prompt_ids: prepared.prompt_ids,
            pixels: prepared.pixels,
            config: GenerationConfig {
                max_new_tokens: prepared.max_new_tokens,
                sampling: prepared.sampling,
                ignore_eos: prepared.ignore_eos,
            },
        },
        stop: prepared.stop,
        events,
        received: prepared.received,
    };
    if !state.worker.submit(job) {
        return Err(ApiError::internal("the model thread has stopped"));
    }
    match receiver.recv().await {
        Some(Event::Started { prompt_tokens }) => Ok((prompt_tokens, receiver)),
        Some(Event::Failed(e)) => Err(e),
        _ => Err(ApiError::internal(
            "the model thread ended the request early",
        )),
    }
}

/// What a request gives the model, prepared.
pub struct ModelInput {
    pub prompt_ids: Vec<u32>,
    pub pixels: Option<Tensor>,
    /// Text the answer starts with (`echo`).
    pub prefix: String,
}

/// The shared tail of both endpoints: checks the length against the context, queues the job and answers,
/// streamed or whole as the request asks.
pub async fn answer(
    state: &Inner,
    kind: Kind,
    input: ModelInput,
    generation: &GenerationFields,
    sampling: SamplingParams,
    default_max_tokens: Option<usize>,
    received: Instant,
) -> Result<Response, ApiError> {
    let max_new_tokens = max_new_tokens(
        input.prompt_ids.len(),
        generation.max_tokens,
        default_max_tokens,
        state.worker.context,
    )?;
    let (prompt_tokens, events) = submit(
        state,
        Prepared {
            prompt_ids: input.prompt_ids,
            pixels: input.pixels,
            max_new_tokens,
            sampling,
            stop: stop_strings(generation.stop.as_ref()),
            ignore_eos: generation.ignore_eos,
            received,
        },
    )
    .await?;
    let reply = Reply {
        kind,
        id: state.new_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }),
        created: unix_now(),
        model: state.options.served_model_name.clone(),
        prompt_tokens,
        prefix: input.prefix,
    };
    if generation.stream {
        let include_usage = generation
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(reply.stream(events, include_usage).into_response());
    }
    reply.collect(events).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_defaults_to_the_room_left_and_is_refused_past_it() {
        assert_eq!(max_new_tokens(10, None, None, 100).unwrap(), 90);
        assert_eq!(max_new_tokens(10, None, Some(16), 100).unwrap(), 16);
        assert_eq!(max_new_tokens(95, None, Some(16), 100).unwrap(), 5);
        assert_eq!(max_new_tokens(10, Some(90), None, 100).unwrap(), 90);
        let over = max_new_tokens(10, Some(91), None, 100).unwrap_err();
        assert!(over.message.contains("at most 90"), "{}", over.message);
        assert_eq!(over.param, Some("max_tokens"));
        assert!(max_new_tokens(100, None, None, 100).is_err());
        assert!(max_new_tokens(10, Some(0), None, 100).is_err());
    }
}
