//! Choosing among AWQ kernel variants by timing them on the GPU at hand, once per layer shape, as Triton's
//! autotuner and TensorRT-LLM's tactic selection do. Which of several correct kernels is fastest depends on
//! the card (bandwidth, SM count, shared memory, L2) more than any model of it predicts (`PERF-NOTES.md`
//! records a variant predicted 1.5x faster that measured 1.3x slower), so the variants stay in the binary and
//! the first call of a shape decides.
//!
//! - Decode (m ≤ 64): the register, staggered and cp.async-pipelined streaming kernels (and up to 16 rows
//!   the batched and the six swapped-tile ones), each with the two plans of [`PlanShape`]. Different plans sum the k-splits in
//!   different groupings (and the swapped tile's tensor-core sums may round differently), so their outputs
//!   may differ in the last bit; the choice is made once per process and shape and then kept, and `AWQ_AUTOTUNE=0` fixes
//!   the default variant for runs that must repeat bit for bit across processes.
//! - Short prompts (64 < m ≤ 256): the same streaming candidates in row blocks of 64 rows against the
//!   dequantize + GEMM ones, each call timed whole.
//! - Long prompts (m > 256): four ways to write the dense weight for the GEMM; all write the same bits, and
//!   only the dequantization is timed (the GEMM after it is the same cuBLAS call for every candidate).
//!
//! A candidate must be faster than the default by [`MARGIN`] to replace it, so that timing noise does not
//! flip the choice between runs. Shapes whose weights are smaller than [`TUNE_MIN_BYTES`] are not timed
//! (launch-bound: nothing to win, and the tests' tiny layers keep the default).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};

use crate::cuda::{cuda_error, Gpu};
use crate::ops::awq::cuda::{STREAM_MAX_ROWS, SWAP_MAX_M};
use crate::ops::awq::plan::{m_tiles, row_blocks, swap_resident_blocks, PlanShape};
use crate::{DType, Result};

/// Where the streaming kernel keeps the weights it has loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKernel {
    /// `awq_stream_*`: batches of 16-byte loads into registers (the measured kernel).
    Registers,
    /// `awq_pipe_*`: whole groups through a per-warp cp.async ring in shared memory; bit-identical to
    /// [`StreamKernel::Registers`] under the same plan.
    Pipelined,
    /// `awq_stagger_*`: the register kernel with half of each block's warps starting ~1.5 us late, so that
    /// loads and math overlap instead of taking turns; bit-identical to [`StreamKernel::Registers`] under the
    /// same plan.
    Staggered,
    /// `awq_streamb_*` (m ≤ 16): the register kernel with each batch's weight loads all in flight before its
    /// math (left to itself, ptxas keeps 3-4 of the 8 in flight); bit-identical to
    /// [`StreamKernel::Registers`] under the same plan, which runs in its place above 16 rows.
    Batched,
    /// `awq_swap*_*` (m ≤ 16): the register kernel with the weights as the tensor cores' A operand and the
    /// tokens as B ([`SwapTile`]). Above 16 rows the register kernel runs in its place.
    Swapped(SwapTile),
}

/// The options of the swapped-tile kernels. With the weights as A, m ≤ 8 runs half the mma and holds half
/// the accumulators of the register kernel (80 registers: three blocks per SM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SwapTile {
    /// Each group's scale applied to its f32 sums after the mma instead of to every weight before them
    /// (`awq_swapgs*`): ~40% fewer instructions per chunk than the register kernel. The weights are not
    /// rounded to T first, so the result differs from the others' in the last bits (closer to the exact
    /// value). Without it the dequantized weights are the register kernel's, and the result the same up to
    /// the tensor cores' summation order.
    pub group_scale: bool,
    /// How the weights are loaded.
    pub loads: SwapLoads,
}

