//! InternVL 2.5 on top of the model crates: checkpoint discovery, tokenizer, generation, and the `internvl`
//! program. (This scope is the text path: a Qwen2 checkpoint, or the LLM of an InternVL one.)

pub mod checkpoint;
pub mod embedded;
pub mod error;
pub mod generation;
pub mod image;
pub mod tokenizer;

pub use checkpoint::TextModel;
pub use error::{Error, Result};
pub use generation::{generate, FinishReason, GenerationConfig, GenerationOutput};
pub use tokenizer::{IncrementalDecoder, TextTokenizer};
