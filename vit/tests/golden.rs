//! InternViT against transformers: the tiny random-weight InternVL checkpoints made by
//! `scripts/fixtures/make_internvl.py` (transformers `InternVLForConditionalGeneration`, float32, eager
//! attention, from the checkpoint's bf16 weights), one per flavour: 300M-like (LayerNorm, qkv bias, 4 heads of
//! 16) and 6B-like (RMSNorm, q/k RMSNorm, no qkv bias, 3 heads of 32).
//!
//! Tolerance: both sides compute in f32 from the same weights, so only the order of f32 additions differs
//! (dot products of length 588 in the patch embedding, 64-192 in the layers, softmax sums over 1025 keys).
//! Measured: at most 5e-7 of the largest reference magnitude. We allow 1e-5 of it: a wrong patch order,
//! position row, bias split, norm or layer scale moves values by more than 1e-2 of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use awq_kernels::{Tensor, Weights};
use vit::{InternVit, VisionConfig};

const REL_TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn tensor(file: &Path, name: &str) -> Tensor {
    let w = Arc::new(Weights::from_file(file).unwrap());
    let s = w.scope("");
    s.get(name, &s.shape_of(name).unwrap()).unwrap()
}

/// The fixture's pixels: `(level - 128) / 64` of the stored u8 levels.
fn pixels(name: &str) -> Tensor {
    let levels = tensor(&fixtures().join("internvl-pixels/pixels.safetensors"), name);
    let values = levels
        .as_slice::<u8>()
        .unwrap()
        .iter()
        .map(|&l| (l as f32 - 128.0) / 64.0)
        .collect();
    Tensor::from_vec(values, levels.shape()).unwrap()
}

fn load(name: &str) -> InternVit {
    let dir = fixtures().join(name);
    let root: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = VisionConfig::from_json(&root["vision_config"], name).unwrap();
    let weights = Arc::new(Weights::from_dir(&dir).unwrap());
    InternVit::load(&config, &weights.scope("vision_model.")).unwrap()
}

fn check_vision_features(name: &str) {
    let model = load(name);
    let out = model.forward(&pixels("image_levels")).unwrap();
    assert_eq!(out.shape(), &[2, 1025, model.config().hidden_size]);
    let want = tensor(
        &fixtures().join(name).join("reference.safetensors"),
        "image.vision_features",
    );
    let want = want.to_f32_vec().unwrap();
    let rel = assert_close(name, out.as_slice().unwrap(), &want);
    eprintln!("{name}: vision features max error {rel:.2e} of the largest value");
    // The form a GPU copy is made from (qkv split, layer scales folded, the embedding as one product of
    // an augmented input) computes the same function.
    let rewritten = model.rewritten().unwrap();
    let out = rewritten.forward(&pixels("image_levels")).unwrap();
    let rel = assert_close(&format!("{name} rewritten"), out.as_slice().unwrap(), &want);
    eprintln!("{name}: rewritten for the GPU, max error {rel:.2e} of the largest value");
}

#[test]
fn vision_features_of_the_300m_like_checkpoint_match_transformers() {
    check_vision_features("internvl-300m-like");
}

#[test]
fn vision_features_of_the_6b_like_checkpoint_with_qk_norm_match_transformers() {
    check_vision_features("internvl-6b-like");
}

#[test]
fn each_tile_is_encoded_on_its_own_whatever_its_batch() {
    // The second tile alone gives the second half of the two-tile batch (up to summation order).
    let model = load("internvl-300m-like");
    let both = pixels("image_levels");
    let second = both.narrow_rows(1, 2).unwrap();
    let alone = model.forward(&second).unwrap();
    let want = tensor(
        &fixtures().join("internvl-300m-like/reference.safetensors"),
        "image.vision_features",
    )
    .narrow_rows(1, 2)
    .unwrap();
    assert_close(
        "second tile alone",
        alone.as_slice().unwrap(),
        &want.to_f32_vec().unwrap(),
    );
}

#[test]
fn tiles_of_another_size_or_channel_count_are_refused_with_the_expected_shape() {
    let model = load("internvl-6b-like");
    for shape in [[1, 3, 224, 224], [1, 1, 448, 448], [2, 3, 448, 434]] {
        let err = model
            .forward(&Tensor::zeros(awq_kernels::DType::F32, &shape))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{shape:?}")) && err.contains("[tiles, 3, 448, 448]"),
            "{err}"
        );
    }
    let err = model
        .forward(&Tensor::zeros(awq_kernels::DType::F32, &[3, 448, 448]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 448, 448]"), "{err}");
}

/// [`awq_kernels::testing::assert_close`] at this suite's tolerance.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    awq_kernels::testing::assert_close(what, got, want, REL_TOL)
}
