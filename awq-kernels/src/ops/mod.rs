//! Ops, one folder per family: `mod.rs` validates shapes and dtypes and dispatches on the device, `cpu.rs`
//! is the reference implementation (f32 accumulation) and the engine on machines without a GPU.

pub mod activation;
pub mod attention;
pub mod awq;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod rope;

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
    fn add_inplace_refuses_mismatched_shapes() {
        let mut a = Tensor::zeros(DType::F32, &[2, 2]);
        let b = Tensor::zeros(DType::F32, &[4]);
        assert!(add_inplace(&mut a, &b).is_err());
    }
}
