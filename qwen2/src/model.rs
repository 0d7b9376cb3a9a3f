//! The Qwen2 decoder (follows transformers `models/qwen2/modeling_qwen2.py`); field names follow the
//! checkpoint keys.

use awq_kernels::awq_format::PACK_FACTOR;
use awq_kernels::kv_cache::{BlockTable, KvCacheConfig, KvSlots, PagedKvCache};
use awq_kernels::ops::attention::AttnSeq;
use awq_kernels::ops::linear::Linear;
use awq_kernels::ops::norm::{add_rms_norm, rms_norm};
use awq_kernels::ops::{
    activation, add_inplace,
    embedding::embedding,
    gather_rows,
    rope::{rope_inplace_prepared, RopeInputs},
};
use awq_kernels::{DType, DTypeRule, Device, Tensor, TensorSpec, WeightsScope};

use crate::attention::ForwardAttention;
use crate::{Error, Qwen2Config, Result};

/// The projections that read the same input: q, k, v or gate, up. As loaded they are separate layers; on a
/// GPU (or after [`Qwen2::with_fused_projections`]) they are one layer whose output holds theirs side by
/// side, so one GEMM streams all their weights (for Qwen2.5-72B: q|k|v 8192 x 10240 and gate|up 8192 x
/// 59136 instead of five launches of which k and v are too short to reach the memory bandwidth).
#[derive(Clone)]
enum Projections {
    Separate(Vec<Linear>),
    Fused {
        linear: Box<Linear>,
        widths: Vec<usize>,
    },
}

impl Projections {
    fn fuse(&self) -> Result<Projections> {
        Ok(match self {
            Projections::Separate(parts) => {
                let refs: Vec<&Linear> = parts.iter().collect();
                Projections::Fused {
                    linear: Box::new(Linear::concat_out(&refs)?),
                    widths: parts.iter().map(Linear::out_features).collect(),
                }
            }
            fused => fused.clone(),
        })
    }

    /// These projections fused into one layer on `device` (a GPU joins the parts it receives one by one:
    /// see [`Linear::concat_out_to_device`]).
    fn fused_on(&self, device: Device, dtype: DType) -> Result<Projections> {
        match self {
            Projections::Separate(parts) => Ok(Projections::Fused {
                linear: Box::new(Linear::concat_out_to_device(
                    &parts.iter().collect::<Vec<_>>(),
                    device,
                    dtype,
                )?),
                widths: parts.iter().map(Linear::out_features).collect(),
            }),
            fused => fused.to_device(device, dtype),
        }
    }

    fn to_device(&self, device: Device, dtype: DType) -> Result<Projections> {
        Ok(match self {
            Projections::Separate(parts) => Projections::Separate(
                parts
                    .iter()
                    .map(|p| p.to_device(device, dtype))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Projections::Fused { linear, widths } => Projections::Fused {
                linear: Box::new(linear.to_device(device, dtype)?),
                widths: widths.clone(),
            },
        })
    }

    /// q `[t, heads, d]` of `x`, rotated, after k (rotated) and v went into layer `layer` of the cache at
    /// the prepared slots. The fused q|k|v output is taken apart by one cache call (one kernel on a GPU).
    fn attention_inputs(
        &self,
        x: &Tensor,
        (heads, kv_heads, d): (usize, usize, usize),
        rope: &RopeInputs,
        cache: &mut PagedKvCache,
        layer: usize,
        slots: &KvSlots,
    ) -> Result<Tensor> {
        let t = x.dim(0);
        Ok(match self {
            Projections::Separate(p) => {
                let (q, k, v) = (p[0].forward(x)?, p[1].forward(x)?, p[2].forward(x)?);
                let mut q = q.reshape(&[t, heads, d])?;
                let mut k = k.reshape(&[t, kv_heads, d])?;
                rope_inplace_prepared(&mut q, rope)?;
                rope_inplace_prepared(&mut k, rope)?;
                cache.write_rows_prepared(layer, &k.reshape(&[t, kv_heads * d])?, &v, slots)?;
                q
            }
            Projections::Fused { linear, .. } => {
                cache.write_qkv_rope(layer, &linear.forward(x)?, heads, rope, slots)?
            }
        })
    }

    /// silu(gate(x)) · up(x).
    fn gated(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Projections::Separate(p) => activation::silu_mul(&p[0].forward(x)?, &p[1].forward(x)?)?,
            Projections::Fused { linear, .. } => activation::silu_mul_halves(&linear.forward(x)?)?,
        })
    }
}

