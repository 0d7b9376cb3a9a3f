//! The PyTorch `.bin` reader against fixtures written by torch (`scripts/fixtures/make_bin_checkpoints.py`):
//! the same state dict saved as `.bin` shards and as safetensors must read back bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use awq_kernels::testing::{copy_dir, temp_dir};
use awq_kernels::weights::{DTypeRule, TensorProblem};
use awq_kernels::{DType, Error, TensorSpec, WeightFormat, Weights};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/bin")
        .join(rel)
}

#[test]
fn every_tensor_of_the_bin_shards_equals_the_safetensors_twin_bit_for_bit() {
    for name in [
        "internvl-tiny-bf16",
        "internvl-tiny-fp16",
        "internvl-tiny-awq",
    ] {
        let bin = Weights::from_dir(&fixture(&format!("{name}/bin"))).unwrap();
        let st = Weights::from_dir(&fixture(&format!("{name}/safetensors"))).unwrap();
        assert_eq!(bin.format(), WeightFormat::TorchBin);
        assert_eq!(st.format(), WeightFormat::Safetensors);
        assert!(bin.file_names().len() >= 4, "{name}: several shards");
        assert_eq!(bin.names(), st.names(), "{name}");
        for t in bin.names() {
            let (a, b) = (bin.raw(t).unwrap(), st.raw(t).unwrap());
            assert_eq!(a.dtype_name, b.dtype_name, "{name} {t}");
            assert_eq!(a.shape, b.shape, "{name} {t}");
            assert_eq!(a.data, b.data, "{name} {t}");
        }
        let expected_dtype = match name {
            "internvl-tiny-bf16" => "BF16",
            _ => "F16",
        };
        let embed = bin
            .info("language_model.model.embed_tokens.weight")
            .unwrap();
        assert_eq!(embed.dtype_name, expected_dtype);
        assert_eq!(embed.shape[0], 412);
    }
}

#[test]
fn awq_int32_tensors_are_memory_mapped_in_place_from_the_bin_shards() {
    let w = Arc::new(Weights::from_dir(&fixture("internvl-tiny-awq/bin")).unwrap());
    let s = w.scope("language_model.model.layers.0.self_attn.q_proj.");
    let qweight = s.get_with_dtype("qweight", &[128, 16], DType::I32).unwrap();
    assert!(qweight.is_mapped(), "torch aligns storages to 64 bytes");
    let st = Arc::new(Weights::from_dir(&fixture("internvl-tiny-awq/safetensors")).unwrap());
    let want = st
        .scope("language_model.model.layers.0.self_attn.q_proj.")
        .get("qweight", &[128, 16])
        .unwrap();
    assert_eq!(
        qweight.as_slice::<i32>().unwrap(),
        want.as_slice::<i32>().unwrap()
    );
    let scales = s.get_float("scales", &[1, 128]).unwrap();
    assert_eq!(scales.dtype(), DType::F16);
}

#[test]
fn views_with_offsets_and_strides_read_as_torch_made_them_contiguous() {
    let w = Weights::from_file(&fixture("views/pytorch_model.bin")).unwrap();
    let want = Weights::from_file(&fixture("views/expected.safetensors")).unwrap();
    for name in want.names() {
        let (a, b) = (w.raw(name).unwrap(), want.raw(name).unwrap());
        assert_eq!(
            (&a.dtype_name, &a.shape),
            (&b.dtype_name, &b.shape),
            "{name}"
        );
        assert_eq!(a.data, b.data, "{name}");
    }
    let w = Arc::new(w);
    let s = w.scope("");
    // base = arange(12).reshape(3, 4) * 0.5 - 1, stored transposed: row r of the view is column r of base.
    let t = s.get_float("transposed_f32", &[4, 3]).unwrap();
    assert!(!t.is_mapped(), "a transposed view is gathered into a copy");
    assert_eq!(
        t.as_slice::<f32>().unwrap(),
        &[-1.0, 1.0, 3.0, -0.5, 1.5, 3.5, 0.0, 2.0, 4.0, 0.5, 2.5, 4.5]
    );
    let col = s.get("column_f16", &[4]).unwrap().to_f32_vec().unwrap();
    assert_eq!(col, vec![-4.5, -1.5, 1.5, 4.5]);
    let tail = s
        .get_with_dtype("shared_tail_i32", &[4], DType::I32)
        .unwrap();
    assert_eq!(tail.as_slice::<i32>().unwrap(), &[11, 14, 17, 20]);
    let i64s = s.get_with_dtype("i64", &[5], DType::I64).unwrap();
    assert_eq!(
        i64s.as_slice::<i64>().unwrap(),
        &[-(1i64 << 40), -1, 0, 7, 1i64 << 62]
    );
    let scalar = s.get_float("scalar_f32", &[]).unwrap();
    assert_eq!(scalar.as_slice::<f32>().unwrap(), &[3.25]);
}

#[test]
fn an_unsupported_dtype_is_an_error_on_lookup_not_on_open() {
    let w = Arc::new(Weights::from_file(&fixture("views/pytorch_model.bin")).unwrap());
    let err = w.scope("").get("f64", &[2]).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedWeightDType { name, dtype, .. } if name == "f64" && dtype == "F64"),
        "{err}"
    );
    // The raw bytes are still there, for conversion.
    let raw = w.raw("f64").unwrap();
    assert_eq!(
        &*raw.data,
        [1.5f64.to_le_bytes(), 2.5f64.to_le_bytes()].concat()
    );
}

