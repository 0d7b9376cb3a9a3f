//! Pixel shuffle (space to depth) of a patch-feature grid, exactly as the original `pixel_shuffle` reshapes
//! and permutes (spec 3.2).

use awq_kernels::Tensor;

use crate::{Error, Result};

/// The token order after the shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsVersion {
    /// Column-major over the output grid (the original code without its final transpose).
    V1,
    /// Row-major over the output grid (InternVL 2.5).
    V2,
}

impl PsVersion {
    /// Parses `ps_version` of an InternVL `config.json`.
    pub fn parse(name: &str) -> Result<PsVersion> {
        match name {
            "v1" => Ok(PsVersion::V1),
            "v2" => Ok(PsVersion::V2),
            other => Err(Error::PsVersion(other.to_string())),
        }
    }
}

/// Space to depth by a whole factor `f` (2 for `downsample_ratio` 0.5): `x` `[n, rows, cols, c]` (f32) →
/// `[n, (rows/f)·(cols/f), f·f·c]`. Output token (y2, x2) holds, in this order, the c-vectors at input
/// positions (f·y2 + i, f·x2 + j) for i, then j, in 0..f. Tokens are ordered y2-major (v2) or x2-major (v1).
pub fn pixel_shuffle(x: &Tensor, factor: usize, version: PsVersion) -> Result<Tensor> {
    let &[n, rows, cols, c] = x.shape() else {
        return Err(Error::Shape {
            what: "the pixel-shuffle input",
            got: x.shape().to_vec(),
            expected: "[tiles, rows, cols, channels]".into(),
        });
    };
    if factor == 0 || !rows.is_multiple_of(factor) || !cols.is_multiple_of(factor) {
        return Err(Error::Shape {
            what: "the pixel-shuffle input",
            got: x.shape().to_vec(),
            expected: format!("rows and cols that are multiples of {factor}"),
        });
    }
    let data = x.as_slice::<f32>()?;
    let (r2, c2) = (rows / factor, cols / factor);
    let width = factor * factor * c;
    let mut out = vec![0.0f32; n * r2 * c2 * width];
    for tile in 0..n {
        for y2 in 0..r2 {
            for x2 in 0..c2 {
                let token = match version {
                    PsVersion::V2 => y2 * c2 + x2,
                    PsVersion::V1 => x2 * r2 + y2,
                };
                let dst = &mut out[(tile * r2 * c2 + token) * width..][..width];
                for i in 0..factor {
                    for j in 0..factor {
                        let src = ((tile * rows + factor * y2 + i) * cols + factor * x2 + j) * c;
                        dst[(i * factor + j) * c..][..c].copy_from_slice(&data[src..src + c]);
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, &[n, r2 * c2, width])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected values below are what the original `pixel_shuffle` (view, permute, view, and for v2 a
    // second permute, scale 0.5) returns for these inputs when run in torch.

    /// A [1, 4, 4, 1] grid whose value is 10·row + col.
    fn grid() -> Tensor {
        let v = (0..4)
            .flat_map(|r| (0..4).map(move |c| (10 * r + c) as f32))
            .collect();
        Tensor::from_vec(v, &[1, 4, 4, 1]).unwrap()
    }

    #[test]
    fn v2_orders_tokens_row_major_and_packs_each_2x2_block_row_by_row() {
        let out = pixel_shuffle(&grid(), 2, PsVersion::V2).unwrap();
        assert_eq!(out.shape(), &[1, 4, 4]);
        #[rustfmt::skip]
        assert_eq!(out.as_slice::<f32>().unwrap(), &[
            0.0, 1.0, 10.0, 11.0, // token (0, 0)
            2.0, 3.0, 12.0, 13.0, // token (0, 1)
            20.0, 21.0, 30.0, 31.0, // token (1, 0)
            22.0, 23.0, 32.0, 33.0, // token (1, 1)
        ]);
    }

    #[test]
    fn v1_has_the_same_blocks_in_column_major_token_order() {
        let out = pixel_shuffle(&grid(), 2, PsVersion::V1).unwrap();
        #[rustfmt::skip]
        assert_eq!(out.as_slice::<f32>().unwrap(), &[
            0.0, 1.0, 10.0, 11.0, // token (0, 0)
            20.0, 21.0, 30.0, 31.0, // token (1, 0)
            2.0, 3.0, 12.0, 13.0, // token (0, 1)
            22.0, 23.0, 32.0, 33.0, // token (1, 1)
        ]);
    }

    #[test]
    fn channels_stay_together_inside_each_packed_position() {
        // [1, 2, 2, 2]: position (r, c) holds [100·r + 10·c, 100·r + 10·c + 1].
        let v = (0..2)
            .flat_map(|r| (0..2).flat_map(move |c| [0, 1].map(|k| (100 * r + 10 * c + k) as f32)))
            .collect();
        let x = Tensor::from_vec(v, &[1, 2, 2, 2]).unwrap();
        let out = pixel_shuffle(&x, 2, PsVersion::V2).unwrap();
        assert_eq!(
            out.as_slice::<f32>().unwrap(),
            &[0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0]
        );
    }

    #[test]
    fn a_grid_that_does_not_divide_or_an_unknown_version_is_refused() {
        let x = Tensor::from_vec(vec![0.0f32; 9], &[1, 3, 3, 1]).unwrap();
        assert!(pixel_shuffle(&x, 2, PsVersion::V2).is_err());
        let err = PsVersion::parse("v3").unwrap_err().to_string();
        assert!(err.contains("v3"), "{err}");
    }
}
