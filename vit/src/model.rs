//! The InternViT encoder (original `modeling_intern_vit.py`; spec 2.1-2.4). Shapes use C = hidden size,
//! I = intermediate size, T = tokens per tile (1025 for 448-pixel tiles), P = patch size.

use awq_kernels::ops::attention::bidirectional_attention;
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::norm::{layer_norm, rms_norm};
use awq_kernels::ops::patch::patchify;
use awq_kernels::ops::{activation, add_scaled_inplace, split_last};
use awq_kernels::{DType, Tensor, WeightsScope};

use crate::{Error, NormType, Result, VisionConfig};

/// Tiles encoded together: bounds the activations (the MLP of a 6B layer holds T × 12800 floats per tile)
/// while every linear still sees thousands of rows.
const TILES_PER_CHUNK: usize = 4;

/// `norm1`, `norm2` (and the q/k norms of the 6B flavour, which are always RMSNorm).
enum Norm {
    /// `weight`, `bias` `[C]`.
    LayerNorm { weight: Tensor, bias: Tensor },
    /// `weight` `[C]`.
    RmsNorm { weight: Tensor },
}

impl Norm {
    fn load(scope: &WeightsScope, kind: NormType, c: usize) -> Result<Norm> {
        Ok(match kind {
            NormType::LayerNorm => Norm::LayerNorm {
                weight: scope.get_float("weight", &[c])?,
                bias: scope.get_float("bias", &[c])?,
            },
            NormType::RmsNorm => Norm::RmsNorm {
                weight: scope.get_float("weight", &[c])?,
            },
        })
    }

    fn forward(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(match self {
            Norm::LayerNorm { weight, bias } => layer_norm(x, weight, bias, eps)?,
            Norm::RmsNorm { weight } => rms_norm(x, weight, eps)?,
        })
    }
}

struct Embeddings {
    /// `[1, 1, C]`.
    class_embedding: Tensor,
    /// The conv `[C, 3, P, P]` (kernel = stride = P) as a linear over flattened patches, weight `[C, 3·P·P]`.
    patch_embedding: Linear,
    /// `[1, T, C]`: row 0 for the class token, then the patch grid row-major.
    position_embedding: Tensor,
}

struct Attention {
    /// `[3C, C]`: rows `[0, C)` make q, `[C, 2C)` k, `[2C, 3C)` v; bias `[3C]` in the 300M flavour.
    qkv: Linear,
    /// `[C]` each, 6B flavour only: RMSNorm of q and of k over all heads together, before the head split.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// `[C, C]` with bias.
    proj: Linear,
}

struct Mlp {
    /// `[I, C]` with bias.
    fc1: Linear,
    /// `[C, I]` with bias.
    fc2: Linear,
}

struct EncoderLayer {
    norm1: Norm,
    attn: Attention,
    /// `[C]` layer scale of the attention branch.
    ls1: Tensor,
    norm2: Norm,
    mlp: Mlp,
    /// `[C]` layer scale of the MLP branch.
    ls2: Tensor,
}