/// How a swapped-tile kernel keeps its weight loads in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SwapLoads {
    /// As ptxas schedules them (3-4 of a batch's 8 in flight): `awq_swap`, `awq_swapgs`.
    Default,
    /// Whole batches in flight, as [`StreamKernel::Batched`]: `awq_swapb`, `awq_swapgsb`; two blocks per SM.
    Batched,
    /// The next batch of 4 chunks (with its x fragments, scales and zeros) in flight during the current
    /// one's math: `awq_swapdb`, `awq_swapgsdb`, m ≤ 8 (the batched kernel above that); two blocks per SM.
    DoubleBuffered,
}

impl SwapTile {
    /// Every kind, the plain one first.
    pub const ALL: [SwapTile; 6] = [
        SwapTile::new(false, SwapLoads::Default),
        SwapTile::new(true, SwapLoads::Default),
        SwapTile::new(false, SwapLoads::Batched),
        SwapTile::new(true, SwapLoads::Batched),
        SwapTile::new(false, SwapLoads::DoubleBuffered),
        SwapTile::new(true, SwapLoads::DoubleBuffered),
    ];

    pub const fn new(group_scale: bool, loads: SwapLoads) -> Self {
        SwapTile { group_scale, loads }
    }

    /// The loads the kernel for `m` rows uses: double buffering exists for one token tile (m ≤ 8) only.
    fn loads_for(self, m: usize) -> SwapLoads {
        match self.loads {
            SwapLoads::DoubleBuffered if m > 8 => SwapLoads::Batched,
            l => l,
        }
    }

    /// The kernel name's prefix for `m` rows: `awq_swap`, `awq_swapgs`, `awq_swapb`, `awq_swapgsb`,
    /// `awq_swapdb`, `awq_swapgsdb`.
    pub fn prefix(self, m: usize) -> &'static str {
        match (self.group_scale, self.loads_for(m)) {
            (false, SwapLoads::Default) => "awq_swap",
            (true, SwapLoads::Default) => "awq_swapgs",
            (false, SwapLoads::Batched) => "awq_swapb",
            (true, SwapLoads::Batched) => "awq_swapgsb",
            (false, SwapLoads::DoubleBuffered) => "awq_swapdb",
            (true, SwapLoads::DoubleBuffered) => "awq_swapgsdb",
        }
    }

    /// Chunks per load batch for `m` rows when the plan asks for `cb` (a power of two dividing group / 16):
    /// the group-scaled kernels exist only up to 4 (8 with whole batches and m ≤ 8), where their registers
    /// allow it without spills (ptxas sm_90a); the double-buffered ones take 4 at most (two batches live).
    pub fn batch(self, m: usize, cb: usize) -> usize {
        match (self.group_scale, self.loads_for(m)) {
            (_, SwapLoads::DoubleBuffered) => cb.min(4),
            (true, SwapLoads::Default) => cb.min(4),
            (true, SwapLoads::Batched) if m > 8 => cb.min(4),
            _ => cb,
        }
    }

    /// Blocks of 256 threads resident on one SM for `m` rows.
    pub fn resident_blocks(self, m: usize) -> usize {
        match self.loads_for(m) {
            SwapLoads::Default => swap_resident_blocks(m),
            _ => 2,
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match (self.group_scale, self.loads) {
            (false, SwapLoads::Default) => "swap",
            (true, SwapLoads::Default) => "swap-gs",
            (false, SwapLoads::Batched) => "swap-b",
            (true, SwapLoads::Batched) => "swap-gs-b",
            (false, SwapLoads::DoubleBuffered) => "swap-db",
            (true, SwapLoads::DoubleBuffered) => "swap-gs-db",
        }
    }
}

/// How the dequantize + GEMM path writes the dense weight (`awq_dequant_*` in `kernels/awq_gemm.cu`). All
/// write the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DequantKernel {
    /// One lane-chunk (32 values) per thread (the measured kernel).
    Lanes,
    /// Four lane-chunks per thread, their loads in flight together.
    Lanes4,
    /// A block dequantizes 64 columns × 128 values of k into shared memory, then writes whole rows.
    Tiles1,
    /// The same with 64 × 256 and two loads per thread.
    Tiles2,
}

