//! Non-overlapping image patches as rows ("im2col" for a convolution whose kernel equals its stride), so a
//! patch-embedding convolution runs as [`patchify`] followed by a [`crate::ops::linear::Linear`].

use rayon::prelude::*;

use super::f32_slice;
use crate::{Error, Result, Tensor};

/// The `p×p` patches of images `x` `[n, c, hh, ww]` (f32; `hh` and `ww` multiples of `p`) as
/// `[n, (hh/p)·(ww/p), c·p·p]`: patches in row-major grid order (patch row, then patch column), each flattened
/// as (channel, row in the patch, column in the patch), the order of a PyTorch conv weight `[out, c, p, p]`.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let op = "patchify";
    let &[n, c, hh, ww] = x.shape() else {
        return Err(Error::shape(
            op,
            format!("images must be [n, c, h, w], got {:?}", x.shape()),
        ));
    };
    if p == 0 || !hh.is_multiple_of(p) || !ww.is_multiple_of(p) {
        return Err(Error::shape(
            op,
            format!("a {hh}x{ww} image is not a whole number of {p}x{p} patches"),
        ));
    }
    let data = f32_slice(op, x)?;
    let (gh, gw) = (hh / p, ww / p);
    let width = c * p * p;
    let mut out = vec![0.0f32; n * gh * gw * width];
    if width > 0 {
        // One task per row of patches of one image.
        out.par_chunks_mut(gw * width)
            .enumerate()
            .for_each(|(task, rows)| {
                let (img, py) = (task / gh, task % gh);
                for (px, patch) in rows.chunks_exact_mut(width).enumerate() {
                    for ch in 0..c {
                        for ky in 0..p {
                            let src = ((img * c + ch) * hh + py * p + ky) * ww + px * p;
                            let dst = (ch * p + ky) * p;
                            patch[dst..dst + p].copy_from_slice(&data[src..src + p]);
                        }
                    }
                }
            });
    }
    Tensor::from_vec(out, &[n, gh * gw, width])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_in_grid_order_and_flattened_channel_row_column() {
        // One image, 2 channels, 2x4 pixels, value = 100 * channel + 10 * y + x; patches of 2x2.
        let mut v = Vec::new();
        for ch in 0..2 {
            for y in 0..2 {
                for x in 0..4 {
                    v.push((100 * ch + 10 * y + x) as f32);
                }
            }
        }
        let img = Tensor::from_vec(v, &[1, 2, 2, 4]).unwrap();
        let p = patchify(&img, 2).unwrap();
        assert_eq!(p.shape(), &[1, 2, 8]);
        assert_eq!(
            p.as_slice::<f32>().unwrap(),
            &[
                0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0, // patch (0, 0)
                2.0, 3.0, 12.0, 13.0, 102.0, 103.0, 112.0, 113.0, // patch (0, 1)
            ]
        );
    }

    #[test]
    fn a_size_that_is_not_a_whole_number_of_patches_is_refused() {
        let img = Tensor::zeros(crate::DType::F32, &[1, 3, 15, 14]);
        let err = patchify(&img, 14).unwrap_err().to_string();
        assert!(err.contains("15x14"), "{err}");
    }
}
