//! Pillow's `Image.resize(size)` for RGB images (bicubic), bit for bit (PIL `Resample.c`, spec §5.3).
//!
//! Separable: a horizontal pass over the rows the vertical pass needs, into a uint8 intermediate image,
//! then a vertical pass; a pass is skipped when its dimension does not change. Weights are computed in
//! f64 exactly as Pillow computes them (same operations in the same order), normalised, and turned into
//! 22-bit fixed point; sums start at 2^21 and are shifted down and clamped to 0..=255.

use super::{DecodedImage, ImageError, Result};

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point taps of one pass: output `o` reads `count[o]` inputs from `first[o]` with weights
/// `weights[o * ksize ..]`.
struct Taps {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box (0, in_size) mapped onto `out_size`.
fn precompute(in_size: u32, out_size: u32) -> Taps {
    const SUPPORT: f64 = 2.0;
    // Pillow receives the box as C floats: (in1 - in0) is a float subtraction, then widened.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let out = out_size as usize;
    let mut first = Vec::with_capacity(out);
    let mut count = Vec::with_capacity(out);
    let mut weights = vec![0i32; out * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // C `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        first.push(xmin as usize);
        count.push(n);
    }
    Taps {
        ksize,
        first,
        count,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Rows `row0 .. row0 + rows` of `src` resampled horizontally to `out_w`.
fn horizontal(src: &DecodedImage, row0: usize, rows: usize, out_w: u32, taps: &Taps) -> Vec<u8> {
    let in_stride = src.width() as usize * 3;
    let out_w = out_w as usize;
    let mut out = vec![0u8; out_w * rows * 3];
    let rgb = src.rgb();
    for (r, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let in_row = &rgb[(row0 + r) * in_stride..(row0 + r + 1) * in_stride];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let k = &taps.weights[xx * taps.ksize..xx * taps.ksize + taps.count[xx]];
            let base = taps.first[xx] * 3;
            let mut s = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &in_row[base + x * 3..base + x * 3 + 3];
                for c in 0..3 {
                    s[c] = s[c].wrapping_add((p[c] as i32).wrapping_mul(w));
                }
            }
            for c in 0..3 {
                px[c] = clip8(s[c]);
            }
        }
    }
    out
}

/// `src` (width `w`, rows as given) resampled vertically; `taps.first` are relative to `src`'s row 0.
fn vertical(src: &[u8], w: u32, out_h: u32, taps: &Taps) -> Vec<u8> {
    let stride = w as usize * 3;
    let mut out = vec![0u8; stride * out_h as usize];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let k = &taps.weights[yy * taps.ksize..yy * taps.ksize + taps.count[yy]];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, &wt) in k.iter().enumerate() {
            let row = &src[(taps.first[yy] + y) * stride..(taps.first[yy] + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add((p as i32).wrapping_mul(wt));
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// `img.resize((width, height))` of Pillow for an RGB image (default filter: bicubic).
pub fn resize_bicubic(img: &DecodedImage, width: u32, height: u32) -> Result<DecodedImage> {
    let (in_w, in_h) = (img.width(), img.height());
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(ImageError::BadResize {
            from_w: in_w,
            from_h: in_h,
            to_w: width,
            to_h: height,
        });
    }
    if (width, height) == (in_w, in_h) {
        return Ok(img.clone());
    }
    let need_h = width != in_w;
    let need_v = height != in_h;
    let mut vtaps = precompute(in_h, height);
    if need_h {
        let htaps = precompute(in_w, width);
        // Only the source rows the vertical pass reads (all of them when there is no vertical pass).
        let (row0, rows) = if need_v {
            let last = height as usize - 1;
            let first = vtaps.first[0];
            let end = vtaps.first[last] + vtaps.count[last];
            for f in vtaps.first.iter_mut() {
                *f -= first;
            }
            (first, end - first)
        } else {
            (0, in_h as usize)
        };
        let tmp = horizontal(img, row0, rows, width, &htaps);
        if !need_v {
            return DecodedImage::from_rgb(width, height, tmp);
        }
        let out = vertical(&tmp, width, height, &vtaps);
        return DecodedImage::from_rgb(width, height, out);
    }
    let out = vertical(img.rgb(), in_w, height, &vtaps);
    DecodedImage::from_rgb(width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bicubic_kernel_is_one_at_zero_and_zero_at_the_integers() {
        assert_eq!(bicubic(0.0), 1.0);
        for x in [1.0, -1.0, 2.0, -2.0, 3.0] {
            assert_eq!(bicubic(x), 0.0);
        }
        // a = -0.5 at x = 0.5: (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625
        assert_eq!(bicubic(0.5), 0.5625);
    }

    #[test]
    fn upscaling_a_constant_image_keeps_the_constant() {
        let img = DecodedImage::from_rgb(3, 2, [7u8, 100, 250].repeat(6)).unwrap();
        let out = resize_bicubic(&img, 17, 11).unwrap();
        assert!(out.rgb().chunks_exact(3).all(|p| p == [7, 100, 250]));
    }

    #[test]
    fn resizing_to_zero_is_an_error() {
        let img = DecodedImage::from_rgb(1, 1, vec![1, 2, 3]).unwrap();
        assert!(matches!(
            resize_bicubic(&img, 0, 5),
            Err(ImageError::BadResize { .. })
        ));
    }
}
