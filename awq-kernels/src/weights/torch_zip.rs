//! PyTorch checkpoints as `torch.save` writes them since torch 1.6: a zip archive (entries stored, not
//! compressed, aligned to 64 bytes) with `<archive>/data.pkl` (the pickled state dict) and one entry
//! `<archive>/data/<key>` per storage. The zip's central directory is read here directly; storages are
//! addressed in place, so tensors can be memory-mapped without a copy.

use std::collections::HashMap;

use super::pickle::{self, PickleError};
use super::{Layout, RawEntry};

/// One zip member, as far as a torch checkpoint needs it.
#[derive(Debug, Clone)]
struct ZipEntry {
    method: u16,
    flags: u16,
    size: u64,
    compressed_size: u64,
    /// Where the member's bytes start in the file (after its local header).
    data_offset: u64,
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Why a torch checkpoint could not be read; the caller adds the file name.
#[derive(Debug)]
pub(crate) enum TorchError {
    /// Not a zip, truncated, corrupted, or not laid out as torch writes it.
    Bad(String),
    /// The pickle names a global outside the allow-list.
    Forbidden(String),
}

fn bad<T>(reason: impl Into<String>) -> Result<T, TorchError> {
    Err(TorchError::Bad(reason.into()))
}

fn le16(d: &[u8], at: usize) -> Option<u16> {
    d.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn le32(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le64(d: &[u8], at: usize) -> Option<u64> {
    d.get(at..at + 8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    })
}

fn to_usize(v: u64) -> Result<usize, TorchError> {
    usize::try_from(v).or_else(|_| bad(format!("offset {v} does not fit in memory")))
}

/// Reads the central directory: member name -> entry.
fn read_zip(data: &[u8]) -> Result<HashMap<String, ZipEntry>, TorchError> {
    const EOCD_LEN: usize = 22;
    if data.len() < EOCD_LEN {
        return bad(format!(
            "{} bytes is too short for a zip archive",
            data.len()
        ));
    }
    // The end-of-central-directory record sits at the end, before a comment of at most 64 KiB.
    let lowest = data.len().saturating_sub(EOCD_LEN + 0xFFFF);
    let eocd = (lowest..=data.len() - EOCD_LEN)
        .rev()
        .find(|&i| le32(data, i) == Some(EOCD_SIG));
    let Some(eocd) = eocd else {
        return bad(
            "no zip end-of-central-directory record: the file is truncated or not a zip archive",
        );
    };
    let short = || TorchError::Bad("the zip directory is cut short".into());
    let mut count = le16(data, eocd + 10).ok_or_else(short)? as u64;
    let mut cd_size = le32(data, eocd + 12).ok_or_else(short)? as u64;
    let mut cd_offset = le32(data, eocd + 16).ok_or_else(short)? as u64;
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // ZIP64: a locator just before the classic record points at the ZIP64 record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| le32(data, l) == Some(ZIP64_LOCATOR_SIG))
            .ok_or_else(|| TorchError::Bad("a ZIP64 archive without its locator".into()))?;
        let rec = to_usize(le64(data, loc + 8).ok_or_else(short)?)?;
        if le32(data, rec) != Some(ZIP64_EOCD_SIG) {
            return bad("the ZIP64 end-of-central-directory record is missing");
        }
        count = le64(data, rec + 32).ok_or_else(short)?;
        cd_size = le64(data, rec + 40).ok_or_else(short)?;
        cd_offset = le64(data, rec + 48).ok_or_else(short)?;
    }
    let cd_start = to_usize(cd_offset)?;
    let cd_end = cd_start
        .checked_add(to_usize(cd_size)?)
        .filter(|&e| e <= data.len())
        .ok_or_else(|| {
            TorchError::Bad("the zip central directory lies past the end of the file".into())
        })?;
    let mut entries = HashMap::new();
    let mut pos = cd_start;
    for _ in 0..count {
        if pos + 46 > cd_end || le32(data, pos) != Some(CENTRAL_SIG) {
            return bad(format!(
                "zip central directory entry at byte {pos} is corrupted"
            ));
        }
        let flags = le16(data, pos + 8).ok_or_else(short)?;
        let method = le16(data, pos + 10).ok_or_else(short)?;
        let mut compressed_size = le32(data, pos + 20).ok_or_else(short)? as u64;
        let mut size = le32(data, pos + 24).ok_or_else(short)? as u64;
        let name_len = le16(data, pos + 28).ok_or_else(short)? as usize;
        let extra_len = le16(data, pos + 30).ok_or_else(short)? as usize;
        let comment_len = le16(data, pos + 32).ok_or_else(short)? as usize;
        let mut local = le32(data, pos + 42).ok_or_else(short)? as u64;
        let name_end = pos + 46 + name_len;
        let extra_end = name_end + extra_len;
        if extra_end + comment_len > cd_end {
            return bad("a zip central directory entry runs past the directory");
        }
        let name = String::from_utf8_lossy(&data[pos + 46..name_end]).into_owned();
        // ZIP64 extended information (header id 1) replaces the fields saturated at 0xFFFFFFFF, in order.
        let mut x = name_end;
        while x + 4 <= extra_end {
            let id = le16(data, x).ok_or_else(short)?;
            let len = le16(data, x + 2).ok_or_else(short)? as usize;
            let body = x + 4;
            if id == 1 {
                let mut f = body;
                for field in [&mut size, &mut compressed_size, &mut local] {
                    if *field == 0xFFFF_FFFF && f + 8 <= body + len {
                        *field = le64(data, f).ok_or_else(short)?;
                        f += 8;
                    }
                }
            }
            x = body + len;
        }
        pos = extra_end + comment_len;
        // The member's data follows its local header, whose extra field (torch's alignment padding) may
        // differ from the central directory's.
        let lh = to_usize(local)?;
        if le32(data, lh) != Some(LOCAL_SIG) {
            return bad(format!(
                "the zip member `{name}` has no local header at byte {lh}: the file is corrupted"
            ));
        }
        let lname = le16(data, lh + 26).ok_or_else(short)? as u64;
        let lextra = le16(data, lh + 28).ok_or_else(short)? as u64;
        let data_offset = local + 30 + lname + lextra;
        entries.insert(
            name,
            ZipEntry {
                method,
                flags,
                size,
                compressed_size,
                data_offset,
            },
        );
    }
    Ok(entries)
}

/// The bytes of a stored (uncompressed) member, as a range of the file.
fn member_range(name: &str, e: &ZipEntry, file_len: usize) -> Result<(usize, usize), TorchError> {
    if e.flags & 1 != 0 {
        return bad(format!("the zip member `{name}` is encrypted"));
    }
    if e.method != 0 || e.compressed_size != e.size {
        return bad(format!(
            "the zip member `{name}` is compressed (method {}); torch.save stores members uncompressed, so \
             this file was repacked: re-save it with torch.save or unzip and re-zip it with `zip -0`",
            e.method
        ));
    }
    let start = to_usize(e.data_offset)?;
    let end = start
        .checked_add(to_usize(e.size)?)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| {
            TorchError::Bad(format!(
                "the zip member `{name}` ends past the end of the file: the file is truncated"
            ))
        })?;
    Ok((start, end))
}

