//! Checkpoint weights: memory-mapped safetensors files (one, or sharded with `model.safetensors.index.json`)
//! or PyTorch `.bin` checkpoints (one, or sharded with `pytorch_model.bin.index.json`), looked up by name
//! under a prefix scope, with every lookup checking shape and dtype. Both formats go through one interface;
//! a folder with both prefers safetensors.

mod pickle;
pub mod safetensors;
mod torch_zip;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::synthetic::Fill;
use crate::tensor::SharedBytes;
use crate::{DType, Error, Result, Tensor};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";
const BIN_INDEX_FILE: &str = "pytorch_model.bin.index.json";
const BIN_SINGLE_FILE: &str = "pytorch_model.bin";

/// The container a checkpoint's weights come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// PyTorch zip/pickle (`torch.save`), read by a restricted unpickler.
    TorchBin,
    /// No file: pseudo-random tensors ([`Weights::synthetic`]).
    Synthetic,
}

impl Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::TorchBin => "PyTorch .bin (zip + pickle)",
            WeightFormat::Synthetic => "synthetic (pseudo-random, made where read)",
        })
    }
}

struct WeightFile {
    /// The file name, for error messages.
    name: String,
    bytes: SharedBytes,
}

/// Where a tensor's elements lie in its file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Layout {
    /// Row-major, from `offset` (bytes).
    Contiguous { offset: usize },
    /// A strided view (torch writes transposes and slices this way): element `idx` lies at
    /// `offset + sum(idx[i] * strides[i]) * elem_size`. Bounds are checked when the file is opened.
    Strided { offset: usize, strides: Vec<usize> },
    /// Not stored: pseudo-random elements made where they are read ([`crate::synthetic`]).
    Synthetic { fill: Fill, seed: u64 },
}

/// A tensor as a file reader describes it.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    /// The safetensors name of the element type (`BF16`, `I64`, `F64`, ...).
    pub dtype_name: String,
    pub elem_size: usize,
    pub shape: Vec<usize>,
    pub layout: Layout,
}

#[derive(Clone)]
struct Entry {
    file: usize,
    raw: RawEntry,
}

impl Entry {
    fn numel(&self) -> usize {
        self.raw.shape.iter().product()
    }

    fn nbytes(&self) -> usize {
        self.numel() * self.raw.elem_size
    }

    /// `None` when the file stores a dtype this project does not compute with (reported on lookup).
    fn dtype(&self) -> Option<DType> {
        DType::from_safetensors_name(&self.raw.dtype_name)
    }
}

/// A tensor's elements in row-major order, in any dtype (for copying a checkpoint to another format).
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// The safetensors dtype name (`BF16`, `I32`, `F64`, ...).
    pub dtype_name: String,
    pub elem_size: usize,
    pub shape: Vec<usize>,
    /// Borrowed from the mapped file when it is stored row-major, else gathered into a copy.
    pub data: Cow<'a, [u8]>,
}

/// What a checkpoint holds about one tensor (for `internvl inspect`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// The safetensors dtype name (`BF16`, `I32`, `F64`, ...).
    pub dtype_name: String,
    /// `None` when this project does not compute with that dtype.
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    pub nbytes: usize,
    /// The file it lives in.
    pub file: String,
}

/// The dtype a needed tensor must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeRule {
    /// f32, f16 or bf16.
    Float,
    Exact(DType),
}

impl DTypeRule {
    fn accepts(self, d: DType) -> bool {
        match self {
            DTypeRule::Float => d.is_float(),
            DTypeRule::Exact(e) => d == e,
        }
    }
}

impl Display for DTypeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DTypeRule::Float => f.write_str("a float type (f32, f16, bf16)"),
            DTypeRule::Exact(d) => write!(f, "{d}"),
        }
    }
}

/// A tensor a model needs: full name, exact shape and dtype rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DTypeRule,
    /// Needed only if present (e.g. `lm_head.weight` of a checkpoint with tied embeddings).
    pub optional: bool,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], dtype: DTypeRule) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            optional: false,
        }
    }
}

/// One way a checkpoint fails a [`TensorSpec`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorProblem {
    Missing {
        name: String,
        shape: Vec<usize>,
    },
    Shape {
        name: String,
        file: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    DType {
        name: String,
        file: String,
        expected: String,
        got: String,
    },
}

