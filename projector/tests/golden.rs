//! The projector against transformers: fed transformers' own ViT output (`image.vision_features` of the
//! fixtures made by `scripts/fixtures/make_internvl.py`), it must give transformers' projector output (class
//! token dropped, pixel shuffle v2 with ratio 0.5, `mlp1`).
//!
//! Tolerance: f32 on both sides from the same weights; only summation order differs (LayerNorm over 256 or
//! 384 channels, dot products of length 128-384). Measured: at most 6e-7 of the largest reference
//! magnitude; we allow 1e-5 of it. A wrong token or channel order moves values by far more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use awq_kernels::{Tensor, Weights};
use projector::{Projector, PsVersion};

const REL_TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn reference(name: &str, tensor: &str) -> Tensor {
    let w = Arc::new(Weights::from_file(&fixture(name).join("reference.safetensors")).unwrap());
    let s = w.scope("");
    s.get(tensor, &s.shape_of(tensor).unwrap()).unwrap()
}

fn load(name: &str, version: Option<PsVersion>) -> Projector {
    let dir = fixture(name);
    let root: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = Arc::new(Weights::from_dir(&dir).unwrap());
    let version =
        version.unwrap_or_else(|| PsVersion::parse(root["ps_version"].as_str().unwrap()).unwrap());
    let image = root["force_image_size"].as_u64().unwrap() as usize;
    let patch = root["vision_config"]["patch_size"].as_u64().unwrap() as usize;
    Projector::load(
        &weights.scope("mlp1."),
        root["vision_config"]["hidden_size"].as_u64().unwrap() as usize,
        image / patch,
        root["llm_config"]["hidden_size"].as_u64().unwrap() as usize,
        root["downsample_ratio"].as_f64().unwrap(),
        version,
    )
    .unwrap()
}

fn max_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(
            0.0f32,
            |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        );
    (worst, scale)
}

fn check(name: &str) {
    let projector = load(name, None);
    let out = projector
        .forward(&reference(name, "image.vision_features").to_f32().unwrap())
        .unwrap();
    let want = reference(name, "image.projector_output");
    let &[tiles, tokens, hidden] = want.shape() else {
        panic!("projector_output is [tiles, 256, H]")
    };
    assert_eq!(out.shape(), &[tiles * tokens, hidden]);
    let (worst, scale) = max_error(out.as_slice().unwrap(), &want.to_f32_vec().unwrap());
    eprintln!(
        "{name}: projector max error {:.2e} of the largest value",
        worst / scale
    );
    assert!(
        worst <= REL_TOL * scale,
        "{name}: max abs error {worst} (scale {scale})"
    );
    // The GPU's form (the shuffle as one row gather) gives the same rows.
    let gathered = projector
        .forward_by_gather(&reference(name, "image.vision_features").to_f32().unwrap())
        .unwrap();
    assert_eq!(gathered.shape(), out.shape());
    let (worst, scale) = max_error(gathered.as_slice().unwrap(), &want.to_f32_vec().unwrap());
    assert!(
        worst <= REL_TOL * scale,
        "{name} by gather: max abs error {worst} (scale {scale})"
    );
}

#[test]
fn projector_output_of_the_300m_like_checkpoint_matches_transformers() {
    check("internvl-300m-like");
}

#[test]
fn projector_output_of_the_6b_like_checkpoint_matches_transformers() {
    check("internvl-6b-like");
}

#[test]
fn the_v1_token_order_does_not_match_the_v2_reference() {
    // The same weights with ps_version v1 give the same rows in another order: far from the v2 reference.
    let name = "internvl-300m-like";
    let out = load(name, Some(PsVersion::V1))
        .forward(&reference(name, "image.vision_features").to_f32().unwrap())
        .unwrap();
    let (worst, scale) = max_error(
        out.as_slice().unwrap(),
        &reference(name, "image.projector_output")
            .to_f32_vec()
            .unwrap(),
    );
    assert!(
        worst > 0.1 * scale,
        "v1 unexpectedly matches v2: {worst} vs {scale}"
    );
}

#[test]
fn a_downsample_ratio_whose_inverse_is_not_a_whole_divisor_of_the_grid_is_refused() {
    let dir = fixture("internvl-300m-like");
    let weights = Arc::new(Weights::from_dir(&dir).unwrap());
    for ratio in [0.3, 0.0, -0.5, 2.0, f64::NAN, 1.0 / 3.0] {
        let err = Projector::load(&weights.scope("mlp1."), 64, 32, 128, ratio, PsVersion::V2)
            .err()
            .expect("must be refused");
        assert!(
            matches!(err, projector::Error::DownsampleRatio { .. }),
            "{ratio}: {err}"
        );
    }
}

#[test]
fn features_without_a_class_token_or_of_another_width_are_refused() {
    let projector = load("internvl-300m-like", None);
    for shape in [[1, 1024, 64], [1, 1025, 32], [1, 1000, 64]] {
        let err = projector
            .forward(&Tensor::zeros(awq_kernels::DType::F32, &shape))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{shape:?}")), "{err}");
    }
}
