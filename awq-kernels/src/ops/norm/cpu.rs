//! CPU norms: one row per rayon task, f32 throughout (as the reference computes them).

use rayon::prelude::*;

/// Rows of `width` in `x`; `out` has the same length.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, width: usize, out: &mut [f32]) {
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(o, row)| {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
                *o = w * (v * inv);
            }
        });
}

/// `x += residual` row by row, then [`rms_norm`] of the updated rows into `out`.
pub fn add_rms_norm(
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    width: usize,
    out: &mut [f32],
) {
    x.par_iter_mut()
        .zip(residual.par_iter())
        .for_each(|(a, b)| *a += b);
    rms_norm(x, weight, eps, width, out);
}

pub fn layer_norm(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    width: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(o, row)| {
            let mean = row.iter().sum::<f32>() / width as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = (v - mean) * inv * w + b;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_a_hand_row() {
        // mean of squares of [3, 4] is 12.5
        let mut out = [0.0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, 2, &mut out);
        let r = 12.5f32.sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn add_rms_norm_updates_the_residual_stream_and_normalizes_the_sum() {
        // [1, 2] + [2, 2] = [3, 4]: the row of the hand test above.
        let mut x = [1.0f32, 2.0];
        let mut out = [0.0f32; 2];
        add_rms_norm(&mut x, &[2.0, 2.0], &[1.0, 2.0], 0.0, 2, &mut out);
        assert_eq!(x, [3.0, 4.0]);
        let r = 12.5f32.sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_of_a_hand_row() {
        // [1, 3]: mean 2, variance 1
        let mut out = [0.0f32; 2];
        layer_norm(&[1.0, 3.0], &[2.0, 2.0], &[0.5, 0.5], 0.0, 2, &mut out);
        assert_eq!(out, [-1.5, 2.5]);
    }
}
