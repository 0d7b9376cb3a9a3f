//! The AWQ W4A16 linear on the GPU (feature `cuda`): y[m, n] = x[m, k] · dequant(W)ᵀ (+ bias), x/y/bias f16 or
//! bf16, f32 accumulation. Kernels, layout and formula: `kernels/awq_gemm.cu` (its header comment).
//!
//! - Load: [`AwqGpuWeights::upload`] repacks the AutoAWQ tensors once on the CPU ([`repack`], which reads the
//!   nibble order only through [`crate::awq_format`]) into the layout the kernels read with 16-byte loads,
//!   and copies it to the device. Same bytes as the AWQ tensors (N·K/2 + N·K/G·2.5, N padded to 64).
//! - Call: [`awq_linear`] picks a path from the shapes ([`choose_path`]): the weight-streaming tensor-core
//!   kernel for small m, or dequantize-into-a-workspace + cuBLAS GEMM for large m; within it, the variant the
//!   autotuner timed fastest on this GPU for this shape (`tune.rs`; launch plans in `plan.rs`).
//!
//! Per-GPU scratch (split-K partials and counters, the dense-weight workspace, loaded kernels) lives in a
//! process-wide table keyed by the GPU's stream, grow-only, so repeated calls allocate nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};
use rayon::prelude::*;

use super::plan::{plan, plan_resident};
pub use super::plan::{stream_plan, PlanShape, StreamPlan, CHUNK_K};
use super::tune::{
    autotune_enabled, dequant_candidates, pick, stream_candidates, time_candidates, DequantKernel,
    StreamKernel, TuneKey, Tuned, Variant, MARGIN, TUNE_MIN_BYTES,
};
use crate::awq_format::{unpack_column, PACK_FACTOR};
use crate::cuda::ops::{add_bias_round_raw, gemm_nt_f32_product_raw};
use crate::cuda::{cuda_error, Gpu};
use crate::{DType, Error, FloatElement, Result};

const OP: &str = "awq_linear (cuda)";
const MODULE: &str = "awq_gemm";

/// Output columns per strip (8 mma tiles of 8 columns); n is padded to a multiple of this.
pub const STRIP: usize = 64;
/// u32 words of one chunk of one strip: 32 lanes × 4 words.
const CHUNK_WORDS: usize = 32 * 4;
/// Threads per block of every kernel here.
const THREADS: u32 = 256;
/// The streaming kernel handles up to 16·MT rows, MT ∈ {1, 2, 4}.
pub const STREAM_MAX_M: usize = 64;
/// The streaming kernels also take up to this many rows, in row blocks of 64 that share the weights through
/// L2: the autotuner weighs them against dequantize + GEMM for 64 < m ≤ 256 (short prompts).
pub const STREAM_MAX_ROWS: usize = 256;
/// The batched and swapped-tile kernels (`awq_streamb_*`, `awq_swap*_*`) take up to this many rows (the
/// swapped ones: two n8 tiles of tokens).
pub const SWAP_MAX_M: usize = 16;

/// Where nibble `i` (bits 4i..4i+3) of a repacked word goes: `(tile, kk)` = the word's tile pair member
/// (0: tile 2w, 1: tile 2w+1) and the row 4t + kk of the lane's four k rows in the chunk. The kernels read
/// nibbles (0,4) and (1,5) as the B fragment (b0, b1) of tile 2w, (2,6) and (3,7) as that of tile 2w+1.
pub const fn nibble_place(i: usize) -> (usize, usize) {
    let s = i % 4;
    (s / 2, 2 * (s % 2) + i / 4)
}

/// Float types the GPU AWQ path runs in.
pub trait AwqFloat: FloatElement + DeviceRepr + ValidAsZeroBits {
    /// Kernel name suffix.
    const NAME: &'static str;
}

impl AwqFloat for f16 {
    const NAME: &'static str = "f16";
}

impl AwqFloat for bf16 {
    const NAME: &'static str = "bf16";
}

/// The bits of `v` rounded to `dtype` (F16 or BF16).
fn to_bits(v: f32, dtype: DType) -> u16 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_bits(),
        _ => f16::from_f32(v).to_bits(),
    }
}

fn from_bits(b: u16, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_bits(b).to_f32(),
        _ => f16::from_bits(b).to_f32(),
    }
}

/// Repacked AWQ weights on the host (the layout of `kernels/awq_gemm.cu`).
#[derive(Clone, Debug)]
pub struct Repacked {
    /// u32 [NS][K/16][32][4].
    pub qw: Vec<u32>,
    /// Bits of `dtype` [NS][K/G][8][8].
    pub scales: Vec<u16>,
    /// u32 [NS][K/G][8] (nibble j = zero of column strip·64 + 8j + g).
    pub zeros: Vec<u32>,
    pub k: usize,
    pub n: usize,
    pub group: usize,
    pub dtype: DType,
}

impl Repacked {
    /// Number of 64-column strips.
    pub fn strips(&self) -> usize {
        self.n.div_ceil(STRIP)
    }

    /// Random weights of shape (k, n, group) directly in this layout, for benches: random codes and zero
    /// points, scales uniform in [0.002, 0.03) (the kernels' speed does not depend on the values, and the
    /// bytes are those of real weights). Deterministic in `seed`.
    pub fn random(k: usize, n: usize, group: usize, dtype: DType, seed: u64) -> Result<Repacked> {
        use rand::{Rng, SeedableRng};
        check_shape(k, n, group)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (ns, ng) = (n.div_ceil(STRIP), k / group);
        let qw = (0..ns * (k / CHUNK_K) * CHUNK_WORDS)
            .map(|_| rng.gen())
            .collect();
        let scales = (0..ns * ng * 64)
            .map(|_| to_bits(rng.gen_range(0.002..0.03), dtype))
            .collect();
        let zeros = (0..ns * ng * 8).map(|_| rng.gen()).collect();
        Ok(Repacked {
            qw,
            scales,
            zeros,
            k,
            n,
            group,
            dtype,
        })
    }
}

/// Checks an AWQ shape against what the GPU path supports.
fn check_shape(k: usize, n: usize, group: usize) -> Result<()> {
    if k == 0 || n == 0 {
        return Err(Error::shape(OP, format!("empty weight (k = {k}, n = {n})")));
    }
    if group == 0 || !k.is_multiple_of(group) {
        return Err(Error::shape(
            OP,
            format!("group size {group} must divide k = {k}"),
        ));
    }
    if !group.is_multiple_of(CHUNK_K) {
        return Err(Error::Unsupported(format!(
            "{OP}: group size {group} is not a multiple of {CHUNK_K} (AWQ checkpoints use 32, 64 or 128)"
        )));
    }
    if !n.is_multiple_of(PACK_FACTOR) {
        return Err(Error::shape(OP, format!("n = {n} must be a multiple of 8")));
    }
    if k > i32::MAX as usize / 2 || n > i32::MAX as usize / 2 {
        return Err(Error::shape(OP, format!("k = {k} or n = {n} too large")));
    }
    Ok(())
}

