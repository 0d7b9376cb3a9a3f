//! Launchers for `kernels/sampling.cu`: the greedy choice of each row of logits, computed on the GPU so only
//! one u32 per sequence crosses to the host.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::buffer::GpuBuffer;
use super::cuda_error;
use super::launch;
use crate::{DType, Device, Error, Result, Tensor};

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
    macro_rules! launch {
        ($T:ty, $name:literal) => {{
            let f = gpu.function(MODULE, $name)?;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(xb.slice::<$T>()?).arg(out.slice_mut::<u32>()?).arg(&w);
            // SAFETY: logits hold rows·width elements of the launched type (checked by the caller), out
            // holds rows u32; one block per row reads only its own row.
            unsafe { launch(&mut l, config) }.map_err(|e| cuda_error(concat!("launching ", $name), e))?;
        }};
    }
    match logits.dtype() {
        DType::F32 => launch!(f32, "argmax_rows_f32"),
        DType::F16 => launch!(f16, "argmax_rows_f16"),
        DType::BF16 => launch!(bf16, "argmax_rows_bf16"),
        other => {
            return Err(Error::DType {
                op: "argmax_rows (GPU)",
                expected: DType::F16,
                got: other,
            })
        }
    }
    let host = Tensor::from_gpu_buffer(out, &[rows])?.to_device(Device::Cpu)?;
    Ok(host.as_slice::<u32>()?.to_vec())
}
