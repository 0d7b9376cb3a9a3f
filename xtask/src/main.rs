//! Project workflows: `cargo xtask <command>`.
//!
//! - `ci`: format check, clippy with warnings denied, every test (what `.ci/run` runs).
//! - `fixtures [--check]`: regenerate the reference fixtures with the pinned Python generator, or check that
//!   the committed ones are what it produces.
//! - `bench [criterion args]`: the criterion benches of `awq-kernels`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test(),
        Some("fixtures") => fixtures(&root, args.iter().any(|a| a == "--check")),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | test | fixtures [--check] | bench [criterion args]>"
            );
            bail!("unknown or missing command")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn ci() -> Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    test()
}

fn test() -> Result<()> {
    run("cargo", &["test", "--workspace", "--all-targets"])?;
    // Doc tests are not covered by --all-targets.
    run("cargo", &["test", "--workspace", "--doc"])
}

fn bench(extra: &[String]) -> Result<()> {
    let mut args = vec!["bench", "-p", "awq-kernels"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    run("cargo", &args)
}

/// Builds a virtual environment with the pinned versions under `target/`, then runs the generator.
fn fixtures(root: &Path, check: bool) -> Result<()> {
    let venv = root.join("target/fixtures-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(
            "python3",
            &["-m", "venv", venv.to_str().context("venv path")?],
        )?;
    }
    let py = python.to_str().context("python path")?;
    run(
        py,
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            "scripts/fixtures/requirements.txt",
        ],
    )?;
    let mut args = vec!["scripts/fixtures/make_qwen2.py"];
    if check {
        args.push("--check");
    }
    run(py, &args)
}
