//! InternVL 2.5 on top of the model crates: checkpoint discovery, tokenizer, generation, and the `internvl`
//! program. (The model that runs is the text path: a Qwen2 checkpoint, or the LLM of an InternVL one; `inspect`
//! and `convert` understand the whole InternVL layout.)

pub mod checkpoint;
pub mod convert;
pub mod embedded;
pub mod error;
pub mod generation;
pub mod image;
pub mod inspect;
pub mod prompt;
pub mod tokenizer;

pub use checkpoint::TextModel;
pub use error::{Error, Result};
pub use generation::{generate, FinishReason, GenerationConfig, GenerationOutput};
pub use tokenizer::{IncrementalDecoder, TextTokenizer};
