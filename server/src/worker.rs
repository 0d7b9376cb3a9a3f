//! The model's thread: it owns the [`InternVlModel`] and answers jobs from a channel one at a time, so the
//! async HTTP handlers never run model code. Batching several requests into one forward pass is the
//! scheduler's job (a later issue); here requests queue and are served in arrival order.

use std::sync::mpsc;

use awq_kernels::sampling::SamplingParams;
use internvl::chat::{prepare_decoded, ChatRequest, ImageInput};
use internvl::generation::generate_with_images_until;
use internvl::image::{load_image, ImageOptions};
use internvl::{FinishReason, GenerationConfig, InternVlModel};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Conversation;
use crate::error::ApiError;
use crate::stop::StopMatcher;

/// One chat completion to run.
pub struct Job {
    pub conversation: Conversation,
    pub sampling: SamplingParams,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Where the answer goes; when the receiver is dropped (the client went away) generation stops.
    pub events: UnboundedSender<Event>,
}

/// What a job reports, in order: `Started` then `Text`s then `Finished`, or `Failed` at any point.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
    },
    Text(String),
    Finished {
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// Why the model thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the model: {0}")]
    Load(#[from] internvl::Error),
    #[error("starting the model thread: {0}")]
    Thread(std::io::Error),
    #[error("the model thread ended while loading the model")]
    Ended,
}

/// The sending side of the model thread.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// The model's context, in tokens.
    pub context: usize,
}

impl Worker {
    /// Starts the model thread, loading the model on it with `load`; returns once the model is loaded.
    /// The thread ends when every `Worker` clone is dropped.
    pub fn start<F>(load: F) -> Result<Worker, StartError>
    where
        F: FnOnce() -> internvl::Result<InternVlModel> + Send + 'static,
    {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                let model = match load() {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(model.text.llm.config().max_position_embeddings));
                for job in receiver {
                    run(&model, job);
                }
            })
            .map_err(StartError::Thread)?;
        let context = ready_rx.recv().map_err(|_| StartError::Ended)??;
        Ok(Worker { jobs, context })
    }

    /// Queues `job`; false when the model thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }
}

fn run(model: &InternVlModel, job: Job) {
    let events = job.events.clone();
    if let Err(e) = answer(model, job) {
        let _ = events.send(Event::Failed(e));
    }
}

fn answer(model: &InternVlModel, job: Job) -> Result<(), ApiError> {
    let Job {
        conversation,
        sampling,
        max_tokens,
        stop,
        events,
    } = job;
    let options = ImageOptions::default();
    let images = conversation
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let decoded = load_image(&image.bytes, &options)
                .map_err(|e| ApiError::bad_param("image_url", format!("image {}: {e}", i + 1)))?;
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
    let prepared = prepare_decoded(model, &request, &images)?;
    let context = model.text.llm.config().max_position_embeddings;
    let prompt_tokens = prepared.prompt_ids.len();
    let room = context.saturating_sub(prompt_tokens);
    let max_new_tokens = match max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::bad_param(
                "max_tokens",
                format!(
                "the prompt has {prompt_tokens} tokens and max_tokens is {n}: together over the \
                     model's context of {context} tokens; lower max_tokens to at most {room}"
            ),
            ))
        }
        Some(n) => n,
        None if room == 0 => {
            return Err(ApiError::bad_request(format!(
            "the prompt has {prompt_tokens} tokens, which fills the model's context of {context}"
        )))
        }
        None => room,
    };
    if events.send(Event::Started { prompt_tokens }).is_err() {
        return Ok(());
    }
    let config = GenerationConfig {
        max_new_tokens,
        sampling,
        ignore_eos: false,
    };
    let mut matcher = StopMatcher::new(stop);
    let mut hit_stop = false;
    let mut client_gone = false;
    let out = generate_with_images_until(
        model,
        &prepared.prompt_ids,
        prepared.pixels.as_ref(),
        &config,
        |piece| {
            let (text, hit) = matcher.push(piece);
            if !text.is_empty() && events.send(Event::Text(text)).is_err() {
                client_gone = true;
                return false;
            }
            hit_stop = hit;
            !hit
        },
    )?;
    if client_gone {
        return Ok(());
    }
    if !hit_stop {
        let rest = matcher.finish();
        if !rest.is_empty() {
            let _ = events.send(Event::Text(rest));
        }
    }
    let finish_reason = match out.finish_reason {
        _ if hit_stop => "stop",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    let _ = events.send(Event::Finished {
        finish_reason,
        completion_tokens: out.tokens.len(),
    });
    Ok(())
}
