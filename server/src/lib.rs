//! The OpenAI-compatible HTTP server over the `internvl` engine (spec 10.2): `GET /health`,
//! `GET /v1/models`, `POST /v1/chat/completions` (JSON or server-sent events). The model runs on its own
//! thread ([`worker`]); the handlers only parse, queue and forward.

pub mod api;
pub mod error;
pub mod stop;
pub mod worker;

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use awq_kernels::sampling::SamplingParams;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{ChatCompletionRequest, Stop};
use crate::error::ApiError;
use crate::worker::{Event, Job, Worker};

/// Request limits and names.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model id clients name (`/v1/models`).
    pub served_model_name: String,
    /// Bearer keys accepted on `/v1/*`; empty: no authentication.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    /// Images per request at most.
    pub max_images: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            served_model_name: "internvl".into(),
            api_keys: Vec::new(),
            max_body_bytes: 64 << 20,
            max_images: 8,
        }
    }
}

struct Inner {
    options: Options,
    worker: Worker,
    created: u64,
    next_id: AtomicU64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(worker: Worker, options: Options) -> AppState {
        AppState(Arc::new(Inner {
            options,
            worker,
            created: unix_now(),
            next_id: AtomicU64::new(1),
        }))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(fallback)
        .with_state(state)
}

/// Serves on `listener` until the process ends (tests bind `127.0.0.1:0` and read the port from it).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

fn check_key(state: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.options.api_keys.is_empty() {
        return Ok(());
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(key) if state.options.api_keys.iter().any(|k| k == key) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_key(&state.0, &headers)?;
    let name = &state.0.options.served_model_name;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": name,
            "object": "model",
            "created": state.0.created,
            "owned_by": "internvl-rs",
            "root": name,
            "parent": null,
            "max_model_len": state.0.worker.context,
        }],
    })))
}

/// The body, refused with 413 past the limit (from `Content-Length` before reading, or while reading).
async fn read_body(state: &Inner, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = state.options.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| ApiError::too_large(limit))
}

fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(unix_now());
    h.finish()
}

/// The request's sampling settings (lmdeploy's defaults: temperature 0.7, top_p 1, top_k 40).
fn sampling(req: &ChatCompletionRequest) -> Result<SamplingParams, ApiError> {
    let params = SamplingParams {
        temperature: req.temperature.unwrap_or(0.7),
        top_k: req.top_k.unwrap_or(40),
        top_p: req.top_p.unwrap_or(1.0),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: req.seed.unwrap_or_else(random_seed),
    };
    params
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(params)
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let inner = &state.0;
    check_key(inner, &headers)?;
    let bytes = read_body(inner, &headers, body).await?;
    let req: ChatCompletionRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not a valid chat completion request: {e}"
        ))
    })?;
    if req.model != inner.options.served_model_name {
        return Err(ApiError::unknown_model(
            &req.model,
            &inner.options.served_model_name,
        ));
    }
    if let Some(n) = req.n.filter(|&n| n != 1) {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be 1 (one choice per request), not {n}"),
        ));
    }
    let params = sampling(&req)?;
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let conversation = api::conversation(req.messages, inner.options.max_images)?;
    let (events, mut receiver) = mpsc::unbounded_channel();
    let job = Job {
        conversation,
        sampling: params,
        max_tokens: req.max_tokens,
        stop,
        events,
    };
    if !inner.worker.submit(job) {
        return Err(ApiError::internal("the model thread has stopped"));
    }
    // Errors found before generation (bad image, context) are answered with their status.
    let prompt_tokens = match receiver.recv().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Failed(e)) => return Err(e),
        _ => {
            return Err(ApiError::internal(
                "the model thread ended the request early",
            ))
        }
    };
    let id = format!("chatcmpl-{}", inner.next_id.fetch_add(1, Ordering::Relaxed));
    let reply = Reply {
        id,
        created: unix_now(),
        model: inner.options.served_model_name.clone(),
        prompt_tokens,
    };
    if req.stream {
        return Ok(stream(reply, receiver, include_usage).into_response());
    }
    let mut content = String::new();
    loop {
        match receiver.recv().await {
            Some(Event::Text(text)) => content.push_str(&text),
            Some(Event::Finished {
                finish_reason,
                completion_tokens,
            }) => {
                return Ok(Json(json!({
                    "id": reply.id,
                    "object": "chat.completion",
                    "created": reply.created,
                    "model": reply.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }],
                    "usage": reply.usage(completion_tokens),
                }))
                .into_response())
            }
            Some(Event::Failed(e)) => return Err(e),
            Some(Event::Started { .. }) | None => {
                return Err(ApiError::internal(
                    "the model thread ended the request early",
                ))
            }
        }
    }
}

/// The fields every response of one request shares.
struct Reply {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> SseEvent {
        SseEvent::default().data(
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
            })
            .to_string(),
        )
    }
}

/// The answer as server-sent events: the role first, a chunk per piece of text, the finish reason, the
/// usage when asked for, then `[DONE]`. If the client goes away the forwarding task ends, dropping the job's
/// receiver, and the model thread stops generating.
fn stream(
    reply: Reply,
    mut events: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<ReceiverStream<Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let send = |event: SseEvent| {
            let tx = tx.clone();
            async move { tx.send(Ok(event)).await.is_ok() }
        };
        if !send(reply.chunk(json!({"role": "assistant", "content": ""}), None)).await {
            return;
        }
        while let Some(event) = events.recv().await {
            match event {
                Event::Text(text) => {
                    if !send(reply.chunk(json!({"content": text}), None)).await {
                        return;
                    }
                }
                Event::Finished {
                    finish_reason,
                    completion_tokens,
                } => {
                    if !send(reply.chunk(json!({}), Some(finish_reason))).await {
                        return;
                    }
                    if include_usage {
                        let usage = json!({
                            "id": reply.id,
                            "object": "chat.completion.chunk",
                            "created": reply.created,
                            "model": reply.model,
                            "choices": [],
                            "usage": reply.usage(completion_tokens),
                        });
                        if !send(SseEvent::default().data(usage.to_string())).await {
                            return;
                        }
                    }
                    break;
                }
                Event::Failed(e) => {
                    // Headers are sent: the error goes in the stream, as OpenAI servers do.
                    if !send(SseEvent::default().data(e.body().to_string())).await {
                        return;
                    }
                    break;
                }
                Event::Started { .. } => {}
            }
        }
        let _ = send(SseEvent::default().data("[DONE]")).await;
    });
    Sse::new(ReceiverStream::new(rx))
}
