//! Video frame sampling (the reference `get_index`, spec §5.4) and frames to tiles.

use super::{normalize_tiles, tile_images, DecodedImage, ImageError, Result, TileOptions, Tiles};

/// A time window in seconds (`bound` of the reference `load_video`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeBound {
    pub start: f64,
    pub end: f64,
}

/// Python's `round(x)` / NumPy's `np.round(x)` for a float: half to even.
fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// The frame indices the reference `get_index(bound, fps, frame_count - 1, first_idx=0, num_segments)`
/// returns: the range is `[max(0, round(start*fps)), min(round(end*fps), frame_count - 1)]` (without a
/// bound, start/end are -100000 s and 100000 s as in the reference), cut into `num_segments` equal
/// segments; frame k = trunc(start + seg/2 + round_half_even(seg*k)).
///
/// Errors (where the reference would index outside the video or divide by zero): no frames, zero
/// segments, a non-finite or negative fps, a non-finite bound, or a bound that selects a frame outside
/// `0..frame_count`.
pub fn sample_video_frames(
    frame_count: usize,
    num_segments: usize,
    fps: f64,
    bound: Option<TimeBound>,
) -> Result<Vec<usize>> {
    if frame_count == 0 {
        return Err(ImageError::NoFrames);
    }
    if num_segments == 0 {
        return Err(ImageError::NoSegments);
    }
    if !fps.is_finite() || fps < 0.0 {
        return Err(ImageError::BadFps { fps });
    }
    let (start, end) = match bound {
        Some(b) => (b.start, b.end),
        None => (-100000.0, 100000.0),
    };
    if !start.is_finite() || !end.is_finite() {
        return Err(ImageError::BadBound { start, end });
    }
    let max_frame = frame_count - 1;
    let start_idx = round_half_even(start * fps).max(0);
    let end_idx = round_half_even(end * fps).min(max_frame as i64);
    let seg = (end_idx - start_idx) as f64 / num_segments as f64;
    (0..num_segments)
        .map(|k| {
            let v = start_idx as f64 + seg / 2.0 + (seg * k as f64).round_ties_even();
            let index = v.trunc() as i64;
            if index < 0 || index > max_frame as i64 {
                Err(ImageError::BoundOutsideVideo {
                    start,
                    end,
                    index,
                    max_frame,
                })
            } else {
                Ok(index as usize)
            }
        })
        .collect()
}

/// Video frames to tiles: each frame becomes exactly one 448x448 tile (`max_num = 1`, no thumbnail),
/// `pixels` is `[frames, 3, 448, 448]`. `grid` is 1x1.
pub fn frames_to_tiles(frames: &[DecodedImage]) -> Result<Tiles> {
    if frames.is_empty() {
        return Err(ImageError::NoFrames);
    }
    let mut tiles = Vec::with_capacity(frames.len());
    for f in frames {
        tiles.extend(tile_images(f, &TileOptions::video_frame())?.1);
    }
    Ok(Tiles {
        pixels: normalize_tiles(&tiles)?,
        count: tiles.len(),
        grid: super::Grid { cols: 1, rows: 1 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_segments_of_a_300_frame_video_are_the_segment_midpoints() {
        // seg = 299 / 8 = 37.375; frame k = trunc(18.6875 + round_half_even(37.375 k)); k = 4: 149.5 -> 150
        assert_eq!(
            sample_video_frames(300, 8, 30.0, None).unwrap(),
            vec![18, 55, 93, 130, 168, 205, 242, 280]
        );
    }

    #[test]
    fn degenerate_videos_are_errors_not_panics() {
        assert!(matches!(
            sample_video_frames(0, 8, 30.0, None),
            Err(ImageError::NoFrames)
        ));
        assert!(matches!(
            sample_video_frames(10, 0, 30.0, None),
            Err(ImageError::NoSegments)
        ));
        assert!(matches!(
            sample_video_frames(10, 4, f64::NAN, None),
            Err(ImageError::BadFps { .. })
        ));
        let late = TimeBound {
            start: 100.0,
            end: 200.0,
        };
        assert!(matches!(
            sample_video_frames(10, 4, 30.0, Some(late)),
            Err(ImageError::BoundOutsideVideo { .. })
        ));
    }
}
