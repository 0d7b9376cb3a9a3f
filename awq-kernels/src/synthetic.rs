//! Reproducible pseudo-random tensors, made where they are used: on the host when the CPU reads them, by a
//! kernel on the GPU when they move there (`kernels/ops.cu`, `synthetic_*`), with the same bits either way.
//! Synthetic full-size models (random weights with a real checkpoint's shapes, for benchmarks) are built
//! from them, so a 49 GiB model for a GPU is never written out in host memory.
//!
//! Element `i` of a tensor with seed `s` comes from `r = splitmix64(s ^ i·0x2545f4914f6cdd1d)`; a float fill
//! takes its top 24 bits as a uniform in [-1, 1) (exact in f32), times the amplitude (one rounding), then
//! rounded to the tensor's dtype.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::{DType, Error, Result};

/// How a synthetic tensor is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Uniform in [-a, a) (standard deviation a / sqrt(3)); float dtypes.
    Uniform(f32),
    /// Every element the same value; float dtypes.
    Constant(f32),
    /// Random bits in every 32-bit word (AWQ `qweight`: eight random 4-bit codes); i32 and u32.
    Nibbles,
    /// Every 4-bit code 8 (AWQ `qzeros`: the middle of the range); i32 and u32.
    Eights,
}

impl Fill {
    /// The fill's code in the GPU kernels.
    pub fn kernel_code(self) -> (i32, f32) {
        match self {
            Fill::Uniform(a) => (0, a),
            Fill::Constant(v) => (1, v),
            Fill::Nibbles => (2, 0.0),
            Fill::Eights => (3, 0.0),
        }
    }

    /// Refuses a fill that `dtype` cannot hold (floats in integer words or the reverse).
    pub fn check(self, dtype: DType) -> Result<()> {
        let ok = match self {
            Fill::Uniform(_) | Fill::Constant(_) => dtype.is_float(),
            Fill::Nibbles | Fill::Eights => matches!(dtype, DType::I32 | DType::U32),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "a synthetic {dtype} tensor cannot take the fill {self:?}"
            )))
        }
    }
}

/// splitmix64's output function: a cheap, well-mixed hash of a 64-bit value.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The random word of element `index` of a tensor with seed `seed`.
fn element_bits(seed: u64, index: u64) -> u64 {
    mix(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d))
}

/// The f32 value of element `index` under a float fill (before rounding to the tensor's dtype).
fn float_value(fill: Fill, seed: u64, index: u64) -> f32 {
    match fill {
        Fill::Uniform(a) => {
            let r = element_bits(seed, index);
            ((r >> 40) as f32 * (1.0 / (1u64 << 24) as f32) * 2.0 - 1.0) * a
        }
        Fill::Constant(v) => v,
        Fill::Nibbles | Fill::Eights => 0.0,
    }
}

/// Bytes of synthetic tensors made on the host so far, by this process.
static HOST_BYTES_MADE: AtomicU64 = AtomicU64::new(0);

/// How many bytes of synthetic tensors this process has made on the host (the rest were made on a GPU or
/// not at all): lets tests hold the promise that a synthetic model moved to a GPU is not made on the host.
pub fn host_bytes_made() -> u64 {
    HOST_BYTES_MADE.load(Ordering::Relaxed)
}

/// Writes elements `0..` of a synthetic tensor of `dtype` into `out` (little-endian), in parallel.
pub fn fill_bytes(out: &mut [u8], dtype: DType, fill: Fill, seed: u64) -> Result<()> {
    fill.check(dtype)?;
    HOST_BYTES_MADE.fetch_add(out.len() as u64, Ordering::Relaxed);
    const CHUNK: usize = 1 << 20;
    let size = dtype.size();
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = (c * CHUNK / size) as u64;
            for (i, element) in chunk.chunks_exact_mut(size).enumerate() {
                let index = first + i as u64;
                match (fill, dtype) {
                    (Fill::Nibbles, _) => {
                        element.copy_from_slice(&(element_bits(seed, index) as u32).to_le_bytes())
                    }
                    (Fill::Eights, _) => element.copy_from_slice(&0x8888_8888u32.to_le_bytes()),
                    (_, DType::F32) => {
                        element.copy_from_slice(&float_value(fill, seed, index).to_le_bytes())
                    }
                    (_, DType::F16) => element.copy_from_slice(
                        &half::f16::from_f32(float_value(fill, seed, index)).to_le_bytes(),
                    ),
                    (_, _) => element.copy_from_slice(
                        &half::bf16::from_f32(float_value(fill, seed, index)).to_le_bytes(),
                    ),
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_reproducible_and_have_the_planned_spread() {
        let mut a = vec![0u8; 4 << 20];
        let mut b = vec![0u8; 4 << 20];
        fill_bytes(&mut a, DType::F32, Fill::Uniform(1.0), 7).unwrap();
        fill_bytes(&mut b, DType::F32, Fill::Uniform(1.0), 7).unwrap();
        assert_eq!(a, b);
        let values: Vec<f32> = bytemuck::cast_slice::<u8, f32>(&a).to_vec();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "{var}");
        assert!(values.iter().all(|v| (-1.0..1.0).contains(v)));
        fill_bytes(&mut b, DType::F32, Fill::Uniform(1.0), 8).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn nibbles_use_every_code_evenly_and_eights_are_eights() {
        let mut words = vec![0u8; 4 * 4096];
        fill_bytes(&mut words, DType::I32, Fill::Nibbles, 3).unwrap();
        let mut counts = [0usize; 16];
        for w in bytemuck::cast_slice::<u8, u32>(&words) {
            for s in 0..8 {
                counts[((w >> (4 * s)) & 0xF) as usize] += 1;
            }
        }
        // 32768 codes: 2048 expected per value; 5 standard deviations is about ±220.
        assert!(counts.iter().all(|&c| c.abs_diff(2048) < 220), "{counts:?}");
        fill_bytes(&mut words, DType::U32, Fill::Eights, 3).unwrap();
        assert!(bytemuck::cast_slice::<u8, u32>(&words)
            .iter()
            .all(|&w| w == 0x8888_8888));
    }

    #[test]
    fn a_fill_the_dtype_cannot_hold_is_refused() {
        let mut out = vec![0u8; 8];
        assert!(fill_bytes(&mut out, DType::F16, Fill::Nibbles, 1).is_err());
        assert!(fill_bytes(&mut out, DType::I32, Fill::Uniform(1.0), 1).is_err());
    }

    #[test]
    fn elements_depend_on_their_index_only_not_on_the_chunking() {
        // Element 300000 of a long f16 tensor (past the first 1 MiB chunk) equals the direct formula.
        let mut out = vec![0u8; 2 * 600_000];
        fill_bytes(&mut out, DType::F16, Fill::Uniform(0.5), 11).unwrap();
        let got = half::f16::from_le_bytes([out[600_000], out[600_001]]);
        assert_eq!(
            got,
            half::f16::from_f32(float_value(Fill::Uniform(0.5), 11, 300_000))
        );
    }
}
