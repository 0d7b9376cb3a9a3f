//! The answer of a generation request, whole (JSON) or streamed (server-sent events), in the shape of
//! either endpoint: `chat.completion` (a message, deltas) or `text_completion` (text).

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::worker::Event;

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// The fields every response of one request shares.
pub struct Reply {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: usize,
    /// Text the answer starts with (`echo` of `/v1/completions`).
    pub prefix: String,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A streamed piece: `text` (and for chat the role, on the first chunk) and the finish reason.
    fn chunk(&self, text: Option<&str>, first: bool, finish_reason: Option<&str>) -> SseEvent {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
            }
            Kind::Text => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        SseEvent::default().data(self.envelope(true, json!([choice])).to_string())
    }

    /// Waits for the whole answer and returns it as one JSON response.
    pub async fn collect(
        self,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Response, ApiError> {
        let mut text = self.prefix.clone();
        loop {
            match events.recv().await {
                Some(Event::Text(piece)) => text.push_str(&piece),
                Some(Event::Finished {
                    finish_reason,
                    completion_tokens,
                }) => {
                    let choice = match self.kind {
                        Kind::Chat => json!({
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": null,
                            "finish_reason": finish_reason,
                        }),
                        Kind::Text => json!({
                            "index": 0,
                            "text": text,
                            "logprobs": null,
                            "finish_reason": finish_reason,
                        }),
                    };
                    let mut body = self.envelope(false, json!([choice]));
                    body["usage"] = self.usage(completion_tokens);
                    return Ok(Json(body).into_response());
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

    /// The answer as server-sent events: a first chunk (the role for chat, the echoed prompt for text), a
    /// chunk per piece of text, the finish reason, the usage when asked for, then `[DONE]`. If the client
    /// goes away the forwarding task ends, dropping the job's receiver, and the model thread cancels the
    /// sequence.
    pub fn stream(
        self,
        mut events: mpsc::UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Sse<ReceiverStream<Result<SseEvent, Infallible>>> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let send = |event: SseEvent| {
                let tx = tx.clone();
                async move { tx.send(Ok(event)).await.is_ok() }
            };
            let opening = match self.kind {
                Kind::Chat => Some(self.chunk(Some(""), true, None)),
                Kind::Text if !self.prefix.is_empty() => {
                    Some(self.chunk(Some(&self.prefix), true, None))
                }
                Kind::Text => None,
            };
            if let Some(opening) = opening {
                if !send(opening).await {
                    return;
                }
            }
            while let Some(event) = events.recv().await {
                match event {
                    Event::Text(text) => {
                        if !send(self.chunk(Some(&text), false, None)).await {
                            return;
                        }
                    }
                    Event::Finished {
                        finish_reason,
                        completion_tokens,
                    } => {
                        if !send(self.chunk(None, false, Some(finish_reason))).await {
                            return;
                        }
                        if include_usage {
                            let mut usage = self.envelope(true, json!([]));
                            usage["usage"] = self.usage(completion_tokens);
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
}
