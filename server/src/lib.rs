//! The OpenAI-compatible HTTP server over the `internvl` engine (spec 10.2): `GET /health`,
//! `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (JSON or server-sent events),
//! `GET /metrics` (Prometheus). The model runs on its own thread ([`worker`]) as one batched engine; the
//! handlers parse, fetch and decode images, tokenize, queue and forward.

pub mod api;
mod chat;
mod completions;
pub mod error;
pub mod media;
pub mod metrics;
mod prepare;
mod reply;
pub mod stop;
pub mod worker;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use awq_kernels::sampling::SamplingParams;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use internvl::engine::EngineConfig;
use internvl::InternVlModel;
use serde_json::{json, Value};

use crate::api::{GenerationFields, Stop};
use crate::error::ApiError;
use crate::media::{MediaOptions, MediaReader};
use crate::metrics::Metrics;
use crate::worker::{StartError, Worker};

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
    /// Width x height of one image (or video frame) at most.
    pub max_image_pixels: u64,
    /// 448-pixel tiles per request at most, all images together (each is 256 prompt tokens and a pass of
    /// the vision encoder).
    pub max_tiles_per_request: usize,
    /// Requests waiting for a place in the running batch at most; past it new requests get 503.
    pub max_queue: usize,
    pub media: MediaOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            served_model_name: "internvl".into(),
            api_keys: Vec::new(),
            max_body_bytes: 64 << 20,
            max_images: 8,
            max_image_pixels: 64 * 1024 * 1024,
            max_tiles_per_request: 64,
            max_queue: 256,
            media: MediaOptions::default(),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) options: Options,
    pub(crate) worker: Worker,
    pub(crate) media: MediaReader,
    pub(crate) metrics: Arc<Metrics>,
    created: u64,
    next_id: AtomicU64,
}

impl Inner {
    /// A fresh response id with `prefix`.
    pub(crate) fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

impl AppState {
    /// Starts the model thread with an engine of `engine` over `model`, and the image reader.
    pub fn start(
        model: InternVlModel,
        engine: EngineConfig,
        options: Options,
    ) -> Result<AppState, StartError> {
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::start(Arc::new(model), engine, metrics.clone())?;
        let media = MediaReader::new(options.media.clone()).map_err(|e| {
            StartError::Thread(std::io::Error::other(format!(
                "the HTTP client for image URLs: {e}"
            )))
        })?;
        Ok(AppState(Arc::new(Inner {
            options,
            worker,
            media,
            metrics,
            created: unix_now(),
            next_id: AtomicU64::new(1),
        })))
    }

    /// The engine's sizes.
    pub fn engine_config(&self) -> EngineConfig {
        self.0.worker.engine
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Serves on `listener` until the process ends (tests bind `127.0.0.1:0` and read the port from it).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// Counts every answered request by route and status.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Only the served routes are labels, so arbitrary paths cannot grow the metric without bound.
    let route = match request.uri().path() {
        p
        @ ("/health" | "/metrics" | "/v1/models" | "/v1/chat/completions" | "/v1/completions") => {
            p.to_string()
        }
        _ => "other".to_string(),
    };
    let response = next.run(request).await;
    state
        .0
        .metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.0.metrics.render(),
    )
}

pub(crate) fn check_key(state: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
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
pub(crate) async fn read_body(
    state: &Inner,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
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

/// The checks every generation request passes first: the key, the load, the body; then the body parsed as
/// `T` (`what` names the request kind in the error).
pub(crate) async fn admit<T: serde::de::DeserializeOwned>(
    state: &Inner,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, ApiError> {
    check_key(state, headers)?;
    let capacity = state.worker.engine.max_running + state.options.max_queue;
    if state.worker.pending() >= capacity {
        return Err(ApiError::overloaded(format!(
            "the server is at capacity ({capacity} requests running or queued); retry later"
        )));
    }
    let bytes = read_body(state, headers, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not a valid {what} request: {e}"
        ))
    })
}

fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(unix_now());
    h.finish()
}

/// The request's sampling settings (lmdeploy's defaults: temperature 0.7, top_p 1, top_k 40).
pub(crate) fn sampling(fields: &GenerationFields) -> Result<SamplingParams, ApiError> {
    let params = SamplingParams {
        temperature: fields.temperature.unwrap_or(0.7),
        top_k: fields.top_k.unwrap_or(40),
        top_p: fields.top_p.unwrap_or(1.0),
        repetition_penalty: fields.repetition_penalty.unwrap_or(1.0),
        seed: fields.seed.unwrap_or_else(random_seed),
    };
    params
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(n) = fields.n.filter(|&n| n != 1) {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be 1 (one choice per request), not {n}"),
        ));
    }
    Ok(params)
}

/// The stop strings of a request.
pub(crate) fn stop_strings(stop: Option<&Stop>) -> Vec<String> {
    match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    }
}

/// The model name check shared by the generation endpoints.
pub(crate) fn check_model(state: &Inner, model: &str) -> Result<(), ApiError> {
    if model != state.options.served_model_name {
        return Err(ApiError::unknown_model(
            model,
            &state.options.served_model_name,
        ));
    }
    Ok(())
}
