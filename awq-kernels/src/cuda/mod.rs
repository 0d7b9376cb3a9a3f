//! The CUDA side (feature `cuda`): one context and one stream per GPU, kernels embedded as PTX (compiled by
//! `build.rs` with NVRTC) and loaded once, cuBLAS on the same stream. The CUDA driver and cuBLAS are loaded
//! at run time, so a binary built with the feature still runs on a machine without a GPU: [`Gpu::new`]
//! returns an error there instead of failing to start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchArgs, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use crate::{Error, Result};

pub mod attention;
/// Runs `$body` with `$T` bound to the Rust element type of a float dtype and `$sfx` to its kernel suffix
/// (the launchers of `ops.rs` and `rowwise.rs`).
macro_rules! float_dispatch {
    ($dtype:expr, $op:literal, |$T:ident, $sfx:ident| $body:block) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                let $sfx = "f32";
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                let $sfx = "f16";
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                let $sfx = "bf16";
                $body
            }
            other => Err($crate::Error::DType {
                op: $op,
                expected: $crate::DType::F16,
                got: other,
            }),
        }
    };
}

/// Launches `args` with `cfg`, or does nothing when the grid is empty: a kernel over zero rows or elements
/// has nothing to compute, and CUDA refuses a zero-sized grid.
///
/// # Safety
/// As `LaunchArgs::launch`: the arguments match the kernel's signature and every access it makes is in
/// bounds of the buffers passed.
pub(crate) unsafe fn launch(
    args: &mut LaunchArgs<'_>,
    cfg: LaunchConfig,
) -> std::result::Result<(), DriverError> {
    let (x, y, z) = cfg.grid_dim;
    if x == 0 || y == 0 || z == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { args.launch(cfg) }.map(|_| ())
}

pub mod buffer;
pub mod flash_tile;
pub mod ops;
pub mod rowwise;
pub mod sampling;
pub mod timing;

/// Every kernel file of `kernels/`, as PTX.
const MODULES: &[(&str, &str)] = &[
    ("ops", include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"))),
    (
        "awq_gemm",
        include_str!(concat!(env!("OUT_DIR"), "/awq_gemm.ptx")),
    ),
    (
        "attention",
        include_str!(concat!(env!("OUT_DIR"), "/attention.ptx")),
    ),
    (
        "rowwise",
        include_str!(concat!(env!("OUT_DIR"), "/rowwise.ptx")),
    ),
    (
        "sampling",
        include_str!(concat!(env!("OUT_DIR"), "/sampling.ptx")),
    ),
];

/// The device's default memory pool (the one `cuMemAllocAsync` draws from), if the driver has pools.
fn default_memory_pool(ctx: &CudaContext) -> Option<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    ctx.bind_to_thread().ok()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
    let got = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (got == sys::CUresult::CUDA_SUCCESS && !pool.is_null()).then_some(pool)
}

/// Makes the default memory pool keep what is freed instead of returning it to the driver at every
/// synchronization (its default release threshold is 0): the buffers of one decode step are then reused by
/// the next without the driver mapping memory again, which is the caching allocator a forward pass needs.
/// Best effort: a driver without memory pools allocates synchronously and has nothing to configure.
fn keep_freed_memory_pooled(ctx: &CudaContext) {
    let Some(pool) = default_memory_pool(ctx) else {
        return;
    };
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a u64, which `threshold` is; `pool` is the
    // device's default pool.
    let _ = unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
}

/// Releases what the default memory pool holds beyond the buffers in use (best effort).
fn trim_memory_pool(ctx: &CudaContext) {
    let Some(pool) = default_memory_pool(ctx) else {
        return;
    };
    // Pending frees must have happened before the pool can release their memory.
    let _ = ctx.synchronize();
    // SAFETY: `pool` is the device's default pool.
    let _ = unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) };
}

pub(crate) fn cuda_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// One GPU: its context, the stream every op runs on, and the loaded kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Kernels already looked up ("module::name"), with the dynamic shared memory they were opted into:
    /// a decode step launches about a thousand kernels, each lookup or attribute call would be a driver call.
    functions: Mutex<HashMap<String, (CudaFunction, usize)>>,
    blas: OnceLock<Arc<cudarc::cublas::CudaBlas>>,
}

