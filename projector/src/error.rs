pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ps_version `{0}`; expected `v1` or `v2`")]
    PsVersion(String),

    #[error(
        "downsample_ratio {ratio}: the pixel shuffle needs 1 / ratio to be a whole number that divides the \
         {grid}x{grid} patch grid"
    )]
    DownsampleRatio { ratio: f64, grid: usize },

    #[error("projector: {what} has shape {got:?}, expected {expected}")]
    Shape {
        what: &'static str,
        got: Vec<usize>,
        expected: String,
    },

    #[error(transparent)]
    Kernel(#[from] awq_kernels::Error),
}
