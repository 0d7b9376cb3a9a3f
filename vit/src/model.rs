//! The InternViT encoder (original `modeling_intern_vit.py`; spec 2.1-2.4). Shapes use C = hidden size,
//! I = intermediate size, T = tokens per tile (1025 for 448-pixel tiles), P = patch size.

use awq_kernels::ops::attention::bidirectional_attention;
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::norm::{layer_norm, rms_norm};
use awq_kernels::ops::patch::{patches_with_positions, patchify};
use awq_kernels::ops::{activation, add_inplace, add_scaled_inplace, split_last};
use awq_kernels::{DType, Device, Tensor, WeightsScope};

use crate::{Error, NormType, Result, VisionConfig};

/// Tiles encoded together: bounds the activations (the MLP of a 6B layer holds T × 12800 floats per tile)
/// while every linear still sees thousands of rows.
const TILES_PER_CHUNK: usize = 4;

/// `norm1`, `norm2` (and the q/k norms of the 6B flavour, which are always RMSNorm).
#[derive(Clone)]
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

    fn to_device(&self, device: Device, dtype: DType) -> Result<Norm> {
        Ok(match self {
            Norm::LayerNorm { weight, bias } => Norm::LayerNorm {
                weight: on(weight, device, dtype)?,
                bias: on(bias, device, dtype)?,
            },
            Norm::RmsNorm { weight } => Norm::RmsNorm {
                weight: on(weight, device, dtype)?,
            },
        })
    }
}

/// `t` on `device` in `dtype`.
fn on(t: &Tensor, device: Device, dtype: DType) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

/// The rows of a dense layer's weight and bias, `[start, end)` of its outputs, as a dense layer.
fn output_rows(linear: &Linear, start: usize, end: usize) -> Result<Linear> {
    let Linear::Dense { weight, bias } = linear else {
        return Err(awq_kernels::Error::Unsupported("splitting a non-dense linear".into()).into());
    };
    Ok(Linear::Dense {
        weight: weight.to_f32()?.narrow_rows(start, end)?,
        bias: bias.as_ref().map(|b| b[start..end].to_vec()),
    })
}

/// A dense layer with its output `j` multiplied by `scale[j]` (a layer scale folded into the layer), in f32.
fn scaled_outputs(linear: &Linear, scale: &Tensor) -> Result<Linear> {
    Ok(linear.scaled_outputs_to_device(&scale.to_f32_vec()?, Device::Cpu, DType::F32)?)
}

#[derive(Clone)]
struct Embeddings {
    /// `[1, 1, C]`.
    class_embedding: Tensor,
    /// The conv `[C, 3, P, P]` (kernel = stride = P) as a linear over flattened patches, weight `[C, 3·P·P]`.
    patch_embedding: Linear,
    /// `[1, T, C]`: row 0 for the class token, then the patch grid row-major.
    position_embedding: Tensor,
    /// On a GPU, the whole embedding as one matrix product (see [`InternVit::to_device`]):
    /// `[C, 3·P·P + T]` (padded to a multiple of 8 columns).
    augmented: Option<Linear>,
}

/// How q, k and v are made.
#[derive(Clone)]
enum QkvProjection {
    /// `[3C, C]`: rows `[0, C)` make q, `[C, 2C)` k, `[2C, 3C)` v; bias `[3C]` in the 300M flavour. The
    /// output is split after (CPU).
    Fused(Box<Linear>),
    /// The same rows as three `[C, C]` layers, so no split is needed on a GPU.
    Split {
        q: Box<Linear>,
        k: Box<Linear>,
        v: Box<Linear>,
    },
}

#[derive(Clone)]
struct Attention {
    qkv: QkvProjection,
    /// `[C]` each, 6B flavour only: RMSNorm of q and of k over all heads together, before the head split.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// `[C, C]` with bias.
    proj: Linear,
}

