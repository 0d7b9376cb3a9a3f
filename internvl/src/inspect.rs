//! `internvl inspect`: what a checkpoint folder holds, what the model needs from it, and the memory it takes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display};
use std::path::Path;

use awq_kernels::weights::{TensorProblem, WeightFormat};
use awq_kernels::{DTypeRule, TensorSpec, Weights};
use qwen2::Qwen2Config;
use serde_json::Value;

use crate::checkpoint::{llm_config_and_prefix, read_json, stop_ids};
use crate::{Error, Result, TextTokenizer};

/// The InternViT part of an InternVL config (spec 1.3), as far as tensor shapes depend on it.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSummary {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The tile side (`force_image_size` when the top level sets it).
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// `layer_norm` (weight and bias) or `rms_norm` (weight only).
    pub norm_type: String,
    pub qkv_bias: bool,
    pub qk_normalization: bool,
    /// `downsample_ratio` of the pixel shuffle (0.5: 4 ViT tokens into one LLM token).
    pub downsample_ratio: f64,
}

fn usize_of(v: &Value, key: &str, origin: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| Error::BadFile {
            path: origin.to_string(),
            reason: format!("`vision_config.{key}` is missing or not a number"),
        })
}

impl VisionSummary {
    /// Reads `vision_config` (and the top-level `force_image_size`, `downsample_ratio`) of an InternVL config.
    pub fn from_config(root: &Value, origin: &str) -> Result<Option<VisionSummary>> {
        let Some(v) = root.get("vision_config") else {
            return Ok(None);
        };
        let image_size = match root.get("force_image_size").and_then(Value::as_u64) {
            Some(n) => n as usize,
            None => usize_of(v, "image_size", origin)?,
        };
        let summary = VisionSummary {
            hidden_size: usize_of(v, "hidden_size", origin)?,
            intermediate_size: usize_of(v, "intermediate_size", origin)?,
            num_hidden_layers: usize_of(v, "num_hidden_layers", origin)?,
            num_attention_heads: usize_of(v, "num_attention_heads", origin)?,
            image_size,
            patch_size: usize_of(v, "patch_size", origin)?,
            num_channels: v.get("num_channels").and_then(Value::as_u64).unwrap_or(3) as usize,
            norm_type: v
                .get("norm_type")
                .and_then(Value::as_str)
                .unwrap_or("rms_norm")
                .to_string(),
            qkv_bias: v.get("qkv_bias").and_then(Value::as_bool).unwrap_or(false),
            qk_normalization: v
                .get("qk_normalization")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            downsample_ratio: root
                .get("downsample_ratio")
                .and_then(Value::as_f64)
                .unwrap_or(0.5),
        };
        if summary.patch_size == 0 || !summary.image_size.is_multiple_of(summary.patch_size) {
            return Err(Error::BadFile {
                path: origin.to_string(),
                reason: format!(
                    "image size {} is not a multiple of the patch size {}",
                    summary.image_size, summary.patch_size
                ),
            });
        }
        Ok(Some(summary))
    }