impl Display for TensorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorProblem::Missing { name, shape } => {
                write!(f, "`{name}` {shape:?} is missing")
            }
            TensorProblem::Shape {
                name,
                file,
                expected,
                got,
            } => write!(
                f,
                "`{name}` in {file} has shape {got:?}, expected {expected:?}"
            ),
            TensorProblem::DType {
                name,
                file,
                expected,
                got,
            } => write!(f, "`{name}` in {file} has dtype {got}, expected {expected}"),
        }
    }
}

/// Every tensor of a checkpoint, by full name.
pub struct Weights {
    files: Vec<WeightFile>,
    entries: HashMap<String, Entry>,
    /// Where the weights came from, for error messages (a directory or file name).
    origin: String,
    format: WeightFormat,
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list_dir(dir: &Path, ext: &str, stem_prefix: &str) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .filter(|p| file_name(p).starts_with(stem_prefix))
        .collect();
    found.sort();
    Ok(found)
}

/// The weight files of a checkpoint directory and their format: safetensors if there are any, else
/// PyTorch `.bin` files.
pub fn weight_files(dir: &Path) -> Result<(WeightFormat, Vec<PathBuf>)> {
    let from_index = |index: &Path| -> Result<Vec<PathBuf>> {
        Ok(shard_files_from_index(index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect())
    };
    let st: Vec<PathBuf> = if dir.join(INDEX_FILE).exists() {
        from_index(&dir.join(INDEX_FILE))?
    } else if dir.join(SINGLE_FILE).exists() {
        vec![dir.join(SINGLE_FILE)]
    } else {
        list_dir(dir, "safetensors", "")?
    };
    if !st.is_empty() {
        return Ok((WeightFormat::Safetensors, st));
    }
    let bin: Vec<PathBuf> = if dir.join(BIN_INDEX_FILE).exists() {
        from_index(&dir.join(BIN_INDEX_FILE))?
    } else if dir.join(BIN_SINGLE_FILE).exists() {
        vec![dir.join(BIN_SINGLE_FILE)]
    } else {
        list_dir(dir, "bin", "pytorch_model")?
    };
    if !bin.is_empty() {
        return Ok((WeightFormat::TorchBin, bin));
    }
    Err(Error::BadIndex {
        path: dir.to_path_buf(),
        reason: "no weights here (expected model.safetensors, model.safetensors.index.json, pytorch_model.bin \
                 or pytorch_model.bin.index.json)"
            .into(),
    })
}

impl Weights {
    /// Opens the weights of a checkpoint directory: the shards listed by `model.safetensors.index.json`, else
    /// `model.safetensors`, else every `*.safetensors` file in it; without safetensors, the shards listed by
    /// `pytorch_model.bin.index.json`, else `pytorch_model.bin`, else every `pytorch_model*.bin`.
    pub fn from_dir(dir: &Path) -> Result<Weights> {
        let (format, files) = weight_files(dir)?;
        let mut sources = Vec::with_capacity(files.len());
        for path in &files {
            sources.push((file_name(path), map_file(path)?, path.clone()));
        }
        Weights::from_sources(dir.display().to_string(), format, sources)
    }

    /// Weights from one file, memory-mapped: by its extension (`.safetensors`; `.bin`, `.pt`, `.pth` for
    /// PyTorch), else a PyTorch zip checkpoint when it starts like a zip, safetensors otherwise.
    pub fn from_file(path: &Path) -> Result<Weights> {
        let bytes = map_file(path)?;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let format = match ext.as_deref() {
            Some("safetensors") => WeightFormat::Safetensors,
            Some("bin" | "pt" | "pth") => WeightFormat::TorchBin,
            _ if (*bytes).as_ref().starts_with(b"PK\x03\x04") => WeightFormat::TorchBin,
            _ => WeightFormat::Safetensors,
        };
        Weights::from_sources(
            path.display().to_string(),
            format,
            vec![(file_name(path), bytes, path.to_path_buf())],
        )
    }

    /// Weights from safetensors bytes held in memory (for example embedded in the program).
    pub fn from_bytes(name: &str, bytes: SharedBytes) -> Result<Weights> {
        Weights::from_sources(
            name.to_string(),
            WeightFormat::Safetensors,
            vec![(name.to_string(), bytes, PathBuf::from(name))],
        )
    }

    /// A checkpoint of pseudo-random tensors, `(name, dtype, shape, fill, seed)` each: nothing is
    /// allocated until a tensor is read on the host (then made there) or moved to a GPU unread (then made
    /// there by a kernel, with the same bits). Synthetic full-size models are built on it.
    pub fn synthetic(
        origin: &str,
        tensors: Vec<(String, DType, Vec<usize>, Fill, u64)>,
    ) -> Result<Weights> {
        let mut entries = HashMap::new();
        for (name, dtype, shape, fill, seed) in tensors {
            fill.check(dtype)?;
            let raw = RawEntry {
                dtype_name: dtype.safetensors_name().to_string(),
                elem_size: dtype.size(),
                shape,
                layout: Layout::Synthetic { fill, seed },
            };
            entries.insert(name, Entry { file: 0, raw });
        }
        let empty: SharedBytes = Arc::new(Vec::<u8>::new());
        Ok(Weights {
            files: vec![WeightFile {
                name: origin.to_string(),
                bytes: empty,
            }],
            entries,
            origin: origin.to_string(),
            format: WeightFormat::Synthetic,
        })
    }

    fn from_sources(
        origin: String,
        format: WeightFormat,
        sources: Vec<(String, SharedBytes, PathBuf)>,
    ) -> Result<Weights> {
        let mut files = Vec::with_capacity(sources.len());
        let mut entries = HashMap::new();
        for (file_idx, (name, bytes, path)) in sources.into_iter().enumerate() {
            let data: &[u8] = (*bytes).as_ref();
            let tensors = match format {
                // Synthetic weights are made by `Weights::synthetic`, never read from bytes.
                WeightFormat::Synthetic => Vec::new(),
                WeightFormat::Safetensors => {
                    safetensors::read(data).map_err(|reason| Error::BadSafetensors {
                        path: path.clone(),
                        reason,
                    })?
                }
                WeightFormat::TorchBin => torch_zip::read(data).map_err(|e| match e {
                    torch_zip::TorchError::Bad(reason) => Error::BadTorchCheckpoint {
                        path: path.clone(),
                        reason,
                    },
                    torch_zip::TorchError::Forbidden(global) => Error::UnsafePickle {
                        path: path.clone(),
                        global,
                    },
                })?,
            };
            for (tensor_name, raw) in tensors {
                entries.insert(
                    tensor_name,
                    Entry {
                        file: file_idx,
                        raw,
                    },
                );
            }
            files.push(WeightFile { name, bytes });
        }
        Ok(Weights {
            files,
            entries,
            origin,
            format,
        })
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Where the weights came from (a directory or file name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The weight files, in order.
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// What the checkpoint says about `name`, if present.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|e| TensorInfo {
            name: name.to_string(),
            dtype_name: e.raw.dtype_name.clone(),
            dtype: e.dtype(),
            shape: e.raw.shape.clone(),
            nbytes: e.nbytes(),
            file: self.files[e.file].name.clone(),
        })
    }

    /// [`Weights::info`] of every tensor, sorted by name.
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.names()
            .into_iter()
            .filter_map(|n| self.info(n))
            .collect()
    }

    /// The elements of `name` in row-major order, whatever its dtype: borrowed from the file when stored
    /// row-major, gathered from its strides otherwise.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let entry = self.entry(name)?;
        let bytes: &[u8] = (*self.files[entry.file].bytes).as_ref();
        Ok(RawTensor {
            dtype_name: entry.raw.dtype_name.clone(),
            elem_size: entry.raw.elem_size,
            shape: entry.raw.shape.clone(),
            data: materialize(bytes, &entry.raw),
        })
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.origin.clone(),
        })
    }

    /// Every way the checkpoint fails `specs` (missing tensors, wrong shapes, wrong dtypes), in order.
    pub fn check(&self, specs: &[TensorSpec]) -> Vec<TensorProblem> {
        let mut problems = Vec::new();
        for spec in specs {
            let Some(e) = self.entries.get(&spec.name) else {
                if !spec.optional {
                    problems.push(TensorProblem::Missing {
                        name: spec.name.clone(),
                        shape: spec.shape.clone(),
                    });
                }
                continue;
            };
            let file = self.files[e.file].name.clone();
            if e.raw.shape != spec.shape {
                problems.push(TensorProblem::Shape {
                    name: spec.name.clone(),
                    file: file.clone(),
                    expected: spec.shape.clone(),
                    got: e.raw.shape.clone(),
                });
            }
            if !e.dtype().is_some_and(|d| spec.dtype.accepts(d)) {
                problems.push(TensorProblem::DType {
                    name: spec.name.clone(),
                    file,
                    expected: spec.dtype.to_string(),
                    got: e
                        .dtype()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| e.raw.dtype_name.to_lowercase()),
                });
            }
        }
        problems
    }

    /// [`Weights::check`], as one error listing every problem.
    pub fn verify(&self, specs: &[TensorSpec]) -> Result<()> {
        let problems = self.check(specs);
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::CheckpointProblems {
            origin: self.origin.clone(),
            problems: problems.iter().map(ToString::to_string).collect(),
        })
    }

    /// A scope that prefixes every lookup with `prefix` (e.g. `language_model.`).
    pub fn scope(self: &Arc<Self>, prefix: &str) -> WeightsScope {
        WeightsScope {
            weights: Arc::clone(self),
            prefix: prefix.to_string(),
        }
    }
}

