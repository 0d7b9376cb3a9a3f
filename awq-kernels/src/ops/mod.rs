//! Ops, one folder per family: `mod.rs` validates shapes and dtypes and dispatches on the device, `cpu.rs`
//! is the reference implementation (f32 accumulation) and the engine on machines without a GPU.

pub mod activation;
pub mod attention;
pub mod awq;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod patch;
pub mod rope;

use rayon::prelude::*;

use crate::{DType, Error, Result, Tensor};

/// Checks that `t` is f32 and returns its elements.
pub(crate) fn f32_slice<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: DType::F32,
            got: t.dtype(),
        });
    }
    t.as_slice::<f32>()
}

/// Checks that `t` has exactly `shape`.
pub(crate) fn expect_shape(
    op: &'static str,
    what: &str,
    t: &Tensor,
    shape: &[usize],
) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(
            op,
            format!("{what} has shape {:?}, expected {shape:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Splits a shape into (rows, last dimension).
pub(crate) fn rows_and_width(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let width = *t
        .shape()
        .last()
        .ok_or_else(|| Error::shape(op, "a scalar has no last dimension"))?;
    Ok((t.elem_count() / width.max(1), width))
}

/// A per-channel parameter (norm weight, bias) of any float dtype, as f32.
pub(crate) fn param_f32(op: &'static str, t: &Tensor, width: usize) -> Result<Vec<f32>> {
    expect_shape(op, "parameter", t, &[width])?;
    t.to_f32_vec()
}

/// `a += b`, elementwise; both f32 with the same shape (the residual add).
pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    expect_shape("add_inplace", "rhs", b, a.shape())?;
    #[cfg(feature = "cuda")]
    if a.device() != crate::Device::Cpu {
        return crate::cuda::ops::add_inplace(a, b);
    }
    let b = f32_slice("add_inplace", b)?;
    let a = a.as_mut_slice::<f32>()?;
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    Ok(())
}

/// Rows `rows[i]` of a 2-D tensor `[r, c]`, as `[rows.len(), c]`.
pub fn gather_rows(x: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let &[r, c] = x.shape() else {
        return Err(Error::shape(
            "gather_rows",
            format!("expected [r, c], got {:?}", x.shape()),
        ));
    };
    if let Some(&bad) = rows.iter().find(|&&i| i >= r) {
        return Err(Error::shape("gather_rows", format!("row {bad} of {r}")));
    }
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        let ids: Vec<i32> = rows.iter().map(|&i| i as i32).collect();
        return crate::cuda::ops::gather_rows(x, &ids);
    }
    let data = f32_slice("gather_rows", x)?;
    let mut out = Vec::with_capacity(rows.len() * c);
    for &i in rows {
        out.extend_from_slice(&data[i * c..(i + 1) * c]);
    }
    Tensor::from_vec(out, &[rows.len(), c])
}

