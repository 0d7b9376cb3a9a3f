//! `POST /v1/chat/completions`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::api::{self, ChatCompletionRequest};
use crate::error::ApiError;
use crate::prepare::{answer, chat_prompt, read_images, with_model, ModelInput};
use crate::reply::Kind;
use crate::{admit, check_model, sampling, AppState};

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let inner = &state.0;
    let req: ChatCompletionRequest = admit(inner, &headers, body, "chat completion").await?;
    check_model(inner, &req.model)?;
    let params = sampling(&req.generation)?;
    let mut conversation = api::conversation(req.messages, inner.options.max_images)?;
    let images = read_images(inner, std::mem::take(&mut conversation.images)).await?;
    let options = inner.options.clone();
    let (prompt_ids, pixels) = with_model(inner, move |model| {
        chat_prompt(model, conversation, images, &options)
    })
    .await?;
    answer(
        inner,
        Kind::Chat,
        ModelInput {
            prompt_ids,
            pixels,
            prefix: String::new(),
        },
        &req.generation,
        params,
        None,
        received,
    )
    .await
}
