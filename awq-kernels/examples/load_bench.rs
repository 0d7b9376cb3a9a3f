//! Load time of a synthetic checkpoint as PyTorch `.bin` shards and as safetensors shards, both memory-mapped:
//! open the folder, look up every tensor (with its shape check) and touch every byte.
//!
//! ```sh
//! cargo run --release -p awq-kernels --example load_bench -- [SIZE_MB (default 1024)] [RUNS (default 5)]
//! ```
//!
//! The `.bin` files are written here in the layout `torch.save` uses (zip members stored, 64-byte aligned,
//! protocol-2 pickle over `torch._utils._rebuild_tensor_v2`); the files are written to the system temp folder
//! and removed afterwards. Both formats are read from the page cache after the first run (the files were just
//! written), so the figures compare parsing and mapping, not the disk.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use awq_kernels::weights::{safetensors, RawTensor};
use awq_kernels::Weights;

const ROWS: usize = 1280;
const COLS: usize = 2048;
const TENSOR_BYTES: usize = ROWS * COLS * 2; // bf16

fn tensor_bytes(i: usize) -> Vec<u8> {
    (0..TENSOR_BYTES)
        .map(|j| (j.wrapping_mul(31) ^ i) as u8)
        .collect()
}

/// A protocol-2 pickle of `{name: _rebuild_tensor_v2(storage, 0, (ROWS, COLS), (COLS, 1), False, OrderedDict())}`.
fn pickle(names: &[String]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    let s = |p: &mut Vec<u8>, text: &str| {
        p.push(b'X');
        p.extend_from_slice(&(text.len() as u32).to_le_bytes());
        p.extend_from_slice(text.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend_from_slice(&(v as u32).to_le_bytes());
    };
    for (key, name) in names.iter().enumerate() {
        s(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        s(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nBFloat16Storage\n");
        s(&mut p, &key.to_string());
        s(&mut p, "cpu");
        int(&mut p, ROWS * COLS);
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        int(&mut p, ROWS);
        int(&mut p, COLS);
        p.push(0x86);
        int(&mut p, COLS);
        int(&mut p, 1);
        p.push(0x86);
        p.push(0x89);
        p.extend_from_slice(b"ccollections\nOrderedDict\n)Rt");
        p.push(b'R');
    }
    p.extend_from_slice(b"u.");
    p
}

/// A stored-only zip in torch's layout (no CRCs: the reader does not check them).
fn write_torch_zip(path: &Path, members: &[(String, &[u8])]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut offset = 0usize;
    let mut central = Vec::new();
    for (name, data) in members {
        let fixed = 30 + name.len();
        // Pad with an extra field (id "FB") so the data starts 64-byte aligned, as torch does.
        let pad = (64 - (offset + fixed + 4) % 64) % 64;
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(b"FB");
        h.extend_from_slice(&(pad as u16).to_le_bytes());
        h.extend(std::iter::repeat_n(b'Z', pad));
        f.write_all(&h).unwrap();
        f.write_all(data).unwrap();
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&(offset as u32).to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        offset += h.len() + data.len();
    }
    f.write_all(&central).unwrap();
    let mut eocd = 0x0605_4b50u32.to_le_bytes().to_vec();
    eocd.extend_from_slice(&[0, 0, 0, 0]);
    eocd.extend_from_slice(&(members.len() as u16).to_le_bytes());
    eocd.extend_from_slice(&(members.len() as u16).to_le_bytes());
    eocd.extend_from_slice(&(central.len() as u32).to_le_bytes());
    eocd.extend_from_slice(&(offset as u32).to_le_bytes());
    eocd.extend_from_slice(&[0, 0]);
    f.write_all(&eocd).unwrap();
}

fn load_and_touch(dir: &Path) -> (f64, u64) {
    let start = Instant::now();
    let w = Arc::new(Weights::from_dir(dir).unwrap());
    let scope = w.scope("");
    let mut sum = 0u64;
    for name in w.names() {
        let t = scope.get_float(name, &[ROWS, COLS]).unwrap();
        assert!(t.is_mapped());
        // Touch every byte.
        sum = t.bytes().chunks_exact(8).fold(sum, |a, c| {
            a.wrapping_add(u64::from_le_bytes(c.try_into().unwrap()))
        });
    }
    (start.elapsed().as_secs_f64(), sum)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size_mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let count = (size_mb * 1_000_000).div_ceil(TENSOR_BYTES).max(2);
    let root = std::env::temp_dir().join(format!("awq-load-bench-{}", std::process::id()));
    let (bin, st) = (root.join("bin"), root.join("safetensors"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&st).unwrap();
    let names: Vec<String> = (0..count)
        .map(|i| format!("model.layers.{i}.weight"))
        .collect();
    let datas: Vec<Vec<u8>> = (0..count).map(tensor_bytes).collect();
    let halves = [0..count / 2, count / 2..count];
    let mut bin_map = serde_json::Map::new();
    let mut st_map = serde_json::Map::new();
    for (s, range) in halves.iter().enumerate() {
        let bin_file = format!("pytorch_model-{:05}-of-00002.bin", s + 1);
        let st_file = format!("model-{:05}-of-00002.safetensors", s + 1);
        let shard_names = &names[range.clone()];
        let pkl = pickle(shard_names);
        let archive = format!("pytorch_model-{:05}-of-00002", s + 1);
        let mut members: Vec<(String, &[u8])> = vec![(format!("{archive}/data.pkl"), &pkl)];
        for (key, i) in range.clone().enumerate() {
            members.push((format!("{archive}/data/{key}"), &datas[i]));
        }
        members.push((format!("{archive}/byteorder"), b"little"));
        write_torch_zip(&bin.join(&bin_file), &members);
        let tensors: Vec<(String, RawTensor<'_>)> = range
            .clone()
            .map(|i| {
                let raw = RawTensor {
                    dtype_name: "BF16".into(),
                    elem_size: 2,
                    shape: vec![ROWS, COLS],
                    data: std::borrow::Cow::Borrowed(&datas[i][..]),
                };
                (names[i].clone(), raw)
            })
            .collect();
        safetensors::write_file(&st.join(&st_file), &tensors, |_, _| {}).unwrap();
        for n in shard_names {
            bin_map.insert(n.clone(), bin_file.clone().into());
            st_map.insert(n.clone(), st_file.clone().into());
        }
    }
    drop(datas);
    let index = |map| serde_json::json!({ "metadata": {}, "weight_map": map }).to_string();
    std::fs::write(bin.join("pytorch_model.bin.index.json"), index(bin_map)).unwrap();
    std::fs::write(st.join("model.safetensors.index.json"), index(st_map)).unwrap();

    let total_mb = (count * TENSOR_BYTES) as f64 / 1e6;
    println!(
        "{count} bf16 tensors [{ROWS}, {COLS}], {total_mb:.0} MB, 2 shards per format, {runs} runs each \
         (open + look up every tensor + read every byte)"
    );
    for (label, dir) in [("pytorch .bin", &bin), ("safetensors", &st)] {
        let mut times = Vec::new();
        let mut check = 0;
        for _ in 0..runs {
            let (t, sum) = load_and_touch(dir);
            times.push(t);
            check = sum;
        }
        let open_only: Vec<f64> = (0..runs)
            .map(|_| {
                let s = Instant::now();
                let w = Weights::from_dir(dir).unwrap();
                assert_eq!(w.names().len(), count);
                s.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let mut open_sorted = open_only.clone();
        open_sorted.sort_by(f64::total_cmp);
        println!(
            "{label:>13}: median {:.3} s ({:.2} GB/s), min {:.3} s; open + index only: median {:.2} ms  [checksum {check:x}]",
            times[runs / 2],
            total_mb / 1e3 / times[runs / 2],
            times[0],
            open_sorted[runs / 2] * 1e3
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
