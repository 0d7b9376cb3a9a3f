//! uint8 tiles to the model's input tensor (`build_transform`'s `ToTensor` + `Normalize`, spec §5.2).

use awq_kernels::Tensor;

use super::{DecodedImage, Result, TILE_SIZE};

/// ImageNet channel means (`IMAGENET_MEAN` of the reference).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (`IMAGENET_STD` of the reference).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The normalized value of every byte per channel, in torchvision's float32 order of operations:
/// `(v / 255 - mean) / std`.
fn lut() -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, row) in t.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    t
}

/// 448x448 RGB8 tiles (HWC) to one f32 tensor `[n, 3, 448, 448]` (CHW per tile), normalized.
/// Tiles of another size are resized to 448x448 first, as `build_transform` does.
pub fn normalize_tiles(tiles: &[DecodedImage]) -> Result<Tensor> {
    let s = TILE_SIZE as usize;
    let plane = s * s;
    let lut = lut();
    let mut data = vec![0f32; tiles.len() * 3 * plane];
    for (tile, out) in tiles.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let resized;
        let tile = if tile.width() != TILE_SIZE || tile.height() != TILE_SIZE {
            resized = super::resize_bicubic(tile, TILE_SIZE, TILE_SIZE)?;
            &resized
        } else {
            tile
        };
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, p) in tile.rgb().chunks_exact(3).enumerate() {
            r[i] = lut[0][p[0] as usize];
            g[i] = lut[1][p[1] as usize];
            b[i] = lut[2][p[2] as usize];
        }
    }
    Ok(Tensor::from_vec(data, &[tiles.len(), 3, s, s])?)
}