#[test]
fn a_pickle_that_calls_a_global_is_refused_without_running_it() {
    let marker = "internvl_pickle_pwned";
    let err = Weights::from_dir(&fixture("malicious"))
        .err()
        .expect("must be refused");
    assert!(
        matches!(&err, Error::UnsafePickle { global, .. } if global == "posix.system"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("posix.system"),
        "{msg}"
    );
    assert!(!Path::new(marker).exists());
    assert!(!fixture("malicious").join(marker).exists());
}

#[test]
fn a_truncated_shard_is_refused_naming_the_file() {
    let dir = temp_dir("truncated");
    copy_dir(&fixture("internvl-tiny-bf16/bin"), &dir);
    let shard = dir.join("pytorch_model-00002-of-00005.bin");
    let bytes = std::fs::read(&shard).unwrap();
    for keep in [bytes.len() - 10, bytes.len() / 2, 100] {
        std::fs::write(&shard, &bytes[..keep]).unwrap();
        let err = Weights::from_dir(&dir)
            .err()
            .expect("truncated")
            .to_string();
        assert!(
            err.contains("pytorch_model-00002-of-00005.bin") && err.contains("truncated"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Offset of the first central-directory record (torch writes `data.pkl` first).
fn first_central_record(bytes: &[u8]) -> usize {
    bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap()
}

#[test]
fn a_corrupted_pickle_or_a_compressed_storage_is_refused_with_a_reason() {
    let dir = temp_dir("corrupted");
    let path = dir.join("pytorch_model.bin");
    let good = std::fs::read(fixture("views/pytorch_model.bin")).unwrap();

    // Garble the pickle's bytes (it starts after the first local header, whose name is `<archive>/data.pkl`).
    let mut bad = good.clone();
    let name_len = u16::from_le_bytes([bad[26], bad[27]]) as usize;
    let extra_len = u16::from_le_bytes([bad[28], bad[29]]) as usize;
    let pkl = 30 + name_len + extra_len;
    for b in &mut bad[pkl + 2..pkl + 40] {
        *b = 0xEE;
    }
    std::fs::write(&path, &bad).unwrap();
    let err = Weights::from_file(&path).err().unwrap().to_string();
    assert!(
        err.contains("pytorch_model.bin") && err.contains("pickle") && err.contains("corrupted"),
        "{err}"
    );

    // Mark the pickle member as deflated in the central directory.
    let mut bad = good.clone();
    let cd = first_central_record(&bad);
    bad[cd + 10] = 8;
    std::fs::write(&path, &bad).unwrap();
    let err = Weights::from_file(&path).err().unwrap().to_string();
    assert!(err.contains("compressed (method 8)"), "{err}");

    // Break a storage: the pickle then names a storage whose size does not match.
    let mut bad = good;
    let cd = first_central_record(&bad);
    let n = u16::from_le_bytes([bad[cd + 28], bad[cd + 29]]) as usize;
    // Rename `.../data.pkl` in the directory: no pickle is found any more.
    bad[cd + 46 + n - 1] = b'X';
    std::fs::write(&path, &bad).unwrap();
    let err = Weights::from_file(&path).err().unwrap().to_string();
    assert!(err.contains("data.pkl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_with_both_formats_prefers_safetensors() {
    let dir = temp_dir("both");
    copy_dir(&fixture("internvl-tiny-fp16/bin"), &dir);
    std::fs::copy(
        fixture("internvl-tiny-fp16/safetensors/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let w = Weights::from_dir(&dir).unwrap();
    assert_eq!(w.format(), WeightFormat::Safetensors);
    assert_eq!(w.file_names(), vec!["model.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_check_reports_every_missing_misshapen_and_mistyped_tensor_at_once() {
    let w = Weights::from_dir(&fixture("internvl-tiny-awq/bin")).unwrap();
    let p = "language_model.model.layers.0.self_attn.q_proj.";
    let specs = vec![
        TensorSpec::new(
            format!("{p}qweight"),
            &[128, 16],
            DTypeRule::Exact(DType::I32),
        ),
        TensorSpec::new(format!("{p}qzeros"), &[2, 16], DTypeRule::Exact(DType::I32)),
        TensorSpec::new(
            format!("{p}scales"),
            &[1, 128],
            DTypeRule::Exact(DType::I32),
        ),
        TensorSpec::new(format!("{p}weight"), &[128, 128], DTypeRule::Float),
        TensorSpec {
            optional: true,
            ..TensorSpec::new("lm_head.weight", &[1], DTypeRule::Float)
        },
    ];
    let problems = w.check(&specs);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(matches!(&problems[0], TensorProblem::Shape { got, .. } if got == &vec![1, 16]));
    assert!(matches!(&problems[1], TensorProblem::DType { got, .. } if got == "f16"));
    assert!(
        matches!(&problems[2], TensorProblem::Missing { name, .. } if name.ends_with("q_proj.weight"))
    );
    let err = w.verify(&specs).unwrap_err().to_string();
    assert!(
        err.contains("3 problems") && err.contains("qzeros") && err.contains("scales"),
        "{err}"
    );
}
