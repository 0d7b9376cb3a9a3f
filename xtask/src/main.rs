//! Project workflows: `cargo xtask <command>`.
//!
//! - `ci`: format check, clippy with warnings denied, every test (the GPU suites on the CPU emulator), and
//!   the server driven by the official `openai` Python client (what `.ci/run` runs).
//! - `fixtures [--check]`: regenerate the reference fixtures with the pinned Python generator, or check that
//!   the committed ones are what it produces.
//! - `bench [criterion args]`: the criterion benches of `awq-kernels` on the CPU; `bench --gpu [criterion
//!   args]`: the criterion bench of the GPU AWQ linear next to cuBLAS fp16; `bench --e2e [options]`: the
//!   whole model on a synthetic full-size checkpoint (`internvl bench-e2e`: time to first token, decode
//!   tokens/s).
//! - `cuda-toolchain`: installs NVRTC, the CUDA headers and ptxas from pip into `target/cuda-toolchain`.
//! - `kernels`: registers, shared memory and spills of every kernel (ptxas, sm_80 and sm_90a).
//! - `gpu-bundle`: builds the GPU tests and benches and packs them with the torch peer and `run.sh` into
//!   `target/gpu-bundle`, to run on a GPU machine with `bash target/gpu-bundle/run.sh`.
//! - `emulator`, `test-emulated [FILTER]`: builds the CPU emulator of the CUDA driver and cuBLAS that runs the
//!   real kernels (`awq-kernels/emulator/`), and runs the GPU test suites against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod emulator;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test(),
        Some("fixtures") => fixtures(&root, args.iter().any(|a| a == "--check")),
        Some("bench") => bench(&args[1..]),
        Some("cuda-toolchain") => cuda_toolchain(&root).map(|_| ()),
        Some("kernels") => kernels(&root),
        Some("gpu-bundle") => gpu_bundle(&root),
        Some("emulator") => emulator::build(&root).map(|_| ()),
        Some("test-emulated") => {
            cuda_toolchain(&root)?;
            emulator::test(&root, args.get(1).map(String::as_str))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | test | fixtures [--check] | bench [--gpu] [criterion args] | \
                 bench --e2e [options] | cuda-toolchain | kernels | gpu-bundle | emulator | \
                 test-emulated [FILTER]>"
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
    // The CUDA kernels must compile (NVRTC, no GPU needed) and the CUDA code must be lint-clean.
    cuda_toolchain(&project_root())?;
    run(
        "cargo",
        &[
            "clippy",
            "-p",
            "awq-kernels",
            "-p",
            "qwen2",
            "-p",
            "internvl",
            "-p",
            "server",
            "--features",
            "awq-kernels/cuda,qwen2/cuda,internvl/cuda,server/cuda",
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
    // With the CUDA feature on a machine without a GPU: everything still runs on the CPU, GPU tests say
    // they found no GPU.
    cuda_toolchain(&project_root())?;
    run(
        "cargo",
        &["test", "-p", "awq-kernels", "--features", "cuda"],
    )?;
    // And the GPU tests themselves, on the CPU emulator of the driver and cuBLAS (the real kernels).
    emulator::test(&project_root(), None)?;
    // Doc tests are not covered by --all-targets.
    run("cargo", &["test", "--workspace", "--doc"])?;
    openai_client_check(&project_root())
}

/// The server driven by the official `openai` Python client (pinned in `scripts/server/requirements.txt`,
/// installed into `target/openai-venv`).
fn openai_client_check(root: &Path) -> Result<()> {
    let venv = root.join("target/openai-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(
            "python3",
            &["-m", "venv", venv.to_str().context("venv path")?],
        )?;
    }
    let py = python.to_str().context("python path")?;
    let requirements = root.join("scripts/server/requirements.txt");
    run(
        py,
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            requirements.to_str().context("path")?,
        ],
    )?;
    run("cargo", &["build", "-p", "server", "--bin", "server"])?;
    let server = root.join("target/debug/server");
    let images = root.join("fixtures/preprocess/src");
    let script = root.join("scripts/server/openai_client_check.py");
    run(
        py,
        &[
            script.to_str().context("path")?,
            "--server",
            server.to_str().context("path")?,
            "--images",
            images.to_str().context("path")?,
        ],
    )
}