/// Repacks AutoAWQ GEMM-layout tensors (`qweight` [k, n/8], `qzeros` [k/group, n/8], `scales` [k/group, n])
/// into the kernels' layout; scales are rounded to `dtype` (exact when they already are of that type).
pub fn repack<S: FloatElement>(
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[S],
    k: usize,
    n: usize,
    group: usize,
    dtype: DType,
) -> Result<Repacked> {
    check_shape(k, n, group)?;
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Err(Error::Unsupported(format!(
            "{OP}: activations must be f16 or bf16, not {dtype}"
        )));
    }
    let nw = n / PACK_FACTOR;
    let ng = k / group;
    for (what, len, want) in [
        ("qweight [k, n/8]", qweight.len(), k * nw),
        ("qzeros [k/group, n/8]", qzeros.len(), ng * nw),
        ("scales [k/group, n]", scales.len(), ng * n),
    ] {
        if len != want {
            return Err(Error::shape(
                OP,
                format!("{what} has {len} elements, expected {want}"),
            ));
        }
    }
    let ns = n.div_ceil(STRIP);
    let kc = k / CHUNK_K;
    let mut qw = vec![0u32; ns * kc * CHUNK_WORDS];
    qw.par_chunks_mut(kc * CHUNK_WORDS)
        .enumerate()
        .for_each(|(strip, out)| {
            for c in 0..kc {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    for w in 0..4 {
                        let mut word = 0u32;
                        for i in 0..8 {
                            let (tile, kk) = nibble_place(i);
                            let col = strip * STRIP + 8 * (2 * w + tile) + g;
                            if col < n {
                                let row = c * CHUNK_K + 4 * t + kk;
                                word |= unpack_column(&qweight[row * nw..(row + 1) * nw], col)
                                    << (4 * i);
                            }
                        }
                        out[(c * 32 + lane) * 4 + w] = word;
                    }
                }
            }
        });
    let mut sc = vec![0u16; ns * ng * 64];
    let mut zr = vec![0u32; ns * ng * 8];
    for strip in 0..ns {
        for grp in 0..ng {
            let zrow = &qzeros[grp * nw..(grp + 1) * nw];
            for g in 0..8 {
                let mut zword = 0u32;
                for j in 0..8 {
                    let col = strip * STRIP + 8 * j + g;
                    if col < n {
                        sc[((strip * ng + grp) * 8 + g) * 8 + j] =
                            to_bits(scales[grp * n + col].to_f32(), dtype);
                        zword |= unpack_column(zrow, col) << (4 * j);
                    }
                }
                zr[(strip * ng + grp) * 8 + g] = zword;
            }
        }
    }
    Ok(Repacked {
        qw,
        scales: sc,
        zeros: zr,
        k,
        n,
        group,
        dtype,
    })
}

/// The dense W [n, k] (f32) that the repacked buffers describe, read back through the layout independently
/// of [`repack`] (inverse nibble lookup); each value is (q - z)·s with s in `dtype`. For tests.
pub fn unpack_dequantize(r: &Repacked) -> Vec<f32> {
    let (k, n, group) = (r.k, r.n, r.group);
    let (kc, ng) = (k / CHUNK_K, k / group);
    // Inverse of nibble_place: nibble index for (tile, kk).
    let mut nib = [[0usize; 4]; 2];
    for i in 0..8 {
        let (tile, kk) = nibble_place(i);
        nib[tile][kk] = i;
    }
    let mut out = vec![0.0f32; n * k];
    for col in 0..n {
        let (strip, j, g) = (col / STRIP, (col % STRIP) / 8, col % 8);
        for row in 0..k {
            let (c, t, kk) = (row / CHUNK_K, (row % CHUNK_K) / 4, row % 4);
            let word = r.qw[((strip * kc + c) * 32 + 4 * g + t) * 4 + j / 2];
            let q = (word >> (4 * nib[j % 2][kk])) & 0xF;
            let grp = row / group;
            let z = (r.zeros[(strip * ng + grp) * 8 + g] >> (4 * j)) & 0xF;
            let s = from_bits(r.scales[((strip * ng + grp) * 8 + g) * 8 + j], r.dtype);
            out[col * k + row] = (q as f32 - z as f32) * s;
        }
    }
    out
}

/// Repacked AWQ weights on the device, ready for [`awq_linear`].
pub struct AwqGpuWeights {
    qw: CudaSlice<u32>,
    scales: CudaSlice<u16>,
    zeros: CudaSlice<u32>,
    k: usize,
    n: usize,
    group: usize,
    dtype: DType,
}

impl AwqGpuWeights {
    /// Repacks AutoAWQ GEMM-layout tensors (see [`repack`]) and copies them to `gpu`. `dtype` is the type of
    /// the activations the layer will run with (F16 or BF16); scales are stored in it.
    #[allow(clippy::too_many_arguments)]
    pub fn upload<S: FloatElement>(
        gpu: &Gpu,
        qweight: &[u32],
        qzeros: &[u32],
        scales: &[S],
        k: usize,
        n: usize,
        group: usize,
        dtype: DType,
    ) -> Result<Self> {
        let r = repack(qweight, qzeros, scales, k, n, group, dtype)?;
        Self::from_repacked(gpu, &r)
    }

