//! Synthetic full-size models: the exact configuration and tensor shapes of a family member
//! (`internvl2_5-1b`, `-4b`, `-38b`, `-78b`, `-78b-awq`), with pseudo-random weights made in memory, so
//! benchmarks run at the real scale with nothing downloaded. The answers are gibberish by construction.
//!
//! The weights are written straight into one in-memory safetensors image (filled in parallel) and loaded
//! through the ordinary checkpoint path, so a synthetic model exercises exactly the loader, the dtype
//! handling and the kernels a real checkpoint does. Values are scaled so that activations stay in the
//! range real checkpoints have (no f16 overflow through 80 layers): linear weights uniform with standard
//! deviation 0.02 (output projections of a residual branch divided by sqrt(2 · layers)), norms 1, biases
//! and layer scales small; AWQ layers random nibbles with zero point near 8 and scales that give the same
//! spread after dequantization.

use std::sync::Arc;

use awq_kernels::{DType, DTypeRule, TensorSpec};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::inspect::VisionSummary;
use crate::{Error, InternVlModel, Result};

/// The family members this module can make.
pub const NAMES: [&str; 5] = [
    "internvl2_5-1b",
    "internvl2_5-4b",
    "internvl2_5-38b",
    "internvl2_5-78b",
    "internvl2_5-78b-awq",
];

/// Shapes of one family member (spec 1.3 and 1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vit_6b: bool,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub awq: bool,
}

/// The shape named `name` (one of [`NAMES`]).
pub fn shape(name: &str) -> Result<Shape> {
    let llm = |hidden, layers, heads, kv_heads, intermediate| Shape {
        vit_6b: false,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        awq: false,
    };
    Ok(match name {
        "internvl2_5-1b" => llm(896, 24, 14, 2, 4864),
        "internvl2_5-4b" => llm(2048, 36, 16, 2, 11008),
        "internvl2_5-38b" => Shape {
            vit_6b: true,
            ..llm(5120, 64, 40, 8, 27648)
        },
        "internvl2_5-78b" => Shape {
            vit_6b: true,
            ..llm(8192, 80, 64, 8, 29568)
        },
        "internvl2_5-78b-awq" => Shape {
            vit_6b: true,
            awq: true,
            ..llm(8192, 80, 64, 8, 29568)
        },
        other => {
            return Err(Error::BadFile {
                path: "--synthetic".into(),
                reason: format!(
                    "unknown synthetic model `{other}`; expected one of {}",
                    NAMES.join(", ")
                ),
            })
        }
    })
}

/// The `config.json` of a family member, as the released checkpoints have it (spec 1.2-1.4, 9.5).
pub fn config_json(shape: &Shape) -> Value {
    let vision = if shape.vit_6b {
        json!({
            "hidden_size": 3200, "num_hidden_layers": 45, "num_attention_heads": 25,
            "intermediate_size": 12800, "norm_type": "rms_norm", "qkv_bias": false,
            "qk_normalization": true, "initializer_factor": 0.1,
        })
    } else {
        json!({
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "norm_type": "layer_norm", "qkv_bias": true,
            "qk_normalization": false, "initializer_factor": 1.0,
        })
    };
    let mut vision = vision;
    for (k, v) in [
        ("architectures", json!(["InternVisionModel"])),
        ("model_type", json!("intern_vit_6b")),
        ("hidden_act", json!("gelu")),
        ("layer_norm_eps", json!(1e-6)),
        ("image_size", json!(448)),
        ("patch_size", json!(14)),
        ("num_channels", json!(3)),
        ("torch_dtype", json!("bfloat16")),
    ] {
        vision[k] = v;
    }
    let dtype = if shape.awq { "float16" } else { "bfloat16" };
    let mut llm = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.intermediate,
        "vocab_size": 151674,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "use_sliding_window": false,
        "torch_dtype": dtype,
    });
    if shape.awq {
        llm["quantization_config"] = json!({
            "quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 128, "zero_point": true,
        });
    }
    json!({
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "dynamic_image_size": true,
        "force_image_size": 448,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "use_thumbnail": true,
        "tie_word_embeddings": false,
        "torch_dtype": dtype,
        "vision_config": vision,
        "llm_config": llm,
    })
}

