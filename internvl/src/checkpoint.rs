//! Finding and loading what a checkpoint directory holds: config, weights, tokenizer, stop tokens.

use std::path::Path;
use std::sync::Arc;

use awq_kernels::Weights;
use qwen2::{Qwen2, Qwen2Config};
use serde_json::Value;

use crate::progress::LoadProgress;
use crate::{Error, Result, TextTokenizer};

/// A language model ready to generate: the Qwen2 decoder, its tokenizer and its stop tokens.
pub struct TextModel {
    pub llm: Qwen2,
    pub tokenizer: TextTokenizer,
    /// Generation stops at any of these (`generation_config.json`'s `eos_token_id`, spec 6.4).
    pub stop_ids: Vec<u32>,
    /// Where it came from, for messages.
    pub origin: String,
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&text, &path.display().to_string())
}

fn parse_json(text: &str, origin: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::BadFile {
        path: origin.to_string(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// The LLM part of a config and the weight-name prefix it lives under: a plain Qwen2 checkpoint has its
/// tensors at the root, an InternVL one (`llm_config`) under `language_model.`.
pub(crate) fn llm_config_and_prefix(root: &Value) -> (&Value, &'static str) {
    match root.get("llm_config") {
        Some(llm) => (llm, "language_model."),
        None => (root, ""),
    }
}

/// Stop ids from `generation_config.json` (`eos_token_id`, a number or a list), else the chat end tokens.
pub(crate) fn stop_ids(generation_config: Option<&Value>, tokenizer: &TextTokenizer) -> Vec<u32> {
    let from_file: Vec<u32> = match generation_config.and_then(|g| g.get("eos_token_id")) {
        Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    };
    if !from_file.is_empty() {
        return from_file;
    }
    ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .collect()
}

/// `generation_config.json` of a checkpoint directory, if it has one.
pub(crate) fn generation_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        Ok(Some(read_json(&path)?))
    } else {
        Ok(None)
    }
}

impl TextModel {
    /// Moves the language model to `device` (a GPU computes in the checkpoint's f16/bf16).
    pub fn to_device(mut self, device: awq_kernels::Device) -> Result<TextModel> {
        self.llm = self.llm.to_device(device)?;
        Ok(self)
    }

    /// Loads a Qwen2 checkpoint directory, or the language model of an InternVL one. The tokenizer is
    /// `tokenizer.json`, else built from `vocab.json` and `merges.txt` ([`TextTokenizer::from_dir`]).
    pub fn load(dir: &Path) -> Result<TextModel> {
        Self::load_inner(dir, None)
    }

    /// [`Self::load`] that also reads the weight files through once, reporting the bytes read to
    /// `progress` (see [`crate::progress`]).
    pub fn load_with_progress(
        dir: &Path,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<TextModel> {
        Self::load_inner(dir, Some(progress))
    }

    fn load_inner(dir: &Path, progress: Option<&mut dyn FnMut(LoadProgress)>) -> Result<TextModel> {
        let config_path = dir.join("config.json");
        let root = read_json(&config_path)?;
        let (llm_json, prefix) = llm_config_and_prefix(&root);
        let config = Qwen2Config::from_json(llm_json, &root, &config_path.display().to_string())?;
        let weights = Arc::new(Weights::from_dir(dir)?);
        // Every needed tensor, checked before anything is loaded; all problems are reported at once.
        weights.verify(&qwen2::expected_tensors(&config, prefix))?;
        let llm = Qwen2::load(&config, &weights.scope(prefix))?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        // Building maps the tensors without reading them, and checks every one: a bad checkpoint fails
        // before its weights are read.
        let stop_ids = stop_ids(generation_config(dir)?.as_ref(), &tokenizer);
        if let Some(progress) = progress {
            crate::progress::read_weight_files(dir, progress)?;
        }
        Ok(TextModel {
            llm,
            tokenizer,
            stop_ids,
            origin: dir.display().to_string(),
        })
    }

    /// Loads a checkpoint held in memory (the embedded default).
    pub fn from_memory(
        origin: &str,
        config_json: &str,
        weights: &'static [u8],
        tokenizer_json: &[u8],
        generation_config_json: Option<&str>,
    ) -> Result<TextModel> {
        let root = parse_json(config_json, origin)?;
        let (llm_json, prefix) = llm_config_and_prefix(&root);
        let config = Qwen2Config::from_json(llm_json, &root, origin)?;
        let weights = Arc::new(Weights::from_bytes(origin, Arc::new(weights))?);
        weights.verify(&qwen2::expected_tensors(&config, prefix))?;
        let llm = Qwen2::load(&config, &weights.scope(prefix))?;
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json)?;
        let gen = generation_config_json
            .map(|g| parse_json(g, origin))
            .transpose()?;
        let stop_ids = stop_ids(gen.as_ref(), &tokenizer);
        Ok(TextModel {
            llm,
            tokenizer,
            stop_ids,
            origin: origin.to_string(),
        })
    }
}
