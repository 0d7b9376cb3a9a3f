//! Checkpoint weights: memory-mapped safetensors files (one, or sharded with `model.safetensors.index.json`),
//! looked up by name under a prefix scope, with every lookup checking shape and dtype.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tensor::SharedBytes;
use crate::{DType, Error, Result, Tensor};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

struct WeightFile {
    /// The file name, for error messages.
    name: String,
    bytes: SharedBytes,
}

#[derive(Clone)]
struct Entry {
    file: usize,
    /// `Err(name)` when the file stores a dtype this project does not read (reported on lookup).
    dtype: std::result::Result<DType, String>,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// Every tensor of a checkpoint, by full name.
pub struct Weights {
    files: Vec<WeightFile>,
    entries: HashMap<String, Entry>,
    /// Where the weights came from, for error messages (a directory or file name).
    origin: String,
}

fn map_file(path: &Path) -> Result<SharedBytes> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and the file is opened read-only. Like every mmap-based loader we rely on
    // nobody truncating or rewriting a checkpoint while it is being served; lengths are validated below.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(map))
}

fn parse_dtype(dtype: safetensors::Dtype) -> std::result::Result<DType, String> {
    use safetensors::Dtype as S;
    match dtype {
        S::F32 => Ok(DType::F32),
        S::F16 => Ok(DType::F16),
        S::BF16 => Ok(DType::BF16),
        S::I32 => Ok(DType::I32),
        S::U32 => Ok(DType::U32),
        S::U8 => Ok(DType::U8),
        other => Err(format!("{other:?}")),
    }
}

impl Weights {
    /// Opens the safetensors weights of a checkpoint directory: the shards listed by
    /// `model.safetensors.index.json`, else `model.safetensors`, else every `*.safetensors` file in it.
    pub fn from_dir(dir: &Path) -> Result<Weights> {
        let index_path = dir.join(INDEX_FILE);
        let files: Vec<PathBuf> = if index_path.exists() {
            shard_files_from_index(&index_path)?
                .into_iter()
                .map(|f| dir.join(f))
                .collect()
        } else if dir.join(SINGLE_FILE).exists() {
            vec![dir.join(SINGLE_FILE)]
        } else {
            let read = std::fs::read_dir(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let mut found: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if files.is_empty() {
            return Err(Error::BadIndex {
                path: dir.to_path_buf(),
                reason: "no safetensors weights here (expected model.safetensors or model.safetensors.index.json)"
                    .into(),
            });
        }
        let mut sources = Vec::with_capacity(files.len());
        for path in &files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            sources.push((name, map_file(path)?, path.clone()));
        }
        Weights::from_sources(dir.display().to_string(), sources)
    }

    /// Weights from one safetensors file, memory-mapped.
    pub fn from_file(path: &Path) -> Result<Weights> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = map_file(path)?;
        Weights::from_sources(
            path.display().to_string(),
            vec![(name, bytes, path.to_path_buf())],
        )
    }

    /// Weights from safetensors bytes held in memory (for example embedded in the program).
    pub fn from_bytes(name: &str, bytes: SharedBytes) -> Result<Weights> {
        Weights::from_sources(
            name.to_string(),
            vec![(name.to_string(), bytes, PathBuf::from(name))],
        )
    }

    fn from_sources(
        origin: String,
        sources: Vec<(String, SharedBytes, PathBuf)>,
    ) -> Result<Weights> {
        let mut files = Vec::with_capacity(sources.len());
        let mut entries = HashMap::new();
        for (file_idx, (name, bytes, path)) in sources.into_iter().enumerate() {
            let data: &[u8] = (*bytes).as_ref();
            let bad = |reason: String| Error::BadSafetensors {
                path: path.clone(),
                reason,
            };
            let (header_len, metadata) =
                safetensors::SafeTensors::read_metadata(data).map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header_len;
            for (tensor_name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                if data_start + end > data.len() || start > end {
                    return Err(bad(format!(
                        "tensor `{tensor_name}` ends past the end of the file"
                    )));
                }
                entries.insert(
                    tensor_name.clone(),
                    Entry {
                        file: file_idx,
                        dtype: parse_dtype(info.dtype),
                        shape: info.shape.clone(),
                        offset: data_start + start,
                        len: end - start,
                    },
                );
            }
            files.push(WeightFile { name, bytes });
        }
        Ok(Weights {
            files,
            entries,
            origin,
        })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// A scope that prefixes every lookup with `prefix` (e.g. `language_model.`).
    pub fn scope(self: &Arc<Self>, prefix: &str) -> WeightsScope {
        WeightsScope {
            weights: Arc::clone(self),
            prefix: prefix.to_string(),
        }
    }
}

fn shard_files_from_index(index_path: &Path) -> Result<BTreeSet<String>> {
    let bad = |reason: String| Error::BadIndex {
        path: index_path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index_path).map_err(|source| Error::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    map.values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a `weight_map` value is not a file name".into()))
        })
        .collect()
}

