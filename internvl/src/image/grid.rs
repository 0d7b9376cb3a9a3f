//! The tile grid (`dynamic_preprocess`, spec §5.1) and the cut into 448x448 tiles.

use awq_kernels::Tensor;

use super::{
    normalize_tiles, resize_bicubic, DecodedImage, ImageError, Result, MAX_TILES_LIMIT, TILE_SIZE,
};

/// A grid of `cols` x `rows` tiles (the reference's `target_aspect_ratio` = (i, j)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub cols: u32,
    pub rows: u32,
}

impl Grid {
    pub fn tiles(&self) -> u32 {
        self.cols * self.rows
    }
}

/// How an image is cut into tiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileOptions {
    /// Fewest grid tiles (`min_dynamic_patch`, 1). A value of 0 acts as 1, as in the reference.
    pub min_tiles: u32,
    /// Most grid tiles (`max_dynamic_patch`, 12 for InternVL 2.5; video frames use 1).
    pub max_tiles: u32,
    /// Append the whole image resized to 448x448 when the grid has more than one tile (`use_thumbnail`).
    pub thumbnail: bool,
}

impl Default for TileOptions {
    fn default() -> Self {
        TileOptions {
            min_tiles: 1,
            max_tiles: 12,
            thumbnail: true,
        }
    }
}

impl TileOptions {
    /// One tile per image, no thumbnail: what the reference `load_video` does for each frame.
    pub fn video_frame() -> Self {
        TileOptions {
            min_tiles: 1,
            max_tiles: 1,
            thumbnail: false,
        }
    }
}

/// Tiles of one image: `pixels` is `[count, 3, 448, 448]` f32, normalized; the thumbnail (if any) last.
#[derive(Clone, Debug)]
pub struct Tiles {
    pub pixels: Tensor,
    pub count: usize,
    pub grid: Grid,
}

/// The reference's grid choice for a `width` x `height` image (`find_closest_aspect_ratio`).
///
/// Candidates are all (i, j) with `min_tiles <= i*j <= max_tiles`, in order of i*j (i-major, then j,
/// within one product: the reference's set order differs, but the choice is the same; the fixture
/// table checks it). Scanning them, a strictly closer aspect ratio wins; an exactly equal distance
/// (f64 `==`) wins if the image area exceeds half the candidate grid's pixel area.
pub fn choose_grid(width: u32, height: u32, min_tiles: u32, max_tiles: u32) -> Result<Grid> {
    if max_tiles == 0 || max_tiles > MAX_TILES_LIMIT || min_tiles > max_tiles {
        return Err(ImageError::BadTileRange {
            min: min_tiles,
            max: max_tiles,
            limit: MAX_TILES_LIMIT,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::BadResize {
            from_w: width,
            from_h: height,
            to_w: TILE_SIZE,
            to_h: TILE_SIZE,
        });
    }
    let min_tiles = min_tiles.max(1);
    let mut candidates = Vec::new();
    for i in 1..=max_tiles {
        for j in 1..=max_tiles / i {
            if i * j >= min_tiles {
                candidates.push((i, j));
            }
        }
    }
    candidates.sort_by_key(|&(i, j)| i * j); // stable: i-major order within one product

    let aspect = width as f64 / height as f64;
    let area = width as f64 * height as f64;
    let half_tile_area = 0.5 * TILE_SIZE as f64 * TILE_SIZE as f64;
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for (i, j) in candidates {
        let diff = (aspect - i as f64 / j as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > half_tile_area * i as f64 * j as f64 {
            best = (i, j);
        }
    }
    Ok(Grid {
        cols: best.0,
        rows: best.1,
    })
}

/// The uint8 448x448 tiles of `image` (before normalization): the grid cells in row-major order, then the
/// thumbnail when `options.thumbnail` and the grid has more than one cell.
pub fn tile_images(
    image: &DecodedImage,
    options: &TileOptions,
) -> Result<(Grid, Vec<DecodedImage>)> {
    let grid = choose_grid(
        image.width(),
        image.height(),
        options.min_tiles,
        options.max_tiles,
    )?;
    let resized = resize_bicubic(image, TILE_SIZE * grid.cols, TILE_SIZE * grid.rows)?;
    let mut tiles = Vec::with_capacity(grid.tiles() as usize + 1);
    for k in 0..grid.tiles() {
        let (c, r) = (k % grid.cols, k / grid.cols);
        tiles.push(resized.crop(c * TILE_SIZE, r * TILE_SIZE, TILE_SIZE, TILE_SIZE));
    }
    if options.thumbnail && grid.tiles() != 1 {
        tiles.push(resize_bicubic(image, TILE_SIZE, TILE_SIZE)?);
    }
    Ok((grid, tiles))
}

/// One image to its normalized tile tensor `[n, 3, 448, 448]` (the reference `load_image`).
pub fn image_to_tiles(image: &DecodedImage, options: &TileOptions) -> Result<Tiles> {
    let (grid, tiles) = tile_images(image, options)?;
    Ok(Tiles {
        pixels: normalize_tiles(&tiles)?,
        count: tiles.len(),
        grid,
    })
}

/// Several images, their tiles concatenated in order (`torch.cat`), with the tiles per image
/// (`num_patches_list`).
pub fn images_to_tiles(
    images: &[DecodedImage],
    options: &TileOptions,
) -> Result<(Tensor, Vec<usize>)> {
    let mut all = Vec::new();
    let mut counts = Vec::with_capacity(images.len());
    for image in images {
        let (_, tiles) = tile_images(image, options)?;
        counts.push(tiles.len());
        all.extend(tiles);
    }
    Ok((normalize_tiles(&all)?, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_worked_examples_choose_the_spec_grids() {
        let g = |w, h| {
            let g = choose_grid(w, h, 1, 12).unwrap();
            (g.cols, g.rows)
        };
        assert_eq!(g(448, 448), (1, 1));
        assert_eq!(g(500, 500), (1, 1));
        assert_eq!(g(1000, 1000), (3, 3));
        assert_eq!(g(1920, 1080), (4, 2));
        assert_eq!(g(800, 600), (4, 3));
        assert_eq!(g(300, 1200), (1, 4));
        assert_eq!(g(2000, 500), (4, 1));
    }

    #[test]
    fn an_empty_or_inverted_tile_range_is_an_error() {
        for (min, max) in [(1, 0), (5, 4), (1, MAX_TILES_LIMIT + 1)] {
            assert!(matches!(
                choose_grid(10, 10, min, max),
                Err(ImageError::BadTileRange { .. })
            ));
        }
    }
}
