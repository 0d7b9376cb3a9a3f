//! Elementwise activations: the SiLU-gated product of a gated MLP and exact (erf) GELU.

use super::f32_slice;
use crate::{Error, Result, Tensor};

/// `silu(gate) * up` elementwise (Qwen2 MLP); both f32 with the same shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::shape(
            "silu_mul",
            format!("gate {:?} and up {:?} differ", gate.shape(), up.shape()),
        ));
    }
    #[cfg(feature = "cuda")]
    if gate.device() != crate::Device::Cpu {
        return crate::cuda::ops::silu_mul(gate, up);
    }
    let out = f32_slice("silu_mul", gate)?
        .iter()
        .zip(f32_slice("silu_mul", up)?)
        .map(|(&g, &u)| silu(g) * u)
        .collect();
    Tensor::from_vec(out, gate.shape())
}

/// Exact GELU, `x/2 * (1 + erf(x/√2))` (InternViT and mlp1 use the erf form, not the tanh one).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        return crate::cuda::rowwise::gelu(x);
    }
    let out = f32_slice("gelu", x)?.iter().map(|&v| gelu_erf(v)).collect();
    Tensor::from_vec(out, x.shape())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_and_gelu_match_hand_values() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(silu(0.0), 0.0);
        // torch.nn.functional.gelu(torch.tensor(1.0)) = 0.8413447
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-3.0) - -0.004_049_7).abs() < 1e-6);
    }
}