    /// The tensors of `vision_model.*` (spec 2.4) and `mlp1.*` (spec 3.3) for an LLM of width `llm_hidden`.
    pub fn expected_tensors(&self, llm_hidden: usize) -> Vec<TensorSpec> {
        let (c, i) = (self.hidden_size, self.intermediate_size);
        let grid = self.image_size / self.patch_size;
        let f = |name: String, shape: &[usize]| TensorSpec::new(name, shape, DTypeRule::Float);
        let e = "vision_model.embeddings.";
        let mut specs = vec![
            f(format!("{e}class_embedding"), &[1, 1, c]),
            f(
                format!("{e}patch_embedding.weight"),
                &[c, self.num_channels, self.patch_size, self.patch_size],
            ),
            f(format!("{e}patch_embedding.bias"), &[c]),
            f(format!("{e}position_embedding"), &[1, grid * grid + 1, c]),
        ];
        let layer_norm = self.norm_type == "layer_norm";
        for l in 0..self.num_hidden_layers {
            let p = format!("vision_model.encoder.layers.{l}.");
            for norm in ["norm1", "norm2"] {
                specs.push(f(format!("{p}{norm}.weight"), &[c]));
                if layer_norm {
                    specs.push(f(format!("{p}{norm}.bias"), &[c]));
                }
            }
            specs.push(f(format!("{p}attn.qkv.weight"), &[3 * c, c]));
            if self.qkv_bias {
                specs.push(f(format!("{p}attn.qkv.bias"), &[3 * c]));
            }
            if self.qk_normalization {
                specs.push(f(format!("{p}attn.q_norm.weight"), &[c]));
                specs.push(f(format!("{p}attn.k_norm.weight"), &[c]));
            }
            specs.push(f(format!("{p}attn.proj.weight"), &[c, c]));
            specs.push(f(format!("{p}attn.proj.bias"), &[c]));
            specs.push(f(format!("{p}ls1"), &[c]));
            specs.push(f(format!("{p}ls2"), &[c]));
            specs.push(f(format!("{p}mlp.fc1.weight"), &[i, c]));
            specs.push(f(format!("{p}mlp.fc1.bias"), &[i]));
            specs.push(f(format!("{p}mlp.fc2.weight"), &[c, i]));
            specs.push(f(format!("{p}mlp.fc2.bias"), &[c]));
        }
        let per_token = (1.0 / self.downsample_ratio).powi(2).round() as usize;
        let c4 = c * per_token;
        let h = llm_hidden;
        specs.extend([
            f("mlp1.0.weight".into(), &[c4]),
            f("mlp1.0.bias".into(), &[c4]),
            f("mlp1.1.weight".into(), &[h, c4]),
            f("mlp1.1.bias".into(), &[h]),
            f("mlp1.3.weight".into(), &[h, h]),
            f("mlp1.3.bias".into(), &[h]),
        ]);
        specs
    }
}

/// Memory a checkpoint needs to serve a context of `context` tokens (one sequence).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    pub context: usize,
    /// Every tensor as stored (memory-mapped on the CPU, uploaded as is to a GPU).
    pub weight_bytes: u64,
    /// The LLM's KV cache for `context` tokens in f32 (the CPU engine's cache).
    pub kv_cpu_bytes: u64,
    /// The same in f16 (a GPU cache).
    pub kv_gpu_bytes: u64,
}

/// Everything `internvl inspect` reports.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    pub dir: String,
    pub architecture: String,
    pub format: WeightFormat,
    pub files: Vec<String>,
    pub vision: Option<VisionSummary>,
    pub llm: Qwen2Config,
    /// Where the LLM's tensors live (`language_model.` in an InternVL checkpoint).
    pub llm_prefix: String,
    pub tensor_count: usize,
    /// Stored dtype -> (tensor count, bytes).
    pub dtypes: BTreeMap<String, (usize, u64)>,
    pub special_tokens: Vec<(String, u32)>,
    pub stop_ids: Vec<u32>,
    /// Needed tensors that are missing or have the wrong shape or dtype.
    pub problems: Vec<TensorProblem>,
    /// Tensors present but not needed by the model.
    pub unused: Vec<String>,
    pub memory: MemoryEstimate,
}