struct Attention {
    /// q_proj, k_proj, v_proj.
    qkv: Projections,
    o_proj: Linear,
}

struct Mlp {
    /// gate_proj, up_proj.
    gate_up: Projections,
    down_proj: Linear,
}

struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// One sequence's share of a forward call.
pub struct SeqInput<'a> {
    /// Its KV blocks; positions continue from `table.len()`, and the new tokens are appended.
    pub table: &'a mut BlockTable,
    /// Its new tokens (rows of the input, in the order of the slice).
    pub len: usize,
}

/// What a forward call returns.
pub struct ForwardOutput {
    /// `[rows, vocab]`: the last row of each sequence, or every row when asked for all.
    pub logits: Tensor,
    /// The output of every decoder layer `[t, hidden]` (before the final norm), when asked for.
    pub layer_outputs: Vec<Tensor>,
}

/// Options of [`Qwen2::forward`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Logits for every input row instead of only the last row of each sequence.
    pub all_logits: bool,
    /// Keep every decoder layer's output (for tests against a reference).
    pub keep_layer_outputs: bool,
}

pub struct Qwen2 {
    config: Qwen2Config,
    /// Where the weights live and the forward runs.
    device: Device,
    /// The activation dtype: f32 on the CPU, the checkpoint's float dtype on a GPU.
    dtype: DType,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Linear,
    /// lm_head is the embedding table (a tied checkpoint without its own lm_head): on a device both use one
    /// copy (151k × hidden values, 136 MB for the 0.5B model in f16).
    lm_head_tied: bool,
}

/// Every tensor [`Qwen2::load`] reads, with its shape and dtype, named under `prefix` (`""` for a Qwen2
/// checkpoint, `language_model.` for an InternVL one), so a checkpoint can be checked in full before loading.
pub fn expected_tensors(c: &Qwen2Config, prefix: &str) -> Vec<TensorSpec> {
    let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let float = |name: String, shape: &[usize]| TensorSpec::new(name, shape, DTypeRule::Float);
    let mut specs = vec![float(
        format!("{prefix}model.embed_tokens.weight"),
        &[c.vocab_size, h],
    )];
    let linear = |specs: &mut Vec<TensorSpec>, p: String, k: usize, n: usize, bias: bool| {
        match c.awq {
            Some(awq) if awq.group_size > 0 => {
                let i32_ = DTypeRule::Exact(DType::I32);
                let (g, packed) = (k / awq.group_size, n / PACK_FACTOR);
                specs.push(TensorSpec::new(format!("{p}qweight"), &[k, packed], i32_));
                specs.push(TensorSpec::new(format!("{p}qzeros"), &[g, packed], i32_));
                specs.push(float(format!("{p}scales"), &[g, n]));
            }
            _ => specs.push(float(format!("{p}weight"), &[n, k])),
        }
        if bias {
            specs.push(float(format!("{p}bias"), &[n]));
        }
    };
    for i in 0..c.num_hidden_layers {
        let l = format!("{prefix}model.layers.{i}.");
        specs.push(float(format!("{l}input_layernorm.weight"), &[h]));
        linear(&mut specs, format!("{l}self_attn.q_proj."), h, q_out, true);
        linear(&mut specs, format!("{l}self_attn.k_proj."), h, kv_out, true);
        linear(&mut specs, format!("{l}self_attn.v_proj."), h, kv_out, true);
        linear(&mut specs, format!("{l}self_attn.o_proj."), q_out, h, false);
        specs.push(float(format!("{l}post_attention_layernorm.weight"), &[h]));
        linear(&mut specs, format!("{l}mlp.gate_proj."), h, inter, false);
        linear(&mut specs, format!("{l}mlp.up_proj."), h, inter, false);
        linear(&mut specs, format!("{l}mlp.down_proj."), inter, h, false);
    }
    specs.push(float(format!("{prefix}model.norm.weight"), &[h]));
    // lm_head is never quantized (spec 9.2); a tied checkpoint may leave it out.
    specs.push(TensorSpec {
        optional: c.tie_word_embeddings,
        ..float(format!("{prefix}lm_head.weight"), &[c.vocab_size, h])
    });
    specs
}