/// `bench`: the criterion benches of the CPU ops; `bench --gpu [criterion args]`: the criterion bench of
/// the GPU AWQ linear; `bench --e2e [bench-e2e options]`: `internvl bench-e2e` in release (built with CUDA
/// when `--device cuda` is asked for).
fn bench(extra: &[String]) -> Result<()> {
    if extra.first().map(String::as_str) == Some("--e2e") {
        let rest = &extra[1..];
        let cuda = rest
            .windows(2)
            .any(|w| w[0] == "--device" && w[1] == "cuda")
            || rest.iter().any(|a| a == "--device=cuda");
        if cuda {
            cuda_toolchain(&project_root())?;
        }
        let mut args = vec!["run", "--release", "-p", "internvl"];
        if cuda {
            args.extend(["--features", "cuda"]);
        }
        args.extend(["--", "bench-e2e"]);
        args.extend(rest.iter().map(String::as_str));
        return run("cargo", &args);
    }
    if extra.first().map(String::as_str) == Some("--gpu") {
        // The criterion bench of the GPU kernels (skips itself where there is no GPU).
        cuda_toolchain(&project_root())?;
        let mut args = vec![
            "bench",
            "-p",
            "awq-kernels",
            "--features",
            "cuda",
            "--bench",
            "awq_criterion_gpu",
            "--",
        ];
        args.extend(extra[1..].iter().map(String::as_str));
        return run("cargo", &args);
    }
    let mut args = vec!["bench", "-p", "awq-kernels"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    run("cargo", &args)
}

/// Builds a virtual environment with the pinned versions under `target/`, then runs every generator in
/// `scripts/fixtures/` (`make_*.py`), each with `--check` when asked.
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
    let dir = root.join("scripts/fixtures");
    let mut requirements: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("requirements") && name.ends_with(".txt")
        })
        .collect();
    requirements.sort();
    for req in &requirements {
        run(
            py,
            &[
                "-m",
                "pip",
                "install",
                "-q",
                "-r",
                req.to_str().context("path")?,
            ],
        )?;
    }
    // AutoAWQ is used for its packing code only; its own dependencies would replace the pinned torch.
    run(
        py,
        &["-m", "pip", "install", "-q", "--no-deps", "autoawq==0.2.9"],
    )?;
    let mut generators: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("make_") && name.ends_with(".py")
        })
        .collect();
    generators.sort();
    for script in generators {
        let mut args = vec![script.to_str().context("path")?];
        if check {
            args.push("--check");
        }
        run(py, &args)?;
    }
    Ok(())
}

/// The pinned pip wheels that provide NVRTC 12.9, the CUDA headers and ptxas (design.md section 3).
const CUDA_WHEELS: &[&str] = &[
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
    "nvidia-cuda-nvcc-cu12==12.9.86",
];

fn cuda_toolchain(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/cuda-toolchain");
    let marker = dir.join(".installed");
    if !marker.exists() {
        let target = dir.to_str().context("toolchain path")?;
        let mut args = vec![
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--upgrade",
            "--target",
            target,
        ];
        args.extend(CUDA_WHEELS);
        run("python3", &args)?;
        std::fs::write(&marker, CUDA_WHEELS.join("\n"))?;
    }
    Ok(dir)
}

/// The PTX files the last `--features cuda` build produced, newest build directory first.
fn built_ptx(root: &Path, profile: &str) -> Result<Vec<PathBuf>> {
    let build = root.join("target").join(profile).join("build");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("awq-kernels-"))
        .map(|e| e.path().join("out"))
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    dirs.sort();
    let out = dirs
        .last()
        .map(|d| d.1.clone())
        .context("no awq-kernels build output")?;
    let mut ptx: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .collect();
    ptx.sort();
    Ok(ptx)
}

fn kernels(root: &Path) -> Result<()> {
    let toolchain = cuda_toolchain(root)?;
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "awq-kernels",
            "--features",
            "cuda",
        ],
    )?;
    let ptxas = toolchain.join("nvidia/cuda_nvcc/bin/ptxas");
    for ptx in built_ptx(root, "release")? {
        for arch in ["sm_80", "sm_90a"] {
            let out = std::env::temp_dir().join("xtask-kernels.cubin");
            eprintln!(
                "== {} for {arch}",
                ptx.file_name().unwrap_or_default().to_string_lossy()
            );
            run(
                ptxas.to_str().context("ptxas path")?,
                &[
                    "-arch",
                    arch,
                    "-v",
                    ptx.to_str().context("ptx path")?,
                    "-o",
                    out.to_str().context("cubin path")?,
                ],
            )?;
        }
    }
    Ok(())
}

