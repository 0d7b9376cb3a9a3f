//! The `vision_config` of an InternVL `config.json` (class `InternVisionConfig`, spec 1.3).

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// The normalization of the encoder layers (and, with q/k normalization, of q and k).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormType {
    /// LayerNorm with weight and bias (InternViT-300M).
    LayerNorm,
    /// RMSNorm with a weight only (InternViT-6B).
    RmsNorm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub norm_type: NormType,
    /// Of the layer norms and of the q/k norms.
    pub layer_norm_eps: f32,
    pub qkv_bias: bool,
    pub qk_normalization: bool,
    /// Tile side in pixels (`force_image_size` of the top-level config overrides it).
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
}

/// The keys as written; the optional ones default to `InternVisionConfig`'s defaults, which is what the
/// reference does with a file that omits them.
#[derive(Deserialize)]
struct Raw {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_norm_type")]
    norm_type: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    qkv_bias: bool,
    #[serde(default = "default_true")]
    qk_normalization: bool,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "default_channels")]
    num_channels: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_norm_type() -> String {
    "rms_norm".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_channels() -> usize {
    3
}
fn default_act() -> String {
    "gelu".into()
}

impl VisionConfig {
    /// Parses a `vision_config` object; `origin` names the file in errors.
    pub fn from_json(value: &Value, origin: &str) -> Result<VisionConfig> {
        let err = |reason: String| Error::Config {
            origin: origin.to_string(),
            reason,
        };
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
        let norm_type = match raw.norm_type.as_str() {
            "layer_norm" => NormType::LayerNorm,
            "rms_norm" => NormType::RmsNorm,
            other => {
                return Err(err(format!(
                    "norm_type `{other}`; expected `layer_norm` or `rms_norm`"
                )))
            }
        };
        if raw.hidden_act != "gelu" {
            return Err(err(format!(
                "hidden_act `{}`; only `gelu` (exact) is supported",
                raw.hidden_act
            )));
        }
        let heads = raw.num_attention_heads;
        if heads == 0 || !raw.hidden_size.is_multiple_of(heads) {
            return Err(err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {heads}",
                raw.hidden_size
            )));
        }
        let config = VisionConfig {
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            intermediate_size: raw.intermediate_size,
            norm_type,
            layer_norm_eps: raw.layer_norm_eps as f32,
            qkv_bias: raw.qkv_bias,
            qk_normalization: raw.qk_normalization,
            image_size: raw.image_size,
            patch_size: raw.patch_size,
            num_channels: raw.num_channels,
        };
        config.with_image_size(raw.image_size, origin)
    }

    /// This config with tiles of `image_size` pixels (the top-level `force_image_size`).
    pub fn with_image_size(mut self, image_size: usize, origin: &str) -> Result<VisionConfig> {
        if self.patch_size == 0 || image_size == 0 || !image_size.is_multiple_of(self.patch_size) {
            return Err(Error::Config {
                origin: origin.to_string(),
                reason: format!(
                    "image size {image_size} is not a positive multiple of patch_size {}",
                    self.patch_size
                ),
            });
        }
        self.image_size = image_size;
        Ok(self)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches along each side of a tile (32 for 448 / 14).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per tile: the class token and one per patch (1025).
    pub fn tokens_per_tile(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_300m_vision_config_of_a_released_checkpoint_parses() {
        let json = serde_json::json!({
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
            "qkv_bias": true, "qk_normalization": false, "hidden_act": "gelu",
            "image_size": 448, "patch_size": 14, "num_channels": 3, "use_flash_attn": true
        });
        let c = VisionConfig::from_json(&json, "config.json").unwrap();
        assert_eq!(c.norm_type, NormType::LayerNorm);
        assert!(c.qkv_bias && !c.qk_normalization);
        assert_eq!(
            (c.head_dim(), c.grid(), c.tokens_per_tile()),
            (64, 32, 1025)
        );
    }

    #[test]
    fn an_unknown_norm_type_or_activation_is_refused_by_name() {
        let base = serde_json::json!({
            "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 128, "image_size": 448, "patch_size": 14
        });
        let mut bad = base.clone();
        bad["norm_type"] = "batch_norm".into();
        let err = VisionConfig::from_json(&bad, "x").unwrap_err().to_string();
        assert!(err.contains("batch_norm"), "{err}");
        let mut bad = base.clone();
        bad["hidden_act"] = "gelu_pytorch_tanh".into();
        let err = VisionConfig::from_json(&bad, "x").unwrap_err().to_string();
        assert!(err.contains("gelu_pytorch_tanh"), "{err}");
        // The defaults are InternVisionConfig's: RMSNorm with q/k normalization and no qkv bias.
        let c = VisionConfig::from_json(&base, "x").unwrap();
        assert_eq!(c.norm_type, NormType::RmsNorm);
        assert!(c.qk_normalization && !c.qkv_bias);
    }
}