impl Gpu {
    /// Opens GPU `ordinal`. Fails with a clear error when there is no driver or no such GPU.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        if !driver_library_present() {
            return Err(Error::Cuda(
                "no CUDA driver found (libcuda.so.1); is this a GPU machine?".into(),
            ));
        }
        // cudarc panics when it cannot load a library; turn any such panic into an error too.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| {
                Error::Cuda("no CUDA driver found (libcuda.so); is this a GPU machine?".into())
            })?
            .map_err(|e| cuda_error(&format!("opening GPU {ordinal}"), e))?;
        // SAFETY: every buffer and kernel of this crate lives on the one stream below, so stream order
        // alone orders each use of a buffer after its allocation and before its free; the two events
        // cudarc would otherwise create (and destroy) with every allocation, thousands per decode step,
        // would only cost driver calls.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory_pooled(&ctx);
        let stream = ctx.default_stream();
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
        }))
    }

    /// The process-wide handle of GPU 0, opened on first use.
    pub fn shared() -> Result<Arc<Gpu>> {
        Gpu::shared_ordinal(0)
    }

    /// The process-wide handle of GPU `ordinal` (only GPU 0 for now: one GPU per process).
    pub fn shared_ordinal(ordinal: usize) -> Result<Arc<Gpu>> {
        static SHARED: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        if ordinal != 0 {
            return Err(Error::Cuda(format!(
                "only GPU 0 is supported, not {ordinal}"
            )));
        }
        SHARED
            .get_or_init(|| {
                Gpu::new(0).map_err(|e| match e {
                    Error::Cuda(message) => message,
                    other => other.to_string(),
                })
            })
            .clone()
            .map_err(Error::Cuda)
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device name, e.g. "NVIDIA H200".
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Streaming multiprocessors of the device (at least 1).
    pub fn multiprocessors(&self) -> Result<usize> {
        let sms = self
            .context()
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| cuda_error("reading the multiprocessor count", e))?;
        Ok(sms.max(1) as usize)
    }

    /// Whether this "GPU" is the CPU emulator (`awq-kernels/emulator`), where a warp collective costs
    /// microseconds: test suites keep their largest cases for real GPUs.
    pub fn is_cpu_emulator(&self) -> bool {
        self.name().starts_with("CPU emulator")
    }

    /// Free and total device memory, in bytes (what the KV cache can be sized from after loading). Memory
    /// the pool keeps from freed buffers is handed back first, so it counts as free.
    pub fn memory(&self) -> Result<(usize, usize)> {
        trim_memory_pool(&self.ctx);
        self.ctx
            .mem_get_info()
            .map_err(|e| crate::Error::Cuda(format!("querying device memory: {e}")))
    }

    /// Kernel `name` from module `module` (a file name of `kernels/` without `.cu`).
    pub fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        self.function_with_shared(module, name, 0)
    }

    /// [`Gpu::function`] opted into `shared_bytes` of dynamic shared memory (needed above 48 KB); the
    /// attribute is set once per kernel and size, not at every launch.
    pub fn function_with_shared(
        &self,
        module: &'static str,
        name: &str,
        shared_bytes: usize,
    ) -> Result<CudaFunction> {
        let key = format!("{module}::{name}");
        let mut functions = self
            .functions
            .lock()
            .map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
        if let Some((f, opted)) = functions.get(&key) {
            if *opted >= shared_bytes {
                return Ok(f.clone());
            }
        }
        let f = self.load_function(module, name)?;
        if shared_bytes > 0 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_bytes as i32,
            )
            .map_err(|e| cuda_error(&format!("{name}: {shared_bytes} bytes of shared memory"), e))?;
        }
        functions.insert(key, (f.clone(), shared_bytes));
        Ok(f)
    }

    fn load_function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module cache lock poisoned".into()))?;
        let m = match modules.get(module) {
            Some(m) => Arc::clone(m),
            None => {
                let (_, ptx) = MODULES
                    .iter()
                    .find(|(n, _)| *n == module)
                    .ok_or_else(|| Error::Cuda(format!("no kernel module `{module}`")))?;
                let loaded = self
                    .ctx
                    .load_module(Ptx::from_src(*ptx))
                    .map_err(|e| cuda_error(&format!("loading module {module}"), e))?;
                modules.insert(module, Arc::clone(&loaded));
                loaded
            }
        };
        m.load_function(name)
            .map_err(|e| cuda_error(&format!("kernel {module}::{name}"), e))
    }

    /// cuBLAS bound to this GPU's stream.
    pub fn blas(&self) -> Result<Arc<cudarc::cublas::CudaBlas>> {
        if let Some(b) = self.blas.get() {
            return Ok(Arc::clone(b));
        }
        let blas =
            std::panic::catch_unwind(|| cudarc::cublas::CudaBlas::new(Arc::clone(&self.stream)))
                .map_err(|_| Error::Cuda("cuBLAS library not found (libcublas.so)".into()))?
                .map_err(|e| cuda_error("creating the cuBLAS handle", e))?;
        // cuBLAS may by default reduce split-K partial sums of f16/bf16 GEMMs in f16/bf16; we accumulate in
        // f32 everywhere, so forbid that (a few ulps of error otherwise, seen on an H200).
        // SAFETY: the handle is valid (just created) and the mode is a valid enum value.
        let status = unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cudarc::cublas::sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        };
        if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Cuda(format!(
                "setting the cuBLAS math mode: {status:?}"
            )));
        }
        Ok(Arc::clone(self.blas.get_or_init(|| Arc::new(blas))))
    }

    /// Waits for all queued work and reports any error a kernel raised.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("synchronizing the stream", e))
    }
}

/// Whether the CUDA driver library can be loaded (checked first, so a machine without a GPU gets an error
/// instead of cudarc's panic message).
fn driver_library_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver library runs its initializers, which have no preconditions; the
        // handle is dropped at once (cudarc loads it again for itself).
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Whether a GPU can be used here; with `REQUIRE_GPU=1` a missing GPU is an error instead of `false`
/// (GPU tests call this to decide between running and skipping).
pub fn gpu_for_tests() -> Option<Arc<Gpu>> {
    match Gpu::shared() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("REQUIRE_GPU=1 but no GPU is usable: {e}");
            }
            eprintln!("no GPU here ({e}); GPU checks skipped");
            None
        }
    }
}
