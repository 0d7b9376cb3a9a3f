//! Image and video preprocessing for the vision tower, bit-exact with the InternVL 2.5 Python reference
//! (Pillow `Image.open(..).convert('RGB')`, `dynamic_preprocess`, `build_transform`, `get_index`; spec §5).
//!
//! The path of one image:
//!
//! ```text
//! bytes --load_image--> DecodedImage (RGB8, as Pillow's convert('RGB') gives it)
//!       --choose_grid--> Grid (i columns x j rows, spec §5.1)
//!       --resize_bicubic + cut (+ thumbnail)--> uint8 448x448 tiles (Pillow's fixed-point bicubic, §5.3)
//!       --normalize--> Tensor [n, 3, 448, 448] f32 (ImageNet mean/std, §5.2)
//! ```
//!
//! Video: [`sample_video_frames`] picks the frame indices the reference `get_index` picks; each frame is
//! one 448x448 tile ([`frames_to_tiles`]). Animated GIFs are decoded frame by frame with [`gif_frames`],
//! composited the way Pillow's `seek(k)` + `convert('RGB')` composites them.
//!
//! Nothing here panics on any input: undecodable, truncated, empty, zero-size and oversized images
//! (checked from the header, before the pixels are decoded) are [`ImageError`]s.

mod decode;
mod gif;
mod grid;
mod normalize;
mod resize;
mod video;

pub use decode::{load_image, DecodedImage, ImageFormat, ImageOptions};
pub use gif::gif_frames;
pub use grid::{
    choose_grid, image_to_tiles, images_to_tiles, tile_images, Grid, TileOptions, Tiles,
};
pub use normalize::{normalize_tiles, IMAGENET_MEAN, IMAGENET_STD};
pub use resize::resize_bicubic;
pub use video::{frames_to_tiles, sample_video_frames, TimeBound};

/// Side of one square tile in pixels (`force_image_size` of every InternVL 2.5 checkpoint).
pub const TILE_SIZE: u32 = 448;

/// Largest `max_tiles` accepted (the model uses 12; a grid this large is already ~600 MB of f32 pixels).
pub const MAX_TILES_LIMIT: u32 = 256;

/// Everything that can go wrong between image bytes and pixel tensors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image data is empty (0 bytes)")]
    Empty,

    #[error("unrecognised image format (supported: JPEG, PNG, WebP, GIF, BMP); the data starts with {magic:02x?}")]
    UnknownFormat { magic: Vec<u8> },

    #[error("{format:?} image is {width}x{height}: an image must be at least 1x1 pixel")]
    ZeroSize {
        format: ImageFormat,
        width: u32,
        height: u32,
    },

    #[error("{format:?} image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels (ImageOptions::max_pixels)")]
    TooManyPixels {
        format: ImageFormat,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    #[error("cannot decode the {format:?} image (corrupt or truncated): {reason}")]
    Decode { format: ImageFormat, reason: String },

    #[error("{format:?} image uses a pixel layout that is not supported: {layout}")]
    UnsupportedLayout { format: ImageFormat, layout: String },

    #[error("the GIF has {frames} frames of {width}x{height} = {pixels} pixels in all, over the limit of {limit} (ImageOptions::max_total_frame_pixels)")]
    TooManyFramePixels {
        frames: usize,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    #[error("RGB buffer of {len} bytes does not hold a {width}x{height} image ({expected} bytes)")]
    BadBuffer {
        width: u32,
        height: u32,
        len: usize,
        expected: usize,
    },

    #[error("tile range min_tiles={min} max_tiles={max} is invalid: need 1 <= max_tiles <= {limit} and min_tiles <= max_tiles")]
    BadTileRange { min: u32, max: u32, limit: u32 },

    #[error(
        "cannot resize a {from_w}x{from_h} image to {to_w}x{to_h}: sizes must be at least 1x1"
    )]
    BadResize {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
    },

    #[error("the video has no frames")]
    NoFrames,

    #[error("num_segments must be at least 1")]
    NoSegments,

    #[error("fps must be finite and >= 0, got {fps}")]
    BadFps { fps: f64 },

    #[error("time bound [{start}, {end}] s must be finite")]
    BadBound { start: f64, end: f64 },

    #[error("time bound [{start}, {end}] s selects frame {index}, outside the video's frames 0..={max_frame}")]
    BoundOutsideVideo {
        start: f64,
        end: f64,
        index: i64,
        max_frame: usize,
    },

    #[error(transparent)]
    Tensor(#[from] awq_kernels::Error),
}

pub type Result<T> = std::result::Result<T, ImageError>;
