//! The projector: class token dropped, pixel shuffle, `mlp1` (spec 3.1-3.3). Shapes: C = ViT hidden size,
//! H = LLM hidden size, f = 1 / downsample_ratio (2), g = patch grid side (32).

use awq_kernels::ops::activation;
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::norm::layer_norm;
use awq_kernels::{Tensor, WeightsScope};

use crate::{pixel_shuffle, Error, PsVersion, Result};

/// PyTorch's default LayerNorm eps, which `mlp1.0` uses (not the ViT's 1e-6).
const MLP1_NORM_EPS: f32 = 1e-5;

/// `mlp1`: a 4-element sequential whose index 2 is the parameter-free GELU.
pub struct Mlp1 {
    /// `mlp1.0.weight`, `mlp1.0.bias` `[f²C]`: LayerNorm.
    norm_weight: Tensor,
    norm_bias: Tensor,
    /// `mlp1.1` `[H, f²C]` with bias.
    linear_1: Linear,
    /// `mlp1.3` `[H, H]` with bias.
    linear_2: Linear,
}

impl Mlp1 {
    /// Loads `mlp1.{0,1,3}` from `scope` (`mlp1.` of an InternVL checkpoint).
    pub fn load(scope: &WeightsScope, in_features: usize, hidden: usize) -> Result<Mlp1> {
        Ok(Mlp1 {
            norm_weight: scope.get_float("0.weight", &[in_features])?,
            norm_bias: scope.get_float("0.bias", &[in_features])?,
            linear_1: Linear::load(&scope.pp("1"), in_features, hidden, true, None)?,
            linear_2: Linear::load(&scope.pp("3"), hidden, hidden, true, None)?,
        })
    }

    /// `[.., f²C]` → `[.., H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = layer_norm(x, &self.norm_weight, &self.norm_bias, MLP1_NORM_EPS)?;
        let a = activation::gelu(&self.linear_1.forward(&a)?)?;
        Ok(self.linear_2.forward(&a)?)
    }
}

/// Pixel shuffle and `mlp1`: ViT features of whole tiles in, LLM input rows out.
pub struct Projector {
    /// 1 / downsample_ratio.
    factor: usize,
    version: PsVersion,
    /// The ViT's hidden size C.
    vit_hidden: usize,
    mlp1: Mlp1,
}

impl Projector {
    /// Loads `mlp1.*` from `scope` (`mlp1.` of an InternVL checkpoint) for a ViT of hidden size `vit_hidden`
    /// with a `grid`×`grid` patch grid and an LLM of hidden size `llm_hidden`.
    pub fn load(
        scope: &WeightsScope,
        vit_hidden: usize,
        grid: usize,
        llm_hidden: usize,
        downsample_ratio: f64,
        version: PsVersion,
    ) -> Result<Projector> {
        let inverse = 1.0 / downsample_ratio;
        let factor = inverse.round() as usize;
        let whole =
            inverse.is_finite() && inverse >= 1.0 && (inverse - factor as f64).abs() <= 1e-9;
        if !whole || !grid.is_multiple_of(factor) {
            return Err(Error::DownsampleRatio {
                ratio: downsample_ratio,
                grid,
            });
        }
        Ok(Projector {
            factor,
            version,
            vit_hidden,
            mlp1: Mlp1::load(scope, factor * factor * vit_hidden, llm_hidden)?,
        })
    }

    /// LLM rows per tile for a `grid`×`grid` patch grid (256 for 32×32 and factor 2).
    pub fn tokens_per_tile(&self, grid: usize) -> usize {
        (grid / self.factor) * (grid / self.factor)
    }

    /// ViT output `[n, 1 + g·g, C]` (class token first) → `[n·(g/f)², H]`, tile by tile, each tile's rows in
    /// the token order of the pixel-shuffle version.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let bad = || Error::Shape {
            what: "the vision features",
            got: features.shape().to_vec(),
            expected: format!("[tiles, 1 + g·g, {}] for a square grid g", self.vit_hidden),
        };
        let &[n, t, c] = features.shape() else {
            return Err(bad());
        };
        let grid = (t.saturating_sub(1) as f64).sqrt().round() as usize;
        if c != self.vit_hidden || t == 0 || grid * grid != t - 1 {
            return Err(bad());
        }
        // Drop each tile's class token.
        let mut patches = Vec::with_capacity(n * (t - 1) * c);
        for tile in features.as_slice::<f32>()?.chunks_exact(t * c) {
            patches.extend_from_slice(&tile[c..]);
        }
        let patches = Tensor::from_vec(patches, &[n, grid, grid, c])?;
        let shuffled = pixel_shuffle(&patches, self.factor, self.version)?; // [n, (g/f)², f²C]
        let tokens = shuffled.dim(1);
        let out = self
            .mlp1
            .forward(&shuffled.reshape(&[n * tokens, self.factor * self.factor * c])?)?;
        Ok(out)
    }
}
