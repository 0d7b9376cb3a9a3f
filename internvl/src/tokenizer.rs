//! The text tokenizer (`tokenizer.json`, HF `tokenizers`) and streaming detokenization.

use std::path::Path;

use crate::{Error, Result};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::BadFile {
            path: path.display().to_string(),
            reason: format!("not a valid tokenizer.json: {e}"),
        })?;
        Ok(TextTokenizer { inner })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("not a valid tokenizer.json: {e}")))?;
        Ok(TextTokenizer { inner })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`, `<img>`) become their ids;
    /// nothing is added around the text (the chat template writes those tokens itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token string, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The special added tokens (`<|im_end|>`, `<img>`, ...) with their ids, by id.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        out.sort_by_key(|(_, id)| *id);
        out
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of token ids into text pieces, holding back bytes of an unfinished UTF-8 character
/// (byte-level BPE splits a CJK character or an emoji over several tokens).
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Text already emitted.
    emitted: usize,
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        IncrementalDecoder {
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token and returns the new complete text, possibly empty.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }

    /// The text still held back at the end of generation (an unfinished character shows as U+FFFD, as the
    /// full decode shows it).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.ids)?;
        let piece = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}
