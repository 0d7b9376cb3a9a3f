//! CPU rotary embedding. The angles are computed as HF does in float32: `inv_freq = 1 / theta^(2i/d)`,
//! `angle = position * inv_freq`, so rounding matches the reference at long positions too.

/// `inv_freq[i]` for `i < d/2`.
pub struct RopeTable {
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        RopeTable { inv_freq }
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// `inv_freq[i]` for `i < d/2` (the GPU kernel takes this table so both sides rotate by the same angles).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}

/// Rotates `x` `[t, heads, d]`: for `i < d/2`, `(x_i, x_{i+d/2})` turn by `pos * inv_freq_i`.
pub fn rope(x: &mut [f32], heads: usize, positions: &[usize], table: &RopeTable) {
    let half = table.half_dim();
    let d = 2 * half;
    let mut cos = vec![0.0f32; half];
    let mut sin = vec![0.0f32; half];
    for (row, &pos) in x.chunks_mut(heads * d).zip(positions) {
        for i in 0..half {
            let angle = pos as f32 * table.inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
        for head in row.chunks_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 1, &[0], &RopeTable::new(4, 10000.0));
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn the_first_pair_turns_by_the_position_in_radians() {
        // inv_freq_0 = 1, so the pair (x_0, x_2) turns by `pos` radians; the norm is kept.
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 1, &[3], &RopeTable::new(4, 10000.0));
        assert!((x[0] - 3.0f32.cos()).abs() < 1e-6 && (x[2] - 3.0f32.sin()).abs() < 1e-6);
        // the second pair's frequency is 1/100 for theta 10000 and d 4
        let mut y = vec![0.0, 1.0, 0.0, 0.0];
        rope(&mut y, 1, &[3], &RopeTable::new(4, 10000.0));
        assert!((y[1] - 0.03f32.cos()).abs() < 1e-6 && (y[3] - 0.03f32.sin()).abs() < 1e-6);
    }
}
