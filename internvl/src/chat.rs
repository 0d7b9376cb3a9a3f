//! One chat turn with InternVL: images and video frames in, the `internvl2_5` prompt with its image
//! placeholders expanded, tiles encoded, the answer streamed out (the reference `chat()`, spec 5 to 7).

use std::path::{Path, PathBuf};

use awq_kernels::Tensor;

use crate::generation::{generate_with_images, GenerationConfig, GenerationOutput};
use crate::image::{
    gif_frames, load_image, normalize_tiles, sample_video_frames, tile_images, DecodedImage,
    ImageOptions, TileOptions,
};
use crate::prompt::{expand_images, with_placeholders, Conversation, ImageLayout};
use crate::{Error, InternVlModel, Result};

/// Where video frames come from.
#[derive(Debug, Clone)]
pub enum VideoSource {
    /// Frame images, in order.
    Frames(Vec<PathBuf>),
    /// An animated GIF, all of its frames.
    Gif(PathBuf),
}

/// One question, with the conversation before it and its media.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// Replaces the template's system message.
    pub system: Option<String>,
    /// Earlier (question, answer) turns; a question may hold `<image>` placeholders (the first turn's
    /// images stay where they were asked about, and are sent again with every turn, as `chat()` does).
    pub history: Vec<(String, String)>,
    pub question: String,
    pub images: Vec<PathBuf>,
    pub video: Option<VideoSource>,
    /// Frames sampled from the video (spec 5.4; the model card uses 8).
    pub num_segments: usize,
    /// Tiles per image at most (the config's `max_dynamic_patch` when `None`).
    pub max_tiles: Option<usize>,
    pub image_options: ImageOptions,
}

/// The model input for a request: token ids, the tiles of all images and frames in prompt order, and the
/// question as it goes into the history (with the placeholders that were added to it).
pub struct PreparedChat {
    pub prompt_ids: Vec<u32>,
    pub pixels: Option<Tensor>,
    pub question: String,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn decode(path: &Path, options: &ImageOptions) -> Result<DecodedImage> {
    load_image(&read(path)?, options).map_err(|e| Error::BadFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The video's frames, sampled to `num_segments` as the reference `load_video` does.
fn video_frames(
    video: &VideoSource,
    num_segments: usize,
    options: &ImageOptions,
) -> Result<Vec<DecodedImage>> {
    let all = match video {
        VideoSource::Frames(paths) => paths
            .iter()
            .map(|p| decode(p, options))
            .collect::<Result<Vec<_>>>()?,
        VideoSource::Gif(path) => {
            gif_frames(&read(path)?, options).map_err(|e| Error::BadFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
        }
    };
    // Without a time bound the frame rate does not affect which frames are chosen.
    let picks = sample_video_frames(all.len(), num_segments.max(1), 1.0, None)?;
    Ok(picks.into_iter().map(|i| all[i].clone()).collect())
}

/// An image already decoded (from bytes a caller holds), with its own tile limit.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub image: DecodedImage,
    /// Tiles for this image at most (the request's `max_tiles` when `None`).
    pub max_tiles: Option<usize>,
}

/// Builds the prompt ids and pixels for `request`.
pub fn prepare(model: &InternVlModel, request: &ChatRequest) -> Result<PreparedChat> {
    let images = request
        .images
        .iter()
        .map(|path| {
            Ok(ImageInput {
                image: decode(path, &request.image_options)?,
                max_tiles: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    prepare_decoded(model, request, &images)
}

/// As [`prepare`], with `images` in place of `request.images` (which is not read). With history, the
/// `<image>` placeholders must already be in the history's first question, as `chat()` keeps them.
pub fn prepare_decoded(
    model: &InternVlModel,
    request: &ChatRequest,
    images: &[ImageInput],
) -> Result<PreparedChat> {
    let config = &model.config;
    let tiling = |wanted: Option<usize>| {
        let max_tiles = if config.dynamic_image_size {
            wanted.unwrap_or(config.max_dynamic_patch).max(1)
        } else {
            1
        };
        TileOptions {
            min_tiles: config.min_dynamic_patch.min(max_tiles) as u32,
            max_tiles: max_tiles as u32,
            thumbnail: config.use_thumbnail,
        }
    };
    let mut tiles = Vec::new();
    let mut tiles_per_image = Vec::new();
    for input in images {
        let (_, image_tiles) =
            tile_images(&input.image, &tiling(input.max_tiles.or(request.max_tiles)))?;
        tiles_per_image.push(image_tiles.len());
        tiles.extend(image_tiles);
    }
    let frames = match &request.video {
        Some(video) => video_frames(video, request.num_segments, &request.image_options)?,
        None => Vec::new(),
    };
    for frame in &frames {
        let (_, frame_tiles) = tile_images(frame, &TileOptions::video_frame())?;
        tiles_per_image.push(frame_tiles.len());
        tiles.extend(frame_tiles);
    }

    // As `chat()`: placeholders go in front of the question only on the first turn.
    let question = if request.history.is_empty() {
        let q = with_placeholders(&request.question, frames.len(), ImageLayout::Frames);
        with_placeholders(&q, images.len(), ImageLayout::Images)
    } else {
        request.question.clone()
    };
    let conversation = Conversation {
        system: request.system.clone(),
        history: request.history.clone(),
    };
    let text = expand_images(
        &conversation.render(&question),
        &tiles_per_image,
        model.tokens_per_tile(),
    )?;
    let prompt_ids = model.text.tokenizer.encode(&text)?;
    let pixels = if tiles.is_empty() {
        None
    } else {
        Some(normalize_tiles(&tiles)?)
    };
    Ok(PreparedChat {
        prompt_ids,
        pixels,
        question,
    })
}

/// Answers `request`, streaming the text to `on_text`; returns the output and the question as it goes into
/// the history.
pub fn chat(
    model: &InternVlModel,
    request: &ChatRequest,
    generation: &GenerationConfig,
    on_text: impl FnMut(&str),
) -> Result<(GenerationOutput, String)> {
    let prepared = prepare(model, request)?;
    let out = generate_with_images(
        model,
        &prepared.prompt_ids,
        prepared.pixels.as_ref(),
        generation,
        on_text,
    )?;
    Ok((out, prepared.question))
}
