//! The bridge from InternViT to the LLM (spec section 3): drop the class token, pixel shuffle (space to
//! depth, `downsample_ratio` 0.5, `ps_version` v1 or v2), then `mlp1` (LayerNorm, Linear, exact GELU,
//! Linear). Field names follow the checkpoint keys under `mlp1.`.

pub mod error;
pub mod model;
pub mod pixel_shuffle;

pub use error::{Error, Result};
pub use model::{Mlp1, Projector};
pub use pixel_shuffle::{pixel_shuffle, PsVersion};
