//! The whole InternVL 2.5 model: InternViT, the projector and the Qwen2 LLM from one original-layout
//! checkpoint (`vision_model.*`, `mlp1.*`, `language_model.*`; spec sections 1-4 and 7).

use std::path::Path;
use std::sync::Arc;

use awq_kernels::ops::scatter_rows;
use awq_kernels::{Tensor, Weights};
use projector::{Projector, PsVersion};
use qwen2::{Qwen2, Qwen2Config};
use serde_json::Value;
use vit::{InternVit, VisionConfig};

use crate::checkpoint::{generation_config, read_json, stop_ids};
use crate::progress::LoadProgress;
use crate::{Error, Result, TextModel, TextTokenizer};

/// The top-level keys of an InternVL `config.json` (class `InternVLChatConfig`, spec 1.2). Keys a file
/// omits take that class's defaults, as in the reference.
#[derive(Debug, Clone)]
pub struct InternVlConfig {
    /// `vision_config`, with `force_image_size` applied.
    pub vision: VisionConfig,
    /// `llm_config`.
    pub llm: Qwen2Config,
    /// 0.5: 2×2 patches per LLM token.
    pub downsample_ratio: f64,
    pub ps_version: PsVersion,
    /// Which ViT hidden state feeds the projector (-1: the last layer's output).
    pub select_layer: i64,
    /// The conversation template name (`internvl2_5`).
    pub template: Option<String>,
    pub dynamic_image_size: bool,
    pub use_thumbnail: bool,
    pub min_dynamic_patch: usize,
    pub max_dynamic_patch: usize,
}

fn get_bool(root: &Value, key: &str, default: bool) -> bool {
    match root.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().is_some_and(|v| v != 0),
        _ => default,
    }
}

impl InternVlConfig {
    /// Parses an InternVL `config.json`; `origin` names it in errors.
    pub fn from_json(root: &Value, origin: &str) -> Result<InternVlConfig> {
        let bad = |reason: String| Error::BadFile {
            path: origin.to_string(),
            reason,
        };
        let vision_json = root.get("vision_config").ok_or_else(|| {
            bad("no `vision_config`: this is not an InternVL checkpoint (a plain Qwen2 one loads as a \
                 TextModel)"
                .into())
        })?;
        let llm_json = root
            .get("llm_config")
            .ok_or_else(|| bad("no `llm_config`".into()))?;
        let mut vision = VisionConfig::from_json(vision_json, origin)?;
        if let Some(size) = root.get("force_image_size").and_then(Value::as_u64) {
            vision = vision.with_image_size(size as usize, origin)?;
        }
        let llm = Qwen2Config::from_json(llm_json, root, origin)?;
        let number = |key: &str, default: f64| -> Result<f64> {
            match root.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad(format!("`{key}` is not a number"))),
            }
        };
        let ps_version = match root.get("ps_version").and_then(Value::as_str) {
            Some(name) => PsVersion::parse(name)?,
            None => PsVersion::V1,
        };
        Ok(InternVlConfig {
            vision,
            llm,
            downsample_ratio: number("downsample_ratio", 0.5)?,
            ps_version,
            select_layer: number("select_layer", -1.0)? as i64,
            template: root
                .get("template")
                .and_then(Value::as_str)
                .map(str::to_string),
            dynamic_image_size: get_bool(root, "dynamic_image_size", false),
            use_thumbnail: get_bool(root, "use_thumbnail", false),
            min_dynamic_patch: number("min_dynamic_patch", 1.0)? as usize,
            max_dynamic_patch: number("max_dynamic_patch", 6.0)? as usize,
        })
    }

    /// How many ViT layers to run for `select_layer` (the original takes `hidden_states[select_layer]`,
    /// where index 0 is the embeddings and index i the output of layer i).
    pub fn vit_layers(&self) -> Option<usize> {
        let layers = self.vision.num_hidden_layers as i64;
        let index = if self.select_layer < 0 {
            layers + 1 + self.select_layer
        } else {
            self.select_layer
        };
        (0..=layers).contains(&index).then_some(index as usize)
    }

    fn checked_vit_layers(&self) -> Result<usize> {
        self.vit_layers().ok_or(Error::SelectLayer {
            select_layer: self.select_layer,
            layers: self.vision.num_hidden_layers,
        })
    }
}

/// The ids of the image tokens, read from the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokens {
    /// `<img>`
    pub start: u32,
    /// `</img>`
    pub end: u32,
    /// `<IMG_CONTEXT>`: each position holding it receives one image row.
    pub context: u32,
}

pub use crate::prompt::{IMAGE_PLACEHOLDER, IMG_CONTEXT, IMG_END, IMG_START};

impl ImageTokens {
    pub fn from_tokenizer(tokenizer: &TextTokenizer, origin: &str) -> Result<ImageTokens> {
        let id = |token: &str| {
            tokenizer
                .token_id(token)
                .ok_or_else(|| Error::MissingSpecialToken {
                    token: token.to_string(),
                    origin: origin.to_string(),
                })
        };
        Ok(ImageTokens {
            start: id(IMG_START)?,
            end: id(IMG_END)?,
            context: id(IMG_CONTEXT)?,
        })
    }
}