impl DequantKernel {
    pub const ALL: [DequantKernel; 4] = [
        DequantKernel::Lanes,
        DequantKernel::Lanes4,
        DequantKernel::Tiles1,
        DequantKernel::Tiles2,
    ];

    /// The kernel name's suffix after `awq_dequant_<T>`.
    pub fn suffix(self) -> &'static str {
        match self {
            DequantKernel::Lanes => "",
            DequantKernel::Lanes4 => "_lanes4",
            DequantKernel::Tiles1 => "_tiles1",
            DequantKernel::Tiles2 => "_tiles2",
        }
    }

    /// Lane-chunks (16 values of k of one lane of a strip) one thread handles; for the tile kernels, the
    /// chunks of a block's tile per warp.
    pub fn chunks_per_thread(self) -> usize {
        match self {
            DequantKernel::Lanes => 1,
            DequantKernel::Lanes4 => 4,
            DequantKernel::Tiles1 => 1,
            DequantKernel::Tiles2 => 2,
        }
    }

    /// Whether a block covers a tile of one strip (grid = (k tiles, strips)) instead of a flat range.
    pub fn tiled(self) -> bool {
        matches!(self, DequantKernel::Tiles1 | DequantKernel::Tiles2)
    }
}

/// One way to compute an AWQ linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// A weight-streaming tensor-core kernel (m ≤ 64) with a plan shape.
    Stream {
        kernel: StreamKernel,
        shape: PlanShape,
    },
    /// Dequantize W into a dense workspace with this kernel, then a cuBLAS GEMM (any m).
    DequantGemm(DequantKernel),
}

impl Variant {
    /// The decode default: the measured register kernel with the spread plan.
    pub const STREAM_DEFAULT: Variant = Variant::Stream {
        kernel: StreamKernel::Registers,
        shape: PlanShape::Spread,
    };
    /// The large-m default: the measured dequantization kernel.
    pub const DENSE_DEFAULT: Variant = Variant::DequantGemm(DequantKernel::Lanes);

    /// A short name for reports: `stream/spread`, `pipe/balanced`, `dequant-tiles2+gemm`, ...
    pub fn name(self) -> String {
        match self {
            Variant::Stream { kernel, shape } => format!(
                "{}/{}",
                match kernel {
                    StreamKernel::Registers => "stream",
                    StreamKernel::Pipelined => "pipe",
                    StreamKernel::Staggered => "stagger",
                    StreamKernel::Batched => "streamb",
                    StreamKernel::Swapped(t) => t.name(),
                },
                match shape {
                    PlanShape::Spread => "spread",
                    PlanShape::Balanced => "balanced",
                }
            ),
            Variant::DequantGemm(d) => format!(
                "dequant-{}+gemm",
                match d {
                    DequantKernel::Lanes => "lanes",
                    DequantKernel::Lanes4 => "lanes4",
                    DequantKernel::Tiles1 => "tiles1",
                    DequantKernel::Tiles2 => "tiles2",
                }
            ),
        }
    }
}

/// The decode candidates for `mt` m-tiles of 16 rows, the default first: every kernel (the pipelined one only
/// where its ring fits the GPU's shared memory, `pipelined_fits`; the batched and swapped ones only for one
/// m-tile, m ≤ 16) with both plans.
pub fn stream_candidates(pipelined_fits: bool, mt: usize) -> Vec<Variant> {
    let mut kernels = vec![StreamKernel::Registers];
    if pipelined_fits {
        kernels.push(StreamKernel::Pipelined);
    }
    kernels.push(StreamKernel::Staggered);
    if mt == 1 {
        kernels.push(StreamKernel::Batched);
        kernels.extend(SwapTile::ALL.map(StreamKernel::Swapped));
    }
    kernels
        .into_iter()
        .flat_map(|kernel| {
            [PlanShape::Spread, PlanShape::Balanced].map(|shape| Variant::Stream { kernel, shape })
        })
        .collect()
}

