//! InternViT, the vision encoder of InternVL 2.5, in both flavours chosen from the `vision_config`:
//! 300M-style (LayerNorm with bias, qkv bias, no q/k norm) and 6B-style (RMSNorm, no qkv bias, q/k RMSNorm
//! over the full hidden vector). Follows the original `modeling_intern_vit.py` (spec section 2); field names
//! follow the checkpoint keys under `vision_model.`.

pub mod config;
pub mod error;
pub mod model;

pub use config::{NormType, VisionConfig};
pub use error::{Error, Result};
pub use model::InternVit;