    /// Repacks AutoAWQ GEMM-layout tensors that are already on the GPU, there (the kernels
    /// `awq_repack_codes` and `awq_repack_groups`, bit for bit what [`repack`] makes on the host): `qweight`
    /// [k, n/8] and `qzeros` [k/group, n/8] as i32 or u32 words, `scales` [k/group, n] in the activation
    /// dtype (F16 or BF16) the layer will run with. Loading moves the checkpoint's bytes as they are and
    /// leaves the reordering to the GPU.
    pub fn repack_on_device(
        qweight: &crate::Tensor,
        qzeros: &crate::Tensor,
        scales: &crate::Tensor,
        k: usize,
        n: usize,
        group: usize,
    ) -> Result<Self> {
        check_shape(k, n, group)?;
        let dtype = scales.dtype();
        if !matches!(dtype, DType::F16 | DType::BF16) {
            return Err(Error::Unsupported(format!(
                "{OP}: activations must be f16 or bf16, not {dtype}"
            )));
        }
        let (nw, ng) = (n / PACK_FACTOR, k / group);
        for (what, t, want) in [
            ("qweight [k, n/8]", qweight, k * nw),
            ("qzeros [k/group, n/8]", qzeros, ng * nw),
            ("scales [k/group, n]", scales, ng * n),
        ] {
            if t.elem_count() != want {
                return Err(Error::shape(
                    OP,
                    format!("{what} has {} elements, expected {want}", t.elem_count()),
                ));
            }
        }
        for t in [qweight, qzeros] {
            if !matches!(t.dtype(), DType::I32 | DType::U32) {
                return Err(Error::DType {
                    op: "AwqGpuWeights::repack_on_device",
                    expected: DType::I32,
                    got: t.dtype(),
                });
            }
        }
        let gpu = Arc::clone(&qweight.gpu_buffer()?.gpu);
        let stream = Arc::clone(gpu.stream());
        let (ns, kc) = (n.div_ceil(STRIP), k / CHUNK_K);
        let alloc = |what: &str, e| cuda_error(&format!("allocating repacked AWQ {what}"), e);
        // SAFETY (the three allocations): every element is written by the kernels below before any read.
        let mut qw =
            unsafe { stream.alloc::<u32>(ns * kc * CHUNK_WORDS) }.map_err(|e| alloc("codes", e))?;
        let mut sc =
            unsafe { stream.alloc::<u16>(ns * ng * 64) }.map_err(|e| alloc("scales", e))?;
        let mut zr = unsafe { stream.alloc::<u32>(ns * ng * 8) }.map_err(|e| alloc("zeros", e))?;
        let grid = |total: usize| LaunchConfig {
            grid_dim: (
                total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ki, ni, ngi) = (k as i32, n as i32, ng as i32);
        {
            let (qp, _gq) = words_ptr(qweight.gpu_buffer()?, &stream)?;
            let (op, _go) = qw.device_ptr_mut(&stream);
            let f = gpu.function(MODULE, "awq_repack_codes")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&qp).arg(&op).arg(&ki).arg(&ni);
            // SAFETY: qweight holds k·n/8 words (checked above), out ns·(k/16)·128 words; the kernel reads
            // rows < k and words < n/8 and writes exactly its output (grid-stride loop).
            unsafe { b.launch(grid(ns * kc * CHUNK_WORDS)) }
                .map_err(launch_error("awq_repack_codes"))?;
        }
        {
            let (zp, _gz) = words_ptr(qzeros.gpu_buffer()?, &stream)?;
            let (sp, _gs) = half_ptr(scales.gpu_buffer()?, &stream)?;
            let (zo, _gzo) = zr.device_ptr_mut(&stream);
            let (so, _gso) = sc.device_ptr_mut(&stream);
            let f = gpu.function(MODULE, "awq_repack_groups")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&zp).arg(&sp).arg(&zo).arg(&so).arg(&ni).arg(&ngi);
            // SAFETY: qzeros holds (k/group)·n/8 words and scales (k/group)·n 16-bit values (checked above);
            // the outputs hold ns·(k/group)·8 words and 8 times as many 16-bit values, all written.
            unsafe { b.launch(grid(ns * ng * 8)) }.map_err(launch_error("awq_repack_groups"))?;
        }
        Ok(Self {
            qw,
            scales: sc,
            zeros: zr,
            k,
            n,
            group,
            dtype,
        })
    }

    /// Copies already repacked weights to `gpu`.
    pub fn from_repacked(gpu: &Gpu, r: &Repacked) -> Result<Self> {
        check_shape(r.k, r.n, r.group)?;
        let (ns, kc, ng) = (r.strips(), r.k / CHUNK_K, r.k / r.group);
        if r.qw.len() != ns * kc * CHUNK_WORDS
            || r.scales.len() != ns * ng * 64
            || r.zeros.len() != ns * ng * 8
        {
            return Err(Error::shape(
                OP,
                "repacked buffers do not match their shape",
            ));
        }
        let s = gpu.stream();
        Ok(Self {
            qw: s
                .clone_htod(&r.qw)
                .map_err(|e| cuda_error("uploading AWQ weights", e))?,
            scales: s
                .clone_htod(&r.scales)
                .map_err(|e| cuda_error("uploading AWQ scales", e))?,
            zeros: s
                .clone_htod(&r.zeros)
                .map_err(|e| cuda_error("uploading AWQ zeros", e))?,
            k: r.k,
            n: r.n,
            group: r.group,
            dtype: r.dtype,
        })
    }

    /// One layer whose outputs are those of `parts` side by side, joined on the device. The layout is
    /// strip-major, so this is three concatenations, equal to repacking the host-fused tensors as long as
    /// every part but the last fills whole 64-column strips ([`Self::joinable`]).
    pub fn concat_out(gpu: &Gpu, parts: &[&AwqGpuWeights]) -> Result<Self> {
        if !Self::joinable(parts) {
            return Err(Error::Unsupported(format!(
                "{OP}: joining AWQ layers on the GPU needs one k, group and dtype and every width but the \
                 last a multiple of {STRIP}"
            )));
        }
        let s = gpu.stream();
        let e = |e| cuda_error("joining AWQ layers", e);
        let (first, n) = (parts[0], parts.iter().map(|p| p.n).sum::<usize>());
        let total = |f: fn(&AwqGpuWeights) -> usize| parts.iter().map(|p| f(p)).sum::<usize>();
        // SAFETY (the three allocations): the copies below write every element.
        let mut qw = unsafe { s.alloc::<u32>(total(|p| p.qw.len())) }.map_err(e)?;
        let mut scales = unsafe { s.alloc::<u16>(total(|p| p.scales.len())) }.map_err(e)?;
        let mut zeros = unsafe { s.alloc::<u32>(total(|p| p.zeros.len())) }.map_err(e)?;
        let (mut a, mut b, mut c) = (0, 0, 0);
        for p in parts {
            s.memcpy_dtod(&p.qw, &mut qw.slice_mut(a..a + p.qw.len()))
                .map_err(e)?;
            s.memcpy_dtod(&p.scales, &mut scales.slice_mut(b..b + p.scales.len()))
                .map_err(e)?;
            s.memcpy_dtod(&p.zeros, &mut zeros.slice_mut(c..c + p.zeros.len()))
                .map_err(e)?;
            (a, b, c) = (a + p.qw.len(), b + p.scales.len(), c + p.zeros.len());
        }
        Ok(Self {
            qw,
            scales,
            zeros,
            k: first.k,
            n,
            group: first.group,
            dtype: first.dtype,
        })
    }

    /// Whether [`Self::concat_out`] can join `parts`.
    pub fn joinable(parts: &[&AwqGpuWeights]) -> bool {
        let Some((last, rest)) = parts.split_last() else {
            return false;
        };
        parts
            .iter()
            .all(|p| (p.k, p.group, p.dtype) == (last.k, last.group, last.dtype))
            && rest.iter().all(|p| p.n.is_multiple_of(STRIP))
    }

    /// A device-side copy (benches rotate several copies so that timings are not L2 hits).
    pub fn try_clone(&self, gpu: &Gpu) -> Result<Self> {
        let s = gpu.stream();
        let e = |e| cuda_error("copying AWQ weights", e);
        Ok(Self {
            qw: s.clone_dtod(&self.qw).map_err(e)?,
            scales: s.clone_dtod(&self.scales).map_err(e)?,
            zeros: s.clone_dtod(&self.zeros).map_err(e)?,
            k: self.k,
            n: self.n,
            group: self.group,
            dtype: self.dtype,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn group(&self) -> usize {
        self.group
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of the weights on the device (what a decode call must read).
    pub fn device_bytes(&self) -> usize {
        self.qw.num_bytes() + self.scales.num_bytes() + self.zeros.num_bytes()
    }

    fn strips(&self) -> usize {
        self.n.div_ceil(STRIP)
    }

    /// Reads the repacked buffers back (tests).
    pub fn download(&self, gpu: &Gpu) -> Result<Repacked> {
        let s = gpu.stream();
        let e = |e| cuda_error("downloading AWQ weights", e);
        Ok(Repacked {
            qw: s.clone_dtoh(&self.qw).map_err(e)?,
            scales: s.clone_dtoh(&self.scales).map_err(e)?,
            zeros: s.clone_dtoh(&self.zeros).map_err(e)?,
            k: self.k,
            n: self.n,
            group: self.group,
            dtype: self.dtype,
        })
    }
}

/// Which kernels compute the linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwqPath {
    /// [`choose_path`] picks the family from m, the autotuner the variant within it (`tune.rs`).
    Auto,
    /// The weight-streaming tensor-core kernel (m ≤ [`STREAM_MAX_ROWS`]), weights loaded into registers, with
    /// the spread plan (the measured default).
    Stream,
    /// The same kernel with the weights moved through a per-warp cp.async ring in shared memory (whole
    /// groups in flight, no registers held by the loads); bit-identical to [`AwqPath::Stream`]. Where a
    /// group's stages exceed the GPU's shared memory the register kernel runs instead.
    Pipe,
    /// Dequantize W into a dense workspace (the measured kernel), then a cuBLAS GEMM (any m).
    DequantGemm,
    /// Exactly this variant (tests and benches compare them).
    Variant(Variant),
}

/// The kernel family for `m` rows: the weight-streaming kernel reads the int4 weights once and is bound by
/// memory up to about m = 16 (4x fewer bytes than fp16 cuBLAS) and then by its mma.sync issue rate, still
/// ahead of dequantize + GEMM at m = 64 (which pays a dense-weight write and read, N·K·(0.5 + 2 + 2) bytes,
/// before a GEMM as long as cuBLAS fp16's). Above 64 rows the GEMM's tensor-core efficiency wins, and at
/// m ≥ 1024 the dequantization is ≤ 20% of the GEMM (`PERF.md`). Returns [`AwqPath::Stream`] (the
/// autotuner then picks the kernel and plan, unless a kernel was fixed: [`set_decode_kernel`]),
/// [`AwqPath::Pipe`] when the pipelined kernel was fixed, or [`AwqPath::DequantGemm`] (the default above 64
/// rows; up to [`STREAM_MAX_ROWS`] the autotuner also times the streaming kernels in row blocks against it).
pub fn choose_path(m: usize, _k: usize, _n: usize) -> AwqPath {
    if m > STREAM_MAX_M {
        return AwqPath::DequantGemm;
    }
    match decode_setting() {
        DECODE_PIPE => AwqPath::Pipe,
        _ => AwqPath::Stream,
    }
}

/// Fixes the streaming kernel of every later decode-sized call of this process ([`AwqPath::Stream`] or
/// [`AwqPath::Pipe`], spread plan), or hands the choice back to the autotuner ([`AwqPath::Auto`]); the
/// end-to-end bench compares them on one loaded model. Other paths are ignored. The environment variable
/// `AWQ_DECODE_KERNEL` (`stream`, `pipe` or `tuned`, read at the first call) sets the same for a process.
pub fn set_decode_kernel(path: AwqPath) {
    let v = match path {
        AwqPath::Auto => DECODE_TUNED,
        AwqPath::Stream => DECODE_STREAM,
        AwqPath::Pipe => DECODE_PIPE,
        _ => return,
    };
    DECODE_KERNEL.store(v, std::sync::atomic::Ordering::Relaxed);
}

const DECODE_UNSET: u8 = 0;
const DECODE_TUNED: u8 = 1;
const DECODE_STREAM: u8 = 2;
const DECODE_PIPE: u8 = 3;
static DECODE_KERNEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(DECODE_UNSET);

fn decode_setting() -> u8 {
    use std::sync::atomic::Ordering;
    match DECODE_KERNEL.load(Ordering::Relaxed) {
        DECODE_UNSET => {
            let chosen = match std::env::var("AWQ_DECODE_KERNEL").as_deref() {
                Ok("stream") => DECODE_STREAM,
                Ok("pipe") => DECODE_PIPE,
                _ => DECODE_TUNED,
            };
            // Only the first reader sets it from the environment; a set_decode_kernel in between wins.
            let _ = DECODE_KERNEL.compare_exchange(
                DECODE_UNSET,
                chosen,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            DECODE_KERNEL.load(Ordering::Relaxed)
        }
        v => v,
    }
}

/// Pipeline stages of `awq_pipe_*` for `mt` m-tiles (the kernel names carry it).
fn pipe_stages(mt: usize) -> usize {
    if mt == 1 {
        3
    } else {
        4
    }
}

/// Dynamic shared memory of `awq_pipe_*`: 8 warps × stages × (group/16 chunks of 32 × 16 bytes + 160 bytes of
/// scales and zeros). At least the 16 KB its final k-lane sum reuses.
pub fn pipe_shared_bytes(mt: usize, group: usize) -> usize {
    let slots = (group / CHUNK_K) * 32 + 10;
    (8 * pipe_stages(mt) * slots * 16).max(4 * 8 * 4 * 32 * 4)
}

/// Whether `awq_pipe_*` for `mt` m-tiles and this group size fits a block's shared memory (`max_shared`
/// opt-in bytes; + 16 for the kernel's static shared word, rounded up).
fn pipe_fits(mt: usize, group: usize, max_shared: usize) -> bool {
    pipe_shared_bytes(mt, group) + 16 <= max_shared
}

/// Per-GPU scratch, grow-only.
struct Workspace {
    stream: Arc<CudaStream>,
    sms: usize,
    /// The most dynamic shared memory a block may opt into on this GPU.
    max_shared: usize,
    /// Split-K partial tiles (f32); contents are always written before they are read.
    partials: Option<CudaSlice<f32>>,
    /// One arrival counter per column block; zero between launches (the last block resets its own).
    counters: Option<CudaSlice<u32>>,
    /// Dense W [n, k] for the GEMM path, as raw 16-bit values of the call's type.
    dense: Option<CudaSlice<u16>>,
    /// At least k zeros (16-bit): the A rows past m of the streaming kernel.
    zero_row: Option<CudaSlice<u16>>,
    functions: HashMap<String, CudaFunction>,
    /// The autotuner's choices (and timings) for the shapes seen so far.
    tuned: HashMap<TuneKey, Tuned>,
}

impl Workspace {
    fn function(&mut self, gpu: &Gpu, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.get(name) {
            return Ok(f.clone());
        }
        let f = gpu.function(MODULE, name)?;
        self.functions.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// A pipelined kernel opted into `shared_bytes` of dynamic shared memory, with the largest shared
    /// memory carveout (two blocks of ~102 KB share an SM only then); both set once, not per launch.
    fn pipe_function(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shared_bytes: usize,
    ) -> Result<CudaFunction> {
        let key = format!("{name}@{shared_bytes}");
        if let Some(f) = self.functions.get(&key) {
            return Ok(f.clone());
        }
        let f = gpu.function_with_shared(MODULE, name, shared_bytes)?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            100,
        )
        .map_err(|e| cuda_error(&format!("{name}: shared memory carveout"), e))?;
        self.functions.insert(key, f.clone());
        Ok(f)
    }
}

static WORKSPACES: Mutex<Vec<Workspace>> = Mutex::new(Vec::new());

fn with_workspace<R>(gpu: &Gpu, f: impl FnOnce(&mut Workspace) -> Result<R>) -> Result<R> {
    let mut all = WORKSPACES
        .lock()
        .map_err(|_| Error::Cuda("AWQ workspace lock poisoned".into()))?;
    let idx = match all
        .iter()
        .position(|w| Arc::ptr_eq(&w.stream, gpu.stream()))
    {
        Some(i) => i,
        None => {
            let sms = gpu
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| cuda_error("reading the multiprocessor count", e))?;
            let max_shared = gpu
                .context()
                .attribute(
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )
                .map_err(|e| cuda_error("reading the shared memory limit", e))?;
            all.push(Workspace {
                stream: Arc::clone(gpu.stream()),
                sms: sms.max(1) as usize,
                max_shared: max_shared.max(0) as usize,
                partials: None,
                counters: None,
                dense: None,
                zero_row: None,
                functions: HashMap::new(),
                tuned: HashMap::new(),
            });
            all.len() - 1
        }
    };
    f(&mut all[idx])
}

/// Makes `slot` hold at least `len` elements (a fresh zeroed allocation when it must grow).
fn ensure<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<()> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None; // free the old buffer first (stream-ordered)
        *slot =
            Some(stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
                cuda_error(&format!("allocating the AWQ {what} ({len} elements)"), e)
            })?);
    }
    Ok(())
}