/// How one tensor is filled.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Uniform in [-a, a] (standard deviation a / sqrt(3)).
    Uniform(f32),
    Constant(f32),
    /// Random nibbles in every 4-bit slot (AWQ `qweight`).
    Nibbles,
    /// Every nibble 8 (AWQ `qzeros`: the middle of the range).
    Eights,
}

/// The dtype and fill of a needed tensor.
fn plan(spec: &TensorSpec, float: DType, layers: usize) -> (DType, Fill) {
    let name = spec.name.as_str();
    if let DTypeRule::Exact(d) = spec.dtype {
        let fill = if name.ends_with("qzeros") {
            Fill::Eights
        } else {
            Fill::Nibbles
        };
        return (d, fill);
    }
    // Standard deviation 0.02 is uniform in ±0.0346.
    let base = 0.02 * 3f32.sqrt();
    let residual_out = ["o_proj.", "down_proj.", "attn.proj.", "mlp.fc2."]
        .iter()
        .any(|p| name.contains(p));
    let fill = if name.ends_with("norm.weight")
        || name.contains("layernorm")
        || name.contains("norm1.")
        || name.contains("norm2.")
        || name.ends_with("q_norm.weight")
        || name.ends_with("k_norm.weight")
        || name == "mlp1.0.weight"
    {
        Fill::Constant(1.0)
    } else if name.ends_with(".ls1") || name.ends_with(".ls2") {
        Fill::Constant(0.1)
    } else if name.ends_with("bias") {
        Fill::Uniform(0.01)
    } else if name.ends_with("scales") {
        // (q - 8) spans ±8 uniformly (std 4.6): this scale gives the dequantized weights std 0.02, or
        // the residual-branch scaling for o_proj and down_proj.
        let std = if residual_out {
            0.02 / (2.0 * layers as f32).sqrt()
        } else {
            0.02
        };
        Fill::Constant(std / 4.6)
    } else if residual_out {
        Fill::Uniform(base / (2.0 * layers as f32).sqrt())
    } else {
        Fill::Uniform(base)
    };
    (float, fill)
}

/// A cheap, well-mixed hash of an element index (splitmix64), for reproducible parallel filling.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Writes `fill` over `out` (elements of `dtype`), element `i` seeded by `seed + i`.
fn fill_bytes(out: &mut [u8], dtype: DType, fill: Fill, seed: u64) {
    const CHUNK: usize = 1 << 20;
    let size = dtype.size();
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = (c * CHUNK / size) as u64;
            for (i, element) in chunk.chunks_exact_mut(size).enumerate() {
                let r = mix(seed ^ (first + i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let value = match fill {
                    Fill::Uniform(a) => ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a,
                    Fill::Constant(v) => v,
                    Fill::Nibbles => {
                        element.copy_from_slice(&(r as u32).to_le_bytes()[..size]);
                        continue;
                    }
                    Fill::Eights => {
                        element.copy_from_slice(&0x8888_8888u32.to_le_bytes()[..size]);
                        continue;
                    }
                };
                match dtype {
                    DType::F32 => element.copy_from_slice(&value.to_le_bytes()),
                    DType::F16 => {
                        element.copy_from_slice(&half::f16::from_f32(value).to_le_bytes())
                    }
                    DType::BF16 => {
                        element.copy_from_slice(&half::bf16::from_f32(value).to_le_bytes())
                    }
                    _ => element.fill(0),
                }
            }
        });
}

