//! Timing GPU work for the benches the way `triton.testing.do_bench` (the torch peer's timer) does: a 256 MB
//! memset before each call flushes L2 and keeps the GPU busy while the host enqueues the call, so the start
//! event fires when the GPU reaches the call, not while it waits for the host; CUDA events around the call;
//! the median over the timed calls after some untimed ones. And random device tensors to time on.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::buffer::GpuBuffer;
use super::{cuda_error, Gpu};
use crate::{DType, Error, Result, Tensor};

/// Bytes written before each timed call (more than the L2 of any current GPU).
pub const FLUSH_BYTES: usize = 256 << 20;

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times single calls between two CUDA events, each after an L2-flushing memset (the do_bench method);
/// holds the flush buffer and the events, so a bench harness (criterion's `iter_custom`) can time call after
/// call without allocating.
pub struct FlushedTimer {
    gpu: Arc<Gpu>,
    flush: CudaSlice<u8>,
    start: CudaEvent,
    end: CudaEvent,
}

impl FlushedTimer {
    pub fn new(gpu: &Arc<Gpu>) -> Result<FlushedTimer> {
        let flush = gpu
            .stream()
            .alloc_zeros::<u8>(FLUSH_BYTES)
            .map_err(|e| cuda_error("allocating the L2 flush", e))?;
        let ctx = gpu.context();
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| cuda_error("creating a timing event", e))
        };
        Ok(FlushedTimer {
            gpu: Arc::clone(gpu),
            flush,
            start: event()?,
            end: event()?,
        })
    }

    /// Microseconds the GPU spent in what `call` enqueues on the GPU's stream (waits for it to finish).
    pub fn time_us(&mut self, call: impl FnOnce() -> Result<()>) -> Result<f64> {
        let stream = self.gpu.stream();
        stream
            .memset_zeros(&mut self.flush)
            .map_err(|e| cuda_error("flushing L2", e))?;
        self.start
            .record(stream)
            .map_err(|e| cuda_error("recording an event", e))?;
        call()?;
        self.end
            .record(stream)
            .map_err(|e| cuda_error("recording an event", e))?;
        let ms = self
            .start
            .elapsed_ms(&self.end)
            .map_err(|e| cuda_error("reading an event", e))?;
        Ok(ms as f64 * 1e3)
    }
}

/// Median microseconds of `call(i)` over calls `warmup..warmup + timed`, after `warmup` untimed ones, each
/// call after an L2-flushing memset and between two CUDA events.
pub fn flushed_median_us(
    gpu: &Arc<Gpu>,
    warmup: usize,
    timed: usize,
    mut call: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let mut timer = FlushedTimer::new(gpu)?;
    let mut times = Vec::with_capacity(timed);
    for i in 0..warmup + timed {
        let us = timer.time_us(|| call(i))?;
        if i >= warmup {
            times.push(us);
        }
    }
    gpu.synchronize()?;
    Ok(median(times))
}

/// A GPU tensor of `shape` (f32, f16 or bf16) with uniform values in [-1, 1): a random pattern of up to 16M
/// values, repeated (so no timing is of zeros, and a large tensor does not need as large a host copy).
pub fn random_uniform(gpu: &Arc<Gpu>, shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pattern: Vec<f32> = (0..n.clamp(1, 1 << 24))
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let mut buf = GpuBuffer::zeros(gpu, dtype, n)?;
    let stream = Arc::clone(gpu.stream());
    macro_rules! fill {
        ($t:ty, $conv:expr) => {{
            let host: Vec<$t> = pattern.iter().map(|&x| $conv(x)).collect();
            let dst = buf.slice_mut::<$t>()?;
            let mut at = 0;
            while at < n {
                let len = host.len().min(n - at);
                let mut view = dst.slice_mut(at..at + len);
                stream
                    .memcpy_htod(&host[..len], &mut view)
                    .map_err(|e| cuda_error("filling a random tensor", e))?;
                at += len;
            }
        }};
    }
    match dtype {
        DType::F32 => fill!(f32, |x: f32| x),
        DType::F16 => fill!(f16, f16::from_f32),
        DType::BF16 => fill!(bf16, bf16::from_f32),
        other => return Err(Error::Unsupported(format!("random GPU tensors of {other}"))),
    }
    Tensor::from_gpu_buffer(buf, shape)
}