/// Inspects a checkpoint folder; `context` sizes the KV cache in the memory estimate.
pub fn inspect(dir: &Path, context: usize) -> Result<CheckpointReport> {
    let config_path = dir.join("config.json");
    let origin = config_path.display().to_string();
    let root = read_json(&config_path)?;
    let (llm_json, prefix) = llm_config_and_prefix(&root);
    let llm = Qwen2Config::from_json(llm_json, &root, &origin)?;
    let vision = VisionSummary::from_config(&root, &origin)?;
    let weights = Weights::from_dir(dir)?;

    let mut specs = qwen2::expected_tensors(&llm, prefix);
    if let Some(v) = &vision {
        specs.extend(v.expected_tensors(llm.hidden_size));
    }
    let problems = weights.check(&specs);
    let needed: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let infos = weights.infos();
    let unused = infos
        .iter()
        .filter(|t| !needed.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    let mut dtypes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &infos {
        let e = dtypes.entry(t.dtype_name.clone()).or_default();
        e.0 += 1;
        e.1 += t.nbytes as u64;
    }
    let weight_bytes = infos.iter().map(|t| t.nbytes as u64).sum();
    let kv_elems = 2
        * llm.num_hidden_layers as u64
        * llm.num_key_value_heads as u64
        * llm.head_dim as u64
        * context as u64;

    let tokenizer_path = dir.join("tokenizer.json");
    let (special_tokens, stops) = if tokenizer_path.exists() {
        let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
        let gen_path = dir.join("generation_config.json");
        let gen = if gen_path.exists() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        (
            tokenizer.special_tokens(),
            stop_ids(gen.as_ref(), &tokenizer),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let architecture = root
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    Ok(CheckpointReport {
        dir: dir.display().to_string(),
        architecture,
        format: weights.format(),
        files: weights
            .file_names()
            .into_iter()
            .map(str::to_string)
            .collect(),
        vision,
        llm,
        llm_prefix: prefix.to_string(),
        tensor_count: infos.len(),
        dtypes,
        special_tokens,
        stop_ids: stops,
        problems,
        unused,
        memory: MemoryEstimate {
            context,
            weight_bytes,
            kv_cpu_bytes: kv_elems * 4,
            kv_gpu_bytes: kv_elems * 2,
        },
    })
}

/// Bytes in binary units, e.g. `1.50 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl Display for CheckpointReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.llm;
        writeln!(f, "checkpoint    {}", self.dir)?;
        writeln!(f, "architecture  {}", self.architecture)?;
        writeln!(
            f,
            "weights       {}, {} file(s): {}",
            self.format,
            self.files.len(),
            self.files.join(", ")
        )?;
        if let Some(v) = &self.vision {
            writeln!(
                f,
                "vision        InternViT hidden {}, {} layers, {} heads, intermediate {}, {} norm, qkv bias {}, \
                 qk norm {}, tile {}px / patch {}",
                v.hidden_size,
                v.num_hidden_layers,
                v.num_attention_heads,
                v.intermediate_size,
                v.norm_type,
                v.qkv_bias,
                v.qk_normalization,
                v.image_size,
                v.patch_size
            )?;
        }
        writeln!(
            f,
            "llm           Qwen2 hidden {}, {} layers, {} heads / {} KV heads (head dim {}), intermediate {}, \
             vocab {}, tensors under `{}`",
            l.hidden_size,
            l.num_hidden_layers,
            l.num_attention_heads,
            l.num_key_value_heads,
            l.head_dim,
            l.intermediate_size,
            l.vocab_size,
            self.llm_prefix
        )?;
        let dtype = l.dtype.map(|d| d.to_string()).unwrap_or("unset".into());
        writeln!(f, "dtype         {dtype} (config)")?;
        match l.awq {
            Some(awq) => writeln!(
                f,
                "quantization  AWQ 4-bit, group size {} (LLM linears)",
                awq.group_size
            )?,
            None => writeln!(f, "quantization  none")?,
        }
        let total: u64 = self.dtypes.values().map(|(_, b)| b).sum();
        let by_dtype: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, (n, b))| format!("{d} {n} ({})", human_bytes(*b)))
            .collect();
        writeln!(
            f,
            "tensors       {} ({}): {}",
            self.tensor_count,
            human_bytes(total),
            by_dtype.join(", ")
        )?;
        let specials: Vec<String> = self
            .special_tokens
            .iter()
            .map(|(t, id)| format!("{t}={id}"))
            .collect();
        writeln!(f, "special       {}", specials.join(" "))?;
        writeln!(f, "stop ids      {:?}", self.stop_ids)?;
        if self.problems.is_empty() {
            writeln!(f, "needed        all tensors the model needs are present, with the right shapes and dtypes")?;
        } else {
            writeln!(f, "needed        {} problem(s):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
        }
        if self.unused.is_empty() {
            writeln!(f, "unused        none")?;
        } else {
            writeln!(
                f,
                "unused        {} tensor(s) the model does not read:",
                self.unused.len()
            )?;
            for n in &self.unused {
                writeln!(f, "  {n}")?;
            }
        }
        let m = &self.memory;
        writeln!(
            f,
            "memory (CPU)  {} weights (memory-mapped) + {} KV cache (f32, {} tokens) = {}",
            human_bytes(m.weight_bytes),
            human_bytes(m.kv_cpu_bytes),
            m.context,
            human_bytes(m.weight_bytes + m.kv_cpu_bytes)
        )?;
        write!(
            f,
            "memory (GPU)  {} weights + {} KV cache (f16, {} tokens) = {} (plus activations and workspace)",
            human_bytes(m.weight_bytes),
            human_bytes(m.kv_gpu_bytes),
            m.context,
            human_bytes(m.weight_bytes + m.kv_gpu_bytes)
        )
    }
}
