//! RMSNorm and LayerNorm over the last dimension. Activations f32; weights of any float dtype.

pub mod cpu;

use super::{f32_slice, param_f32, rows_and_width};
use crate::{Result, Tensor};

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension (Qwen2, InternViT-6B).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, width) = rows_and_width("rms_norm", x)?;
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        super::expect_shape("rms_norm", "weight", weight, &[width])?;
        return crate::cuda::ops::rms_norm(x, weight, eps, width);
    }
    let w = param_f32("rms_norm", weight, width)?;
    let mut out = vec![0.0f32; rows * width];
    cpu::rms_norm(f32_slice("rms_norm", x)?, &w, eps, width, &mut out);
    Tensor::from_vec(out, x.shape())
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (InternViT-300M, mlp1).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, width) = rows_and_width("layer_norm", x)?;
    let w = param_f32("layer_norm", weight, width)?;
    let b = param_f32("layer_norm", bias, width)?;
    let mut out = vec![0.0f32; rows * width];
    cpu::layer_norm(f32_slice("layer_norm", x)?, &w, &b, eps, width, &mut out);
    Tensor::from_vec(out, x.shape())
}
