//! The one error type of `awq-kernels`.

use std::path::PathBuf;

use crate::DType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid safetensors file ({reason}); is it truncated or corrupted? Download it again")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("{path} is not a readable PyTorch checkpoint ({reason}); is it truncated or corrupted? Download it again")]
    BadTorchCheckpoint { path: PathBuf, reason: String },

    #[error(
        "refusing to load {path}: its pickle refers to `{global}`, which a PyTorch state dict never needs \
         (loading a checkpoint never runs code); the file is malicious or not a plain state dict. \
         If you trust it, convert it to safetensors with PyTorch"
    )]
    UnsafePickle { path: PathBuf, global: String },

    #[error("{origin}: the checkpoint does not fit the model ({} problems):\n  {}", problems.len(), problems.join("\n  "))]
    CheckpointProblems {
        origin: String,
        problems: Vec<String>,
    },

    #[error("{path}: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor { name: String, source_desc: String },

    #[error("tensor `{name}` in {file} has shape {got:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        file: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("tensor `{name}` in {file} has dtype {got}, expected {expected}")]
    WeightDType {
        name: String,
        file: String,
        expected: String,
        got: String,
    },

    #[error("tensor `{name}` in {file} has unsupported dtype {dtype}")]
    UnsupportedWeightDType {
        name: String,
        file: String,
        dtype: String,
    },

    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        op: &'static str,
        expected: DType,
        got: DType,
    },

    #[error("{op}: {reason}")]
    Shape { op: &'static str, reason: String },

    #[error(
        "KV cache is full: {needed} more blocks of {block_size} tokens needed, {free} free; \
         raise the cache size or shorten the request"
    )]
    KvCacheFull {
        needed: usize,
        free: usize,
        block_size: usize,
    },

    #[error("{0}")]
    Unsupported(String),

    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    pub(crate) fn shape(op: &'static str, reason: impl Into<String>) -> Self {
        Error::Shape {
            op,
            reason: reason.into(),
        }
    }
}