#[derive(Clone)]
struct Mlp {
    /// `[I, C]` with bias.
    fc1: Linear,
    /// `[C, I]` with bias.
    fc2: Linear,
}

#[derive(Clone)]
struct EncoderLayer {
    norm1: Norm,
    attn: Attention,
    /// `[C]` layer scale of the attention branch; `None` when folded into `attn.proj` (GPU).
    ls1: Option<Tensor>,
    norm2: Norm,
    mlp: Mlp,
    /// `[C]` layer scale of the MLP branch; `None` when folded into `mlp.fc2` (GPU).
    ls2: Option<Tensor>,
}

/// InternViT: patch embedding, class token, position embedding, then pre-norm encoder layers with layer
/// scales. No final norm (the original model has none).
pub struct InternVit {
    config: VisionConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    /// Where the weights live and the forward runs.
    device: Device,
    /// Activations: f32 on the CPU, the checkpoint's float dtype on a GPU.
    dtype: DType,
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
            augmented: None,
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
                    qkv: QkvProjection::Fused(Box::new(Linear::load(
                        &attn.pp("qkv"),
                        c,
                        3 * c,
                        config.qkv_bias,
                        None,
                    )?)),
                    q_norm: qk_norm("q_norm")?,
                    k_norm: qk_norm("k_norm")?,
                    proj: Linear::load(&attn.pp("proj"), c, c, true, None)?,
                },
                ls1: Some(l.get_float("ls1", &[c])?),
                norm2: Norm::load(&l.pp("norm2"), config.norm_type, c)?,
                mlp: Mlp {
                    fc1: Linear::load(&mlp.pp("fc1"), c, config.intermediate_size, true, None)?,
                    fc2: Linear::load(&mlp.pp("fc2"), config.intermediate_size, c, true, None)?,
                },
                ls2: Some(l.get_float("ls2", &[c])?),
            });
        }
        Ok(InternVit {
            config: config.clone(),
            embeddings,
            layers,
            device: Device::Cpu,
            dtype: DType::F32,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The float dtype the checkpoint stores the encoder's weights in (its position table's).
    pub fn stored_dtype(&self) -> DType {
        self.embeddings.position_embedding.dtype()
    }

    /// The encoder on `device`, computing in `dtype` there (f16 or bf16 on a GPU; the CPU always computes
    /// in f32 from the checkpoint's tensors). Three rewrites make the GPU forward need no ops beyond
    /// matrix products, norms, GELU, attention and a residual add, each exact in real arithmetic:
    /// - the qkv layer becomes three layers (its row blocks), so its output needs no split;
    /// - each layer scale is folded into the layer before it (`ls ∘ (W·a + b) = (diag(ls)·W)·a + ls ∘ b`);
    /// - the embedding (patch conv, class token, position table) becomes ONE matrix product of an
    ///   augmented input `[patch, one-hot(position)]` with `[W | P]`, where column i of `P` is position
    ///   row i and column 0 is `class + pos₀ − b` (row 0 of each tile has a zero patch, and the bias `b`
    ///   is added to every row).
    ///
    /// The folded and augmented weights are made in f32 and rounded once to `dtype`.
    pub fn to_device(&self, device: Device, dtype: DType) -> Result<InternVit> {
        if device == Device::Cpu {
            return Ok(self.clone_on_cpu());
        }
        if self.device != Device::Cpu {
            return Err(awq_kernels::Error::Unsupported(
                "move the encoder to a GPU from the CPU".into(),
            )
            .into());
        }
        // The rewrites of [`Self::rewritten`], done on the device where they touch the large weights (a
        // weight moves as stored, then the GPU splits or scales it), with the same roundings.
        let c = self.config.hidden_size;
        let lin = |l: &Linear| -> Result<Linear> { Ok(l.to_device(device, dtype)?) };
        let opt = |t: &Option<Tensor>| t.as_ref().map(|t| on(t, device, dtype)).transpose();
        let fold = |l: &Linear, ls: &Option<Tensor>| -> Result<Linear> {
            match ls {
                Some(ls) => Ok(l.scaled_outputs_to_device(&ls.to_f32_vec()?, device, dtype)?),
                None => lin(l),
            }
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let qkv = match &layer.attn.qkv {
                QkvProjection::Fused(qkv) => {
                    let qkv = lin(qkv)?;
                    QkvProjection::Split {
                        q: Box::new(qkv.output_rows(0, c)?),
                        k: Box::new(qkv.output_rows(c, 2 * c)?),
                        v: Box::new(qkv.output_rows(2 * c, 3 * c)?),
                    }
                }
                QkvProjection::Split { q, k, v } => QkvProjection::Split {
                    q: Box::new(lin(q)?),
                    k: Box::new(lin(k)?),
                    v: Box::new(lin(v)?),
                },
            };
            layers.push(EncoderLayer {
                norm1: layer.norm1.to_device(device, dtype)?,
                attn: Attention {
                    qkv,
                    q_norm: opt(&layer.attn.q_norm)?,
                    k_norm: opt(&layer.attn.k_norm)?,
                    proj: fold(&layer.attn.proj, &layer.ls1)?,
                },
                ls1: None,
                norm2: layer.norm2.to_device(device, dtype)?,
                mlp: Mlp {
                    fc1: lin(&layer.mlp.fc1)?,
                    fc2: fold(&layer.mlp.fc2, &layer.ls2)?,
                },
                ls2: None,
            });
        }
        let mut embeddings = self.embeddings.clone();
        embeddings.augmented = Some(match &self.embeddings.augmented {
            Some(augmented) => lin(augmented)?,
            None => lin(&self.augmented_patch_embedding()?)?,
        });
        Ok(InternVit {
            config: self.config.clone(),
            embeddings,
            layers,
            device,
            dtype,
        })
    }

    fn clone_on_cpu(&self) -> InternVit {
        InternVit {
            config: self.config.clone(),
            embeddings: self.embeddings.clone(),
            layers: self.layers.clone(),
            device: self.device,
            dtype: self.dtype,
        }
    }

    /// The encoder with the three rewrites of [`Self::to_device`] applied, still on the CPU in f32 (what
    /// a GPU copy is made from; on the CPU it computes the same function, which the tests check).
    pub fn rewritten(&self) -> Result<InternVit> {
        if self.device != Device::Cpu {
            return Err(awq_kernels::Error::Unsupported(
                "rewrite the encoder on the CPU, then move it".into(),
            )
            .into());
        }
        let c = self.config.hidden_size;
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let qkv = match &layer.attn.qkv {
                QkvProjection::Fused(qkv) => QkvProjection::Split {
                    q: Box::new(output_rows(qkv, 0, c)?),
                    k: Box::new(output_rows(qkv, c, 2 * c)?),
                    v: Box::new(output_rows(qkv, 2 * c, 3 * c)?),
                },
                split => split.clone(),
            };
            let fold = |l: &Linear, ls: &Option<Tensor>| -> Result<Linear> {
                match ls {
                    Some(ls) => scaled_outputs(l, ls),
                    None => Ok(l.clone()),
                }
            };
            layers.push(EncoderLayer {
                norm1: layer.norm1.clone(),
                attn: Attention {
                    qkv,
                    q_norm: layer.attn.q_norm.clone(),
                    k_norm: layer.attn.k_norm.clone(),
                    proj: fold(&layer.attn.proj, &layer.ls1)?,
                },
                ls1: None,
                norm2: layer.norm2.clone(),
                mlp: Mlp {
                    fc1: layer.mlp.fc1.clone(),
                    fc2: fold(&layer.mlp.fc2, &layer.ls2)?,
                },
                ls2: None,
            });
        }
        let mut embeddings = self.embeddings.clone();
        if embeddings.augmented.is_none() {
            embeddings.augmented = Some(self.augmented_patch_embedding()?);
        }
        Ok(InternVit {
            config: self.config.clone(),
            embeddings,
            layers,
            device: Device::Cpu,
            dtype: DType::F32,
        })
    }

    /// Columns of the augmented embedding input: a patch, then a one-hot position, padded to a multiple
    /// of 8 (16-byte rows for the tensor-core GEMM).
    fn augmented_width(&self) -> usize {
        let cfg = &self.config;
        (cfg.num_channels * cfg.patch_size * cfg.patch_size + cfg.tokens_per_tile())
            .next_multiple_of(8)
    }

    /// `[W | P]` (see [`Self::to_device`]) in f32, with the patch conv's bias.
    fn augmented_patch_embedding(&self) -> Result<Linear> {
        let cfg = &self.config;
        let (t, c) = (cfg.tokens_per_tile(), cfg.hidden_size);
        let patch = cfg.num_channels * cfg.patch_size * cfg.patch_size;
        let width = self.augmented_width();
        let Linear::Dense { weight, bias } = &self.embeddings.patch_embedding else {
            return Err(
                awq_kernels::Error::Unsupported("a non-dense patch embedding".into()).into(),
            );
        };
        let w = weight.to_f32_vec()?;
        let b = bias.clone().unwrap_or_else(|| vec![0.0; c]);
        let class = self.embeddings.class_embedding.to_f32_vec()?;
        let pos = self.embeddings.position_embedding.to_f32_vec()?;
        let mut out = vec![0.0f32; c * width];
        for j in 0..c {
            let row = &mut out[j * width..(j + 1) * width];
            row[..patch].copy_from_slice(&w[j * patch..(j + 1) * patch]);
            row[patch] = class[j] + pos[j] - b[j];
            for i in 1..t {
                row[patch + i] = pos[i * c + j];
            }
        }
        Ok(Linear::Dense {
            weight: Tensor::from_vec(out, &[c, width])?,
            bias: Some(b),
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
        if let Some(embedding) = &self.embeddings.augmented {
            // On a GPU all tiles go through together: the activations of 13 tiles of the 6B fit easily.
            // Only the pixels move to the device; the patch rows with their one-hot positions are made
            // there (13 tiles of the 6B: 31 MB of pixels instead of 43 MB of mostly zero rows).
            let input = patches_with_positions(
                &pixels.to_device(self.device)?,
                cfg.patch_size,
                self.augmented_width(),
                self.dtype,
            )?;
            let mut x = embedding.forward(&input)?; // [n·T, C]
            for layer in &self.layers[..layers] {
                x = self.layer_forward(layer, x, n)?;
            }
            return Ok(x.reshape(&[n, t, c])?);
        }
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
        let (mut q, mut k, v) = match &attn.qkv {
            QkvProjection::Fused(qkv) => {
                let qkv = qkv.forward(&a)?; // [m·T, 3C]
                let mut parts = split_last(&qkv, &[c, c, c])?.into_iter();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(q), Some(k), Some(v)) => (q, k, v),
                    _ => unreachable!("split_last returns one tensor per width"),
                }
            }
            QkvProjection::Split { q, k, v } => (q.forward(&a)?, k.forward(&a)?, v.forward(&a)?),
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
        residual(&mut x, &attn.proj.forward(&o)?, layer.ls1.as_ref())?;

        let a = layer.norm2.forward(&x, eps)?;
        let h = activation::gelu(&layer.mlp.fc1.forward(&a)?)?;
        residual(&mut x, &layer.mlp.fc2.forward(&h)?, layer.ls2.as_ref())?;
        Ok(x)
    }
}

/// `x += ls ∘ y`, or `x += y` when the layer scale is folded into the layer that made `y`.
fn residual(x: &mut Tensor, y: &Tensor, ls: Option<&Tensor>) -> Result<()> {
    match ls {
        Some(ls) => add_scaled_inplace(x, y, ls)?,
        None => add_inplace(x, y)?,
    }
    Ok(())
}