fn check_aligned(what: &str, ptr: u64) -> Result<()> {
    if !ptr.is_multiple_of(8) {
        return Err(Error::Unsupported(format!(
            "{OP}: {what} must be 8-byte aligned on the device"
        )));
    }
    Ok(())
}

/// The device address of a buffer of 32-bit words (i32 or u32).
fn words_ptr<'a>(
    b: &'a crate::cuda::buffer::GpuBuffer,
    stream: &'a Arc<CudaStream>,
) -> Result<(
    cudarc::driver::sys::CUdeviceptr,
    cudarc::driver::SyncOnDrop<'a>,
)> {
    Ok(match b.dtype() {
        DType::I32 => b.slice::<i32>()?.device_ptr(stream),
        _ => b.slice::<u32>()?.device_ptr(stream),
    })
}

/// The device address of a buffer of f16 or bf16 values.
fn half_ptr<'a>(
    b: &'a crate::cuda::buffer::GpuBuffer,
    stream: &'a Arc<CudaStream>,
) -> Result<(
    cudarc::driver::sys::CUdeviceptr,
    cudarc::driver::SyncOnDrop<'a>,
)> {
    Ok(match b.dtype() {
        DType::BF16 => b.slice::<bf16>()?.device_ptr(stream),
        _ => b.slice::<f16>()?.device_ptr(stream),
    })
}

