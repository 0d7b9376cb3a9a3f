//! The `/v1/chat/completions` request body and its translation into an engine request.
//!
//! Images: `image_url` parts (data, http(s) or local URLs, see [`crate::media`]) in any user message. A
//! message's text parts are joined with newlines; its images go in front of its text as `<image>\n` (one
//! image in the conversation) or `Image-N: <image>\n` (several, numbered across the conversation) unless
//! the text places `<image>` itself.

use internvl::image::MAX_TILES_LIMIT;
use internvl::prompt::{with_placeholders, ImageLayout, IMAGE_PLACEHOLDER};
use serde::Deserialize;

use crate::error::ApiError;
use crate::media::{parse_image_url, ImageSource};

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub generation: GenerationFields,
}

/// `/v1/completions`: a text prompt, answered without the chat template.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// The answer starts with the prompt.
    #[serde(default)]
    pub echo: bool,
    /// Not supported: refused when set.
    pub logprobs: Option<serde_json::Value>,
    pub best_of: Option<usize>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub generation: GenerationFields,
}

/// A completion prompt: text, or token ids; a list of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// The sampling and output fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    #[serde(alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub n: Option<usize>,
    /// Keep generating past the end-of-turn token (lmdeploy's and vLLM's extension; benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
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

/// One image of a request: where it comes from and its tile limit.
#[derive(Debug, Clone)]
pub struct RequestImage {
    pub source: ImageSource,
    pub max_tiles: Option<usize>,
}

/// A conversation ready for the engine.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub system: Option<String>,
    /// Earlier (question, answer) turns; the first question holds the images' placeholders.
    pub history: Vec<(String, String)>,
    pub question: String,
    pub images: Vec<RequestImage>,
}

/// A message's text and images.
fn split_content(content: Option<Content>) -> Result<(String, Vec<RequestImage>), ApiError> {
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

/// The image part's source and tile limit.
fn image_from_url(image: &ImageUrl) -> Result<RequestImage, ApiError> {
    if let Some(n) = image.max_dynamic_patch {
        if n == 0 || n > MAX_TILES_LIMIT as usize {
            return Err(ApiError::bad_param(
                "max_dynamic_patch",
                format!("max_dynamic_patch must be between 1 and {MAX_TILES_LIMIT}, not {n}"),
            ));
        }
    }
    Ok(RequestImage {
        source: parse_image_url(&image.url)?,
        max_tiles: image.max_dynamic_patch,
    })
}

/// Turns the messages into a conversation: an optional leading system message (it replaces the
/// template's), then user and assistant turns alternating, ending with a user message. Images may come in
/// any user message; each such message gets its placeholders in front of its text (`<image>` when the
/// conversation has one image, `Image-N: <image>` numbered across the conversation otherwise), unless its
/// text places `<image>` itself.
pub fn conversation(messages: Vec<Message>, max_images: usize) -> Result<Conversation, ApiError> {
    let mut system = None;
    let mut turns: Vec<(String, String, usize)> = Vec::new(); // (role, text, images)
    let mut images = Vec::new();
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
                if message.role == "assistant" && !found.is_empty() {
                    return Err(ApiError::bad_param(
                        "messages",
                        "images are accepted only in user messages",
                    ));
                }
                turns.push((message.role, text, found.len()));
                images.extend(found);
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
    let total = images.len();
    let mut numbered = 0;
    let mut texts: Vec<String> = turns
        .into_iter()
        .map(|(_, text, count)| {
            let text = placeholders(&text, count, total, numbered + 1);
            numbered += count;
            text
        })
        .collect();
    let question = texts.pop().unwrap_or_default();
    let history = texts
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    Ok(Conversation {
        system,
        history,
        question,
        images,
    })
}

/// `text` with placeholders for its `count` images (numbered from `first` when the conversation has
/// `total` > 1 images) in front, unless it places `<image>` itself.
fn placeholders(text: &str, count: usize, total: usize, first: usize) -> String {
    if count == 0 || text.contains(IMAGE_PLACEHOLDER) {
        return text.to_string();
    }
    if total == 1 {
        return with_placeholders(text, 1, ImageLayout::Images);
    }
    let prefix: String = (first..first + count)
        .map(|n| format!("Image-{n}: {IMAGE_PLACEHOLDER}\n"))
        .collect();
    format!("{prefix}{text}")
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
        assert_eq!(c.images[0].source, ImageSource::Inline(vec![0, 1, 2]));
        assert_eq!(c.images[0].max_tiles, Some(2));
    }

    #[test]
    fn images_of_later_turns_are_numbered_across_the_conversation() {
        let c = conversation(
            vec![
                image_msg("data:image/png;base64,AAEC"),
                msg("assistant", "A1"),
                image_msg("data:image/png;base64,AAED"),
            ],
            4,
        )
        .unwrap();
        assert_eq!(c.history[0].0, "Image-1: <image>\nQ1");
        assert_eq!(c.question, "Image-2: <image>\nQ1");
        assert_eq!(c.images.len(), 2);
        let own = conversation(
            vec![Message {
                role: "user".into(),
                content: Some(Content::Parts(vec![
                    Part::Text {
                        text: "left <image> right".into(),
                    },
                    Part::ImageUrl {
                        image_url: ImageUrl {
                            url: "data:image/png;base64,AAEC".into(),
                            max_dynamic_patch: None,
                        },
                    },
                ])),
            }],
            4,
        )
        .unwrap();
        assert_eq!(own.question, "left <image> right");
    }

    #[test]
    fn completion_prompts_parse_as_text_or_ids_and_unknown_fields_are_ignored() {
        let r: CompletionRequest = serde_json::from_str(
            r#"{"model":"m","prompt":"hi","max_tokens":3,"stream":true,"frequency_penalty":0}"#,
        )
        .unwrap();
        assert!(matches!(r.prompt, Prompt::Text(ref t) if t == "hi"));
        assert_eq!(r.generation.max_tokens, Some(3));
        assert!(r.generation.stream);
        let ids: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert!(matches!(ids.prompt, Prompt::Ids(ref v) if v == &[1, 2, 3]));
        let chat: ChatCompletionRequest =
            serde_json::from_str(r#"{"model":"m","messages":[],"max_completion_tokens":5}"#)
                .unwrap();
        assert_eq!(chat.generation.max_tokens, Some(5));
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
