//! `POST /v1/chat/completions`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::api::{self, ChatCompletionRequest};
use crate::error::ApiError;
use crate::prepare::{chat_prompt, max_new_tokens, read_images, submit, with_model, Prepared};
use crate::reply::{Kind, Reply};
use crate::{admit, check_model, sampling, stop_strings, unix_now, AppState};

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let inner = &state.0;
    let bytes = admit(inner, &headers, body).await?;
    let req: ChatCompletionRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not a valid chat completion request: {e}"
        ))
    })?;
    check_model(inner, &req.model)?;
    let params = sampling(&req.generation)?;
    let mut conversation = api::conversation(req.messages, inner.options.max_images)?;
    let images = read_images(inner, std::mem::take(&mut conversation.images)).await?;
    let options = inner.options.clone();
    let (prompt_ids, pixels) = with_model(inner, move |model| {
        chat_prompt(model, conversation, images, &options)
    })
    .await?;
    let max_new_tokens = max_new_tokens(
        prompt_ids.len(),
        req.generation.max_tokens,
        None,
        inner.worker.context,
    )?;
    let (prompt_tokens, events) = submit(
        inner,
        Prepared {
            prompt_ids,
            pixels,
            max_new_tokens,
            sampling: params,
            stop: stop_strings(req.generation.stop.as_ref()),
            ignore_eos: req.generation.ignore_eos,
            received,
        },
    )
    .await?;
    let reply = Reply {
        kind: Kind::Chat,
        id: inner.new_id("chatcmpl"),
        created: unix_now(),
        model: inner.options.served_model_name.clone(),
        prompt_tokens,
        prefix: String::new(),
    };
    if req.generation.stream {
        let include_usage = req
            .generation
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(reply.stream(events, include_usage).into_response());
    }
    reply.collect(events).await
}
