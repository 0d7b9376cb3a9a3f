//! Synthetic full-size models: the exact configuration and tensor shapes of a family member
//! (`internvl2_5-1b`, `-4b`, `-38b`, `-78b`, `-78b-awq`), with pseudo-random weights, so benchmarks run at
//! the real scale with nothing downloaded. The answers are gibberish by construction.
//!
//! The weights are a synthetic checkpoint ([`Weights::synthetic`]) loaded through the ordinary path, so a
//! synthetic model exercises exactly the loader, the dtype handling and the kernels a real checkpoint
//! does. No tensor is made before it is needed: moved to a GPU unread, a tensor is made there by a kernel,
//! and the load-time rewrites that touch large weights run there too (the AWQ codes repacked, the fused
//! projections joined, InternViT's qkv rows split and its layer scales folded), so none of the 78B-AWQ's
//! 49 GiB of weights is made in host memory; only small ones are (norms, biases, layer scales, the patch
//! embedding). Read on the host, a tensor is made there with the same bits (the CPU path).
//!
//! Values are scaled so that activations stay in the range real checkpoints have (no f16 overflow through
//! 80 layers): linear weights uniform with standard deviation 0.02 (output projections of a residual
//! branch divided by sqrt(2 · layers)), norms 1, biases and layer scales small; AWQ layers random nibbles
//! with zero point 8 and scales that give the same spread after dequantization.

use std::sync::Arc;

use awq_kernels::synthetic::{mix, Fill};
use awq_kernels::{DType, DTypeRule, TensorSpec, Weights};
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

/// Shapes of the vision encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// The tile side in pixels (patches of 14).
    pub image_size: usize,
    /// InternViT-6B's layer design: RMSNorm, q/k normalization, no qkv bias (else InternViT-300M's).
    pub six_b_design: bool,
}

/// InternViT-300M-448px-V2_5 (spec 1.3).
pub const VIT_300M: VisionShape = VisionShape {
    hidden: 1024,
    layers: 24,
    heads: 16,
    intermediate: 4096,
    image_size: 448,
    six_b_design: false,
};

/// InternViT-6B-448px-V2_5 (spec 1.3).
pub const VIT_6B: VisionShape = VisionShape {
    hidden: 3200,
    layers: 45,
    heads: 25,
    intermediate: 12800,
    image_size: 448,
    six_b_design: true,
};

/// Shapes of one family member (spec 1.3 and 1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vision: VisionShape,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub awq: bool,
}

/// The shape named `name` (one of [`NAMES`], or [`TINY`]).
pub fn shape(name: &str) -> Result<Shape> {
    let llm = |hidden, layers, heads, kv_heads, intermediate| Shape {
        vision: VIT_300M,
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
            vision: VIT_6B,
            ..llm(5120, 64, 40, 8, 27648)
        },
        "internvl2_5-78b" => Shape {
            vision: VIT_6B,
            ..llm(8192, 80, 64, 8, 29568)
        },
        "internvl2_5-78b-awq" => Shape {
            vision: VIT_6B,
            awq: true,
            ..llm(8192, 80, 64, 8, 29568)
        },
        TINY => tiny(),
        other => {
            return Err(Error::BadFile {
                path: "--synthetic".into(),
                reason: format!(
                    "unknown synthetic model `{other}`; expected one of {}, or {TINY} (a miniature for \
                     smoke tests)",
                    NAMES.join(", ")
                ),
            })
        }
    })
}

/// The name of [`tiny`] for `--synthetic`.
pub const TINY: &str = "tiny";

/// A miniature of the 78B-AWQ's design (InternViT-6B-style layers, AWQ Qwen2 with grouped-query heads,
/// group 128) small enough for tests and for smoke runs of the programs (`--synthetic tiny`): 28-pixel
/// tiles (one image token each), widths 64 and 128, two layers each.
pub fn tiny() -> Shape {
    Shape {
        vision: VisionShape {
            hidden: 64,
            layers: 2,
            heads: 2,
            intermediate: 128,
            image_size: 28,
            six_b_design: true,
        },
        hidden: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        awq: true,
    }
}

