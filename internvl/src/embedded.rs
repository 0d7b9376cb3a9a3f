//! The small checkpoint built into the program, so it runs on a fresh machine with nothing downloaded.
//! It is a tiny Qwen2 with RANDOM weights (made by `scripts/fixtures/make_qwen2.py`): it exercises every part
//! of the engine, and its text is gibberish by construction.

use crate::{Result, TextModel};

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
pub const DESCRIPTION: &str =
    "embedded tiny Qwen2 (Qwen2.5-0.5B attention shape, 2 layers, RANDOM weights: its text is gibberish)";

/// Loads the embedded checkpoint.
pub fn text_model() -> Result<TextModel> {
    TextModel::from_memory(
        DESCRIPTION,
        include_str!(fixture!("config.json")),
        include_bytes!(fixture!("model.safetensors")),
        include_bytes!(fixture!("tokenizer.json")),
        Some(include_str!(fixture!("generation_config.json"))),
    )
}
