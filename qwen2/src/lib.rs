//! The Qwen2 / Qwen2.5 decoder (HF `Qwen2ForCausalLM`), loaded from an HF `config.json` and safetensors, with
//! dense or AWQ linears. It runs a plain Qwen2 checkpoint, or the `language_model.` part of an InternVL one.

mod attention;
pub mod config;
pub mod error;
pub mod model;

pub use config::Qwen2Config;
pub use error::{Error, Result};
pub use model::{expected_tensors, ForwardOptions, ForwardOutput, Qwen2, SeqInput};