/// The columns of a 2-D tensor `[r, w0 + w1 + w2]` as three tensors `[r, w_i]` (the q, k and v of a fused
/// projection), on the tensor's device (one launch on a GPU).
pub fn split_columns3(x: &Tensor, widths: [usize; 3]) -> Result<[Tensor; 3]> {
    let op = "split_columns3";
    let &[r, c] = x.shape() else {
        return Err(Error::shape(
            op,
            format!("expected [r, c], got {:?}", x.shape()),
        ));
    };
    if widths.iter().sum::<usize>() != c {
        return Err(Error::shape(
            op,
            format!("widths {widths:?} do not add up to {c} columns"),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::split_columns3(x, r, widths);
    }
    let data = f32_slice(op, x)?;
    let mut parts = widths.map(|w| Vec::with_capacity(r * w));
    for row in data.chunks_exact(c.max(1)).take(r) {
        let mut start = 0;
        for (part, &w) in parts.iter_mut().zip(&widths) {
            part.extend_from_slice(&row[start..start + w]);
            start += w;
        }
    }
    let [a, b, cc] = parts;
    Ok([
        Tensor::from_vec(a, &[r, widths[0]])?,
        Tensor::from_vec(b, &[r, widths[1]])?,
        Tensor::from_vec(cc, &[r, widths[2]])?,
    ])
}

/// Overwrites row `rows[i]` of `x` `[r, c]` with row `i` of `src` `[rows.len(), c]` (InternVL's image rows
/// written into the `<IMG_CONTEXT>` positions of the token embeddings). CPU: f32; GPU: `x` and `src` of
/// one float dtype. Rows are expected to be distinct (on the GPU, which copy of a repeated row lands is
/// unspecified).
pub fn scatter_rows(x: &mut Tensor, rows: &[usize], src: &Tensor) -> Result<()> {
    let op = "scatter_rows";
    let &[r, c] = x.shape() else {
        return Err(Error::shape(
            op,
            format!("expected [r, c], got {:?}", x.shape()),
        ));
    };
    expect_shape(op, "source", src, &[rows.len(), c])?;
    if let Some(&bad) = rows.iter().find(|&&i| i >= r) {
        return Err(Error::shape(op, format!("row {bad} of {r}")));
    }
    #[cfg(feature = "cuda")]
    if x.device() != crate::Device::Cpu {
        let ids: Vec<i32> = rows.iter().map(|&i| i as i32).collect();
        return crate::cuda::rowwise::scatter_rows(x, &ids, src, c);
    }
    let src = f32_slice(op, src)?;
    if x.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: DType::F32,
            got: x.dtype(),
        });
    }
    let data = x.as_mut_slice::<f32>()?;
    for (i, &row) in rows.iter().enumerate() {
        data[row * c..(row + 1) * c].copy_from_slice(&src[i * c..(i + 1) * c]);
    }
    Ok(())
}

/// Splits the last dimension of `x` `[.., c]` into consecutive pieces of `widths` (which must sum to `c`),
/// each `[.., widths[i]]` (f32, copied): e.g. a fused `qkv` projection into q, k and v.
pub fn split_last(x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let op = "split_last";
    let (rows, c) = rows_and_width(op, x)?;
    if widths.iter().sum::<usize>() != c {
        return Err(Error::shape(
            op,
            format!(
                "widths {widths:?} do not add up to the last dimension of {:?}",
                x.shape()
            ),
        ));
    }
    let data = f32_slice(op, x)?;
    let mut start = 0;
    let mut out = Vec::with_capacity(widths.len());
    for &w in widths {
        let mut piece = Vec::with_capacity(rows * w);
        for row in data.chunks_exact(c.max(1)).take(rows) {
            piece.extend_from_slice(&row[start..start + w]);
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("checked by rows_and_width") = w;
        out.push(Tensor::from_vec(piece, &shape)?);
        start += w;
    }
    Ok(out)
}

/// `x += y ⊙ scale`, with `y` f32 of the shape of `x` (f32 `[.., c]`) and `scale` `[c]` of any float dtype,
/// broadcast over the rows (InternViT's layer scales `ls1`, `ls2` on the residual branch).
pub fn add_scaled_inplace(x: &mut Tensor, y: &Tensor, scale: &Tensor) -> Result<()> {
    let op = "add_scaled_inplace";
    expect_shape(op, "rhs", y, x.shape())?;
    let (_, c) = rows_and_width(op, x)?;
    let s = param_f32(op, scale, c)?;
    let y = f32_slice(op, y)?;
    if x.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: DType::F32,
            got: x.dtype(),
        });
    }
    let x = x.as_mut_slice::<f32>()?;
    if c == 0 {
        return Ok(());
    }
    x.par_chunks_mut(c)
        .zip(y.par_chunks(c))
        .for_each(|(xr, yr)| {
            for ((a, b), s) in xr.iter_mut().zip(yr).zip(&s) {
                *a += b * s;
            }
        });
    Ok(())
}

/// Softmax over the last dimension, in place (f32).
pub fn softmax_last_inplace(x: &mut Tensor) -> Result<()> {
    let (_, width) = rows_and_width("softmax", x)?;
    let data = x.as_mut_slice::<f32>()?;
    if width == 0 {
        return Ok(());
    }
    data.chunks_mut(width).for_each(softmax_row);
    Ok(())
}

