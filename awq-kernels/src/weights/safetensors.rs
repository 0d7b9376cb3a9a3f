//! safetensors files: reading the header into entries, and writing tensors (for `internvl convert`).

use std::io::Write;
use std::path::Path;

use super::{Layout, RawEntry, RawTensor};
use crate::{Error, Result};

/// Every tensor of a safetensors file, with its place in `data`. `Err` holds the reason it is invalid.
pub(crate) fn read(data: &[u8]) -> std::result::Result<Vec<(String, RawEntry)>, String> {
    let (header_len, metadata) =
        safetensors::SafeTensors::read_metadata(data).map_err(|e| e.to_string())?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        if data_start + end > data.len() || start > end {
            return Err(format!("tensor `{name}` ends past the end of the file"));
        }
        out.push((
            name.clone(),
            RawEntry {
                dtype_name: format!("{:?}", info.dtype),
                elem_size: info.dtype.size(),
                shape: info.shape.clone(),
                layout: Layout::Contiguous {
                    offset: data_start + start,
                },
            },
        ));
    }
    Ok(out)
}

/// Writes `tensors` as one safetensors file (header with `__metadata__ = {"format": "pt"}`, then the data,
/// larger elements first so every tensor is aligned to its element size). `on_tensor` is called after each
/// tensor's bytes are written, with its byte count.
pub fn write_file(
    path: &Path,
    tensors: &[(String, RawTensor<'_>)],
    mut on_tensor: impl FnMut(&str, usize),
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut order: Vec<&(String, RawTensor<'_>)> = tensors.iter().collect();
    order.sort_by(|a, b| {
        b.1.elem_size
            .cmp(&a.1.elem_size)
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, t) in &order {
        let len = t.data.len();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": t.dtype_name,
                "shape": t.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Unsupported(format!("cannot encode a safetensors header: {e}")))?;
    // Pad the header with spaces so the data starts 8-byte aligned.
    while (8 + header.len()) % 8 != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for (name, t) in order {
        w.write_all(&t.data).map_err(io)?;
        on_tensor(name, t.data.len());
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}
