//! The `/v1/chat/completions` request body and its translation into an engine request.
//!
//! Images: `image_url` parts with `data:image/...;base64,` URLs, only in the first user message (where the
//! reference `chat()` keeps a conversation's images: they are sent again with every later turn). A
//! message's text parts are joined with newlines; images go in front of the text as `<image>\n` (one) or
//! `Image-1: <image>\n...` (several) unless the text places `<image>` itself.

use base64::Engine;
use internvl::image::MAX_TILES_LIMIT;
use internvl::prompt::{with_placeholders, ImageLayout};
use serde::Deserialize;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    pub max_dynamic_patch: Option<usize>,
}

/// One image of a request: its encoded bytes and its tile limit.
#[derive(Debug, Clone)]
pub struct ImageBytes {
    pub bytes: Vec<u8>,
    pub max_tiles: Option<usize>,
}

/// A conversation ready for the engine.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub system: Option<String>,
    /// Earlier (question, answer) turns; the first question holds the images' placeholders.
    pub history: Vec<(String, String)>,
    pub question: String,
    pub images: Vec<ImageBytes>,
}

/// A message's text and images.
fn split_content(content: Option<Content>) -> Result<(String, Vec<ImageBytes>), ApiError> {
    match content {
        None => Ok((String::new(), Vec::new())),
        Some(Content::Text(text)) => Ok((text, Vec::new())),
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for part in parts {
                match part {
                    Part::Text { text } => texts.push(text),
                    Part::ImageUrl { image_url } => images.push(image_from_url(&image_url)?),
                }
            }
            Ok((texts.join("\n"), images))
        }
    }
}