/// The `config.json` of a family member, as the released checkpoints have it (spec 1.2-1.4, 9.5).
pub fn config_json(shape: &Shape) -> Value {
    let v = &shape.vision;
    let mut vision = json!({
        "hidden_size": v.hidden, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
        "intermediate_size": v.intermediate, "image_size": v.image_size,
    });
    let design = if v.six_b_design {
        json!({"norm_type": "rms_norm", "qkv_bias": false, "qk_normalization": true, "initializer_factor": 0.1})
    } else {
        json!({"norm_type": "layer_norm", "qkv_bias": true, "qk_normalization": false, "initializer_factor": 1.0})
    };
    for (k, val) in design.as_object().into_iter().flatten() {
        vision[k] = val.clone();
    }
    for (k, val) in [
        ("architectures", json!(["InternVisionModel"])),
        ("model_type", json!("intern_vit_6b")),
        ("hidden_act", json!("gelu")),
        ("layer_norm_eps", json!(1e-6)),
        ("patch_size", json!(14)),
        ("num_channels", json!(3)),
        ("torch_dtype", json!("bfloat16")),
    ] {
        vision[k] = val;
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
        "force_image_size": v.image_size,
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

/// The weight bytes of the named model (what [`model`] puts on the device it moves to).
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

/// The synthetic checkpoint of `shape`: every tensor the model reads (optional ones included), tensor
/// `i` of the list seeded by `mix(i + 1)`.
fn weights(origin: &str, root: &Value, shape: &Shape) -> Result<Weights> {
    let (specs, float) = specs_of(root, shape)?;
    let tensors = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (dtype, fill) = plan(spec, float, shape.layers);
            (
                spec.name.clone(),
                dtype,
                spec.shape.clone(),
                fill,
                mix(i as u64 + 1),
            )
        })
        .collect();
    Ok(Weights::synthetic(origin, tensors)?)
}

/// The named synthetic model, on the CPU with nothing made yet (move it with
/// [`InternVlModel::to_device`]).
pub fn model(name: &str) -> Result<InternVlModel> {
    model_of_shape(name, &shape(name)?)
}

/// The synthetic model of `shape`, labelled `name`. Uses the embedded checkpoint's tokenizer (the image
/// tokens and the template's special tokens are what matter).
pub fn model_of_shape(name: &str, shape: &Shape) -> Result<InternVlModel> {
    let origin = format!("synthetic {name} (random weights)");
    let root = config_json(shape);
    let weights = Arc::new(weights(&origin, &root, shape)?);
    let (tokenizer, generation_config) = crate::embedded::internvl_tokenizer_files();
    InternVlModel::from_weights(&origin, &root, weights, tokenizer, Some(generation_config))
}

/// The synthetic checkpoint of `shape` written out as the bytes of a safetensors file, every tensor made on
/// the host: what loading a file of it reads. Tests load it beside [`model_of_shape`] to show that weights
/// made on a GPU are those made on the host.
pub fn checkpoint_image(shape: &Shape) -> Result<Vec<u8>> {
    let root = config_json(shape);
    let w = weights("synthetic checkpoint", &root, shape)?;
    let names = w.names();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut data = Vec::with_capacity(names.len());
    for name in names {
        let raw = w.raw(name)?;
        let bytes = raw.data.len();
        header.insert(
            name.to_string(),
            json!({"dtype": raw.dtype_name, "shape": raw.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
        data.push(raw.data.into_owned());
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    // The data starts 8-aligned, as safetensors writers pad it.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut image = Vec::with_capacity(8 + text.len() + offset);
    image.extend_from_slice(&(text.len() as u64).to_le_bytes());
    image.extend_from_slice(&text);
    data.iter().for_each(|d| image.extend_from_slice(d));
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_follow_the_spec_tables() {
        let s = shape("internvl2_5-78b-awq").unwrap();
        assert_eq!((s.hidden, s.layers, s.heads, s.kv_heads), (8192, 80, 64, 8));
        assert!(s.vision == VIT_6B && s.awq);
        assert_eq!(shape("internvl2_5-1b").unwrap().intermediate, 4864);
        assert_eq!(shape("internvl2_5-1b").unwrap().vision, VIT_300M);
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
    fn building_the_78b_awq_makes_no_tensor() {
        // 49 GiB of weights: built in well under a second and a few MB, because nothing is made until it
        // is read or moved (this test would run out of memory or time otherwise).
        let model = model("internvl2_5-78b-awq").unwrap();
        assert_eq!(model.config.llm.num_hidden_layers, 80);
    }

    #[test]
    fn a_synthetic_tensor_reads_the_same_through_the_checkpoint_and_directly() {
        let shape = tiny();
        let root = config_json(&shape);
        let w = Arc::new(weights("tiny", &root, &shape).unwrap());
        let name = "language_model.model.layers.1.self_attn.q_proj.qweight";
        let got = w.scope("").get(name, &[128, 16]).unwrap();
        let raw = w.raw(name).unwrap();
        assert_eq!(got.bytes(), &raw.data[..]);
        // Random codes, and not all tensors alike.
        let other = w
            .raw("language_model.model.layers.0.self_attn.q_proj.qweight")
            .unwrap();
        assert_ne!(raw.data, other.data);
    }
}