/// Builds the `--features cuda` test and bench executables of the crates with GPU code and returns
/// (target name, path) for each.
pub(crate) fn cuda_executables(kind: &str, release: bool) -> Result<Vec<(String, PathBuf)>> {
    // `cargo bench` builds with the release-based bench profile; `cargo test` needs --release for it.
    let release: &[&str] = if kind == "test" && release {
        &["--release"]
    } else {
        &[]
    };
    let args: Vec<&str> = [kind]
        .iter()
        .chain(release)
        .copied()
        .chain([
            "-p",
            "awq-kernels",
            "-p",
            "qwen2",
            "-p",
            "internvl",
            "--features",
            "awq-kernels/cuda,qwen2/cuda,internvl/cuda",
            "--no-run",
            "--message-format=json",
        ])
        .collect();
    eprintln!("$ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(&args)
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "cargo {kind} --no-run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        // A program (not its unit tests, which share its name) is listed as `bin:<name>`.
        let is_program = msg["profile"]["test"] == false
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        let name = if is_program {
            format!("bin:{name}")
        } else {
            name.to_string()
        };
        found.push((name, PathBuf::from(exe)));
    }
    Ok(found)
}

/// The program `name` among `cuda_executables`' results.
pub(crate) fn program_of(executables: &[(String, PathBuf)], name: &str) -> Result<PathBuf> {
    let wanted = format!("bin:{name}");
    executables
        .iter()
        .find(|(n, _)| *n == wanted)
        .map(|(_, exe)| exe.clone())
        .with_context(|| format!("cargo built no `{name}` program"))
}

fn gpu_bundle(root: &Path) -> Result<()> {
    cuda_toolchain(root)?;
    let bundle = root.join("target/gpu-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(bundle.join("bin"))?;
    // The GPU test and bench targets are the ones named `*_gpu` (the others read fixtures from the
    // source tree, which does not travel).
    let mut exes: Vec<(String, PathBuf)> = cuda_executables("test", true)?
        .into_iter()
        .filter(|(name, _)| name.ends_with("_gpu"))
        .collect();
    exes.extend(
        cuda_executables("bench", true)?
            .into_iter()
            .filter(|(name, _)| name.ends_with("_gpu"))
            .map(|(name, path)| (format!("bench_{name}"), path)),
    );
    for (name, path) in &exes {
        let dst = bundle.join("bin").join(name);
        std::fs::copy(path, &dst).with_context(|| format!("copying {}", path.display()))?;
        shrink(&dst)?;
    }
    for file in [
        "run.sh",
        "lease.sh",
        "torch_peer.py",
        "summarize.py",
        "e2e_peer.py",
        "server_check.py",
    ] {
        let src = root.join("scripts/gpu").join(file);
        if src.exists() {
            std::fs::copy(&src, bundle.join(file))?;
        }
    }
    // The programs themselves, to run on the GPU end to end. Each is built on its own so `internvl` leaves out
    // the 12 MB embedded Qwen2 fixture (the working tree carries it; the bundle and the tree share 64 MiB).
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "internvl",
            "--no-default-features",
            "--features",
            "cuda",
        ],
    )?;
    run(
        "cargo",
        &["build", "--release", "-p", "server", "--features", "cuda"],
    )?;
    for name in ["internvl", "server"] {
        let program = bundle.join(name);
        std::fs::copy(root.join("target/release").join(name), &program)?;
        shrink(&program)?;
    }
    let names: Vec<&str> = exes.iter().map(|(n, _)| n.as_str()).collect();
    std::fs::write(bundle.join("bin/LIST"), names.join("\n") + "\n")?;
    let size: u64 = walk_size(&bundle)?;
    eprintln!(
        "gpu bundle: {} ({:.1} MiB): {}",
        bundle.display(),
        size as f64 / 1048576.0,
        names.join(", ")
    );
    Ok(())
}

/// Strips and compresses an executable with xz (`run.sh` unpacks it, with xz or Python's lzma): the bundle
/// and the working tree travel together under a 64 MiB limit, and xz takes a third off what gzip leaves.
fn shrink(exe: &Path) -> Result<()> {
    let path = exe.to_str().context("path")?;
    run("strip", &[path])?;
    run("xz", &["-9", "-T0", "-f", path])
}

fn walk_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            walk_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
