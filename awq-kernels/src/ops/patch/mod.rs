//! Non-overlapping image patches as rows ("im2col" for a convolution whose kernel equals its stride), so a
//! patch-embedding convolution runs as [`patchify`] followed by a [`crate::ops::linear::Linear`].

use rayon::prelude::*;

use super::f32_slice;
use crate::{DType, Error, Result, Tensor};

/// `[n, c, hh, ww]` of images `x` whose sides are whole numbers of `p`-pixel patches.
fn image_dims(op: &'static str, x: &Tensor, p: usize) -> Result<[usize; 4]> {
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
    Ok([n, c, hh, ww])
}

/// The `p×p` patches of images `x` `[n, c, hh, ww]` (f32; `hh` and `ww` multiples of `p`) as
/// `[n, (hh/p)·(ww/p), c·p·p]`: patches in row-major grid order (patch row, then patch column), each flattened
/// as (channel, row in the patch, column in the patch), the order of a PyTorch conv weight `[out, c, p, p]`.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let op = "patchify";
    let [n, c, hh, ww] = image_dims(op, x, p)?;
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

/// The input rows of a patch embedding that also adds the class token and the position embedding in the
/// same linear layer (`[W | class + pos_0 | pos_1 | ...]`, as InternViT runs on a GPU): for images `x`
/// `[n, c, hh, ww]` (f32, on the CPU or a GPU), `[n·t, width]` in `dtype` on x's device, t = 1 + patches
/// per image. Row 0 of an image is zero but for a 1 at column `c·p·p` (the class token); row i ≥ 1 is
/// [`patchify`]'s patch i - 1 with a 1 at column `c·p·p + i`; zeros elsewhere (`width` ≥ `c·p·p + t`, the
/// rest padding). On a GPU only the pixels move and the rows are made there.
pub fn patches_with_positions(x: &Tensor, p: usize, width: usize, dtype: DType) -> Result<Tensor> {
    let op = "patches_with_positions";
    let [n, c, hh, ww] = image_dims(op, x, p)?;
    let (patch, t) = (c * p * p, 1 + (hh / p) * (ww / p));
    if width < patch + t {
        return Err(Error::shape(
            op,
            format!("rows of {width} columns cannot hold a {patch}-value patch and {t} positions"),
        ));
    }
    if x.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: DType::F32,
            got: x.dtype(),
        });
    }
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::patches_with_positions(x, p, width, dtype);
    }
    let patches = patchify(x, p)?;
    let patches = f32_slice(op, &patches)?;
    let mut rows = vec![0.0f32; n * t * width];
    for (image, image_rows) in rows.chunks_exact_mut(t * width).enumerate() {
        for (i, row) in image_rows.chunks_exact_mut(width).enumerate() {
            if i > 0 {
                let src = (image * (t - 1) + i - 1) * patch;
                row[..patch].copy_from_slice(&patches[src..src + patch]);
            }
            row[patch + i] = 1.0;
        }
    }
    Tensor::from_vec(rows, &[n * t, width])?.to_dtype(dtype)
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
    fn rows_with_positions_hold_the_class_token_then_each_patch_and_a_one_hot_position() {
        // Two images of 1 channel, 2x4 pixels (value = 100·image + 10·y + x), patches of 2x2: 2 patches, 3
        // tokens per image; rows of 4 + 3 values padded to 8.
        let v: Vec<f32> = (0..2)
            .flat_map(|i| {
                (0..2).flat_map(move |y| (0..4).map(move |x| (100 * i + 10 * y + x) as f32))
            })
            .collect();
        let img = Tensor::from_vec(v, &[2, 1, 2, 4]).unwrap();
        let rows = patches_with_positions(&img, 2, 8, DType::F32).unwrap();
        assert_eq!(rows.shape(), &[6, 8]);
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, // image 0: class token
            0.0, 1.0, 10.0, 11.0, 0.0, 1.0, 0.0, 0.0, // patch (0, 0), position 1
            2.0, 3.0, 12.0, 13.0, 0.0, 0.0, 1.0, 0.0, // patch (0, 1), position 2
            0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, // image 1
            100.0, 101.0, 110.0, 111.0, 0.0, 1.0, 0.0, 0.0,
            102.0, 103.0, 112.0, 113.0, 0.0, 0.0, 1.0, 0.0,
        ];
        assert_eq!(rows.as_slice::<f32>().unwrap(), &want);
        // In a 16-bit dtype: the same values rounded once.
        let rows = patches_with_positions(&img, 2, 8, DType::BF16).unwrap();
        assert_eq!(rows.dtype(), DType::BF16);
        assert_eq!(rows.to_f32_vec().unwrap(), want);
        // Rows too narrow for the patch and the positions are refused.
        let err = patches_with_positions(&img, 2, 6, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 columns"), "{err}");
    }

    #[test]
    fn a_size_that_is_not_a_whole_number_of_patches_is_refused() {
        let img = Tensor::zeros(DType::F32, &[1, 3, 15, 14]);
        let err = patchify(&img, 14).unwrap_err().to_string();
        assert!(err.contains("15x14"), "{err}");
    }
}
