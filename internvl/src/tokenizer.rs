//! The text tokenizer and streaming detokenization. A checkpoint's `tokenizer.json` (HF `tokenizers`) is used
//! when present; otherwise the Qwen2 byte-level BPE is built from `vocab.json`, `merges.txt` and the added
//! tokens of `tokenizer_config.json` (`added_tokens_decoder`), else of `added_tokens.json` with their special
//! flag from `special_tokens_map.json`, as transformers' `Qwen2Tokenizer` builds it (the published
//! InternVL2_5 repositories ship these files and no `tokenizer.json`).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{Error, Result};

/// Qwen2's pre-tokenizer regex (transformers' `Qwen2Tokenizer`, and the Qwen2.5 `tokenizer.json`).
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer_config.json` / `special_tokens_map.json` keys that name special tokens.
const NAMED_SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

fn bad_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_file(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| bad_file(path, format!("invalid JSON: {e}")))
}

/// A JSON file of the directory, `None` when it is not there.
fn optional_json(dir: &Path, name: &str) -> Result<Option<Value>> {
    let path = dir.join(name);
    if path.exists() {
        read_json_file(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// `merges.txt`: an optional `#version` first line, then one `left right` pair per line (blank lines skipped),
/// read as transformers reads it.
fn parse_merges(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("#version")) {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(bad_file(
                    path,
                    format!("line {} is not a merge of two tokens: {line:?}", i + 1),
                ))
            }
        }
    }
    Ok(merges)
}

/// The content of a special-token entry: a string or an `AddedToken` object (`{"content": ...}`).
fn token_content(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// Every token a config names as special: `eos_token`, `pad_token`, ..., `additional_special_tokens`.
fn named_special_tokens(configs: &[&Value]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for config in configs {
        for key in NAMED_SPECIAL_KEYS {
            if let Some(content) = config.get(key).and_then(token_content) {
                out.insert(content.to_string());
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(Value::Array(items)) = config.get(key) {
                out.extend(items.iter().filter_map(token_content).map(str::to_string));
            }
        }
    }
    out
}

/// One entry of `added_tokens_decoder`: the token's flags as transformers' `AddedToken(**entry)` takes them.
fn added_token_from_entry(entry: &Value, id: &str, path: &Path) -> Result<AddedToken> {
    let bad = |what: &str| bad_file(path, format!("added_tokens_decoder[{id:?}]: {what}"));
    let obj = entry.as_object().ok_or_else(|| bad("not an object"))?;
    let content = obj
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no `content` string"))?;
    let flag = |key: &str, default: bool| -> Result<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(&format!("`{key}` is not a boolean"))),
        }
    };
    let special = flag("special", false)?;
    Ok(AddedToken::from(content, special)
        .single_word(flag("single_word", false)?)
        .lstrip(flag("lstrip", false)?)
        .rstrip(flag("rstrip", false)?)
        .normalized(flag("normalized", !special)?))
}

/// The added tokens of a folder: those with an id in the config, by id, then named special tokens without one.
struct AddedTokens {
    by_id: Vec<(u32, AddedToken)>,
    extra: Vec<AddedToken>,
}

/// The added tokens with their ids, by id: `tokenizer_config.json`'s `added_tokens_decoder`, else
/// `added_tokens.json` (special when a config names them), then the named special tokens not among them (as
/// transformers adds them, at the next free ids).
fn added_tokens(dir: &Path) -> Result<AddedTokens> {
    let config = optional_json(dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
    let special_map = optional_json(dir, "special_tokens_map.json")?.unwrap_or(Value::Null);
    let named = named_special_tokens(&[&config, &special_map]);
    let mut tokens: Vec<(u32, AddedToken)> = Vec::new();
    if let Some(decoder) = config.get("added_tokens_decoder") {
        let path = dir.join("tokenizer_config.json");
        let decoder = decoder
            .as_object()
            .ok_or_else(|| bad_file(&path, "`added_tokens_decoder` is not an object"))?;
        for (id, entry) in decoder {
            let n: u32 = id.parse().map_err(|_| {
                bad_file(
                    &path,
                    format!("added_tokens_decoder key {id:?} is not a token id"),
                )
            })?;
            tokens.push((n, added_token_from_entry(entry, id, &path)?));
        }
    } else if let Some(map) = optional_json(dir, "added_tokens.json")? {
        let path = dir.join("added_tokens.json");
        let map = map
            .as_object()
            .ok_or_else(|| bad_file(&path, "not an object of token -> id"))?;
        for (content, id) in map {
            let n = id
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    bad_file(&path, format!("the id of {content:?} is not a token id"))
                })?;
            tokens.push((
                n,
                AddedToken::from(content.as_str(), named.contains(content)),
            ));
        }
    }
    tokens.sort_by_key(|(id, _)| *id);
    let extra = named
        .iter()
        .filter(|t| !tokens.iter().any(|(_, a)| &a.content == *t))
        .map(|t| AddedToken::from(t.as_str(), true))
        .collect();
    Ok(AddedTokens {
        by_id: tokens,
        extra,
    })
}

