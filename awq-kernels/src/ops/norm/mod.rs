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

/// The residual add fused with the next RMSNorm: `x += residual`, then returns
/// `x / sqrt(mean(x²) + eps) * weight` of the updated `x` (one pass over the row instead of three on the
/// GPU, where the sum is stored in `x`'s dtype and the norm reads it back as stored).
pub fn add_rms_norm(
    x: &mut Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let op = "add_rms_norm";
    super::expect_shape(op, "residual", residual, x.shape())?;
    let (rows, width) = rows_and_width(op, x)?;
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        super::expect_shape(op, "weight", weight, &[width])?;
        return crate::cuda::rowwise::add_rms_norm(x, residual, weight, eps, width);
    }
    let w = param_f32(op, weight, width)?;
    let r = f32_slice(op, residual)?;
    if x.dtype() != crate::DType::F32 {
        return Err(crate::Error::DType {
            op,
            expected: crate::DType::F32,
            got: x.dtype(),
        });
    }
    let mut out = vec![0.0f32; rows * width];
    cpu::add_rms_norm(x.as_mut_slice::<f32>()?, r, &w, eps, width, &mut out);
    Tensor::from_vec(out, x.shape())
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (InternViT-300M, mlp1).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, width) = rows_and_width("layer_norm", x)?;
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        super::expect_shape("layer_norm", "weight", weight, &[width])?;
        super::expect_shape("layer_norm", "bias", bias, &[width])?;
        return crate::cuda::rowwise::layer_norm(x, weight, bias, eps, width);
    }
    let w = param_f32("layer_norm", weight, width)?;
    let b = param_f32("layer_norm", bias, width)?;
    let mut out = vec![0.0f32; rows * width];
    cpu::layer_norm(f32_slice("layer_norm", x)?, &w, &b, eps, width, &mut out);
    Tensor::from_vec(out, x.shape())
}
