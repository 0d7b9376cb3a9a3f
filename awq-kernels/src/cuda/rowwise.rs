//! Launchers for `kernels/rowwise.cu`: fused residual add + RMSNorm, LayerNorm, exact GELU and the row
//! scatter on GPU tensors (f32, f16 or bf16), with 16-byte accesses when the row width allows. Shapes are
//! validated by the device-independent wrappers in `crate::ops`.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::buffer::GpuBuffer;
use super::launch;
use super::{cuda_error, Gpu};
use crate::{DType, Error, Result, Tensor};

const MODULE: &str = "rowwise";

/// Whether rows of `width` elements of `dtype` take the 16-byte path (every row 16-byte aligned).
fn vector_rows(dtype: DType, width: usize) -> bool {
    (width * dtype.size()).is_multiple_of(16)
}

/// One block per row: enough warps for one 16-byte vector (or element) per thread, 32 to 256 threads.
fn row_config(rows: usize, dtype: DType, width: usize) -> LaunchConfig {
    let per_thread = if vector_rows(dtype, width) {
        16 / dtype.size()
    } else {
        1
    };
    let threads = width.div_ceil(per_thread).div_ceil(32).clamp(1, 8) as u32 * 32;
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn gpu_of(t: &Tensor) -> Result<Arc<Gpu>> {
    Ok(Arc::clone(&t.gpu_buffer()?.gpu))
}

fn launch_err(kernel: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| cuda_error(&format!("launching {kernel}"), e)
}

fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    Ok(())
}

/// `x += residual; y = rmsnorm(x) · weight` over rows of `width`; returns `y` (x's shape).
pub fn add_rms_norm(
    x: &mut Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
    width: usize,
) -> Result<Tensor> {
    let op = "add_rms_norm (GPU)";
    same_dtype(op, x, residual)?;
    same_dtype(op, x, weight)?;
    let gpu = gpu_of(x)?;
    let rows = x.elem_count() / width.max(1);
    let dtype = x.dtype();
    let mut out = GpuBuffer::output(&gpu, dtype, x.elem_count())?;
    let shape = x.shape().to_vec();
    let (rb, wb) = (residual.gpu_buffer()?, weight.gpu_buffer()?);
    let xb = x.gpu_buffer_mut()?;
    let vec = vector_rows(dtype, width) as i32;
    float_dispatch!(dtype, "add_rms_norm", |T, sfx| {
        let name = format!("add_rms_norm_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let w = width as i32;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(xb.slice_mut::<T>()?)
            .arg(rb.slice::<T>()?)
            .arg(wb.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&w)
            .arg(&eps)
            .arg(&vec);
        // SAFETY: x, residual and out hold rows·width elements of T, weight holds width (checked by the
        // caller); with vec = 1 width·sizeof(T) is a multiple of 16, so every row is 16-byte aligned.
        unsafe { launch(&mut l, row_config(rows, dtype, width)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &shape)
}

/// `(x - mean) / sqrt(var + eps) · weight + bias` over rows of `width`.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    width: usize,
) -> Result<Tensor> {
    let op = "layer_norm (GPU)";
    same_dtype(op, x, weight)?;
    same_dtype(op, x, bias)?;
    let gpu = gpu_of(x)?;
    let rows = x.elem_count() / width.max(1);
    let dtype = x.dtype();
    let mut out = GpuBuffer::output(&gpu, dtype, x.elem_count())?;
    let vec = vector_rows(dtype, width) as i32;
    float_dispatch!(dtype, "layer_norm", |T, sfx| {
        let name = format!("layer_norm_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let w = width as i32;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<T>()?)
            .arg(weight.gpu_buffer()?.slice::<T>()?)
            .arg(bias.gpu_buffer()?.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&w)
            .arg(&eps)
            .arg(&vec);
        // SAFETY: x and out hold rows·width elements, weight and bias width (checked by the caller); the
        // vector path only with 16-byte rows.
        unsafe { launch(&mut l, row_config(rows, dtype, width)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, x.shape())
}

/// Exact GELU elementwise.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    let n = x.elem_count();
    let dtype = x.dtype();
    let mut out = GpuBuffer::output(&gpu, dtype, n)?;
    float_dispatch!(dtype, "gelu", |T, sfx| {
        let name = format!("gelu_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let nn = n as i64;
        let vectors = n / (16 / dtype.size());
        // A grid-stride loop: enough blocks for a few waves, at least one (it also writes the tail).
        let blocks = vectors.div_ceil(256).clamp(1, 4096) as u32;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&nn);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x and out hold n elements of T in fresh (256-byte aligned) allocations, so the
        // 16-byte accesses of the first n / V vectors are aligned; the n % V < 256 tail is written by
        // block 0's first threads.
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, x.shape())
}

/// `x[rows[i], :] = src[i, :]` for `x` `[r, width]`, `src` `[rows.len(), width]`.
pub fn scatter_rows(x: &mut Tensor, rows: &[i32], src: &Tensor, width: usize) -> Result<()> {
    let op = "scatter_rows (GPU)";
    same_dtype(op, x, src)?;
    if rows.is_empty() {
        return Ok(());
    }
    let gpu = gpu_of(x)?;
    let ids = GpuBuffer::from_slice(&gpu, rows)?;
    let dtype = x.dtype();
    let sb = src.gpu_buffer()?;
    let xb = x.gpu_buffer_mut()?;
    let vec = vector_rows(dtype, width) as i32;
    float_dispatch!(dtype, "scatter_rows", |T, sfx| {
        let name = format!("scatter_rows_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let w = width as i32;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(xb.slice_mut::<T>()?)
            .arg(ids.slice::<i32>()?)
            .arg(sb.slice::<T>()?)
            .arg(&w)
            .arg(&vec);
        // SAFETY: every row id is < x's row count (checked by the caller), src holds rows.len()·width
        // elements; the vector path only with 16-byte rows.
        unsafe { launch(&mut l, row_config(rows.len(), dtype, width)) }
            .map_err(launch_err(&name))?;
        Ok(())
    })
}
