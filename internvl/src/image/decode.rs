//! Bytes to RGB8 pixels, as Pillow's `Image.open(f).convert('RGB')` gives them.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::{ImageError, Result};

/// The container formats InternVL inputs come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
}

impl ImageFormat {
    /// The format from the data's magic bytes (not from a file name).
    pub fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        match image::guess_format(bytes) {
            Ok(image::ImageFormat::Jpeg) => Ok(ImageFormat::Jpeg),
            Ok(image::ImageFormat::Png) => Ok(ImageFormat::Png),
            Ok(image::ImageFormat::WebP) => Ok(ImageFormat::WebP),
            Ok(image::ImageFormat::Gif) => Ok(ImageFormat::Gif),
            Ok(image::ImageFormat::Bmp) => Ok(ImageFormat::Bmp),
            _ => Err(ImageError::UnknownFormat {
                magic: bytes[..bytes.len().min(8)].to_vec(),
            }),
        }
    }

    fn to_image_crate(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::WebP => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
        }
    }
}

/// How images are decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOptions {
    /// Largest accepted width x height. Checked from the header before any pixel is decoded, so a small
    /// file that claims a huge image (a decompression bomb) costs nothing. Default 64 megapixels
    /// (Pillow warns at 89 MP and refuses at 179 MP).
    pub max_pixels: u64,
    /// Largest accepted (frame count x width x height) when all frames of an animated GIF are decoded.
    /// Default 256 megapixels (768 MB of RGB).
    pub max_total_frame_pixels: u64,
    /// Rotate/flip the pixels by the EXIF orientation tag. **Off by default**, because the InternVL
    /// reference (`Image.open` + `convert('RGB')`, no `ImageOps.exif_transpose`) does not apply it and the
    /// model saw images that way; turn it on to get what a photo viewer shows (the result then equals
    /// Pillow's `ImageOps.exif_transpose`). Read from JPEG, PNG and WebP metadata.
    pub apply_exif_orientation: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_pixels: 64 * 1024 * 1024,
            max_total_frame_pixels: 256 * 1024 * 1024,
            apply_exif_orientation: false,
        }
    }
}

/// An RGB image with 8 bits per channel, rows top to bottom, pixels `[r, g, b]` left to right.
#[derive(Clone, PartialEq, Eq)]
pub struct DecodedImage {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for DecodedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecodedImage({}x{} RGB8)", self.width, self.height)
    }
}

impl DecodedImage {
    /// Wraps RGB8 pixels (`width * height * 3` bytes, row-major). Sizes of 0 are rejected.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Result<DecodedImage> {
        let expected = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3));
        if width == 0 || height == 0 || expected != Some(rgb.len()) {
            return Err(ImageError::BadBuffer {
                width,
                height,
                len: rgb.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        Ok(DecodedImage { width, height, rgb })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The RGB8 bytes, `width * height * 3`, row-major.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    pub fn into_rgb(self) -> Vec<u8> {
        self.rgb
    }

    /// The `w` x `h` block at (`x`, `y`); the caller keeps it inside the image.
    pub(crate) fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> DecodedImage {
        let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
        let stride = self.width as usize * 3;
        let mut rgb = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = row * stride + x * 3;
            rgb.extend_from_slice(&self.rgb[start..start + w * 3]);
        }
        DecodedImage {
            width: w as u32,
            height: h as u32,
            rgb,
        }
    }
}

pub(crate) fn check_size(format: ImageFormat, width: u32, height: u32, limit: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            format,
            width,
            height,
        });
    }
    let pixels = width as u64 * height as u64;
    if pixels > limit {
        return Err(ImageError::TooManyPixels {
            format,
            width,
            height,
            pixels,
            limit,
        });
    }
    Ok(())
}

fn decode_error(format: ImageFormat, e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(u) => ImageError::UnsupportedLayout {
            format,
            layout: u.to_string(),
        },
        other => ImageError::Decode {
            format,
            reason: other.to_string(),
        },
    }
}

/// Decodes JPEG, PNG, WebP, GIF (first frame) or BMP bytes to RGB8 the way the reference does:
/// `Image.open(f).convert('RGB')`.
///
/// - alpha is dropped, not composited onto a background (RGBA, LA, palette entries with alpha);
/// - greyscale is replicated to the three channels; palette images go through their palette;
/// - 16-bit PNG channels become their high byte, except 16-bit greyscale, which Pillow opens as `I;16`
///   and clips to 255 when converting (so values above 255 are white, not scaled);
/// - a GIF gives its first frame with transparent pixels in their palette colour (see [`super::gif_frames`]);
/// - the EXIF orientation is ignored unless [`ImageOptions::apply_exif_orientation`] is set.
///
/// Known differences from Pillow, outside what InternVL inputs normally are: CMYK JPEGs (converted by the
/// decoder's own formula), 16-bit-per-pixel BMPs (5/6-bit channel scaling), and lossy JPEG/WebP decoding
/// itself, which matches libjpeg-turbo/libwebp only as far as the Rust decoders do (see the tests).
pub fn load_image(bytes: &[u8], options: &ImageOptions) -> Result<DecodedImage> {
    let format = ImageFormat::sniff(bytes)?;
    if format == ImageFormat::Gif {
        return super::gif::first_frame(bytes, options);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_crate());
    let mut limits = image::Limits::default();
    // 16-bit RGBA is 8 bytes a pixel; decoders get a little slack for their own buffers.
    limits.max_alloc = Some(
        options
            .max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(format, e))?;
    let (width, height) = decoder.dimensions();
    check_size(format, width, height, options.max_pixels)?;
    let orientation = if options.apply_exif_orientation {
        // A damaged EXIF block is not worth failing the image for: keep the stored orientation.
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    to_rgb_like_pillow(format, img)
}

/// Pillow's `convert('RGB')` of the mode Pillow would have opened the image in.
fn to_rgb_like_pillow(format: ImageFormat, img: DynamicImage) -> Result<DecodedImage> {
    let (width, height) = (img.width(), img.height());
    let n = width as usize * height as usize;
    let mut rgb = Vec::with_capacity(n * 3);
    match img {
        DynamicImage::ImageRgb8(b) => rgb = b.into_raw(),
        DynamicImage::ImageRgba8(b) => {
            for p in b.as_raw().chunks_exact(4) {
                rgb.extend_from_slice(&p[..3]);
            }
        }
        DynamicImage::ImageLuma8(b) => {
            for &v in b.as_raw() {
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.as_raw().chunks_exact(2) {
                rgb.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
        // Pillow: mode I;16, and I;16 -> RGB clips each value to 0..255.
        DynamicImage::ImageLuma16(b) => {
            for &v in b.as_raw() {
                let v = v.min(255) as u8;
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        // Pillow's PNG raw modes LA;16B / RGB;16B / RGBA;16B keep the high byte of each sample.
        DynamicImage::ImageLumaA16(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let v = (p[0] >> 8) as u8;
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(b) => rgb.extend(b.as_raw().iter().map(|&v| (v >> 8) as u8)),
        DynamicImage::ImageRgba16(b) => {
            for p in b.as_raw().chunks_exact(4) {
                rgb.extend(p[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        other => {
            return Err(ImageError::UnsupportedLayout {
                format,
                layout: format!("{:?}", other.color()),
            })
        }
    }
    DecodedImage::from_rgb(width, height, rgb)
}