/// A view of [`Weights`] under a name prefix.
#[derive(Clone)]
pub struct WeightsScope {
    weights: Arc<Weights>,
    prefix: String,
}

impl WeightsScope {
    /// A narrower scope: `self.prefix + sub + "."`.
    pub fn pp(&self, sub: impl Display) -> WeightsScope {
        WeightsScope {
            weights: Arc::clone(&self.weights),
            prefix: format!("{}{sub}.", self.prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.entries.contains_key(&self.full_name(name))
    }

    /// The stored shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.weights
            .entries
            .get(&self.full_name(name))
            .map(|e| e.shape.clone())
    }

    /// `name` with exactly `shape`, in whatever dtype the file stores.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let entry = self
            .weights
            .entries
            .get(&full)
            .ok_or_else(|| Error::MissingTensor {
                name: full.clone(),
                source_desc: self.weights.origin.clone(),
            })?;
        let file = &self.weights.files[entry.file];
        if entry.shape != shape {
            return Err(Error::WeightShape {
                name: full,
                file: file.name.clone(),
                expected: shape.to_vec(),
                got: entry.shape.clone(),
            });
        }
        let dtype = entry
            .dtype
            .clone()
            .map_err(|dtype| Error::UnsupportedWeightDType {
                name: full.clone(),
                file: file.name.clone(),
                dtype,
            })?;
        Tensor::from_shared_bytes(
            Arc::clone(&file.bytes),
            entry.offset,
            entry.len,
            dtype,
            shape,
        )
    }

    /// `name` with exactly `shape` and `dtype`.
    pub fn get_with_dtype(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        self.expect_dtype(name, &t, |d| d == dtype, &dtype.to_string())?;
        Ok(t)
    }

    /// `name` with exactly `shape` and a float dtype (f32, f16 or bf16).
    pub fn get_float(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        self.expect_dtype(name, &t, DType::is_float, "a float type (f32, f16, bf16)")?;
        Ok(t)
    }

    fn expect_dtype(
        &self,
        name: &str,
        t: &Tensor,
        ok: impl Fn(DType) -> bool,
        expected: &str,
    ) -> Result<()> {
        if ok(t.dtype()) {
            return Ok(());
        }
        let full = self.full_name(name);
        let file = self.weights.entries[&full].file;
        Err(Error::WeightDType {
            name: full,
            file: self.weights.files[file].name.clone(),
            expected: expected.to_string(),
            got: t.dtype().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &Path, name: &str, tensors: &[(&str, Vec<f32>, Vec<usize>)]) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, data, shape)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(data),
                )
                .unwrap();
                (n.to_string(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, &None, &dir.join(name)).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("awq-weights-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sharded_weights_are_found_through_the_index_and_scoped_by_prefix() {
        let dir = temp_dir("sharded");
        write_file(
            &dir,
            "a.safetensors",
            &[("m.layers.0.w", vec![1.0, 2.0], vec![2])],
        );
        write_file(
            &dir,
            "b.safetensors",
            &[("m.layers.1.w", vec![3.0; 6], vec![2, 3])],
        );
        std::fs::write(
            dir.join(INDEX_FILE),
            r#"{"weight_map": {"m.layers.0.w": "a.safetensors", "m.layers.1.w": "b.safetensors"}}"#,
        )
        .unwrap();
        let w = Arc::new(Weights::from_dir(&dir).unwrap());
        let layers = w.scope("m.").pp("layers");
        let t0 = layers.pp(0).get_float("w", &[2]).unwrap();
        assert_eq!(t0.as_slice::<f32>().unwrap(), &[1.0, 2.0]);
        let t1 = layers.pp(1).get("w", &[2, 3]).unwrap();
        assert_eq!(t1.to_f32_vec().unwrap(), vec![3.0; 6]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_shape_or_dtype_or_a_missing_name_is_reported_with_the_tensor_and_file() {
        let dir = temp_dir("errors");
        write_file(&dir, SINGLE_FILE, &[("w", vec![1.0, 2.0], vec![2])]);
        let w = Arc::new(Weights::from_dir(&dir).unwrap());
        let s = w.scope("");
        let err = s.get("w", &[3]).unwrap_err().to_string();
        assert!(
            err.contains("`w`") && err.contains(SINGLE_FILE) && err.contains("[3]"),
            "{err}"
        );
        let err = s
            .get_with_dtype("w", &[2], DType::I32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dtype f32") && err.contains("expected i32"),
            "{err}"
        );
        let err = s.get("nope", &[2]).unwrap_err().to_string();
        assert!(err.contains("`nope` is missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_file_is_refused_with_its_path() {
        let dir = temp_dir("truncated");
        write_file(&dir, SINGLE_FILE, &[("w", vec![1.0; 64], vec![64])]);
        let path = dir.join(SINGLE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = Weights::from_dir(&dir)
            .err()
            .expect("truncated file must fail")
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_without_weights_is_an_error() {
        let dir = temp_dir("empty");
        assert!(Weights::from_dir(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