/// Decodes a `data:image/...;base64,` URL; other URLs are refused with the reason.
fn image_from_url(image: &ImageUrl) -> Result<ImageBytes, ApiError> {
    if let Some(n) = image.max_dynamic_patch {
        if n == 0 || n > MAX_TILES_LIMIT as usize {
            return Err(ApiError::bad_param(
                "max_dynamic_patch",
                format!("max_dynamic_patch must be between 1 and {MAX_TILES_LIMIT}, not {n}"),
            ));
        }
    }
    let url = image.url.trim();
    let Some(rest) = url.strip_prefix("data:") else {
        let what = if url.starts_with("http://") || url.starts_with("https://") {
            "http(s) image URLs are"
        } else {
            "local paths and other image URLs are"
        };
        return Err(ApiError::bad_param(
            "image_url",
            format!("{what} not supported yet; send the image inline as a data:image/...;base64,... URL"),
        ));
    };
    let Some((header, data)) = rest.split_once(',') else {
        return Err(ApiError::bad_param(
            "image_url",
            "a data URL must have a `,` between its media type and its data",
        ));
    };
    if !header.ends_with(";base64") {
        return Err(ApiError::bad_param(
            "image_url",
            "only base64 data URLs are supported (data:image/...;base64,...)",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| {
            ApiError::bad_param(
                "image_url",
                format!("the data URL is not valid base64: {e}"),
            )
        })?;
    Ok(ImageBytes {
        bytes,
        max_tiles: image.max_dynamic_patch,
    })
}

/// Turns the messages into a conversation: an optional leading system message, then user and assistant
/// turns alternating, ending with a user message; images only in the first user message.
pub fn conversation(messages: Vec<Message>, max_images: usize) -> Result<Conversation, ApiError> {
    let mut system = None;
    let mut turns: Vec<(String, String)> = Vec::new(); // (role, text)
    let mut images = Vec::new();
    let mut users = 0;
    for (i, message) in messages.into_iter().enumerate() {
        let (text, found) = split_content(message.content)?;
        match message.role.as_str() {
            "system" if i == 0 => system = Some(text),
            "system" => {
                return Err(ApiError::bad_param(
                    "messages",
                    "a system message is accepted only as the first message",
                ))
            }
            "user" | "assistant" => {
                let expected = if turns.len().is_multiple_of(2) {
                    "user"
                } else {
                    "assistant"
                };
                if message.role != expected {
                    return Err(ApiError::bad_param(
                        "messages",
                        format!(
                            "message {i} is from `{}` but `{expected}` was expected: user and assistant \
                             messages must alternate, starting with user",
                            message.role
                        ),
                    ));
                }
                if !found.is_empty() {
                    if message.role != "user" || users > 0 {
                        return Err(ApiError::bad_param(
                            "messages",
                            "images are supported only in the first user message",
                        ));
                    }
                    images = found;
                }
                if message.role == "user" {
                    users += 1;
                }
                turns.push((message.role, text));
            }
            other => {
                return Err(ApiError::bad_param(
                    "messages",
                    format!("message role `{other}` is not supported (system, user, assistant)"),
                ))
            }
        }
    }
    if turns.len().is_multiple_of(2) {
        return Err(ApiError::bad_param(
            "messages",
            "the last message must be from the user",
        ));
    }
    if images.len() > max_images {
        return Err(ApiError::bad_param(
            "messages",
            format!(
                "{} images were sent; this server accepts at most {max_images} (--max-images)",
                images.len()
            ),
        ));
    }
    let question = turns.pop().map(|(_, text)| text).unwrap_or_default();
    let mut history: Vec<(String, String)> = turns
        .chunks(2)
        .map(|pair| (pair[0].1.clone(), pair[1].1.clone()))
        .collect();
    // With history the engine expects the placeholders already in the first question, as `chat()` keeps it.
    if let Some(first) = history.first_mut() {
        first.0 = with_placeholders(&first.0, images.len(), ImageLayout::Images);
    }
    Ok(Conversation {
        system,
        history,
        question,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(text.into())),
        }
    }

    fn image_msg(url: &str) -> Message {
        Message {
            role: "user".into(),
            content: Some(Content::Parts(vec![
                Part::ImageUrl {
                    image_url: ImageUrl {
                        url: url.into(),
                        max_dynamic_patch: Some(2),
                    },
                },
                Part::Text { text: "Q1".into() },
            ])),
        }
    }

    #[test]
    fn earlier_turns_become_history_and_the_first_question_gets_the_image_placeholder() {
        let c = conversation(
            vec![
                msg("system", "S"),
                image_msg("data:image/png;base64,AAEC"),
                msg("assistant", "A1"),
                msg("user", "Q2"),
            ],
            4,
        )
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("S"));
        assert_eq!(
            c.history,
            vec![("<image>\nQ1".to_string(), "A1".to_string())]
        );
        assert_eq!(c.question, "Q2");
        assert_eq!(c.images.len(), 1);
        assert_eq!(c.images[0].bytes, vec![0, 1, 2]);
        assert_eq!(c.images[0].max_tiles, Some(2));
    }

    #[test]
    fn http_urls_and_paths_are_refused_as_not_supported_yet() {
        for url in ["https://example.com/a.png", "/tmp/a.png"] {
            let err = conversation(vec![image_msg(url)], 4).unwrap_err();
            assert_eq!(err.status.as_u16(), 400);
            assert!(err.message.contains("not supported yet"), "{}", err.message);
        }
    }

    #[test]
    fn messages_that_do_not_alternate_or_end_with_the_assistant_are_refused() {
        let two_users = conversation(vec![msg("user", "a"), msg("user", "b")], 4);
        assert!(two_users.unwrap_err().message.contains("alternate"));
        let ends = conversation(vec![msg("user", "a"), msg("assistant", "b")], 4);
        assert!(ends.unwrap_err().message.contains("last message"));
        let tool = conversation(vec![msg("tool", "a")], 4);
        assert!(tool.unwrap_err().message.contains("`tool`"));
    }

    #[test]
    fn more_images_than_the_limit_are_refused() {
        let err = conversation(vec![image_msg("data:image/png;base64,AAEC")], 0).unwrap_err();
        assert!(err.message.contains("at most 0"), "{}", err.message);
    }
}
