//! Launchers for `kernels/sampling.cu`: the greedy choice of each row of logits, computed on the GPU so only
//! one u32 per sequence crosses to the host.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::buffer::GpuBuffer;
use super::cuda_error;
use super::launch;
use crate::{DType, Device, Result, Tensor};

const MODULE: &str = "sampling";

/// The index of the largest value of each of the `rows` rows of `width` of a GPU tensor (NaN as -inf,
/// first index on ties).
pub fn argmax_rows(logits: &Tensor, rows: usize, width: usize) -> Result<Vec<u32>> {
    let xb = logits.gpu_buffer()?;
    let gpu = Arc::clone(&xb.gpu);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let mut out = GpuBuffer::output(&gpu, DType::U32, rows)?;
    let config = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        // A vocabulary row (~150k values) takes 1024 threads about 150 loads each.
        block_dim: (width.div_ceil(32).clamp(1, 32) as u32 * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let w = width as i32;
    float_dispatch!(logits.dtype(), "argmax_rows (GPU)", |T, sfx| {
        let name = format!("argmax_rows_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(xb.slice::<T>()?).arg(out.slice_mut::<u32>()?).arg(&w);
        // SAFETY: logits hold rows·width elements of the launched type (checked by the caller), out
        // holds rows u32; one block per row reads only its own row.
        unsafe { launch(&mut l, config) }.map_err(|e| cuda_error(&format!("launching {name}"), e))
    })?;
    let host = Tensor::from_gpu_buffer(out, &[rows])?.to_device(Device::Cpu)?;
    Ok(host.as_slice::<u32>()?.to_vec())
}

/// [`crate::sampling::top_k_rows`] on a GPU tensor: one block per row ranks its k best scaled logits
/// (`kernels/sampling.cu` `top_k_rows_*`), and only rows × 64 (token, value) pairs come back.
pub fn top_k_rows(
    logits: &Tensor,
    rows: usize,
    width: usize,
    inv_temperature: &[f32],
    k: &[usize],
) -> Result<Vec<Vec<(u32, f32)>>> {
    const MAX: usize = crate::sampling::TOP_K_ROWS_MAX;
    if rows == 0 {
        return Ok(Vec::new());
    }
    let xb = logits.gpu_buffer()?;
    let gpu = Arc::clone(&xb.gpu);
    let ks: Vec<i32> = k.iter().map(|&v| v.min(MAX) as i32).collect();
    let inv_t = GpuBuffer::from_slice(&gpu, inv_temperature)?;
    let ks = GpuBuffer::from_slice(&gpu, &ks)?;
    let mut idx = GpuBuffer::output(&gpu, DType::U32, rows * MAX)?;
    let mut val = GpuBuffer::output(&gpu, DType::F32, rows * MAX)?;
    let config = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    let w = width as i32;
    float_dispatch!(logits.dtype(), "top_k_rows (GPU)", |T, sfx| {
        let name = format!("top_k_rows_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(xb.slice::<T>()?)
            .arg(inv_t.slice::<f32>()?)
            .arg(ks.slice::<i32>()?)
            .arg(idx.slice_mut::<u32>()?)
            .arg(val.slice_mut::<f32>()?)
            .arg(&w);
        // SAFETY: logits hold rows·width elements of the launched type (checked by the caller), the
        // temperatures and k one per row, idx and val rows·64; block r reads row r and writes its 64
        // outputs; 1024 threads per block as the kernel's launch bounds and sort require.
        unsafe { launch(&mut l, config) }.map_err(|e| cuda_error(&format!("launching {name}"), e))
    })?;
    let idx = Tensor::from_gpu_buffer(idx, &[rows * MAX])?.to_device(Device::Cpu)?;
    let val = Tensor::from_gpu_buffer(val, &[rows * MAX])?.to_device(Device::Cpu)?;
    let (idx, val) = (idx.as_slice::<u32>()?, val.as_slice::<f32>()?);
    Ok((0..rows)
        .map(|r| {
            let n = k[r].min(MAX).min(width);
            (0..n)
                .map(|j| (idx[r * MAX + j], val[r * MAX + j]))
                .collect()
        })
        .collect())
}