fn launch_error(name: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| cuda_error(&format!("launching {name}"), e)
}

/// y[m, n] = x[m, k] · dequant(W)ᵀ (+ bias[n]) on the GPU's stream (asynchronous). `x` holds exactly m·k
/// elements, `y` m·n, `bias` n; `T` must be the dtype the weights were uploaded for.
pub fn awq_linear<T: AwqFloat>(
    gpu: &Gpu,
    x: &CudaView<T>,
    m: usize,
    w: &AwqGpuWeights,
    bias: Option<&CudaView<T>>,
    y: &mut CudaViewMut<T>,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    awq_linear_with(gpu, x, m, w, bias, y, AwqPath::Auto)
}

/// [`awq_linear`] with the path forced (tests and benches compare the paths).
pub fn awq_linear_with<T: AwqFloat>(
    gpu: &Gpu,
    x: &CudaView<T>,
    m: usize,
    w: &AwqGpuWeights,
    bias: Option<&CudaView<T>>,
    y: &mut CudaViewMut<T>,
    path: AwqPath,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let (k, n) = (w.k, w.n);
    if T::DTYPE != w.dtype {
        return Err(Error::DType {
            op: OP,
            expected: w.dtype,
            got: T::DTYPE,
        });
    }
    if m > i32::MAX as usize || m.checked_mul(k).is_none_or(|v| v != x.len()) {
        return Err(Error::shape(
            OP,
            format!("x has {} elements, expected m·k = {m}·{k}", x.len()),
        ));
    }
    if m.checked_mul(n).is_none_or(|v| v != y.len()) {
        return Err(Error::shape(
            OP,
            format!("y has {} elements, expected m·n = {m}·{n}", y.len()),
        ));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(Error::shape(
                OP,
                format!("bias has {} elements, expected n = {n}", b.len()),
            ));
        }
    }
    if m == 0 {
        return Ok(());
    }
    let fixed = match path {
        AwqPath::Auto => None,
        AwqPath::Stream => Some(Variant::STREAM_DEFAULT),
        AwqPath::Pipe => Some(Variant::Stream {
            kernel: StreamKernel::Pipelined,
            shape: PlanShape::Spread,
        }),
        AwqPath::DequantGemm => Some(Variant::DENSE_DEFAULT),
        AwqPath::Variant(v) => Some(v),
    };
    if matches!(fixed, Some(Variant::Stream { .. })) && m > STREAM_MAX_ROWS {
        return Err(Error::shape(
            OP,
            format!("the streaming kernel takes at most {STREAM_MAX_ROWS} rows, got {m}"),
        ));
    }
    with_workspace(gpu, |ws| {
        let variant = match fixed {
            Some(v) => v,
            None => auto_variant(gpu, ws, (x, m, w, bias), y)?,
        };
        run_variant(gpu, ws, variant, (x, m, w, bias), y)
    })
}

