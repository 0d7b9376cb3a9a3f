use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{origin}: {reason}")]
    Config { origin: String, reason: String },

    #[error("unsupported quantization in {origin}: {reason}")]
    UnsupportedQuantization { origin: String, reason: String },

    #[error(
        "the sequence needs {needed} positions but the model's context is {limit} \
         (max_position_embeddings); shorten the prompt or lower max_new_tokens"
    )]
    ContextTooLong { needed: usize, limit: usize },

    #[error(transparent)]
    Kernel(#[from] awq_kernels::Error),
}