/// Numerically stable softmax of one row.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_columns3_returns_each_column_range() {
        let x: Vec<f32> = (0..3 * 7).map(|v| v as f32).collect();
        let [a, b, c] = split_columns3(&Tensor::from_vec(x, &[3, 7]).unwrap(), [4, 1, 2]).unwrap();
        assert_eq!(
            a.to_f32_vec().unwrap(),
            [0., 1., 2., 3., 7., 8., 9., 10., 14., 15., 16., 17.]
        );
        assert_eq!(b.to_f32_vec().unwrap(), [4., 11., 18.]);
        assert_eq!(c.to_f32_vec().unwrap(), [5., 6., 12., 13., 19., 20.]);
        assert_eq!(
            (a.shape(), b.shape(), c.shape()),
            (&[3, 4][..], &[3, 1][..], &[3, 2][..])
        );
        let x = Tensor::from_vec(vec![0.0f32; 6], &[2, 3]).unwrap();
        assert!(split_columns3(&x, [1, 1, 2]).is_err());
    }

    #[test]
    fn softmax_of_a_row_matches_hand_values_and_ignores_a_shift() {
        let mut row = [0.0f32, (2.0f32).ln(), 1000.0];
        softmax_row(&mut row[..2]);
        assert!((row[0] - 1.0 / 3.0).abs() < 1e-6 && (row[1] - 2.0 / 3.0).abs() < 1e-6);
        let mut big = Tensor::from_vec(vec![1000.0f32, 1000.0 + (2.0f32).ln()], &[1, 2]).unwrap();
        softmax_last_inplace(&mut big).unwrap();
        let b = big.as_slice::<f32>().unwrap();
        assert!((b[0] - 1.0 / 3.0).abs() < 1e-5, "{b:?}");
    }

    #[test]
    fn scatter_rows_overwrites_exactly_the_named_rows() {
        let mut x = Tensor::from_vec((0..8).map(|v| v as f32).collect(), &[4, 2]).unwrap();
        let src = Tensor::from_vec(vec![-1.0f32, -2.0, -3.0, -4.0], &[2, 2]).unwrap();
        scatter_rows(&mut x, &[3, 1], &src).unwrap();
        assert_eq!(
            x.as_slice::<f32>().unwrap(),
            &[0.0, 1.0, -3.0, -4.0, 4.0, 5.0, -1.0, -2.0]
        );
        assert!(scatter_rows(&mut x, &[4, 0], &src).is_err());
        assert!(scatter_rows(&mut x, &[0], &src).is_err());
    }

    #[test]
    fn split_last_cuts_each_row_into_consecutive_pieces() {
        let x = Tensor::from_vec((0..12).map(|v| v as f32).collect(), &[2, 6]).unwrap();
        let parts = split_last(&x, &[1, 2, 3]).unwrap();
        assert_eq!(parts[0].shape(), &[2, 1]);
        assert_eq!(parts[0].as_slice::<f32>().unwrap(), &[0.0, 6.0]);
        assert_eq!(parts[1].as_slice::<f32>().unwrap(), &[1.0, 2.0, 7.0, 8.0]);
        assert_eq!(
            parts[2].as_slice::<f32>().unwrap(),
            &[3.0, 4.0, 5.0, 9.0, 10.0, 11.0]
        );
        assert!(split_last(&x, &[2, 2]).is_err());
    }

    #[test]
    fn add_scaled_inplace_scales_each_channel_of_every_row() {
        let mut x = Tensor::from_vec(vec![1.0f32, 1.0, 1.0, 1.0], &[2, 2]).unwrap();
        let y = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let s = Tensor::from_vec(
            vec![half::bf16::from_f32(0.5), half::bf16::from_f32(-2.0)],
            &[2],
        )
        .unwrap();
        add_scaled_inplace(&mut x, &y, &s).unwrap();
        assert_eq!(x.as_slice::<f32>().unwrap(), &[1.5, -3.0, 2.5, -7.0]);
        assert!(add_scaled_inplace(&mut x, &s.to_f32().unwrap(), &s).is_err());
    }

    #[test]
    fn add_inplace_refuses_mismatched_shapes() {
        let mut a = Tensor::zeros(DType::F32, &[2, 2]);
        let b = Tensor::zeros(DType::F32, &[4]);
        assert!(add_inplace(&mut a, &b).is_err());
    }
}
