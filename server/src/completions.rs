//! `POST /v1/completions`: a text prompt (or token ids) continued without the chat template, as vLLM and
//! lmdeploy serve it. `max_tokens` defaults to 16, as in the OpenAI API.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::api::{CompletionRequest, Prompt};
use crate::error::ApiError;
use crate::prepare::{answer, with_model, ModelInput};
use crate::reply::Kind;
use crate::{admit, check_model, sampling, AppState};

/// The OpenAI API's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The prompt's one text or id list.
enum OnePrompt {
    Text(String),
    Ids(Vec<u32>),
}

fn one_prompt(prompt: Prompt) -> Result<OnePrompt, ApiError> {
    let several = || {
        ApiError::bad_param(
            "prompt",
            "one prompt per request is supported; send the others as separate requests",
        )
    };
    let prompt = match prompt {
        Prompt::Text(text) => OnePrompt::Text(text),
        Prompt::Ids(ids) => OnePrompt::Ids(ids),
        Prompt::Texts(mut texts) if texts.len() == 1 => OnePrompt::Text(texts.remove(0)),
        Prompt::IdLists(mut lists) if lists.len() == 1 => OnePrompt::Ids(lists.remove(0)),
        Prompt::Texts(_) | Prompt::IdLists(_) => return Err(several()),
    };
    match &prompt {
        OnePrompt::Text(t) if t.is_empty() => {
            Err(ApiError::bad_param("prompt", "the prompt is empty"))
        }
        OnePrompt::Ids(ids) if ids.is_empty() => {
            Err(ApiError::bad_param("prompt", "the prompt is empty"))
        }
        _ => Ok(prompt),
    }
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let inner = &state.0;
    let req: CompletionRequest = admit(inner, &headers, body, "completion").await?;
    check_model(inner, &req.model)?;
    if req.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs are not supported",
        ));
    }
    if req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_param("best_of", "best_of must be 1"));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_param(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    let params = sampling(&req.generation)?;
    let prompt = one_prompt(req.prompt)?;
    let echo = req.echo;
    let (prompt_ids, prompt_text) = with_model(inner, move |model| {
        let tokenizer = &model.text.tokenizer;
        let (ids, text) = match prompt {
            OnePrompt::Text(text) => (tokenizer.encode(&text)?, text),
            OnePrompt::Ids(ids) => {
                let vocab = tokenizer.vocab_size() as u32;
                if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
                    return Err(ApiError::bad_param(
                        "prompt",
                        format!("token id {bad} is not in the vocabulary of {vocab} tokens"),
                    ));
                }
                let text = if echo {
                    tokenizer.decode(&ids)?
                } else {
                    String::new()
                };
                (ids, text)
            }
        };
        // Image rows come only with images: a text prompt cannot hold image positions.
        let context = model.image_tokens.context;
        if ids.contains(&context) {
            return Err(ApiError::bad_param(
                "prompt",
                "the prompt contains <IMG_CONTEXT> tokens; send images to /v1/chat/completions",
            ));
        }
        Ok((ids, text))
    })
    .await?;
    answer(
        inner,
        Kind::Text,
        ModelInput {
            prompt_ids,
            pixels: None,
            prefix: if echo { prompt_text } else { String::new() },
        },
        &req.generation,
        params,
        Some(DEFAULT_MAX_TOKENS),
        received,
    )
    .await
}