/// Runs one variant.
fn run_variant<T: AwqFloat>(
    gpu: &Gpu,
    ws: &mut Workspace,
    variant: Variant,
    ops: Operands<'_, T>,
    y: &mut CudaViewMut<T>,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    match variant {
        Variant::Stream { kernel, shape } => launch_stream(gpu, ws, ops, y, kernel, shape),
        Variant::DequantGemm(d) => launch_dequant_gemm(gpu, ws, ops, y, d),
    }
}

/// The variant [`AwqPath::Auto`] runs for these operands: the family from [`choose_path`], a fixed decode
/// kernel if one was set, else the autotuner's choice for the shape (timed now if it is new, on these
/// operands; the timing calls may write y, which the caller's run then overwrites).
fn auto_variant<T: AwqFloat>(
    gpu: &Gpu,
    ws: &mut Workspace,
    ops: Operands<'_, T>,
    y: &mut CudaViewMut<T>,
) -> Result<Variant>
where
    CudaBlas: Gemm<T>,
{
    let (m, w) = (ops.1, ops.2);
    // The family: decode shapes (m ≤ 64: the streaming kernels), short prompts (64 < m ≤ 256: streaming
    // kernels in row blocks against dequantize + GEMM, timed whole), long ones (dequantize + GEMM).
    let default = match choose_path(m, w.k, w.n) {
        AwqPath::DequantGemm => Variant::DENSE_DEFAULT,
        AwqPath::Pipe => {
            return Ok(Variant::Stream {
                kernel: StreamKernel::Pipelined,
                shape: PlanShape::Spread,
            })
        }
        _ if decode_setting() == DECODE_STREAM => return Ok(Variant::STREAM_DEFAULT),
        _ => Variant::STREAM_DEFAULT,
    };
    if !autotune_enabled() || w.device_bytes() < TUNE_MIN_BYTES {
        return Ok(default);
    }
    // The key's m-tiles and row blocks (0 above 256 rows) also say which candidates compete.
    let key = TuneKey::new(w.k, w.n, w.group, w.dtype, m);
    let (mt, row_blocks) = (key.mt, key.row_blocks);
    // The decode loop's path: one hash lookup, no allocation.
    if let Some(t) = ws.tuned.get(&key) {
        return Ok(t.chosen);
    }
    let candidates = match (mt, row_blocks) {
        (0, _) => dequant_candidates(),
        (_, 1) => stream_candidates(pipe_fits(mt, w.group, ws.max_shared), mt),
        _ => {
            let mut c = dequant_candidates();
            c.extend(stream_candidates(pipe_fits(mt, w.group, ws.max_shared), mt));
            c
        }
    };
    // A failure to time (no memory for the L2 flush, say) keeps the default; a candidate that fails to
    // launch is never chosen. Where only dequantize + GEMM candidates compete, they differ only in the
    // dequantization (the GEMM is the same cuBLAS call), so only that is timed; against the streaming
    // kernels, the whole call is.
    let dequant_only = mt == 0;
    let times = time_candidates(gpu, candidates.len(), |i| match candidates[i] {
        Variant::DequantGemm(d) if dequant_only => {
            dequantize_into_workspace::<T>(gpu, ws, ops.2, d)
        }
        v => run_variant(gpu, ws, v, ops, y),
    })
    .unwrap_or_else(|_| vec![f64::INFINITY; candidates.len()]);
    let chosen = candidates[pick(&times, MARGIN)];
    ws.tuned.insert(
        key,
        Tuned {
            chosen,
            timings: candidates.iter().copied().zip(times).collect(),
        },
    );
    Ok(chosen)
}

/// What the autotuner chose on `gpu` so far, per shape, with every candidate's median time (benches
/// print it).
pub fn tuning_report(gpu: &Gpu) -> Result<Vec<(TuneKey, Tuned)>> {
    with_workspace(gpu, |ws| {
        let mut all: Vec<(TuneKey, Tuned)> =
            ws.tuned.iter().map(|(k, t)| (*k, t.clone())).collect();
        all.sort_by_key(|(k, _)| (k.k, k.n, k.mt, k.dtype == DType::BF16));
        Ok(all)
    })
}

/// The inputs of one linear: x with its m rows, the weights, the bias.
type Operands<'a, T> = (
    &'a CudaView<'a, T>,
    usize,
    &'a AwqGpuWeights,
    Option<&'a CudaView<'a, T>>,
);

