//! InternVL 2.5 on top of the model crates: checkpoint discovery, tokenizer, generation, and the `internvl`
//! program. A Qwen2 checkpoint (or the LLM of an InternVL one) loads as a [`TextModel`]; a whole InternVL
//! checkpoint as an [`InternVlModel`] (InternViT, projector, LLM), which generates from prompt ids and tiles.

pub mod chat;
pub mod checkpoint;
pub mod convert;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod generation;
pub mod image;
pub mod inspect;
pub mod model;
pub mod progress;
pub mod prompt;
pub mod source;
pub mod synthetic;
pub mod tokenizer;

pub use checkpoint::TextModel;
pub use error::{Error, Result};
pub use generation::{
    generate, generate_with_images, FinishReason, GenerationConfig, GenerationOutput,
};
pub use model::{ImageTokens, InternVlConfig, InternVlModel};
pub use tokenizer::{IncrementalDecoder, TextTokenizer};
