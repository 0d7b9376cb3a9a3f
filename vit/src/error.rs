pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: vision_config: {reason}")]
    Config { origin: String, reason: String },

    #[error(
        "InternViT: pixel values have shape {got:?}, expected [tiles, {channels}, {size}, {size}] \
         (tiles of {size}x{size} pixels; other sizes would need the position-embedding resize, which is not \
         implemented)"
    )]
    PixelShape {
        got: Vec<usize>,
        channels: usize,
        size: usize,
    },

    #[error(
        "InternViT: cannot take the output of layer {requested}; the encoder has {layers} layers"
    )]
    Layer { requested: usize, layers: usize },

    #[error(transparent)]
    Kernel(#[from] awq_kernels::Error),
}
