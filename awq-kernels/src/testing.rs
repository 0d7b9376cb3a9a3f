//! Helpers shared by the test suites of the workspace's crates (golden comparisons against the
//! transformers fixtures, scratch folders). Not part of the inference API.

use std::path::{Path, PathBuf};

/// Asserts `got` is within `rel_tol` of the largest reference magnitude, element by element (NaN and
/// infinities fail); returns the worst error relative to that magnitude.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel_tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err.is_finite(), "{what}[{i}]: got {g}, want {w}");
        worst = worst.max(err);
    }
    assert!(
        worst <= rel_tol * scale,
        "{what}: max abs error {worst} exceeds {} (scale {scale})",
        rel_tol * scale
    );
    worst / scale
}

/// A fresh, empty scratch folder under the system's temporary folder, unique to this process and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("internvl-rs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Copies the files of folder `src` (not recursively) into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).expect("reading a fixture folder") {
        let path = entry.expect("a folder entry").path();
        let name = path.file_name().expect("a file name");
        std::fs::copy(&path, dst.join(name)).expect("copying a fixture file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_values_pass_and_report_their_relative_error() {
        let worst = assert_close("x", &[1.0, 2.0005], &[1.0, 2.0], 1e-3);
        assert!((worst - 0.00025).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn far_values_fail() {
        assert_close("x", &[1.0, 2.1], &[1.0, 2.0], 1e-3);
    }

    #[test]
    #[should_panic(expected = "got NaN")]
    fn nan_fails() {
        assert_close("x", &[f32::NAN], &[1.0], 1e-3);
    }
}