/// InternVL 2.5 ready to run: the language model (with its tokenizer and stop tokens), InternViT and the
/// projector, on the CPU.
pub struct InternVlModel {
    pub text: TextModel,
    pub vit: InternVit,
    pub projector: Projector,
    pub config: InternVlConfig,
    pub image_tokens: ImageTokens,
}

impl InternVlModel {
    /// Loads an original-layout InternVL checkpoint directory (config.json with `vision_config` and
    /// `llm_config`, safetensors in bf16/f16/f32, tokenizer.json or vocab.json + merges.txt
    /// ([`TextTokenizer::from_dir`]), optional generation_config.json).
    pub fn load(dir: &Path) -> Result<InternVlModel> {
        Self::load_inner(dir, None)
    }

    /// [`Self::load`] that also reads the weight files through once, reporting the bytes read to
    /// `progress` (see [`crate::progress`]).
    pub fn load_with_progress(
        dir: &Path,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<InternVlModel> {
        Self::load_inner(dir, Some(progress))
    }

    fn load_inner(
        dir: &Path,
        progress: Option<&mut dyn FnMut(LoadProgress)>,
    ) -> Result<InternVlModel> {
        let config_path = dir.join("config.json");
        let root = read_json(&config_path)?;
        let weights = Arc::new(Weights::from_dir(dir)?);
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let gen = generation_config(dir)?;
        let model = Self::from_parts(
            &dir.display().to_string(),
            &config_path.display().to_string(),
            &root,
            &weights,
            tokenizer,
            gen.as_ref(),
        )?;
        // Building maps the tensors without reading them, and checks every one: a bad checkpoint fails
        // before its weights are read.
        if let Some(progress) = progress {
            crate::progress::read_weight_files(dir, progress)?;
        }
        Ok(model)
    }

    /// Loads a checkpoint held in memory (the embedded default): `config.json` text, safetensors bytes,
    /// `tokenizer.json` bytes and an optional `generation_config.json` text.
    pub fn from_memory(
        origin: &str,
        config_json: &str,
        weights: &'static [u8],
        tokenizer_json: &[u8],
        generation_config_json: Option<&str>,
    ) -> Result<InternVlModel> {
        Self::from_shared(
            origin,
            config_json,
            Arc::new(weights),
            tokenizer_json,
            generation_config_json,
        )
    }

    /// As [`Self::from_memory`], with safetensors bytes the model shares ownership of (a synthetic model's
    /// weights, made at run time).
    pub fn from_shared(
        origin: &str,
        config_json: &str,
        weights: awq_kernels::tensor::SharedBytes,
        tokenizer_json: &[u8],
        generation_config_json: Option<&str>,
    ) -> Result<InternVlModel> {
        let bad = |e: serde_json::Error| Error::BadFile {
            path: origin.to_string(),
            reason: format!("invalid JSON: {e}"),
        };
        let root: Value = serde_json::from_str(config_json).map_err(bad)?;
        let gen: Option<Value> = generation_config_json
            .map(serde_json::from_str)
            .transpose()
            .map_err(bad)?;
        let weights = Arc::new(Weights::from_bytes(origin, weights)?);
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json)?;
        Self::from_parts(origin, origin, &root, &weights, tokenizer, gen.as_ref())
    }