/// The dequantize + GEMM candidates, the default first.
pub fn dequant_candidates() -> Vec<Variant> {
    DequantKernel::ALL
        .into_iter()
        .map(Variant::DequantGemm)
        .collect()
}

/// How much faster than the default a candidate must be to replace it.
pub const MARGIN: f64 = 0.03;
/// Weight bytes below which a shape runs its default untimed.
pub const TUNE_MIN_BYTES: usize = 4 << 20;
/// Timed calls per candidate (after one untimed call each), interleaved across candidates.
const ROUNDS: usize = 5;

/// The candidate to keep, from median times (index 0 is the default): the fastest, unless the default is
/// within `margin` of it. Non-finite times (a candidate that failed) never win.
pub fn pick(times_us: &[f64], margin: f64) -> usize {
    let best = times_us
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    match times_us.first() {
        Some(&d) if d.is_finite() && d <= times_us[best] * (1.0 + margin) => 0,
        _ => best,
    }
}

/// What a choice is kept for: the layer's shape and dtype, and the m-tiles and 64-row blocks of the streaming
/// kernels (their plan depends on them; both 0 above 256 rows, where only dequantize + GEMM competes and its
/// kernels do not depend on m), and the token tiles of 8 rows of the swapped-tile kernels (1 up to 8 rows, 2
/// up to 16, else 0: their kernels differ there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TuneKey {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    pub dtype: DType,
    pub mt: usize,
    pub row_blocks: usize,
    pub token_tiles: usize,
}

impl TuneKey {
    /// The key of a call of `m` rows on a layer of k × n with this group size and dtype.
    pub fn new(k: usize, n: usize, group: usize, dtype: DType, m: usize) -> TuneKey {
        let streaming = m <= STREAM_MAX_ROWS;
        TuneKey {
            k,
            n,
            group,
            dtype,
            mt: if streaming { m_tiles(m) } else { 0 },
            row_blocks: if streaming { row_blocks(m) } else { 0 },
            token_tiles: if m <= SWAP_MAX_M { m.div_ceil(8) } else { 0 },
        }
    }
}

/// The choice for one key, with the median time of every candidate (µs; infinite where it failed).
#[derive(Clone, Debug)]
pub struct Tuned {
    pub chosen: Variant,
    pub timings: Vec<(Variant, f64)>,
}

const TUNE_UNSET: u8 = 0;
const TUNE_ON: u8 = 1;
const TUNE_OFF: u8 = 2;
static AUTOTUNE: AtomicU8 = AtomicU8::new(TUNE_UNSET);

