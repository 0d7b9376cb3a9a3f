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

/// `silu(x[.., :h]) * x[.., h:]` for `x` `[.., 2h]`: the gated MLP on the output of a fused gate|up
/// projection (the same values as [`silu_mul`] on the two halves).
pub fn silu_mul_halves(x: &Tensor) -> Result<Tensor> {
    let op = "silu_mul_halves";
    let (rows, width) = super::rows_and_width(op, x)?;
    if width % 2 != 0 {
        return Err(Error::shape(op, format!("odd last dimension {width}")));
    }
    let half = width / 2;
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::silu_mul_halves(x, rows, half);
    }
    let data = f32_slice(op, x)?;
    let mut out = Vec::with_capacity(rows * half);
    for row in data.chunks_exact(width.max(1)) {
        let (gate, up) = row.split_at(half);
        out.extend(gate.iter().zip(up).map(|(&g, &u)| silu(g) * u));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dimension") = half;
    Tensor::from_vec(out, &shape)
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
    fn silu_mul_halves_equals_silu_mul_of_the_two_halves() {
        let x: Vec<f32> = (0..2 * 10).map(|i| (i as f32 - 7.5) * 0.37).collect();
        let fused = Tensor::from_vec(x.clone(), &[2, 10]).unwrap();
        let got = silu_mul_halves(&fused).unwrap();
        assert_eq!(got.shape(), &[2, 5]);
        let (gate, up): (Vec<f32>, Vec<f32>) = (
            x.chunks(10).flat_map(|r| r[..5].to_vec()).collect(),
            x.chunks(10).flat_map(|r| r[5..].to_vec()).collect(),
        );
        let want = silu_mul(
            &Tensor::from_vec(gate, &[2, 5]).unwrap(),
            &Tensor::from_vec(up, &[2, 5]).unwrap(),
        )
        .unwrap();
        assert_eq!(got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        assert!(silu_mul_halves(&Tensor::from_vec(vec![1.0f32; 3], &[1, 3]).unwrap()).is_err());
    }

    #[test]
    fn silu_and_gelu_match_hand_values() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(silu(0.0), 0.0);
        // torch.nn.functional.gelu(torch.tensor(1.0)) = 0.8413447
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-3.0) - -0.004_049_7).abs() < 1e-6);
    }
}