fn launch_stream<T: AwqFloat>(
    gpu: &Gpu,
    ws: &mut Workspace,
    (x, m, w, bias): Operands<'_, T>,
    y: &mut CudaViewMut<T>,
    kernel: StreamKernel,
    shape: PlanShape,
) -> Result<()> {
    let stream = Arc::clone(gpu.stream());
    // The batched and swapped kernels take up to 16 rows (the swapped ones one or two n8 token tiles, filling
    // their own residency); above that the register kernel runs in their place.
    let small = m <= SWAP_MAX_M;
    let swap = match kernel {
        StreamKernel::Swapped(tile) if small => Some(tile),
        _ => None,
    };
    let (strips, groups) = (w.strips(), w.k / w.group);
    let plan = match swap {
        Some(tile) => plan_resident(
            shape,
            m,
            strips,
            groups,
            w.group,
            ws.sms,
            tile.resident_blocks(m),
        ),
        None => plan(shape, m, strips, groups, w.group, ws.sms),
    };
    // The stages of a large group may not fit (group 256 at mt ≥ 2: 267 KB); the register kernel computes the
    // same bits.
    let pipelined = kernel == StreamKernel::Pipelined && pipe_fits(plan.mt, w.group, ws.max_shared);
    let (name, shared_mem_bytes) = if pipelined {
        let name = format!(
            "awq_pipe_{}_mt{}_sw{}_st{}",
            T::NAME,
            plan.mt,
            plan.sw,
            pipe_stages(plan.mt)
        );
        (name, pipe_shared_bytes(plan.mt, w.group))
    } else if let Some(tile) = swap {
        let name = format!(
            "{}_{}_nt{}_sw{}_cb{}",
            tile.prefix(m),
            T::NAME,
            m.div_ceil(8),
            plan.sw,
            tile.batch(m, plan.cb)
        );
        (name, 0)
    } else {
        let prefix = match kernel {
            StreamKernel::Staggered => "awq_stagger",
            StreamKernel::Batched if small => "awq_streamb",
            _ => "awq_stream",
        };
        let name = format!(
            "{prefix}_{}_mt{}_sw{}_cb{}",
            T::NAME,
            plan.mt,
            plan.sw,
            plan.cb
        );
        (name, 0)
    };
    let func = if shared_mem_bytes > 0 {
        ws.pipe_function(gpu, &name, shared_mem_bytes)?
    } else {
        ws.function(gpu, &name)?
    };
    // Rows m..16·mt of the A fragments read this row of zeros (k 16-bit values).
    ensure(&stream, &mut ws.zero_row, w.k, "zero row")?;
    if plan.splits > 1 {
        ensure(
            &stream,
            &mut ws.partials,
            plan.partial_floats(m),
            "split-K partials",
        )?;
        ensure(
            &stream,
            &mut ws.counters,
            plan.cols * plan.row_blocks,
            "split-K counters",
        )?;
    }
    let (xp, _gx) = x.device_ptr(&stream);
    let (yp, _gy) = y.device_ptr_mut(&stream);
    let (zrow, _gzr) = match ws.zero_row.as_ref() {
        Some(z) => z.device_ptr(&stream),
        None => return Err(Error::Cuda("AWQ zero row missing".into())),
    };
    let (bp, _gb) = match bias {
        Some(b) => {
            let (p, g) = b.device_ptr(&stream);
            (p, Some(g))
        }
        None => (0u64, None),
    };
    check_aligned("x", xp)?;
    check_aligned("y", yp)?;
    check_aligned("bias", bp)?;
    let (qp, _gq) = w.qw.device_ptr(&stream);
    let (sp, _gs) = w.scales.device_ptr(&stream);
    let (zp, _gz) = w.zeros.device_ptr(&stream);
    let (pp, _gp) = match (plan.splits > 1, ws.partials.as_mut()) {
        (true, Some(p)) => {
            let (ptr, g) = p.device_ptr_mut(&stream);
            (ptr, Some(g))
        }
        _ => (0u64, None),
    };
    let (cp, _gc) = match (plan.splits > 1, ws.counters.as_mut()) {
        (true, Some(c)) => {
            let (ptr, g) = c.device_ptr_mut(&stream);
            (ptr, Some(g))
        }
        _ => (0u64, None),
    };
    let ints: [i32; 7] = [
        m as i32,
        w.n as i32,
        w.k as i32,
        w.strips() as i32,
        w.group as i32,
        plan.gpw as i32,
        plan.splits as i32,
    ];
    let cfg = LaunchConfig {
        grid_dim: ((plan.cols * plan.row_blocks) as u32, plan.splits as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared_mem_bytes as u32,
    };
    let mut b = stream.launch_builder(&func);
    b.arg(&xp)
        .arg(&zrow)
        .arg(&qp)
        .arg(&sp)
        .arg(&zp)
        .arg(&bp)
        .arg(&yp)
        .arg(&pp)
        .arg(&cp);
    for v in &ints {
        b.arg(v);
    }
    // SAFETY: the argument list matches `awq_stream_*`, `awq_stagger_*`, `awq_streamb_*`, `awq_swap*_*` and `awq_pipe_*` in kernels/awq_gemm.cu (9 pointers,
    // 7 ints; the pipe kernels get the dynamic shared memory `pipe_shared_bytes` sized for this group); x holds
    // m·k and y m·n elements (checked by the caller), the zero row at least k zeros (`ensure` above; nothing
    // writes it), bias n or is null, group / 16 is a multiple of the plan's cb (`stream_plan`), the weight buffers have the sizes
    // `from_repacked` checked for (k, n, group), pointers are 8-byte aligned (checked above; the weight
    // buffers are fresh allocations), and with splits > 1 the partials hold row_blocks·cols·splits·min(m,
    // 64)·sw·64 floats and the counters cols·row_blocks zeros (`ensure` above; the kernel leaves them zero);
    // m > 64 only with 4 m-tiles (the plan), whose kernels cut the rows into the plan's row blocks.
    unsafe { b.launch(cfg) }.map_err(launch_error(&name))?;
    Ok(())
}

/// Launches `awq_dequant_<T><kernel suffix>` writing the dense W [n, k] of `w` to device address `out`.
fn launch_dequant(
    stream: &Arc<CudaStream>,
    func: &CudaFunction,
    name: &str,
    w: &AwqGpuWeights,
    out: u64,
    kernel: DequantKernel,
) -> Result<()> {
    let (k, n) = (w.k, w.n);
    let (chunks, cpt) = (k / CHUNK_K, kernel.chunks_per_thread());
    let grid_dim = if kernel.tiled() {
        // Whole rows of 16-byte pieces; one block per (tile of 128·cpt values of k, strip).
        if !out.is_multiple_of(16) {
            return Err(Error::Unsupported(format!(
                "{OP}: {name} needs a 16-byte aligned output"
            )));
        }
        if w.strips() > 65535 {
            return Err(Error::Unsupported(format!(
                "{OP}: {name} takes at most 65535 strips, not {}",
                w.strips()
            )));
        }
        (chunks.div_ceil(8 * cpt) as u32, w.strips() as u32, 1)
    } else {
        check_aligned("the dense weight", out)?;
        // The kernel divides 32-bit unit indices.
        let units = w.strips() * chunks.div_ceil(cpt);
        if units > u32::MAX as usize {
            return Err(Error::shape(OP, format!("{name}: {units} units of work")));
        }
        let blocks = (units * 32).div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
        (blocks, 1, 1)
    };
    let (qp, _gq) = w.qw.device_ptr(stream);
    let (sp, _gs) = w.scales.device_ptr(stream);
    let (zp, _gz) = w.zeros.device_ptr(stream);
    let ints: [i32; 4] = [n as i32, k as i32, w.strips() as i32, w.group as i32];
    let mut b = stream.launch_builder(func);
    b.arg(&qp).arg(&sp).arg(&zp).arg(&out);
    for v in &ints {
        b.arg(v);
    }
    let cfg = LaunchConfig {
        grid_dim,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches every `awq_dequant_*` (4 pointers, 4 ints); the weight buffers have the sizes checked in
    // `from_repacked`, the caller guarantees `out` holds n·k 16-bit values (aligned as checked above); the
    // flat kernels' grid-stride loop covers every lane-chunk, the tiled kernels' grid every (tile, strip),
    // and both write only columns < n and rows < k.
    unsafe { b.launch(cfg) }.map_err(launch_error(name))?;
    Ok(())
}

/// Writes the dense dequantized weight W [n, k] (row-major, each value round_T((q - z)·s)) into `out`
/// (exactly n·k elements). The first step of the large-m path; public for tests and debugging.
pub fn dequantize<T: AwqFloat>(
    gpu: &Gpu,
    w: &AwqGpuWeights,
    out: &mut CudaViewMut<T>,
) -> Result<()> {
    dequantize_with(gpu, w, out, DequantKernel::Lanes)
}

/// [`dequantize`] with a given kernel (all write the same bits; the tiled ones need `out` 16-byte aligned).
pub fn dequantize_with<T: AwqFloat>(
    gpu: &Gpu,
    w: &AwqGpuWeights,
    out: &mut CudaViewMut<T>,
    kernel: DequantKernel,
) -> Result<()> {
    if T::DTYPE != w.dtype {
        return Err(Error::DType {
            op: OP,
            expected: w.dtype,
            got: T::DTYPE,
        });
    }
    if out.len() != w.n * w.k {
        return Err(Error::shape(
            OP,
            format!(
                "out has {} elements, expected n·k = {}·{}",
                out.len(),
                w.n,
                w.k
            ),
        ));
    }
    let stream = Arc::clone(gpu.stream());
    let name = format!("awq_dequant_{}{}", T::NAME, kernel.suffix());
    let func = with_workspace(gpu, |ws| ws.function(gpu, &name))?;
    let (op, _go) = out.device_ptr_mut(&stream);
    launch_dequant(&stream, &func, &name, w, op, kernel)
}

/// The dense W [n, k] of `w` in T, written into the workspace by `kernel` (the first step of the large-m
/// path, and all that differs between its candidates, so the autotuner times only this).
fn dequantize_into_workspace<T: AwqFloat>(
    gpu: &Gpu,
    ws: &mut Workspace,
    w: &AwqGpuWeights,
    kernel: DequantKernel,
) -> Result<()> {
    let stream = Arc::clone(gpu.stream());
    let name = format!("awq_dequant_{}{}", T::NAME, kernel.suffix());
    let func = ws.function(gpu, &name)?;
    ensure(&stream, &mut ws.dense, w.n * w.k, "dense-weight workspace")?;
    let dense = ws
        .dense
        .as_mut()
        .ok_or_else(|| Error::Cuda("AWQ workspace missing".into()))?;
    let (dp, _gd) = dense.device_ptr_mut(&stream);
    launch_dequant(&stream, &func, &name, w, dp, kernel)
}

fn launch_dequant_gemm<T: AwqFloat>(
    gpu: &Gpu,
    ws: &mut Workspace,
    (x, m, w, bias): Operands<'_, T>,
    y: &mut CudaViewMut<T>,
    kernel: DequantKernel,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let stream = Arc::clone(gpu.stream());
    let (k, n) = (w.k, w.n);
    if m > i32::MAX as usize {
        return Err(Error::shape(OP, format!("m = {m} too large for cuBLAS")));
    }
    // 1. W [n, k] in T.
    dequantize_into_workspace::<T>(gpu, ws, w, kernel)?;
    let dense = ws
        .dense
        .as_mut()
        .ok_or_else(|| Error::Cuda("AWQ workspace missing".into()))?;

    // 2. With a bias, one rounding of x·Wᵀ + b: the GEMM's product in f32, then a kernel adds the bias and
    // rounds (cuBLAS with the bias rows as C and beta = 1 rounds the product first on an H100; see
    // `cuda::ops::dense_linear`).
    if let Some(bv) = bias {
        // SAFETY: the GEMM below writes all m·n values before the bias kernel reads them.
        let product = unsafe { stream.alloc::<f32>((m * n).max(1)) }
            .map_err(|e| cuda_error("allocating the AWQ GEMM's f32 product", e))?;
        let (pp, _gp) = product.device_ptr(&stream);
        let (dp, _gd) = dense.device_ptr(&stream);
        let (xp, _gx) = x.device_ptr(&stream);
        let (bp, _gb) = bv.device_ptr(&stream);
        let (yp, _gy) = y.device_ptr_mut(&stream);
        // SAFETY: x holds m·k and the workspace at least n·k values of T (the dequantization just wrote
        // W [n, k]), the product m·n f32, bias n and y m·n values of T; the guards keep them valid until the
        // stream has run both calls.
        unsafe {
            gemm_nt_f32_product_raw(gpu, T::DTYPE, xp, dp, pp, (m, k, n))?;
            add_bias_round_raw(gpu, T::DTYPE, pp, bp, yp, m * n, n)?;
        }
        return Ok(());
    }

    // 3. Without a bias, the GEMM writes y. Row-major y[m, n] = x[m, k] · W[n, k]ᵀ is column-major
    // yᵀ[n, m] = op_T(W as k×n) · (x as k×m).
    // SAFETY: the workspace holds at least n·k values and is viewed as T (same size and alignment as u16;
    // every value was just written by the dequantization kernel as a T).
    let wv: CudaView<T> = unsafe { dense.transmute::<T>(n * k) }
        .ok_or_else(|| Error::Cuda("AWQ dense workspace too small".into()))?;
    let blas = gpu.blas()?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::from_f32(1.0),
        lda: k as i32,
        ldb: k as i32,
        beta: T::from_f32(0.0),
        ldc: n as i32,
    };
    // SAFETY: A = W [n, k] row-major (k×n column-major, lda = k, n·k values), B = x [m, k] row-major (k×m,
    // ldb = k, m·k values), C = y [m, n] row-major (n×m, ldc = n, m·n values): all in bounds.
    unsafe { blas.gemm(cfg, &wv, x, y) }.map_err(|e| cuda_error("cuBLAS GEMM (AWQ prefill)", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_places_cover_each_tile_and_row_once() {
        let mut seen = [[false; 4]; 2];
        for i in 0..8 {
            let (tile, kk) = nibble_place(i);
            assert!(!seen[tile][kk]);
            seen[tile][kk] = true;
        }
        // The kernel's reading: shift 0 -> nibbles (0, 4) = tile 0 rows (0, 1); shift 4 -> (1, 5) = rows
        // (2, 3); shift 8 -> (2, 6) = tile 1 rows (0, 1); shift 12 -> (3, 7) = tile 1 rows (2, 3).
        assert_eq!(
            [0, 4, 1, 5, 2, 6, 3, 7].map(nibble_place),
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3)
            ]
        );
    }

    #[test]
    fn two_pipelined_blocks_fit_an_sm_at_group_128() {
        // Hopper: 228 KB of shared memory per SM, 1 KB of it reserved per block, 16 bytes static (s_last).
        let per_block = pipe_shared_bytes(1, 128) + 1024 + 16;
        assert_eq!(pipe_shared_bytes(1, 128), 8 * 3 * (8 * 32 + 10) * 16);
        assert!(2 * per_block <= 228 * 1024, "{per_block}");
        // The smallest group still leaves room for the k-lane sum that reuses the ring.
        assert_eq!(pipe_shared_bytes(1, 16), 16384);
        // Group 256 at mt >= 2 needs more than an H100 block may have: the register kernel runs instead.
        assert!(pipe_shared_bytes(2, 256) > 227 * 1024);
    }
}
