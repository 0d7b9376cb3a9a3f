//! The projector: class token dropped, pixel shuffle, `mlp1` (spec 3.1-3.3). Shapes: C = ViT hidden size,
//! H = LLM hidden size, f = 1 / downsample_ratio (2), g = patch grid side (32).

use awq_kernels::ops::activation;
use awq_kernels::ops::gather_rows;
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::norm::layer_norm;
use awq_kernels::{DType, Device, Tensor, WeightsScope};

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

    /// `mlp1` on `device`, computing in `dtype` there.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<Mlp1> {
        let on = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(device)?) };
        Ok(Mlp1 {
            norm_weight: on(&self.norm_weight)?,
            norm_bias: on(&self.norm_bias)?,
            linear_1: self.linear_1.to_device(device, dtype)?,
            linear_2: self.linear_2.to_device(device, dtype)?,
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
    device: Device,
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
            device: Device::Cpu,
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

    /// The projector on `device`, computing in `dtype` there; its input must then be on that device.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<Projector> {
        Ok(Projector {
            device,
            factor: self.factor,
            version: self.version,
            vit_hidden: self.vit_hidden,
            mlp1: if device == Device::Cpu {
                self.mlp1.to_device(device, DType::F32)?
            } else {
                self.mlp1.to_device(device, dtype)?
            },
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// For each output token and each of its f² parts, in order, the row of one tile's features
    /// `[1 + g·g, C]` it takes (class token dropped). Found by shuffling the row numbers themselves: the
    /// shuffle moves whole C-vectors, so a one-channel shuffle of the indices is its row map.
    fn shuffle_rows(&self, grid: usize) -> Result<Vec<usize>> {
        let index: Vec<f32> = (0..grid * grid).map(|i| (1 + i) as f32).collect();
        let index = Tensor::from_vec(index, &[1, grid, grid, 1])?;
        let shuffled = pixel_shuffle(&index, self.factor, self.version)?;
        Ok(shuffled
            .as_slice::<f32>()?
            .iter()
            .map(|&r| r as usize)
            .collect())
    }

    /// [`Self::forward`] as one row gather plus `mlp1`, for features in any dtype on any device (the GPU
    /// path; on the CPU it gives the same rows as the direct shuffle).
    pub fn forward_by_gather(&self, features: &Tensor) -> Result<Tensor> {
        let (n, t, c, grid) = self.feature_dims(features)?;
        let map = self.shuffle_rows(grid)?;
        let rows: Vec<usize> = (0..n)
            .flat_map(|tile| map.iter().map(move |&r| tile * t + r))
            .collect();
        let tokens = self.tokens_per_tile(grid);
        // A GPU tensor clones as a shared handle; only the CPU tests copy here.
        let gathered = gather_rows(&features.clone().reshape(&[n * t, c])?, &rows)?; // [n·tokens·f², C]
        let width = self.factor * self.factor * c;
        self.mlp1.forward(&gathered.reshape(&[n * tokens, width])?)
    }

    /// `(tiles, rows per tile, C, grid side)` of ViT features, checked.
    fn feature_dims(&self, features: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let bad = || Error::Shape {
            what: "the vision features",
            got: features.shape().to_vec(),
            expected: format!("[tiles, 1 + g·g, {}] for a square grid g", self.vit_hidden),
        };
        let &[n, t, c] = features.shape() else {
            return Err(bad());
        };
        let grid = (t.saturating_sub(1) as f64).sqrt().round() as usize;
        if c != self.vit_hidden
            || t == 0
            || grid * grid != t - 1
            || !grid.is_multiple_of(self.factor)
        {
            return Err(bad());
        }
        Ok((n, t, c, grid))
    }

    /// ViT output `[n, 1 + g·g, C]` (class token first) → `[n·(g/f)², H]`, tile by tile, each tile's rows in
    /// the token order of the pixel-shuffle version.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        if features.device() != Device::Cpu {
            return self.forward_by_gather(features);
        }
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