impl Qwen2 {
    /// Loads from `scope`, which holds `model.*` and `lm_head.*` (the root of a Qwen2 checkpoint, or
    /// `language_model.` of an InternVL one). Every tensor is checked for its shape as it is loaded.
    pub fn load(config: &Qwen2Config, scope: &WeightsScope) -> Result<Qwen2> {
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let model = scope.pp("model");
        // The vocabulary is sized from the tensor (InternVL resizes it; spec 1.4), checked against the config.
        let embed_tokens = model.get_float("embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = model.pp("layers").pp(i);
            let attn = l.pp("self_attn");
            let mlp = l.pp("mlp");
            layers.push(DecoderLayer {
                input_layernorm: l.get_float("input_layernorm.weight", &[h])?,
                self_attn: Attention {
                    qkv: Projections::Separate(vec![
                        Linear::load(&attn.pp("q_proj"), h, q_out, true, c.awq)?,
                        Linear::load(&attn.pp("k_proj"), h, kv_out, true, c.awq)?,
                        Linear::load(&attn.pp("v_proj"), h, kv_out, true, c.awq)?,
                    ]),
                    o_proj: Linear::load(&attn.pp("o_proj"), q_out, h, false, c.awq)?,
                },
                post_attention_layernorm: l.get_float("post_attention_layernorm.weight", &[h])?,
                mlp: Mlp {
                    gate_up: Projections::Separate(vec![
                        Linear::load(&mlp.pp("gate_proj"), h, c.intermediate_size, false, c.awq)?,
                        Linear::load(&mlp.pp("up_proj"), h, c.intermediate_size, false, c.awq)?,
                    ]),
                    down_proj: Linear::load(
                        &mlp.pp("down_proj"),
                        c.intermediate_size,
                        h,
                        false,
                        c.awq,
                    )?,
                },
            });
        }
        let norm = model.get_float("norm.weight", &[h])?;
        // lm_head is never quantized (spec 9.2); tied checkpoints reuse the embedding table.
        let lm_head_tied = c.tie_word_embeddings && !scope.contains("lm_head.weight");
        let lm_head = if lm_head_tied {
            Linear::Dense {
                weight: embed_tokens.clone(),
                bias: None,
            }
        } else {
            Linear::load(&scope.pp("lm_head"), h, c.vocab_size, false, None)?
        };
        Ok(Qwen2 {
            config: config.clone(),
            device: Device::Cpu,
            dtype: DType::F32,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_tied,
        })
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype activations and the KV cache have: f32 on the CPU, the checkpoint's float dtype on a GPU.
    pub fn activation_dtype(&self) -> DType {
        self.dtype
    }

    /// Input embeddings made elsewhere (on the CPU, in f32) as this model takes them: on its device, in
    /// its activation dtype.
    pub fn to_model_input(&self, x: Tensor) -> Result<Tensor> {
        if x.device() == self.device && x.dtype() == self.dtype {
            return Ok(x);
        }
        let x = if x.device() == Device::Cpu {
            x
        } else {
            x.to_device(Device::Cpu)?
        };
        Ok(x.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    /// This model with each layer's q|k|v and gate|up projections fused into one layer apiece, as
    /// [`Qwen2::to_device`] arranges them on a GPU; on the CPU the outputs are the same, bit for bit.
    pub fn with_fused_projections(mut self) -> Result<Qwen2> {
        for layer in &mut self.layers {
            layer.self_attn.qkv = layer.self_attn.qkv.fuse()?;
            layer.mlp.gate_up = layer.mlp.gate_up.fuse()?;
        }
        Ok(self)
    }

    /// The model on `device`. On a GPU it computes in the checkpoint's float dtype (f16 or bf16; f16 when
    /// the config does not say), with f32 accumulation inside the kernels.
    pub fn to_device(&self, device: Device) -> Result<Qwen2> {
        let dtype = match device {
            Device::Cpu => DType::F32,
            Device::Cuda(_) => match self.config.dtype {
                Some(DType::BF16) => DType::BF16,
                _ => DType::F16,
            },
        };
        let t = |x: &Tensor| -> Result<Tensor> {
            if device == Device::Cpu {
                return Ok(x.clone());
            }
            Ok(x.to_dtype(dtype)?.to_device(device)?)
        };
        let l = |x: &Linear| -> Result<Linear> { Ok(x.to_device(device, dtype)?) };
        // On a GPU the projections sharing an input become one GEMM each (joined on the GPU).
        let p = |x: &Projections| -> Result<Projections> {
            if device == Device::Cpu {
                Ok(x.clone())
            } else {
                x.fused_on(device, dtype)
            }
        };
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                Ok(DecoderLayer {
                    input_layernorm: t(&layer.input_layernorm)?,
                    self_attn: Attention {
                        qkv: p(&layer.self_attn.qkv)?,
                        o_proj: l(&layer.self_attn.o_proj)?,
                    },
                    post_attention_layernorm: t(&layer.post_attention_layernorm)?,
                    mlp: Mlp {
                        gate_up: p(&layer.mlp.gate_up)?,
                        down_proj: l(&layer.mlp.down_proj)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = t(&self.embed_tokens)?;
        let lm_head = if self.lm_head_tied && device != Device::Cpu {
            Linear::dense_on_device(embed_tokens.clone())
        } else {
            l(&self.lm_head)?
        };
        Ok(Qwen2 {
            config: self.config.clone(),
            device,
            dtype,
            embed_tokens,
            layers,
            norm: t(&self.norm)?,
            lm_head,
            lm_head_tied: self.lm_head_tied,
        })
    }

    /// A KV cache pool for this model, on its device, with `num_blocks` blocks of `block_size` tokens.
    pub fn new_kv_cache(&self, block_size: usize, num_blocks: usize) -> PagedKvCache {
        self.try_new_kv_cache(block_size, num_blocks)
            .expect("a CPU KV cache always allocates; use try_new_kv_cache on a GPU")
    }

    /// Like [`Self::new_kv_cache`], reporting a failed device allocation.
    pub fn try_new_kv_cache(&self, block_size: usize, num_blocks: usize) -> Result<PagedKvCache> {
        let config = KvCacheConfig {
            layers: self.config.num_hidden_layers,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            block_size,
            num_blocks,
        };
        Ok(PagedKvCache::new_on(config, self.device, self.dtype)?)
    }

    /// Token embeddings `[t, hidden]` (f32), for callers that overwrite some rows (InternVL's image rows).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(embedding(ids, &self.embed_tokens)?)
    }

    /// Forward over token ids of one or more sequences (their tokens concatenated in `seqs` order).
    pub fn forward_ids(
        &self,
        ids: &[u32],
        cache: &mut PagedKvCache,
        seqs: &mut [SeqInput],
        options: ForwardOptions,
    ) -> Result<ForwardOutput> {
        let x = self.embed(ids)?;
        self.forward_embeds(x, cache, seqs, options)
    }

    /// Forward over input embeddings `x` `[t, hidden]`: writes the new keys and values into the cache,
    /// advances each sequence's table and returns logits.
    pub fn forward_embeds(
        &self,
        mut x: Tensor,
        cache: &mut PagedKvCache,
        seqs: &mut [SeqInput],
        options: ForwardOptions,
    ) -> Result<ForwardOutput> {
        let c = &self.config;
        let t: usize = seqs.iter().map(|s| s.len).sum();
        if x.shape() != [t, c.hidden_size] {
            return Err(awq_kernels::Error::Shape {
                op: "qwen2.forward",
                reason: format!("input {:?} is not [{t}, {}]", x.shape(), c.hidden_size),
            }
            .into());
        }
        // Positions and cache space for every sequence, before any compute.
        let mut positions = Vec::with_capacity(t);
        let mut starts = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let past = s.table.len();
            let end = past + s.len;
            if end > c.max_position_embeddings {
                return Err(Error::ContextTooLong {
                    needed: end,
                    limit: c.max_position_embeddings,
                });
            }
            cache.reserve(s.table, end)?;
            starts.push(past);
            positions.extend(past..end);
        }
        // Where each new token's keys and values go, for every layer.
        let mut slots = Vec::with_capacity(t);
        for (s, &past) in seqs.iter().zip(&starts) {
            slots.extend(cache.slots(s.table, past, s.len)?);
        }
        // Prepared (on a GPU: uploaded) once here, not by each layer.
        let kv_slots = cache.prepare_slots(&slots)?;
        let rope = RopeInputs::new(&positions, c.head_dim, c.rope_theta, self.device)?;

        // The attention rows of every sequence, the same in every layer (planned once; see `attention`).
        let mut attn_seqs = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for (s, &past) in seqs.iter().zip(&starts) {
            attn_seqs.push(AttnSeq {
                blocks: s.table.blocks(),
                q_start: row,
                q_len: s.len,
                kv_len: past + s.len,
            });
            row += s.len;
        }
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let mut attention = ForwardAttention::new(
            self.device,
            self.dtype,
            cache,
            attn_seqs,
            c.num_attention_heads,
            scale,
        )?;

        // Each block's output is added to the residual stream `x` [t, hidden] together with the next norm
        // (`add_rms_norm`); `pending` holds the MLP output of the previous layer until then.
        let mut pending: Option<Tensor> = None;
        let mut layer_outputs = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            let a = match pending.take() {
                None => rms_norm(&x, &layer.input_layernorm, c.rms_norm_eps)?,
                Some(mlp_out) => {
                    let a = add_rms_norm(&mut x, &mlp_out, &layer.input_layernorm, c.rms_norm_eps)?;
                    if options.keep_layer_outputs {
                        layer_outputs.push(x.clone());
                    }
                    a
                }
            };
            let attn = &layer.self_attn;
            let heads = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
            let q = attn
                .qkv
                .attention_inputs(&a, heads, &rope, cache, li, &kv_slots)?;
            let o = attention.layer(&q, cache, li)?; // [t, h * d]
            let attn_out = attn.o_proj.forward(o)?;

            let a = add_rms_norm(
                &mut x,
                &attn_out,
                &layer.post_attention_layernorm,
                c.rms_norm_eps,
            )?;
            let m = &layer.mlp;
            let gated = m.gate_up.gated(&a)?;
            pending = Some(m.down_proj.forward(&gated)?);
        }
        for (s, &past) in seqs.iter_mut().zip(&starts) {
            s.table.set_len(past + s.len);
        }

        // The last layer's MLP output meets the final norm; without all logits only the rows that need
        // logits go through it (unless every layer's output is kept, which needs the whole sum).
        let normed = match pending {
            Some(mlp_out) if !options.keep_layer_outputs => {
                if options.all_logits {
                    add_rms_norm(&mut x, &mlp_out, &self.norm, c.rms_norm_eps)?
                } else {
                    let mut selected = self.last_rows(&x, seqs)?;
                    let mlp_out = self.last_rows(&mlp_out, seqs)?;
                    add_rms_norm(&mut selected, &mlp_out, &self.norm, c.rms_norm_eps)?
                }
            }
            pending => {
                if let Some(mlp_out) = pending {
                    add_inplace(&mut x, &mlp_out)?;
                    layer_outputs.push(x.clone());
                }
                let selected = if options.all_logits {
                    x
                } else {
                    self.last_rows(&x, seqs)?
                };
                rms_norm(&selected, &self.norm, c.rms_norm_eps)?
            }
        };
        Ok(ForwardOutput {
            logits: self.lm_head.forward(&normed)?,
            layer_outputs,
        })
    }

    /// The last row of each sequence that has new tokens, `[seqs, hidden]`.
    fn last_rows(&self, x: &Tensor, seqs: &[SeqInput]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(seqs.len());
        let mut end = 0;
        for s in seqs {
            end += s.len;
            if s.len > 0 {
                rows.push(end - 1);
            }
        }
        Ok(gather_rows(x, &rows)?)
    }
}
