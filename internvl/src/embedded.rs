//! The small checkpoints built into the program, so it runs on a fresh machine with nothing downloaded.
//! They have RANDOM weights (made by `scripts/fixtures/make_qwen2.py` and `make_internvl.py` with
//! transformers): they exercise every part of the engine, and their text is gibberish by construction.

use crate::{InternVlModel, Result, TextModel};

#[cfg(feature = "embedded-qwen2")]
macro_rules! fixture {
    ($file:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/qwen2-0.5b-like/",
            $file
        )
    };
}

/// What the embedded checkpoint is, for messages.
#[cfg(feature = "embedded-qwen2")]
pub const DESCRIPTION: &str =
    "embedded tiny Qwen2 (Qwen2.5-0.5B attention shape, 2 layers, RANDOM weights: its text is gibberish)";

/// Loads the embedded checkpoint.
#[cfg(feature = "embedded-qwen2")]
pub fn text_model() -> Result<TextModel> {
    TextModel::from_memory(
        DESCRIPTION,
        include_str!(fixture!("config.json")),
        include_bytes!(fixture!("model.safetensors")),
        include_bytes!(fixture!("tokenizer.json")),
        Some(include_str!(fixture!("generation_config.json"))),
    )
}

/// What the embedded checkpoint is, for messages.
#[cfg(not(feature = "embedded-qwen2"))]
pub const DESCRIPTION: &str =
    "language model of the embedded tiny InternVL checkpoint (2 layers, RANDOM weights: its text is gibberish)";

/// Without the `embedded-qwen2` feature: the language model of the embedded InternVL checkpoint.
#[cfg(not(feature = "embedded-qwen2"))]
pub fn text_model() -> Result<TextModel> {
    Ok(internvl_model()?.text)
}

/// What the embedded InternVL checkpoint is, for messages.
pub const INTERNVL_DESCRIPTION: &str =
    "embedded tiny InternVL 2.5 (InternViT-300M layout, 2-layer Qwen2, \
     RANDOM weights: its answers are gibberish; pass --model for a real checkpoint)";

macro_rules! internvl_fixture {
    ($file:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/internvl-300m-like/",
            $file
        )
    };
}

/// Loads the embedded InternVL checkpoint (the `internvl-300m-like` fixture).
pub fn internvl_model() -> Result<InternVlModel> {
    InternVlModel::from_memory(
        INTERNVL_DESCRIPTION,
        include_str!(internvl_fixture!("config.json")),
        include_bytes!(internvl_fixture!("model.safetensors")),
        include_bytes!(internvl_fixture!("tokenizer.json")),
        Some(include_str!(internvl_fixture!("generation_config.json"))),
    )
}

/// The embedded InternVL checkpoint's `tokenizer.json` bytes and `generation_config.json` text (synthetic
/// models use them: they hold the image and template tokens).
pub fn internvl_tokenizer_files() -> (&'static [u8], &'static str) {
    (
        include_bytes!(internvl_fixture!("tokenizer.json")),
        include_str!(internvl_fixture!("generation_config.json")),
    )
}
