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

    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },

    #[error("{path} already exists; pass --force to write into it (its safetensors weights are replaced)")]
    OutputExists { path: PathBuf },

    #[error("{path} is the checkpoint being converted; choose another output folder")]
    ConvertInPlace { path: PathBuf },

    #[error(
        "verification of {file} failed at tensor `{name}`: {reason}; the disk may be full or failing, \
         so the output cannot be trusted: delete it and convert again"
    )]
    VerifyFailed {
        file: String,
        name: String,
        reason: String,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("the prompt is empty")]
    EmptyPrompt,

    #[error(
        "the prompt has {prompt} tokens but the model's context is {limit}; shorten the prompt"
    )]
    PromptTooLong { prompt: usize, limit: usize },

    #[error(
        "the prompt has {placeholders} `<image>` placeholder(s) but {images} image(s) were given; \
         write one `<image>` per image, or none to have them placed before the question"
    )]
    ImageCount { placeholders: usize, images: usize },

    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    #[error("{origin} has no `{token}` token; an InternVL tokenizer must have `<img>`, `</img>` and `<IMG_CONTEXT>`")]
    MissingSpecialToken { token: String, origin: String },

    #[error(
        "the prompt has {positions} <IMG_CONTEXT> positions but the images give {rows} rows ({per_tile} per \
         tile); each image must appear as <img> followed by {per_tile} <IMG_CONTEXT> per tile and </img>"
    )]
    ImageTokenMismatch {
        positions: usize,
        rows: usize,
        per_tile: usize,
    },

    #[error("select_layer {select_layer} does not name a hidden state of a {layers}-layer vision encoder")]
    SelectLayer { select_layer: i64, layers: usize },

    #[error("the batched decode step failed: {0}")]
    Decode(String),

    #[error(transparent)]
    Model(#[from] qwen2::Error),

    #[error(transparent)]
    Vision(#[from] vit::Error),

    #[error(transparent)]
    Projector(#[from] projector::Error),

    #[error(transparent)]
    Kernel(#[from] awq_kernels::Error),
}
