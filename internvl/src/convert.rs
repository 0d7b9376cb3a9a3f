//! `internvl convert`: a checkpoint (PyTorch `.bin` or safetensors) rewritten as sharded safetensors with an
//! index, its config and tokenizer files copied, every tensor verified byte for byte after writing.

use std::path::{Path, PathBuf};

use awq_kernels::weights::{safetensors, weight_files};
use awq_kernels::Weights;

use crate::{Error, Result};

/// Options of [`convert`].
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// A shard is closed before it would grow past this many bytes (a larger tensor gets a shard alone).
    pub max_shard_bytes: u64,
    /// Write into an existing folder, replacing its safetensors weights.
    pub force: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            max_shard_bytes: 5_000_000_000,
            force: false,
        }
    }
}

/// What [`convert`] reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Before writing: the plan.
    Start {
        tensors: usize,
        bytes: u64,
        shards: usize,
    },
    /// After each tensor: bytes written so far (of `total`).
    Written { done: u64, total: u64 },
    /// A shard was written and every tensor in it read back equal to the source.
    ShardVerified { file: String, tensors: usize },
    /// A non-weight file (config, tokenizer, ...) was copied.
    Copied { file: String },
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    pub tensors: usize,
    pub bytes: u64,
    pub shards: Vec<String>,
    pub copied: Vec<String>,
}

/// Parses a size like `5GB`, `2GiB`, `100KB`, `1500000`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => return None,
    };
    let bytes = value * mult as f64;
    (bytes >= 1.0).then_some(bytes as u64)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files that are weights (or pickles) and are not copied to the converted folder.
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".pth")
        || name.ends_with(".pt")
        || name == "model.safetensors.index.json"
        || name == "pytorch_model.bin.index.json"
}

/// Converts the checkpoint in `src` into `out` (see the module docs); `on_progress` sees every step.
pub fn convert(
    src: &Path,
    out: &Path,
    options: ConvertOptions,
    mut on_progress: impl FnMut(Progress),
) -> Result<ConvertSummary> {
    let weights = Weights::from_dir(src)?;
    let (_, source_files) = weight_files(src)?;
    if let (Ok(a), Ok(b)) = (src.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(Error::ConvertInPlace {
                path: out.to_path_buf(),
            });
        }
    }
    if out.exists() {
        if !options.force {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        // Only the safetensors weights we would write are replaced; nothing else in the folder is removed.
        for e in std::fs::read_dir(out).map_err(io_err(out))? {
            let path = e.map_err(io_err(out))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ours = (name.starts_with("model") && name.ends_with(".safetensors"))
                || name == "model.safetensors.index.json";
            if ours && path.is_file() {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;

    // Plan the shards in name order.
    let infos = weights.infos();
    let mut plan: Vec<Vec<String>> = Vec::new();
    let mut current_bytes = 0u64;
    for t in &infos {
        let n = t.nbytes as u64;
        if plan.is_empty() || (current_bytes > 0 && current_bytes + n > options.max_shard_bytes) {
            plan.push(Vec::new());
            current_bytes = 0;
        }
        plan.last_mut()
            .expect("a shard was pushed")
            .push(t.name.clone());
        current_bytes += n;
    }
    let total: u64 = infos.iter().map(|t| t.nbytes as u64).sum();
    let n_shards = plan.len().max(1);
    on_progress(Progress::Start {
        tensors: infos.len(),
        bytes: total,
        shards: n_shards,
    });
    let shard_name = |i: usize| {
        if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards)
        }
    };

    let mut done = 0u64;
    let mut shards = Vec::new();
    let mut weight_map = serde_json::Map::new();
    if plan.is_empty() {
        plan.push(Vec::new());
    }
    for (i, names) in plan.iter().enumerate() {
        let file = shard_name(i);
        let path = out.join(&file);
        let tensors = names
            .iter()
            .map(|n| Ok((n.clone(), weights.raw(n)?)))
            .collect::<Result<Vec<_>>>()?;
        safetensors::write_file(&path, &tensors, |_, len| {
            done += len as u64;
            on_progress(Progress::Written { done, total });
        })?;
        verify_shard(&path, &file, &tensors)?;
        on_progress(Progress::ShardVerified {
            file: file.clone(),
            tensors: names.len(),
        });
        for n in names {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        shards.push(file);
    }
    if shards.len() > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = out.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index).expect("a JSON value serializes");
        std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
    }

    // Config, tokenizer and every other non-weight file.
    let mut copied = Vec::new();
    let skip: Vec<PathBuf> = source_files;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io_err(src))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !skip.contains(p))
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_weight_file(&name) {
            continue;
        }
        let dst = out.join(&name);
        std::fs::copy(&path, &dst).map_err(io_err(&dst))?;
        on_progress(Progress::Copied { file: name.clone() });
        copied.push(name);
    }
    Ok(ConvertSummary {
        tensors: infos.len(),
        bytes: total,
        shards,
        copied,
    })
}

/// Re-opens a written shard and compares every tensor with its source, byte for byte.
fn verify_shard(
    path: &Path,
    file: &str,
    tensors: &[(String, awq_kernels::weights::RawTensor<'_>)],
) -> Result<()> {
    let written = Weights::from_file(path)?;
    let fail = |name: &str, reason: String| Error::VerifyFailed {
        file: file.to_string(),
        name: name.to_string(),
        reason,
    };
    if written.names().len() != tensors.len() {
        return Err(fail(
            "*",
            format!(
                "{} tensors read back, {} written",
                written.names().len(),
                tensors.len()
            ),
        ));
    }
    for (name, src) in tensors {
        let back = written.raw(name).map_err(|e| fail(name, e.to_string()))?;
        if back.dtype_name != src.dtype_name || back.shape != src.shape {
            return Err(fail(
                name,
                format!(
                    "read back as {} {:?}, written as {} {:?}",
                    back.dtype_name, back.shape, src.dtype_name, src.shape
                ),
            ));
        }
        if back.data != src.data {
            return Err(fail(name, "its bytes differ from the source".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100KB"), Some(100_000));
        assert_eq!(parse_size("1.5 MB"), Some(1_500_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("0"), None);
    }
}