impl TextTokenizer {
    /// The tokenizer of a checkpoint directory: its `tokenizer.json` when present, otherwise the Qwen2
    /// byte-level BPE built from `vocab.json`, `merges.txt` and the added tokens (see [`Self::from_qwen2_files`]).
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        let tokenizer_json = dir.join("tokenizer.json");
        if tokenizer_json.exists() {
            return Self::from_file(&tokenizer_json);
        }
        if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() {
            return Self::from_qwen2_files(dir);
        }
        Err(bad_file(
            dir,
            "no tokenizer here: expected tokenizer.json, or vocab.json and merges.txt (with \
             tokenizer_config.json or added_tokens.json for the special tokens)",
        ))
    }

    /// Qwen2's tokenizer as transformers' `Qwen2Tokenizer` builds it without a `tokenizer.json`: BPE from
    /// `vocab.json` and `merges.txt`, NFC, Qwen2's split regex (isolated) then byte-level (no prefix space
    /// unless `add_prefix_space`, no regex of its own), the byte-level decoder, and the added tokens at their
    /// ids with their flags.
    pub fn from_qwen2_files(dir: &Path) -> Result<TextTokenizer> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab = read_json_file(&vocab_path)?;
        let entries = vocab
            .as_object()
            .ok_or_else(|| bad_file(&vocab_path, "not an object of token -> id"))?;
        let mut ids = BTreeSet::new();
        for (token, id) in entries {
            let n = id
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    bad_file(
                        &vocab_path,
                        format!("the id of {token:?} is not a token id"),
                    )
                })?;
            if !ids.insert(n) {
                return Err(bad_file(
                    &vocab_path,
                    format!("id {n} is given to two tokens"),
                ));
            }
        }
        let merges = parse_merges(&read_text(&merges_path)?, &merges_path)?;
        let bpe: BPE = serde_json::from_value(json!({ "vocab": vocab, "merges": merges }))
            .map_err(|e| bad_file(&merges_path, format!("does not fit vocab.json: {e}")))?;

        let config = optional_json(dir, "tokenizer_config.json")?;
        let add_prefix_space = config
            .as_ref()
            .and_then(|c| c.get("add_prefix_space"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let split = Split::new(
            SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("Qwen2's pre-tokenizer regex: {e}")))?;
        let byte_level = ByteLevel::default()
            .add_prefix_space(add_prefix_space)
            .use_regex(false);

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(NFC))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])));
        inner.with_decoder(Some(ByteLevel::default()));

        let AddedTokens {
            by_id: tokens,
            extra,
        } = added_tokens(dir)?;
        let added = |inner: &mut tokenizers::Tokenizer, t: Vec<AddedToken>| {
            inner.add_tokens(t).map(|_| ()).map_err(|e| {
                Error::Tokenizer(format!("adding the added tokens of {}: {e}", dir.display()))
            })
        };
        // Ids are given in order from the end of the vocabulary (or a token's id in vocab.json), so adding
        // by id reproduces them exactly when they follow the vocabulary without gaps, as published ones do.
        added(&mut inner, tokens.iter().map(|(_, t)| t.clone()).collect())?;
        for (id, token) in &tokens {
            let got = inner.token_to_id(&token.content);
            if got != Some(*id) {
                return Err(Error::Tokenizer(format!(
                    "{}: added token {:?} has id {id} in the config but would get {} (the added tokens \
                     must follow vocab.json's ids without gaps)",
                    dir.display(),
                    token.content,
                    got.map_or("none".to_string(), |g| g.to_string()),
                )));
            }
        }
        added(&mut inner, extra)?;
        Ok(TextTokenizer { inner })
    }

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
