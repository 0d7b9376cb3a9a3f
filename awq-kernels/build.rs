//! With feature `cuda`: compiles every `kernels/*.cu` to PTX with NVRTC and leaves it in `OUT_DIR`, where
//! `src/cuda/` embeds it. No GPU and no `nvcc` are needed: NVRTC and the CUDA headers come from the pip
//! wheels `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-runtime-cu12` (`cargo xtask cuda-toolchain` installs
//! them under `target/cuda-toolchain`, or point `INTERNVL_CUDA_TOOLCHAIN` at such a folder).
//! Without the feature this script does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::compile_kernels();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};

    /// Every kernel file is compiled for this virtual architecture: sm_80 and newer JIT it at load time.
    /// Hopper-only kernels (wgmma) get their own `compute_90a` build when they exist.
    const ARCH: &str = "compute_80";

    fn toolchain_dir() -> PathBuf {
        println!("cargo:rerun-if-env-changed=INTERNVL_CUDA_TOOLCHAIN");
        if let Ok(dir) = std::env::var("INTERNVL_CUDA_TOOLCHAIN") {
            return PathBuf::from(dir);
        }
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        manifest.join("../target/cuda-toolchain")
    }

    /// cudarc finds NVRTC by its soname through the dynamic loader. Opening the wheel's library by its full
    /// path first (and keeping it loaded) makes that lookup find it, with no LD_LIBRARY_PATH to set.
    fn preload_nvrtc(toolchain: &Path) {
        let lib = toolchain.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
        if !lib.exists() {
            panic!(
                "feature `cuda` needs NVRTC 12.9: {} not found. Run `cargo xtask cuda-toolchain` \
                 (pip wheels nvidia-cuda-nvrtc-cu12==12.9.86, nvidia-cuda-runtime-cu12==12.9.79) or set \
                 INTERNVL_CUDA_TOOLCHAIN to the folder holding `nvidia/`",
                lib.display()
            );
        }
        // SAFETY: loading NVRTC runs its initializers, which have no preconditions; the handle is leaked on
        // purpose so the library stays loaded for the rest of this build script.
        let handle = unsafe {
            libloading::os::unix::Library::open(
                Some(&lib),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", lib.display()));
        std::mem::forget(handle);
    }

    pub fn compile_kernels() {
        let toolchain = toolchain_dir();
        preload_nvrtc(&toolchain);
        let include = toolchain.join("nvidia/cuda_runtime/include");
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
        let kernel_dir =
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
        println!("cargo:rerun-if-changed={}", kernel_dir.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&kernel_dir)
            .expect("kernels/ folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .collect();
        files.sort();
        for file in files {
            println!("cargo:rerun-if-changed={}", file.display());
            let src = std::fs::read_to_string(&file).unwrap();
            let name = file.file_stem().unwrap().to_string_lossy().into_owned();
            let opts = cudarc::nvrtc::CompileOptions {
                arch: Some(ARCH),
                include_paths: vec![
                    include.display().to_string(),
                    kernel_dir.display().to_string(),
                ],
                options: vec!["--std=c++17".into(), "-default-device".into()],
                name: Some(format!("{name}.cu")),
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).unwrap_or_else(|e| {
                panic!("NVRTC failed on {}:\n{e:?}", file.display());
            });
            std::fs::write(out_dir.join(format!("{name}.ptx")), ptx.to_src()).unwrap();
        }
    }
}