/// The safetensors image of `specs` (optional ones included), filled as [`plan`] says.
fn safetensors_image(specs: &[TensorSpec], float: DType, layers: usize) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut placed = Vec::with_capacity(specs.len());
    for spec in specs {
        let (dtype, fill) = plan(spec, float, layers);
        let bytes = spec.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            spec.name.clone(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": spec.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        placed.push((offset, bytes, dtype, fill));
        offset += bytes;
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    // The data starts 8-aligned, as safetensors writers pad it.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let start = 8 + text.len();
    let mut image = Vec::with_capacity(start + offset);
    image.extend_from_slice(&(text.len() as u64).to_le_bytes());
    image.extend_from_slice(&text);
    image.resize(start + offset, 0);
    let mut rest = &mut image[start..];
    for (i, &(_, bytes, dtype, fill)) in placed.iter().enumerate() {
        let (tensor, tail) = rest.split_at_mut(bytes);
        fill_bytes(tensor, dtype, fill, mix(i as u64 + 1));
        rest = tail;
    }
    image
}

/// The weight bytes of the named model (what [`model`] allocates on the CPU before any device copy).
pub fn weight_bytes(name: &str) -> Result<u64> {
    let shape = shape(name)?;
    let root = config_json(&shape);
    let (specs, float) = specs_of(&root, &shape)?;
    Ok(specs
        .iter()
        .map(|s| {
            let (dtype, _) = plan(s, float, shape.layers);
            (s.shape.iter().product::<usize>() * dtype.size()) as u64
        })
        .sum())
}

fn specs_of(root: &Value, shape: &Shape) -> Result<(Vec<TensorSpec>, DType)> {
    let origin = "synthetic config";
    let vision = VisionSummary::from_config(root, origin)?.ok_or_else(|| Error::BadFile {
        path: origin.into(),
        reason: "no vision_config".into(),
    })?;
    let llm = qwen2::Qwen2Config::from_json(&root["llm_config"], root, origin)?;
    let mut specs = vision.expected_tensors(shape.hidden);
    specs.extend(qwen2::expected_tensors(&llm, "language_model."));
    let float = if shape.awq { DType::F16 } else { DType::BF16 };
    Ok((specs, float))
}

/// The named synthetic model, on the CPU (move it with [`InternVlModel::to_device`]). Uses the embedded
/// checkpoint's tokenizer (the image tokens and the template's special tokens are what matter).
pub fn model(name: &str) -> Result<InternVlModel> {
    let shape = shape(name)?;
    let root = config_json(&shape);
    let (specs, float) = specs_of(&root, &shape)?;
    let image = safetensors_image(&specs, float, shape.layers);
    let (tokenizer, generation_config) = crate::embedded::internvl_tokenizer_files();
    InternVlModel::from_shared(
        &format!("synthetic {name} (random weights)"),
        &root.to_string(),
        Arc::new(image),
        tokenizer,
        Some(generation_config),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_follow_the_spec_tables() {
        let s = shape("internvl2_5-78b-awq").unwrap();
        assert_eq!((s.hidden, s.layers, s.heads, s.kv_heads), (8192, 80, 64, 8));
        assert!(s.vit_6b && s.awq);
        assert_eq!(shape("internvl2_5-1b").unwrap().intermediate, 4864);
        assert!(shape("internvl2_5-7b").is_err());
    }

    #[test]
    fn the_78b_awq_tensors_have_the_released_shapes_and_sizes() {
        let shape = shape("internvl2_5-78b-awq").unwrap();
        let (specs, float) = specs_of(&config_json(&shape), &shape).unwrap();
        assert_eq!(float, DType::F16);
        let find = |n: &str| specs.iter().find(|s| s.name == n).unwrap().shape.clone();
        // Spec 9.3.
        let l = "language_model.model.layers.0.mlp.";
        assert_eq!(find(&format!("{l}down_proj.qweight")), [29568, 1024]);
        assert_eq!(find(&format!("{l}down_proj.qzeros")), [231, 1024]);
        assert_eq!(find(&format!("{l}down_proj.scales")), [231, 8192]);
        assert_eq!(find(&format!("{l}gate_proj.qweight")), [8192, 3696]);
        // 70.2B int4 parameters (+1.6% scales and zeros): 33 GiB; f16 embeddings and head 4.6 GiB; the 6B ViT
        // in bf16 11 GiB. Measured: 49.2 GiB.
        let gib = weight_bytes("internvl2_5-78b-awq").unwrap() as f64 / (1u64 << 30) as f64;
        assert!((48.0..50.5).contains(&gib), "{gib} GiB");
    }

    #[test]
    fn fills_are_reproducible_and_have_the_planned_spread() {
        let mut a = vec![0u8; 4 << 20];
        let mut b = vec![0u8; 4 << 20];
        fill_bytes(&mut a, DType::F32, Fill::Uniform(1.0), 7);
        fill_bytes(&mut b, DType::F32, Fill::Uniform(1.0), 7);
        assert_eq!(a, b);
        let values: Vec<f32> = bytemuck::cast_slice::<u8, f32>(&a).to_vec();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "{var}");
        assert!(values.iter().all(|v| v.abs() <= 1.0));
        fill_bytes(&mut b, DType::F32, Fill::Uniform(1.0), 8);
        assert_ne!(a, b);
    }
}