/// Whether shapes are timed: on unless `AWQ_AUTOTUNE` is `0`, `off` or `false` (read at the first call), or
/// after [`set_autotune`].
pub fn autotune_enabled() -> bool {
    match AUTOTUNE.load(Ordering::Relaxed) {
        TUNE_ON => true,
        TUNE_OFF => false,
        _ => {
            let off = matches!(
                std::env::var("AWQ_AUTOTUNE").as_deref(),
                Ok("0") | Ok("off") | Ok("false")
            );
            let _ = AUTOTUNE.compare_exchange(
                TUNE_UNSET,
                if off { TUNE_OFF } else { TUNE_ON },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            autotune_enabled()
        }
    }
}

/// Turns timing on or off for the rest of the process (choices already made are kept).
pub fn set_autotune(on: bool) {
    AUTOTUNE.store(if on { TUNE_ON } else { TUNE_OFF }, Ordering::Relaxed);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median microseconds of `run(i)` for each of `count` candidates: one untimed call each (module loads,
/// workspace growth), then [`ROUNDS`] interleaved rounds, each call after a write of twice the L2 (so no
/// candidate reads weights the previous one left in L2) and between two CUDA events. A candidate whose call
/// fails gets an infinite time; the error of the others' is returned.
pub(crate) fn time_candidates(
    gpu: &Gpu,
    count: usize,
    mut run: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<f64>> {
    let stream = Arc::clone(gpu.stream());
    let ctx = gpu.context();
    let l2 = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_err(|e| cuda_error("reading the L2 size", e))?
        .max(1 << 20) as usize;
    let mut flush = stream
        .alloc_zeros::<u8>(2 * l2)
        .map_err(|e| cuda_error("allocating the autotuner's L2 flush", e))?;
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| cuda_error("creating a timing event", e))
    };
    let (start, end) = (event()?, event()?);
    let mut failed = vec![false; count];
    for (i, f) in failed.iter_mut().enumerate() {
        *f = run(i).is_err();
    }
    let mut times = vec![Vec::with_capacity(ROUNDS); count];
    for _ in 0..ROUNDS {
        for (i, t) in times.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            stream
                .memset_zeros(&mut flush)
                .map_err(|e| cuda_error("flushing L2", e))?;
            start
                .record(&stream)
                .map_err(|e| cuda_error("recording an event", e))?;
            if run(i).is_err() {
                failed[i] = true;
                continue;
            }
            end.record(&stream)
                .map_err(|e| cuda_error("recording an event", e))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| cuda_error("reading an event", e))?;
            t.push(ms as f64 * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .zip(failed)
        .map(|(t, f)| {
            if f || t.is_empty() {
                f64::INFINITY
            } else {
                median(t)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stays_unless_clearly_beaten() {
        assert_eq!(pick(&[10.0, 9.8, 10.5], MARGIN), 0);
        assert_eq!(pick(&[10.0, 9.0, 9.5], MARGIN), 1);
        assert_eq!(pick(&[10.0, 9.5, 8.0, 12.0], MARGIN), 2);
        // A failed default loses to any finite time; failed candidates never win.
        assert_eq!(pick(&[f64::INFINITY, 12.0, 11.0], MARGIN), 2);
        assert_eq!(pick(&[10.0, f64::INFINITY], MARGIN), 0);
        assert_eq!(pick(&[f64::INFINITY, f64::INFINITY], MARGIN), 0);
        assert_eq!(pick(&[7.0], MARGIN), 0);
    }

    #[test]
    fn keys_separate_what_runs_different_kernels() {
        let key = |m| TuneKey::new(8192, 8192, 128, DType::F16, m);
        // One and two token tiles run different swapped kernels; 17..64 rows none.
        assert_eq!(key(1), key(8));
        assert_ne!(key(8), key(9));
        assert_eq!(key(9), key(16));
        assert_eq!((key(16).mt, key(16).token_tiles), (1, 2));
        assert_eq!((key(17).mt, key(17).token_tiles), (2, 0));
        assert_eq!((key(100).mt, key(100).row_blocks), (4, 2));
        assert_eq!(
            (key(300).mt, key(300).row_blocks, key(300).token_tiles),
            (0, 0, 0)
        );
    }

    #[test]
    fn candidates_start_with_the_measured_defaults() {
        let s = stream_candidates(true, 1);
        assert_eq!(s[0], Variant::STREAM_DEFAULT);
        assert_eq!(s.len(), 20);
        assert_eq!(stream_candidates(true, 2).len(), 6);
        assert_eq!(stream_candidates(false, 4).len(), 4);
        assert!(stream_candidates(false, 4).iter().all(|v| matches!(
            v,
            Variant::Stream {
                kernel: StreamKernel::Registers | StreamKernel::Staggered,
                ..
            }
        )));
        assert!(stream_candidates(false, 1).iter().any(|v| matches!(
            v,
            Variant::Stream {
                kernel: StreamKernel::Swapped(SwapTile {
                    group_scale: true,
                    loads: SwapLoads::DoubleBuffered,
                }),
                ..
            }
        )));
        let d = dequant_candidates();
        assert_eq!(d[0], Variant::DENSE_DEFAULT);
        assert_eq!(d.len(), DequantKernel::ALL.len());
        let names: std::collections::HashSet<String> =
            s.iter().chain(&d).map(|v| v.name()).collect();
        assert_eq!(names.len(), s.len() + d.len(), "names are distinct");
        assert_eq!(Variant::STREAM_DEFAULT.name(), "stream/spread");
    }
}
