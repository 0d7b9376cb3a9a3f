//! The `internvl2_5` conversation template and the `<image>` placeholders (spec 6.1 to 6.3; the reference is
//! `conversation.py` and `chat()` of the original InternVL code).

use crate::{Error, Result};

/// The template's system message (exact text of the original `internvl2_5` template).
pub const SYSTEM_MESSAGE: &str =
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。";

/// The placeholder a user writes where an image goes.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
pub const IMG_START: &str = "<img>";
pub const IMG_END: &str = "</img>";
pub const IMG_CONTEXT: &str = "<IMG_CONTEXT>";

const USER: &str = "<|im_start|>user\n";
const ASSISTANT: &str = "<|im_start|>assistant\n";
const SEPARATOR: &str = "<|im_end|>\n";

/// A conversation: earlier (question, answer) turns and the new question.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// `None` uses [`SYSTEM_MESSAGE`].
    pub system: Option<String>,
    pub history: Vec<(String, String)>,
}

impl Conversation {
    /// The prompt string for asking `question` next (MPT style, as the original renderer: an empty message
    /// is written as the bare role prefix with no separator).
    pub fn render(&self, question: &str) -> String {
        let system = self.system.as_deref().unwrap_or(SYSTEM_MESSAGE);
        let mut out = format!("<|im_start|>system\n{system}{SEPARATOR}");
        let mut turn = |role: &str, text: &str| {
            out.push_str(role);
            if !text.is_empty() {
                out.push_str(text);
                out.push_str(SEPARATOR);
            }
        };
        for (q, a) in &self.history {
            turn(USER, q);
            turn(ASSISTANT, a);
        }
        turn(USER, question);
        out.push_str(ASSISTANT);
        out
    }
}

/// How a set of images is introduced in a question that has no `<image>` of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageLayout {
    /// One image or several: `<image>\n`, or `Image-1: <image>\nImage-2: <image>\n...`.
    Images,
    /// Video frames: `Frame1: <image>\nFrame2: <image>\n...`.
    Frames,
}

/// The question with placeholders for `count` images in front of it, unless the user placed them.
pub fn with_placeholders(question: &str, count: usize, layout: ImageLayout) -> String {
    if count == 0 || question.contains(IMAGE_PLACEHOLDER) {
        return question.to_string();
    }
    let prefix: String = match (layout, count) {
        (ImageLayout::Images, 1) => format!("{IMAGE_PLACEHOLDER}\n"),
        (ImageLayout::Images, _) => (1..=count)
            .map(|i| format!("Image-{i}: {IMAGE_PLACEHOLDER}\n"))
            .collect(),
        (ImageLayout::Frames, _) => (1..=count)
            .map(|i| format!("Frame{i}: {IMAGE_PLACEHOLDER}\n"))
            .collect(),
    };
    format!("{prefix}{question}")
}

/// Replaces the `<image>` placeholders, in order, with `<img>` + `tokens_per_tile` x tiles `<IMG_CONTEXT>` +
/// `</img>` for each image's tile count (256 tokens per 448-pixel tile). The number of placeholders must equal
/// the number of images.
pub fn expand_images(
    prompt: &str,
    tiles_per_image: &[usize],
    tokens_per_tile: usize,
) -> Result<String> {
    let found = prompt.matches(IMAGE_PLACEHOLDER).count();
    if found != tiles_per_image.len() {
        return Err(Error::ImageCount {
            placeholders: found,
            images: tiles_per_image.len(),
        });
    }
    let mut out = String::with_capacity(prompt.len());
    let mut rest = prompt;
    for &tiles in tiles_per_image {
        let at = rest.find(IMAGE_PLACEHOLDER).expect("counted above");
        out.push_str(&rest[..at]);
        out.push_str(IMG_START);
        out.push_str(&IMG_CONTEXT.repeat(tokens_per_tile * tiles));
        out.push_str(IMG_END);
        rest = &rest[at + IMAGE_PLACEHOLDER.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_turn_renders_as_the_reference_template() {
        let got = Conversation::default().render("Hi");
        let want = format!(
            "<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(got, want);
        assert_eq!(SYSTEM_MESSAGE.chars().count(), 58);
        assert_eq!(SYSTEM_MESSAGE.len(), 157);
    }

    #[test]
    fn history_turns_come_first_and_empty_messages_get_no_separator() {
        let c = Conversation {
            system: Some("S".into()),
            history: vec![("Q1".into(), "A1".into()), (String::new(), String::new())],
        };
        assert_eq!(
            c.render("Q2"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n\
             <|im_start|>user\n<|im_start|>assistant\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn placeholders_are_added_for_one_image_several_images_and_frames() {
        assert_eq!(with_placeholders("Q", 1, ImageLayout::Images), "<image>\nQ");
        assert_eq!(
            with_placeholders("Q", 2, ImageLayout::Images),
            "Image-1: <image>\nImage-2: <image>\nQ"
        );
        assert_eq!(
            with_placeholders("Q", 2, ImageLayout::Frames),
            "Frame1: <image>\nFrame2: <image>\nQ"
        );
        assert_eq!(
            with_placeholders("look <image> here", 1, ImageLayout::Images),
            "look <image> here"
        );
        assert_eq!(with_placeholders("Q", 0, ImageLayout::Images), "Q");
    }

    #[test]
    fn each_placeholder_expands_to_its_images_tiles() {
        let got = expand_images("a<image>b<image>c", &[1, 2], 256).unwrap();
        let block = |t: usize| format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(256 * t));
        assert_eq!(got, format!("a{}b{}c", block(1), block(2)));
    }

    #[test]
    fn a_placeholder_count_that_differs_from_the_images_is_an_error() {
        let err = expand_images("<image><image>", &[1], 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2") && err.contains("1"), "{err}");
        assert!(expand_images("no image", &[3], 256).is_err());
    }
}