/// The row-major bytes of an entry: a borrow when it is stored row-major, else a gather over its strides.
/// Bounds were checked when the file was opened.
fn materialize<'a>(bytes: &'a [u8], raw: &RawEntry) -> Cow<'a, [u8]> {
    let esz = raw.elem_size;
    let numel: usize = raw.shape.iter().product();
    match &raw.layout {
        Layout::Contiguous { offset } => Cow::Borrowed(&bytes[*offset..*offset + numel * esz]),
        Layout::Synthetic { fill, seed } => {
            let mut out = vec![0u8; numel * esz];
            let dtype = DType::from_safetensors_name(&raw.dtype_name)
                .expect("synthetic entries are made with a supported dtype");
            crate::synthetic::fill_bytes(&mut out, dtype, *fill, *seed)
                .expect("the fill was checked against the dtype when the entry was made");
            Cow::Owned(out)
        }
        Layout::Strided { offset, strides } => {
            let mut out = Vec::with_capacity(numel * esz);
            if numel == 0 {
                return Cow::Owned(out);
            }
            let rank = raw.shape.len();
            let mut idx = vec![0usize; rank];
            loop {
                let at = offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * esz;
                out.extend_from_slice(&bytes[at..at + esz]);
                // Odometer step over the shape, last dimension fastest.
                let mut d = rank;
                loop {
                    if d == 0 {
                        return Cow::Owned(out);
                    }
                    d -= 1;
                    idx[d] += 1;
                    if idx[d] < raw.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
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
                .filter(|f| !f.contains('/') && !f.contains('\\') && *f != "..")
                .map(str::to_string)
                .ok_or_else(|| bad("a `weight_map` value is not a file name in this folder".into()))
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
            .map(|e| e.raw.shape.clone())
    }

    /// `name` with exactly `shape`, in whatever dtype the file stores. Memory-mapped without a copy when the
    /// tensor is stored row-major and aligned for its dtype; copied otherwise.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let entry = self.weights.entry(&full)?;
        let file = &self.weights.files[entry.file];
        if entry.raw.shape != shape {
            return Err(Error::WeightShape {
                name: full,
                file: file.name.clone(),
                expected: shape.to_vec(),
                got: entry.raw.shape.clone(),
            });
        }
        let dtype = entry.dtype().ok_or_else(|| Error::UnsupportedWeightDType {
            name: full.clone(),
            file: file.name.clone(),
            dtype: entry.raw.dtype_name.clone(),
        })?;
        match &entry.raw.layout {
            Layout::Contiguous { offset } => Tensor::from_shared_bytes(
                Arc::clone(&file.bytes),
                *offset,
                entry.nbytes(),
                dtype,
                shape,
            ),
            Layout::Strided { .. } => {
                let bytes = materialize((*file.bytes).as_ref(), &entry.raw);
                Tensor::from_le_bytes(&bytes, dtype, shape)
            }
            Layout::Synthetic { fill, seed } => Tensor::synthetic(dtype, shape, *fill, *seed),
        }
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
        let views: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, data, shape)| {
                let view = ::safetensors::tensor::TensorView::new(
                    ::safetensors::Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(data),
                )
                .unwrap();
                (n.to_string(), view)
            })
            .collect();
        ::safetensors::serialize_to_file(views, &None, &dir.join(name)).unwrap();
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