    /// A model over weights made elsewhere (a synthetic checkpoint), with its config, tokenizer and
    /// optional generation config texts.
    pub(crate) fn from_weights(
        origin: &str,
        root: &Value,
        weights: Arc<Weights>,
        tokenizer_json: &[u8],
        generation_config_json: Option<&str>,
    ) -> Result<InternVlModel> {
        let gen: Option<Value> = generation_config_json
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::BadFile {
                path: origin.to_string(),
                reason: format!("invalid JSON: {e}"),
            })?;
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json)?;
        Self::from_parts(origin, origin, root, &weights, tokenizer, gen.as_ref())
    }

    fn from_parts(
        origin: &str,
        config_origin: &str,
        root: &Value,
        weights: &Arc<Weights>,
        tokenizer: TextTokenizer,
        generation_config: Option<&Value>,
    ) -> Result<InternVlModel> {
        let config = InternVlConfig::from_json(root, config_origin)?;
        config.checked_vit_layers()?;
        let vit = InternVit::load(&config.vision, &weights.scope("vision_model."))?;
        let projector = Projector::load(
            &weights.scope("mlp1."),
            config.vision.hidden_size,
            config.vision.grid(),
            config.llm.hidden_size,
            config.downsample_ratio,
            config.ps_version,
        )?;
        let llm = Qwen2::load(&config.llm, &weights.scope("language_model."))?;
        let image_tokens = ImageTokens::from_tokenizer(&tokenizer, origin)?;
        let stop_ids = stop_ids(generation_config, &tokenizer);
        Ok(InternVlModel {
            text: TextModel {
                llm,
                tokenizer,
                stop_ids,
                origin: origin.to_string(),
            },
            vit,
            projector,
            config,
            image_tokens,
        })
    }

    /// The whole model on `device`. The language model computes in the checkpoint's float dtype there; the
    /// vision encoder and projector in the 16-bit type their weights are stored in (bf16 for the official
    /// checkpoints, in which InternViT was trained), else in the language model's. So an AWQ checkpoint whose
    /// LLM computes in f16 does not squeeze the 6B encoder's bf16 weights and activations into f16's range
    /// (an f16 vision tower overflowing to inf, then NaN logits, is a known failure of engines that cast it
    /// to an AWQ model's dtype); the image rows are cast on the device before they join the embeddings.
    pub fn to_device(mut self, device: awq_kernels::Device) -> Result<InternVlModel> {
        self.text = self.text.to_device(device)?;
        let llm_dtype = self.text.llm.activation_dtype();
        let vision_dtype = match self.vit.stored_dtype() {
            d @ (awq_kernels::DType::BF16 | awq_kernels::DType::F16) => d,
            _ => llm_dtype,
        };
        self.vit = self.vit.to_device(device, vision_dtype)?;
        self.projector = self.projector.to_device(device, vision_dtype)?;
        Ok(self)
    }

    /// LLM rows (and `<IMG_CONTEXT>` tokens) per tile: 256 for 448-pixel tiles.
    pub fn tokens_per_tile(&self) -> usize {
        self.projector.tokens_per_tile(self.config.vision.grid())
    }

    /// Expands each `<image>` of a templated prompt, in order, into `<img>`, 256 `<IMG_CONTEXT>` per tile of
    /// that image and `</img>` (spec 6.2 step 3). The count of `<image>` must equal the number of images.
    pub fn expand_image_placeholders(
        &self,
        text: &str,
        tiles_per_image: &[usize],
    ) -> Result<String> {
        crate::prompt::expand_images(text, tiles_per_image, self.tokens_per_tile())
    }

    /// The ViT hidden state that `select_layer` picks, for tiles `pixels` `[n, 3, 448, 448]`:
    /// `[n, 1025, C]`, class token first.
    pub fn vision_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let layers = self.config.checked_vit_layers()?;
        Ok(self.vit.forward_layers(pixels, layers)?)
    }

    /// Tiles `pixels` `[n, 3, 448, 448]` (normalized, any float dtype) → the LLM rows for their
    /// `<IMG_CONTEXT>` positions, `[n·256, H]`, tile by tile.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let features = self.vision_features(pixels)?;
        Ok(self.projector.forward(&features)?)
    }

    /// Token embeddings of `ids` `[t, H]` with the rows of `image_rows` `[k, H]` written, in order, into the
    /// `k` positions holding `<IMG_CONTEXT>` (spec 7). The count of such positions must equal `k` (0 when
    /// there are no images).
    pub fn embed_with_images(&self, ids: &[u32], image_rows: Option<&Tensor>) -> Result<Tensor> {
        let positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == self.image_tokens.context)
            .map(|(i, _)| i)
            .collect();
        let rows = image_rows.map_or(0, |r| r.dim(0));
        if positions.len() != rows {
            return Err(Error::ImageTokenMismatch {
                positions: positions.len(),
                rows,
                per_tile: self.tokens_per_tile(),
            });
        }
        let mut x = self.text.llm.embed(ids)?;
        if let Some(r) = image_rows {
            if x.device() == r.device() && x.device() != awq_kernels::Device::Cpu {
                // Both on the GPU: the rows, in the LLM's dtype, are written in place.
                let r = r.to_dtype(x.dtype())?;
                scatter_rows(&mut x, &positions, &r)?;
            } else if x.device() == r.device() && x.dtype() == r.dtype() {
                // Both f32 on the CPU.
                scatter_rows(&mut x, &positions, r)?;
            } else {
                // Mixed places: merge on the CPU in f32; generation moves the result to the model's device.
                if x.device() != awq_kernels::Device::Cpu {
                    x = x.to_device(awq_kernels::Device::Cpu)?;
                }
                x = x.to_f32()?;
                let r = if r.device() == awq_kernels::Device::Cpu {
                    r.to_f32()?
                } else {
                    r.to_device(awq_kernels::Device::Cpu)?.to_f32()?
                };
                scatter_rows(&mut x, &positions, &r)?;
            }
        }
        Ok(x)
    }

    /// The LLM input for a prompt: its token embeddings with the encoded `pixels` (all tiles of all images,
    /// in prompt order) in its `<IMG_CONTEXT>` positions.
    pub fn prompt_embeddings(&self, ids: &[u32], pixels: Option<&Tensor>) -> Result<Tensor> {
        let rows = pixels.map(|p| self.encode_images(p)).transpose()?;
        self.embed_with_images(ids, rows.as_ref())
    }
}