/// InternViT: patch embedding, class token, position embedding, then pre-norm encoder layers with layer
/// scales. No final norm (the original model has none).
pub struct InternVit {
    config: VisionConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl InternVit {
    /// Loads from `scope`, which holds `embeddings.*` and `encoder.layers.*` (`vision_model.` of an InternVL
    /// checkpoint). Every tensor is checked for its shape; a missing one is named in the error.
    pub fn load(config: &VisionConfig, scope: &WeightsScope) -> Result<InternVit> {
        let c = config.hidden_size;
        let (p, ch) = (config.patch_size, config.num_channels);
        let e = scope.pp("embeddings");
        let patch = e.pp("patch_embedding");
        let embeddings = Embeddings {
            class_embedding: e.get_float("class_embedding", &[1, 1, c])?,
            patch_embedding: Linear::Dense {
                weight: patch
                    .get_float("weight", &[c, ch, p, p])?
                    .reshape(&[c, ch * p * p])?,
                bias: Some(patch.get_float("bias", &[c])?.to_f32_vec()?),
            },
            position_embedding: e
                .get_float("position_embedding", &[1, config.tokens_per_tile(), c])?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = scope.pp("encoder.layers").pp(i);
            let attn = l.pp("attn");
            let mlp = l.pp("mlp");
            let qk_norm = |name: &str| -> Result<Option<Tensor>> {
                if config.qk_normalization {
                    Ok(Some(attn.pp(name).get_float("weight", &[c])?))
                } else {
                    Ok(None)
                }
            };
            layers.push(EncoderLayer {
                norm1: Norm::load(&l.pp("norm1"), config.norm_type, c)?,
                attn: Attention {
                    qkv: Linear::load(&attn.pp("qkv"), c, 3 * c, config.qkv_bias, None)?,
                    q_norm: qk_norm("q_norm")?,
                    k_norm: qk_norm("k_norm")?,
                    proj: Linear::load(&attn.pp("proj"), c, c, true, None)?,
                },
                ls1: l.get_float("ls1", &[c])?,
                norm2: Norm::load(&l.pp("norm2"), config.norm_type, c)?,
                mlp: Mlp {
                    fc1: Linear::load(&mlp.pp("fc1"), c, config.intermediate_size, true, None)?,
                    fc2: Linear::load(&mlp.pp("fc2"), config.intermediate_size, c, true, None)?,
                },
                ls2: l.get_float("ls2", &[c])?,
            });
        }
        Ok(InternVit {
            config: config.clone(),
            embeddings,
            layers,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// The output of the last layer for tiles `pixels` `[n, 3, S, S]` (S = image size; any float dtype):
    /// `[n, T, C]`, the class token first.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward_layers(pixels, self.layers.len())
    }

    /// The hidden state after the first `layers` encoder layers (0: the embeddings), `[n, T, C]`. InternVL's
    /// `select_layer` -k is `forward_layers(num_hidden_layers + 1 - k)`.
    pub fn forward_layers(&self, pixels: &Tensor, layers: usize) -> Result<Tensor> {
        let cfg = &self.config;
        let s = cfg.image_size;
        let n = match pixels.shape() {
            &[n, c, h, w] if c == cfg.num_channels && h == s && w == s => n,
            _ => {
                return Err(Error::PixelShape {
                    got: pixels.shape().to_vec(),
                    channels: cfg.num_channels,
                    size: s,
                })
            }
        };
        if layers > self.layers.len() {
            return Err(Error::Layer {
                requested: layers,
                layers: self.layers.len(),
            });
        }
        let pixels = pixels.to_f32()?;
        let (t, c) = (cfg.tokens_per_tile(), cfg.hidden_size);
        let mut out = Vec::with_capacity(n * t * c);
        for start in (0..n).step_by(TILES_PER_CHUNK) {
            let m = TILES_PER_CHUNK.min(n - start);
            let chunk = pixels.narrow_rows(start, start + m)?; // [m, 3, S, S]
            let mut x = self.embed(&chunk)?; // [m·T, C]
            for layer in &self.layers[..layers] {
                x = self.layer_forward(layer, x, m)?;
            }
            out.extend_from_slice(x.as_slice::<f32>()?);
        }
        Ok(Tensor::from_vec(out, &[n, t, c])?)
    }

    /// Patch embedding, class token and position embedding for `m` tiles: `[m·T, C]`.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let m = pixels.dim(0);
        let (t, c) = (cfg.tokens_per_tile(), cfg.hidden_size);
        let patches = patchify(pixels, cfg.patch_size)?; // [m, T-1, 3·P·P]
        let patches = self.embeddings.patch_embedding.forward(&patches)?; // [m, T-1, C]
        let patches = patches.as_slice::<f32>()?;
        let class = self.embeddings.class_embedding.to_f32_vec()?;
        let pos = self.embeddings.position_embedding.to_f32_vec()?;
        let mut x = Vec::with_capacity(m * t * c);
        for tile in patches.chunks_exact((t - 1) * c) {
            x.extend(class.iter().zip(&pos[..c]).map(|(a, b)| a + b));
            x.extend(tile.iter().zip(&pos[c..]).map(|(a, b)| a + b));
        }
        Ok(Tensor::from_vec(x, &[m * t, c])?)
    }

    /// One encoder layer over `x` `[m·T, C]` (m tiles).
    fn layer_forward(&self, layer: &EncoderLayer, mut x: Tensor, m: usize) -> Result<Tensor> {
        let cfg = &self.config;
        let (t, c, eps) = (cfg.tokens_per_tile(), cfg.hidden_size, cfg.layer_norm_eps);
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());

        let a = layer.norm1.forward(&x, eps)?;
        let attn = &layer.attn;
        let qkv = attn.qkv.forward(&a)?; // [m·T, 3C]
        let mut parts = split_last(&qkv, &[c, c, c])?.into_iter();
        let (mut q, mut k, v) = match (parts.next(), parts.next(), parts.next()) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => unreachable!("split_last returns one tensor per width"),
        };
        if let (Some(qn), Some(kn)) = (&attn.q_norm, &attn.k_norm) {
            q = rms_norm(&q, qn, eps)?;
            k = rms_norm(&k, kn, eps)?;
        }
        let shape = [m, t, heads, d];
        let o = bidirectional_attention(
            &q.reshape(&shape)?,
            &k.reshape(&shape)?,
            &v.reshape(&shape)?,
            (d as f32).powf(-0.5),
        )?
        .reshape(&[m * t, c])?;
        add_scaled_inplace(&mut x, &attn.proj.forward(&o)?, &layer.ls1)?;

        let a = layer.norm2.forward(&x, eps)?;
        let h = activation::gelu(&layer.mlp.fc1.forward(&a)?)?;
        add_scaled_inplace(&mut x, &layer.mlp.fc2.forward(&h)?, &layer.ls2)?;
        debug_assert_eq!(x.dtype(), DType::F32);
        Ok(x)
    }
}
