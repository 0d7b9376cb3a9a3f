//! GIF frames composited as Pillow's `GifImagePlugin` does (`seek(k)` then `convert('RGB')`, default
//! loading strategy `RGB_AFTER_FIRST`).
//!
//! The `gif` crate decodes the LZW data of each frame to palette indices; the compositing is done here,
//! following Pillow rather than the GIF spec or a browser where they differ:
//! - frame 0 is a palette image: pixels outside the first frame's rectangle get index 0 (or the
//!   transparency index when the frame has one), and transparent pixels keep their palette colour;
//! - later frames paste only their non-transparent pixels onto the previous canvas;
//! - a disposal method of 0 ("unspecified") or a missing graphic control extension keeps the method of
//!   the previous frame; methods >= 3 restore the previous canvas;
//! - restore-to-background fills the frame's rectangle with the colour of the transparency index (or,
//!   without one, of the background index), looked up in that frame's palette;
//! - indices beyond the palette are black.
//!
//! Limitation: a frame that reaches outside the logical screen is clipped to it (Pillow enlarges the
//! canvas). A GIF without any colour table is rejected by the decoder (Pillow reads it as greyscale).

use std::io::Cursor;

use super::decode::check_size;
use super::{DecodedImage, ImageError, ImageFormat, ImageOptions, Result};

/// Graphic control extensions seen before one image descriptor.
#[derive(Clone, Debug, Default)]
struct Control {
    /// (flags, transparency index) of each extension, in order.
    extensions: Vec<(u8, u8)>,
}

/// Walks the GIF block structure (no LZW decoding) for the graphic control extensions of each image,
/// which the `gif` crate folds in a way that loses what Pillow needs (whether an extension was present).
fn scan_controls(bytes: &[u8]) -> Vec<Control> {
    let mut out = Vec::new();
    let mut pos = 13usize;
    let Some(&flags) = bytes.get(10) else {
        return out;
    };
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 7) + 1);
    }
    // Skips data sub-blocks from `pos`; returns the first sub-block and the position after the terminator.
    let sub_blocks = |mut pos: usize| -> (Option<&[u8]>, usize) {
        let mut first = None;
        while let Some(&len) = bytes.get(pos) {
            pos += 1;
            if len == 0 {
                return (first, pos);
            }
            let end = (pos + len as usize).min(bytes.len());
            if first.is_none() {
                first = Some(&bytes[pos..end]);
            }
            pos = end;
        }
        (first, pos)
    };
    let mut current = Control::default();
    while let Some(&b) = bytes.get(pos) {
        pos += 1;
        match b {
            0x21 => {
                let Some(&label) = bytes.get(pos) else { break };
                let (first, next) = sub_blocks(pos + 1);
                if label == 0xF9 {
                    if let Some(block) = first.filter(|b| b.len() >= 4) {
                        current.extensions.push((block[0], block[3]));
                    }
                }
                pos = next;
            }
            0x2C => {
                let Some(&flags) = bytes.get(pos + 8) else {
                    break;
                };
                pos += 9;
                if flags & 0x80 != 0 {
                    pos += 3 << ((flags & 7) + 1);
                }
                pos += 1; // LZW minimum code size
                pos = sub_blocks(pos).1;
                out.push(std::mem::take(&mut current));
            }
            0x3B => break,
            _ => {} // Pillow skips stray bytes between blocks
        }
    }
    out
}

fn gif_error(e: gif::DecodingError) -> ImageError {
    ImageError::Decode {
        format: ImageFormat::Gif,
        reason: e.to_string(),
    }
}

fn lookup(palette: Option<&[u8]>, index: u8) -> [u8; 3] {
    match palette {
        Some(p) => {
            let i = index as usize * 3;
            match p.get(i..i + 3) {
                Some(c) => [c[0], c[1], c[2]],
                None => [0, 0, 0],
            }
        }
        None => [index, index, index],
    }
}

enum Dispose {
    Fill([u8; 3]),
    Saved(Vec<u8>),
}

struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// Decodes and composites up to `limit` frames (all when `None`).
fn composite(
    bytes: &[u8],
    options: &ImageOptions,
    limit: Option<usize>,
) -> Result<Vec<DecodedImage>> {
    let controls = scan_controls(bytes);
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(options.max_pixels.max(1)).unwrap_or(std::num::NonZeroU64::MIN),
    ));
    let mut decoder = opts.read_info(Cursor::new(bytes)).map_err(gif_error)?;
    let (sw, sh) = (decoder.width() as u32, decoder.height() as u32);
    check_size(ImageFormat::Gif, sw, sh, options.max_pixels)?;
    let (sw, sh) = (sw as usize, sh as usize);
    let global: Option<Vec<u8>> = decoder.global_palette().map(|p| p.to_vec());
    // Pillow reads the background index only when there is a global colour table.
    let background = match (bytes.get(10), bytes.get(11)) {
        (Some(f), Some(&bg)) if f & 0x80 != 0 => bg,
        _ => 0,
    };
    let total_limit = options.max_total_frame_pixels;
    let mut canvas = vec![0u8; sw * sh * 3];
    let mut frames = Vec::new();
    let mut method = 0u8;
    let mut pending: Option<(Rect, Dispose)> = None;
    let mut k = 0usize;
    while limit.is_none_or(|l| k < l) {
        let Some(frame) = decoder.read_next_frame().map_err(gif_error)? else {
            break;
        };
        if limit.is_none() && ((k + 1) as u64).saturating_mul((sw * sh) as u64) > total_limit {
            return Err(ImageError::TooManyFramePixels {
                frames: k + 1,
                width: sw as u32,
                height: sh as u32,
                pixels: ((k + 1) as u64).saturating_mul((sw * sh) as u64),
                limit: total_limit,
            });
        }
        let mut transparency = None;
        if let Some(c) = controls.get(k) {
            for &(flags, index) in &c.extensions {
                let bits = (flags >> 2) & 7;
                if bits != 0 {
                    method = bits;
                }
                if flags & 1 != 0 {
                    transparency = Some(index);
                }
            }
        }
        let palette: Option<&[u8]> = frame.palette.as_deref().or(global.as_deref());
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        let (fx, fy) = (frame.left as usize, frame.top as usize);
        let rect = Rect {
            x: fx.min(sw),
            y: fy.min(sh),
            w: (fx + fw).min(sw).saturating_sub(fx.min(sw)),
            h: (fy + fh).min(sh).saturating_sub(fy.min(sh)),
        };
        let indices: &[u8] = &frame.buffer;
        let index_at = |x: usize, y: usize| indices.get(y * fw + x).copied().unwrap_or(0);
        // Pillow's `_rgb(color)`: an index past the palette's end means index 0.
        let rgb_of = |color: u8| match palette {
            Some(p) if color as usize * 3 + 3 > p.len() => lookup(palette, 0),
            _ => lookup(palette, color),
        };
        if k == 0 {
            let fill = lookup(palette, transparency.unwrap_or(0));
            for px in canvas.chunks_exact_mut(3) {
                px.copy_from_slice(&fill);
            }
            for y in 0..rect.h {
                for x in 0..rect.w {
                    let o = ((rect.y + y) * sw + rect.x + x) * 3;
                    canvas[o..o + 3].copy_from_slice(&lookup(palette, index_at(x, y)));
                }
            }
            // Frame 0's disposal is decided while it is still a palette image with nothing loaded.
            pending = match method {
                2 => Some((
                    rect,
                    Dispose::Fill(lookup(palette, transparency.unwrap_or(background))),
                )),
                m if m >= 3 => transparency.map(|t| (rect, Dispose::Fill(lookup(palette, t)))),
                _ => None,
            };
        } else {
            if let Some((r, d)) = pending.take() {
                for y in 0..r.h {
                    let o = ((r.y + y) * sw + r.x) * 3;
                    match &d {
                        Dispose::Fill(c) => {
                            for px in canvas[o..o + r.w * 3].chunks_exact_mut(3) {
                                px.copy_from_slice(c);
                            }
                        }
                        Dispose::Saved(s) => canvas[o..o + r.w * 3]
                            .copy_from_slice(&s[y * r.w * 3..(y + 1) * r.w * 3]),
                    }
                }
            }
            let dispose = match method {
                2 => Some(Dispose::Fill(rgb_of(transparency.unwrap_or(background)))),
                m if m >= 3 => {
                    let mut saved = Vec::with_capacity(rect.w * rect.h * 3);
                    for y in 0..rect.h {
                        let o = ((rect.y + y) * sw + rect.x) * 3;
                        saved.extend_from_slice(&canvas[o..o + rect.w * 3]);
                    }
                    Some(Dispose::Saved(saved))
                }
                _ => None,
            };
            for y in 0..rect.h {
                for x in 0..rect.w {
                    let i = index_at(x, y);
                    if Some(i) != transparency {
                        let o = ((rect.y + y) * sw + rect.x + x) * 3;
                        canvas[o..o + 3].copy_from_slice(&lookup(palette, i));
                    }
                }
            }
            pending = dispose.map(|d| (rect, d));
        }
        frames.push(DecodedImage::from_rgb(
            sw as u32,
            sh as u32,
            canvas.clone(),
        )?);
        k += 1;
    }
    if frames.is_empty() {
        return Err(ImageError::Decode {
            format: ImageFormat::Gif,
            reason: "the GIF has no image".into(),
        });
    }
    Ok(frames)
}

/// The first frame of a GIF as `Image.open(f).convert('RGB')` gives it.
pub(crate) fn first_frame(bytes: &[u8], options: &ImageOptions) -> Result<DecodedImage> {
    let mut frames = composite(bytes, options, Some(1))?;
    Ok(frames.swap_remove(0))
}

/// Every frame of a (possibly animated) GIF, each as Pillow's `seek(k)` + `convert('RGB')` gives it
/// (see the module documentation for the compositing rules). The logical screen is checked against
/// `options.max_pixels` before decoding, the frames together against `options.max_total_frame_pixels`.
pub fn gif_frames(bytes: &[u8], options: &ImageOptions) -> Result<Vec<DecodedImage>> {
    if ImageFormat::sniff(bytes)? != ImageFormat::Gif {
        return Err(ImageError::Decode {
            format: ImageFormat::sniff(bytes)?,
            reason: "gif_frames needs GIF data".into(),
        });
    }
    composite(bytes, options, None)
}