/// True when `stride` is the row-major stride of `shape` (dimensions of size 1 may have any stride).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &s) in shape.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Every tensor of a torch zip checkpoint, with its place in `data`.
pub(crate) fn read(data: &[u8]) -> Result<Vec<(String, RawEntry)>, TorchError> {
    if data.starts_with(&[0x80]) {
        return bad(
            "this is the legacy (torch < 1.6) non-zip format, which is not supported: re-save it with a recent \
             torch.save, or convert it to safetensors",
        );
    }
    if !data.starts_with(b"PK\x03\x04") {
        return bad("not a zip archive (a torch.save file starts with `PK`)");
    }
    let entries = read_zip(data)?;
    // `<archive>/data.pkl`: the archive folder name is whatever the file was called when saved.
    let (pkl_name, pkl) = entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            TorchError::Bad(
                "no `<archive>/data.pkl` member: this zip is not a torch.save checkpoint".into(),
            )
        })?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Some(e) = entries.get(&format!("{prefix}byteorder")) {
        let (s, end) = member_range("byteorder", e, data.len())?;
        if &data[s..end] != b"little" {
            return bad(format!(
                "the checkpoint was saved on a `{}`-endian machine; only little-endian is supported",
                String::from_utf8_lossy(&data[s..end])
            ));
        }
    }
    let (s, end) = member_range(pkl_name, pkl, data.len())?;
    let tensors = pickle::load_state_dict(&data[s..end]).map_err(|e| match e {
        PickleError::ForbiddenGlobal(g) => TorchError::Forbidden(g),
        PickleError::Malformed(m) => {
            TorchError::Bad(format!("its pickle `{pkl_name}` is corrupted: {m}"))
        }
    })?;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let member = format!("{prefix}data/{}", t.storage.key);
        let e = entries.get(&member).ok_or_else(|| {
            TorchError::Bad(format!(
                "tensor `{name}`: its storage `{member}` is missing from the archive"
            ))
        })?;
        let (start, end) = member_range(&member, e, data.len())?;
        let esz = t.storage.kind.elem_size;
        let storage_bytes = t.storage.numel.checked_mul(esz);
        if storage_bytes != Some(end - start) {
            return bad(format!(
                "tensor `{name}`: storage `{member}` holds {} bytes, but the pickle says {} elements of {esz} bytes",
                end - start,
                t.storage.numel
            ));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &n| a.checked_mul(n))
            .ok_or_else(|| {
                TorchError::Bad(format!("tensor `{name}`: its size {:?} overflows", t.shape))
            })?;
        let offset = t
            .storage_offset
            .checked_mul(esz)
            .and_then(|o| o.checked_add(start));
        // The last byte the view touches must lie inside its storage.
        let reach = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(0usize, |acc, (&n, &s)| {
                acc.checked_add(n.saturating_sub(1).checked_mul(s)?)
            })
            .and_then(|r| r.checked_add(1))
            .and_then(|r| r.checked_mul(esz));
        let (Some(offset), Some(reach)) = (offset, reach) else {
            return bad(format!("tensor `{name}`: its offset or strides overflow"));
        };
        if numel > 0 && offset.checked_add(reach).is_none_or(|e| e > end) {
            return bad(format!(
                "tensor `{name}` (size {:?}, stride {:?}, offset {}) reaches past the end of its storage `{member}`",
                t.shape, t.stride, t.storage_offset
            ));
        }
        let layout = if numel == 0 || is_row_major(&t.shape, &t.stride) {
            Layout::Contiguous { offset }
        } else {
            Layout::Strided {
                offset,
                strides: t.stride.clone(),
            }
        };
        out.push((
            name,
            RawEntry {
                dtype_name: t.storage.kind.safetensors_dtype.to_string(),
                elem_size: esz,
                shape: t.shape,
                layout,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_strides_are_recognised_and_transposes_are_not() {
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[1, 3], &[99, 1]));
        assert!(is_row_major(&[], &[]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
        assert!(!is_row_major(&[4], &[3]));
    }

    #[test]
    fn bytes_that_are_not_a_zip_or_a_cut_zip_are_refused_with_a_reason() {
        let msg = |r: Result<Vec<(String, RawEntry)>, TorchError>| match r {
            Err(TorchError::Bad(m)) => m,
            other => panic!("expected a Bad error, got {:?}", other.map(|v| v.len())),
        };
        assert!(msg(read(b"hello world, not a zip")).contains("not a zip"));
        assert!(msg(read(&[0x80, 2, b'}', b'.'])).contains("legacy"));
        // A local-header signature but no directory at the end.
        let mut cut = b"PK\x03\x04".to_vec();
        cut.extend_from_slice(&[0u8; 100]);
        assert!(msg(read(&cut)).contains("truncated"));
    }
}
