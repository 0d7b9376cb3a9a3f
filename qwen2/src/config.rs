//! The Qwen2 part of an HF `config.json`, in the form the published checkpoints write (`rope_theta`,
//! `torch_dtype`) and the form newer transformers write (`rope_parameters`, `dtype`).

use std::path::Path;

use awq_kernels::ops::linear::AwqConfig;
use awq_kernels::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint's float weights were saved in, when the config says.
    pub dtype: Option<DType>,
    /// Present when the linears are AWQ-quantized.
    pub awq: Option<AwqConfig>,
}

#[derive(Deserialize)]
struct Raw {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    max_position_embeddings: usize,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl Qwen2Config {
    /// Reads a plain Qwen2 `config.json`.
    pub fn from_file(path: &Path) -> Result<Qwen2Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            reason: format!("invalid JSON: {e}"),
        })?;
        Qwen2Config::from_json(&json, &json, &path.display().to_string())
    }

    /// Parses the LLM config `llm` (the whole file for a plain Qwen2 checkpoint, `llm_config` inside an
    /// InternVL one). `root` is the whole file, searched for a `quantization_config` anywhere in its tree.
    pub fn from_json(llm: &Value, root: &Value, origin: &str) -> Result<Qwen2Config> {
        let cfg_err = |reason: String| Error::Config {
            origin: origin.to_string(),
            reason,
        };
        let raw: Raw = serde_json::from_value(llm.clone()).map_err(|e| cfg_err(e.to_string()))?;
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(cfg_err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(cfg_err(format!(
                "head dim {head_dim} must be even and positive"
            )));
        }
        let rope_theta = rope_theta(&raw).map_err(cfg_err)?;
        let dtype_name = raw.torch_dtype.as_deref().or(raw.dtype.as_deref());
        let dtype = match dtype_name {
            Some(name) => Some(
                DType::from_torch_name(name)
                    .ok_or_else(|| cfg_err(format!("unknown dtype `{name}`")))?,
            ),
            None => None,
        };
        Ok(Qwen2Config {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps as f32,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            dtype,
            awq: awq_config(root, origin)?,
        })
    }
}

fn rope_theta(raw: &Raw) -> std::result::Result<f32, String> {
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    if let Some(p) = params {
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        // "dynamic" NTK changes nothing below max_position_embeddings, which bounds our context.
        if kind != "default" && kind != "dynamic" {
            return Err(format!(
                "rope type `{kind}` is not supported (only default and dynamic)"
            ));
        }
    }
    let from_params = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64);
    // transformers' Qwen2 default when neither form is given.
    Ok(raw.rope_theta.or(from_params).unwrap_or(10000.0) as f32)
}

/// The first `quantization_config` found anywhere in the config tree (lmdeploy nests it under `llm_config`).
fn find_quantization_config(value: &Value) -> Option<&Value> {
    match value {
        Value::Object(map) => map
            .get("quantization_config")
            .or_else(|| map.values().find_map(find_quantization_config)),
        Value::Array(items) => items.iter().find_map(find_quantization_config),
        _ => None,
    }
}

fn awq_config(root: &Value, origin: &str) -> Result<Option<AwqConfig>> {
    let Some(q) = find_quantization_config(root) else {
        return Ok(None);
    };
    let unsupported = |reason: String| Error::UnsupportedQuantization {
        origin: origin.to_string(),
        reason,
    };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "awq" {
        return Err(unsupported(format!(
            "quant_method `{method}`; only `awq` (4-bit, GEMM packing) is supported"
        )));
    }
    let bits = q
        .get("bits")
        .or_else(|| q.get("w_bit"))
        .and_then(Value::as_u64);
    if bits != Some(4) {
        return Err(unsupported(format!(
            "bits {bits:?}; only 4-bit AWQ is supported"
        )));
    }
    let version = q.get("version").and_then(Value::as_str).unwrap_or("gemm");
    if !version.eq_ignore_ascii_case("gemm") {
        return Err(unsupported(format!(
            "AWQ version `{version}`; only `gemm` packing is supported"
        )));
    }
    if q.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(unsupported(
            "zero_point false; only AWQ with zero points is supported".into(),
        ));
    }
    let group = q
        .get("group_size")
        .or_else(|| q.get("q_group_size"))
        .and_then(Value::as_u64)
        .ok_or_else(|| unsupported("no group_size".into()))?;
    if group == 0 || group % 8 != 0 {
        return Err(unsupported(format!(
            "group_size {group} must be a positive multiple of 8"
        )));
    }
    Ok(Some(AwqConfig {
        group_size: group as usize,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
            "rope_theta": 1000000.0, "torch_dtype": "bfloat16"
        })
    }

    #[test]
    fn the_published_form_is_read() {
        let c = Qwen2Config::from_json(&base(), &base(), "t").unwrap();
        assert_eq!(
            (c.head_dim, c.num_key_value_heads, c.rope_theta),
            (16, 2, 1e6)
        );
        assert_eq!(c.dtype, Some(DType::BF16));
        assert!(c.awq.is_none() && !c.tie_word_embeddings);
    }

    #[test]
    fn the_newer_form_with_rope_parameters_and_dtype_is_read() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.remove("rope_theta");
        m.remove("torch_dtype");
        m.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 5e5}),
        );
        m.insert("dtype".into(), json!("float16"));
        let c = Qwen2Config::from_json(&v, &v, "t").unwrap();
        assert_eq!((c.rope_theta, c.dtype), (5e5, Some(DType::F16)));
    }

    #[test]
    fn a_nested_quantization_config_is_found() {
        let root = json!({"llm_config": base(), "other": {"deep": {"quantization_config":
            {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": true}}}});
        let c = Qwen2Config::from_json(&root["llm_config"], &root, "t").unwrap();
        assert_eq!(c.awq, Some(AwqConfig { group_size: 128 }));
    }

    #[test]
    fn unsupported_quantizations_are_refused_by_name() {
        for (q, needle) in [
            (
                json!({"quant_method": "awq", "bits": 8, "group_size": 128}),
                "bits",
            ),
            (
                json!({"quant_method": "gptq", "bits": 4, "group_size": 128}),
                "gptq",
            ),
            (
                json!({"quant_method": "awq", "bits": 4, "group_size": 100}),
                "group_size 100",
            ),
            (
                json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}),
                "gemv",
            ),
        ] {
            let mut root = base();
            root.as_object_mut()
                .unwrap()
                .insert("quantization_config".into(), q);
            let err = Qwen2Config::from_json(&root, &root, "cfg.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle) && err.contains("cfg.json"), "{err}");
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = Qwen2Config::from_json(&v, &v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden_size") && err.contains("cfg.json"),
            "{err}"
        );
    }
}
