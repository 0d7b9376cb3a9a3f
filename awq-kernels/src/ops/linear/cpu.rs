//! Dense linear on the CPU: `y = x · wᵀ (+ bias)` with f32 activations, f32/f16/bf16 weights, f32 accumulation.
//!
//! Two strategies, both parallel over blocks of output columns (rows of `w`) with rayon:
//! - decode (`m <= GEMV_MAX_M`): a GEMV that reads each weight once and upcasts it in registers, because at
//!   small `m` the op is bound by streaming the weights from memory;
//! - prefill (larger `m`): each task upcasts a block of weight rows into an f32 panel and hands it to the
//!   `gemm` crate (single-threaded inside the task), because at large `m` the op is compute bound.
//!
//! The column-block machinery ([`par_column_blocks`], [`OutBlock`], [`gemm_panel`], [`with_scratch`]) is
//! shared with the AWQ linear in `ops/awq/cpu.rs`.

use std::cell::RefCell;
use std::marker::PhantomData;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::{DType, FloatElement};

/// Largest `m` served by the weight-streaming GEMV; above it the f32-panel GEMM wins.
pub(crate) const GEMV_MAX_M: usize = 4;

/// Target size in f32 elements of one task's weight panel on the GEMM path (1 MiB: it stays in L2 while
/// `gemm` packs it, and still gives a few blocks per thread on the model shapes).
const PANEL_ELEMS: usize = 256 * 1024;

/// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]); x [m, k] row-major, w [n, k] row-major (PyTorch layout), y [m, n].
///
/// `W` is f32, f16 or bf16 and is upcast to f32 as it is read; accumulation is in f32.
///
/// # Panics
/// If `x.len() != m * k`, `w.len() != n * k`, `y.len() != m * n` or `bias` is given with `len() != n`.
/// The Tensor-level wrapper validates shapes before calling, so these asserts only guard internal misuse.
pub fn linear<W: FloatElement>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "linear: x must be [m, k]");
    assert_eq!(w.len(), n * k, "linear: w must be [n, k]");
    assert_eq!(y.len(), m * n, "linear: y must be [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias must be [n]");
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in y.chunks_exact_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }

    // With AVX-512 the tiled dot kernel serves every m (faster than `gemm`, whose AVX-512 code needs a
    // nightly feature); otherwise the GEMV serves decode and `gemm` prefill.
    if m <= GEMV_MAX_M || has_avx512() {
        // Enough blocks for rayon to balance two busy cores, each a multiple of the 4-row kernel.
        let nb = column_block(n, 4, 4 * rayon::current_num_threads());
        par_column_blocks(y, m, n, nb, |mut out| {
            let (n0, n1) = (out.n0(), out.n0() + out.width());
            gemv(
                x,
                m,
                k,
                &w[n0 * k..n1 * k],
                bias.map(|b| &b[n0..n1]),
                &mut out,
            );
        });
    } else {
        let nb = column_block(n, 16, 2 * rayon::current_num_threads())
            .min((PANEL_ELEMS / k).next_multiple_of(16))
            .max(16);
        par_column_blocks(y, m, n, nb, |mut out| {
            let (n0, n1) = (out.n0(), out.n0() + out.width());
            let rows = &w[n0 * k..n1 * k];
            let bias = bias.map(|b| &b[n0..n1]);
            if W::DTYPE == DType::F32 {
                gemm_panel(
                    x,
                    m,
                    k,
                    bytemuck::cast_slice(rows),
                    PanelLayout::NK,
                    bias,
                    &mut out,
                );
            } else {
                with_scratch(rows.len(), |panel| {
                    upcast(rows, panel);
                    gemm_panel(x, m, k, panel, PanelLayout::NK, bias, &mut out);
                });
            }
        });
    }
}

/// Whether the AVX-512 kernels (here and in the AWQ module) can run on this CPU.
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd::has_avx512();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Column-block width: about `n / min_blocks`, rounded up to a multiple of `align`.
pub(crate) fn column_block(n: usize, align: usize, min_blocks: usize) -> usize {
    n.div_ceil(min_blocks.max(1))
        .next_multiple_of(align)
        .max(align)
}

/// Converts `src` to f32 into `dst` (same length), vectorised where the element type allows.
pub(crate) fn upcast<W: FloatElement>(src: &[W], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    match W::DTYPE {
        DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        // `half` picks F16C at run time for slices.
        DType::F16 => bytemuck::cast_slice::<W, f16>(src).convert_to_f32_slice(dst),
        DType::BF16 => {
            // bf16 is the top half of an f32: a shift the compiler vectorises.
            for (d, s) in dst.iter_mut().zip(bytemuck::cast_slice::<W, bf16>(src)) {
                *d = f32::from_bits(u32::from(s.to_bits()) << 16);
            }
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
    }
}

thread_local! {
    /// Per-thread reusable panel, so prefill does not page-fault a fresh megabyte per task.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread-local f32 scratch buffer of `len` elements (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon can run a stolen task while one waits): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The columns `n0 .. n0 + width` of every row of an `[m, n]` row-major output, held exclusively by one task.
pub(crate) struct OutBlock<'a> {
    /// Points at `y[n0]`.
    base: *mut f32,
    stride: usize,
    m: usize,
    n0: usize,
    width: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: `par_column_blocks` creates each OutBlock for a column range disjoint from every other one's, so
// the block is the only handle to those elements while it lives and may move to another thread.
unsafe impl Send for OutBlock<'_> {}

impl OutBlock<'_> {
    pub(crate) fn n0(&self) -> usize {
        self.n0
    }

    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// The block's part of output row `i`.
    pub(crate) fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.m);
        // SAFETY: row i of the block is y[i * stride + n0 .. i * stride + n0 + width], inside y because
        // n0 + width <= n = stride and i < m; no other OutBlock covers these columns, and `&mut self`
        // prevents a second live slice from this one.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(i * self.stride), self.width) }
    }
}

/// A raw pointer that rayon tasks may share; only `par_column_blocks` dereferences it, per disjoint block.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: the pointer is only used to build OutBlocks over disjoint column ranges (see OutBlock).
unsafe impl Send for SharedPtr {}
// SAFETY: as above; sharing the address itself is harmless.
unsafe impl Sync for SharedPtr {}
impl SharedPtr {
    // A method (not field access) so that closures capture the whole Sync wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Splits the columns of `y` ([m, n] row-major) into blocks of `nb` and runs `f` on each in parallel.
pub(crate) fn par_column_blocks<F>(y: &mut [f32], m: usize, n: usize, nb: usize, f: F)
where
    F: Fn(OutBlock<'_>) + Sync + Send,
{
    assert_eq!(y.len(), m * n);
    assert!(nb > 0);
    let base = SharedPtr(y.as_mut_ptr());
    (0..n.div_ceil(nb)).into_par_iter().for_each(|b| {
        let n0 = b * nb;
        let width = nb.min(n - n0);
        f(OutBlock {
            // SAFETY: n0 < n <= y.len() when m > 0 (and with m == 0 the pointer is never dereferenced:
            // `row` asserts i < m), so the offset stays inside y's allocation.
            base: unsafe { base.get().add(n0) },
            stride: n,
            m,
            n0,
            width,
            _y: PhantomData,
        });
    });
}

/// How a task's f32 weight panel for columns `n0 .. n0 + nb` is laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PanelLayout {
    /// `panel[j * k + kk]` = W[n0 + j][kk] (rows of the PyTorch weight).
    NK,
    /// `panel[kk * nb + j]` = W[n0 + j][kk] (what the AWQ dequantizer produces naturally).
    KN,
}

/// `out = x · panelᵀ (+ bias)` for one column block, with `gemm` running single-threaded (the caller is
/// already one of the parallel tasks).
pub(crate) fn gemm_panel(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[f32],
    layout: PanelLayout,
    bias: Option<&[f32]>,
    out: &mut OutBlock<'_>,
) {
    let nb = out.width();
    assert_eq!(x.len(), m * k);
    assert_eq!(panel.len(), nb * k);
    assert_eq!(out.m, m);
    if let Some(b) = bias {
        assert_eq!(b.len(), nb);
        for i in 0..m {
            out.row(i).copy_from_slice(b);
        }
    }
    let (rhs_rs, rhs_cs) = match layout {
        PanelLayout::NK => (1, k as isize),
        PanelLayout::KN => (nb as isize, 1),
    };
    // SAFETY: the asserts above bound every access gemm makes: lhs x is m×k with row stride k, rhs is the
    // k×nb panel with the strides of its layout, dst is the m×nb block at out.base with row stride
    // out.stride (OutBlock guarantees exclusive access to it). f32 is a type gemm supports.
    unsafe {
        gemm::gemm(
            m,
            nb,
            k,
            out.base,
            1,
            out.stride as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            panel.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dot products for one column block: `out[i][j] = x[i] · w_rows[j] (+ bias[j])`, `w_rows` [width, k];
/// any `m` with AVX-512, otherwise `m <= GEMV_MAX_M`.
fn gemv<W: FloatElement>(
    x: &[f32],
    m: usize,
    k: usize,
    w_rows: &[W],
    bias: Option<&[f32]>,
    out: &mut OutBlock<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx512() {
            // SAFETY: the CPU supports every feature the kernel is compiled for (checked just above).
            unsafe { simd::dot_avx512(x, m, k, w_rows, bias, out) };
            return;
        }
        if simd::has_avx2() {
            // SAFETY: as above, for the AVX2 kernel's features.
            unsafe { simd::gemv_avx2(x, m, k, w_rows, bias, out) };
            return;
        }
    }
    gemv_portable(x, m, k, w_rows, bias, out);
}

/// Scalar GEMV, written with 8 independent partial sums so the compiler can vectorise it.
fn gemv_portable<W: FloatElement>(
    x: &[f32],
    m: usize,
    k: usize,
    w_rows: &[W],
    bias: Option<&[f32]>,
    out: &mut OutBlock<'_>,
) {
    for (j, wr) in w_rows.chunks_exact(k).enumerate() {
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0.0f32; 8];
            let (wc, wt) = wr.split_at(k - k % 8);
            let (xc, xt) = xr.split_at(k - k % 8);
            for (wv, xv) in wc.chunks_exact(8).zip(xc.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += wv[l].to_f32() * xv[l];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (wv, xv) in wt.iter().zip(xt) {
                s += wv.to_f32() * xv;
            }
            out.row(i)[j] = s + bias.map_or(0.0, |b| b[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    //! x86-64 GEMV kernels; the caller checks the CPU features at run time before calling them.

    use std::arch::x86_64::*;

    use super::OutBlock;
    use crate::dtype::{DType, FloatElement};

    /// AVX-512 with the extensions the kernels here and in the AWQ module use.
    pub(crate) fn has_avx512() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    pub(crate) fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Loads 16 weights from `p` (only the lanes in `mask`; the others read as 0) and upcasts them.
    ///
    /// # Safety
    /// AVX-512F/BW/VL must be available and the masked-in elements readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(crate) unsafe fn load16<W: FloatElement>(p: *const W, mask: __mmask16) -> __m512 {
        match W::DTYPE {
            DType::F32 => _mm512_maskz_loadu_ps(mask, p as *const f32),
            DType::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16)),
            // bf16 -> f32 is a 16-bit shift into the high half.
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(mask, p as *const i16),
            ))),
        }
    }

    /// AVX-512 dot-product kernel for one column block and any `m`: tiles of 4 rows of x by 4 weight rows,
    /// each weight tile upcast in registers and reused by every x tile of an L2-sized block of x rows.
    /// At `m <= 4` this is the weight-streaming GEMV.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, FMA and F16C; `W` is f32, f16 or bf16; `w_rows` is [width, k]
    /// and `x` is [m, k].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(crate) unsafe fn dot_avx512<W: FloatElement>(
        x: &[f32],
        m: usize,
        k: usize,
        w_rows: &[W],
        bias: Option<&[f32]>,
        out: &mut OutBlock<'_>,
    ) {
        assert_eq!(x.len(), m * k);
        let width = out.width();
        assert_eq!(w_rows.len(), width * k);
        // x rows per block: about 1 MiB of x, so it stays in L2 while the weight tiles pass over it.
        let mb = ((256 * 1024) / k.max(1)).clamp(4, 64) / 4 * 4;
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + mb).min(m);
            let mut j = 0;
            while j < width {
                let r = if j + 4 <= width { 4 } else { 1 };
                let ws = &w_rows[j * k..(j + r) * k];
                let mut i = i0;
                while i < i1 {
                    let mt = (i1 - i).min(4);
                    let xs = &x[i * k..(i + mt) * k];
                    match (mt, r) {
                        (4, 4) => store_sums(out, i, j, &rows_avx512::<W, 4, 4>(xs, k, ws), bias),
                        (3, 4) => store_sums(out, i, j, &rows_avx512::<W, 3, 4>(xs, k, ws), bias),
                        (2, 4) => store_sums(out, i, j, &rows_avx512::<W, 2, 4>(xs, k, ws), bias),
                        (1, 4) => store_sums(out, i, j, &rows_avx512::<W, 1, 4>(xs, k, ws), bias),
                        (4, _) => store_sums(out, i, j, &rows_avx512::<W, 4, 1>(xs, k, ws), bias),
                        (3, _) => store_sums(out, i, j, &rows_avx512::<W, 3, 1>(xs, k, ws), bias),
                        (2, _) => store_sums(out, i, j, &rows_avx512::<W, 2, 1>(xs, k, ws), bias),
                        _ => store_sums(out, i, j, &rows_avx512::<W, 1, 1>(xs, k, ws), bias),
                    }
                    i += mt;
                }
                j += r;
            }
            i0 = i1;
        }
    }

    /// `out[i][j] += Σ_{t < kc} x[i·xs + t] · panel[t·nb + j]` for every row of `out` and `j < out.width()`:
    /// the outer-product kernel for a `[kc, nb]` f32 panel (the layout the AWQ dequantizer writes), tiles
    /// of up to 8 rows by 32 columns held in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, FMA and F16C; `x` holds `m = out rows` rows of stride `xs` with
    /// at least `kc` readable values each; `panel.len() == kc * nb`, `out.width() <= nb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(crate) unsafe fn panel_kn_avx512(
        x: &[f32],
        xs: usize,
        kc: usize,
        panel: &[f32],
        nb: usize,
        out: &mut OutBlock<'_>,
    ) {
        let (m, width) = (out.m, out.width());
        assert!(width <= nb && panel.len() == kc * nb);
        assert!(m == 0 || x.len() >= (m - 1) * xs + kc);
        let mut j = 0;
        while j < width {
            let left = width - j;
            let masks = [lanes16(left), lanes16(left.saturating_sub(16))];
            let mut i = 0;
            while i < m {
                let mt = match m - i {
                    8.. => 8,
                    4..=7 => 4,
                    2..=3 => 2,
                    _ => 1,
                };
                match mt {
                    8 => kn_tile::<8>(x, xs, kc, panel, nb, out, i, j, masks),
                    4 => kn_tile::<4>(x, xs, kc, panel, nb, out, i, j, masks),
                    2 => kn_tile::<2>(x, xs, kc, panel, nb, out, i, j, masks),
                    _ => kn_tile::<1>(x, xs, kc, panel, nb, out, i, j, masks),
                }
                i += mt;
            }
            j += 32;
        }
    }

    /// Mask of the first `len` (saturating at 16) lanes.
    #[inline]
    fn lanes16(len: usize) -> __mmask16 {
        if len >= 16 {
            0xFFFF
        } else {
            ((1u32 << len) - 1) as __mmask16
        }
    }

    /// One `MR`×32 tile of [`panel_kn_avx512`] at rows `i..i + MR`, columns `j..` (lanes in `masks`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    unsafe fn kn_tile<const MR: usize>(
        x: &[f32],
        xs: usize,
        kc: usize,
        panel: &[f32],
        nb: usize,
        out: &mut OutBlock<'_>,
        i: usize,
        j: usize,
        masks: [__mmask16; 2],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            let row = out.row(i + r).as_ptr().add(j);
            // SAFETY: the masked-in lanes are columns j.. of the block row, inside it (width - j lanes).
            a[0] = _mm512_maskz_loadu_ps(masks[0], row);
            a[1] = _mm512_maskz_loadu_ps(masks[1], row.wrapping_add(16));
        }
        let (xp, pp) = (x.as_ptr(), panel.as_ptr());
        for t in 0..kc {
            // SAFETY: t < kc and the masked-in columns j.. < width <= nb, inside panel row t.
            let p0 = _mm512_maskz_loadu_ps(masks[0], pp.add(t * nb + j));
            let p1 = _mm512_maskz_loadu_ps(masks[1], pp.wrapping_add(t * nb + j + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row i + r < m and t < kc, inside x by the caller's contract.
                let xb = _mm512_set1_ps(*xp.add((i + r) * xs + t));
                a[0] = _mm512_fmadd_ps(p0, xb, a[0]);
                a[1] = _mm512_fmadd_ps(p1, xb, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let row = out.row(i + r).as_mut_ptr().add(j);
            // SAFETY: as for the loads above.
            _mm512_mask_storeu_ps(row, masks[0], a[0]);
            _mm512_mask_storeu_ps(row.wrapping_add(16), masks[1], a[1]);
        }
    }

    /// Dot products of the `M` rows of x with the `R` weight rows in `w` ([R, k]); result `[i][r]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // r and i index the register tile acc[i][r] and the rows together.
    unsafe fn rows_avx512<W: FloatElement, const M: usize, const R: usize>(
        x: &[f32],
        k: usize,
        w: &[W],
    ) -> [[f32; R]; M] {
        debug_assert_eq!(w.len(), R * k);
        debug_assert_eq!(x.len(), M * k);
        let mut acc = [[_mm512_setzero_ps(); R]; M];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut kk = 0;
        while kk < k {
            let left = k - kk;
            let mask: __mmask16 = if left >= 16 {
                0xFFFF
            } else {
                (1u16 << left) - 1
            };
            let mut xv = [_mm512_setzero_ps(); M];
            for (i, v) in xv.iter_mut().enumerate() {
                // SAFETY: lanes kk .. kk + popcount(mask) of row i lie inside x ([M, k]).
                *v = _mm512_maskz_loadu_ps(mask, xp.add(i * k + kk));
            }
            for r in 0..R {
                // SAFETY: the masked-in lanes kk.. of weight row r lie inside w ([R, k]).
                let wv = load16(wp.add(r * k + kk), mask);
                for (a, xvi) in acc.iter_mut().zip(&xv) {
                    a[r] = _mm512_fmadd_ps(wv, *xvi, a[r]);
                }
            }
            kk += 16;
        }
        let mut s = [[0.0f32; R]; M];
        for i in 0..M {
            for r in 0..R {
                s[i][r] = _mm512_reduce_add_ps(acc[i][r]);
            }
        }
        s
    }

    fn store_sums<const M: usize, const R: usize>(
        out: &mut OutBlock<'_>,
        i0: usize,
        j: usize,
        s: &[[f32; R]; M],
        bias: Option<&[f32]>,
    ) {
        for (i, si) in s.iter().enumerate() {
            let row = out.row(i0 + i);
            for (r, &v) in si.iter().enumerate() {
                row[j + r] = v + bias.map_or(0.0, |b| b[j + r]);
            }
        }
    }

    /// Loads 8 weights from `p` and upcasts them.
    ///
    /// # Safety
    /// AVX2 and F16C must be available and `p .. p + 8` readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<W: FloatElement>(p: *const W) -> __m256 {
        match W::DTYPE {
            DType::F32 => _mm256_loadu_ps(p as *const f32),
            DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            ))),
        }
    }

    /// Horizontal sum of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// AVX2 GEMV for `m <= 4` over one column block, one weight row at a time with a scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `W` is f32, f16 or bf16; `w_rows` is [width, k] and `x` is
    /// [m, k] with `1 <= m <= 4`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn gemv_avx2<W: FloatElement>(
        x: &[f32],
        m: usize,
        k: usize,
        w_rows: &[W],
        bias: Option<&[f32]>,
        out: &mut OutBlock<'_>,
    ) {
        assert!((1..=4).contains(&m));
        assert_eq!(x.len(), m * k);
        assert_eq!(w_rows.len(), out.width() * k);
        let kv = k - k % 8;
        for j in 0..out.width() {
            let wr = &w_rows[j * k..(j + 1) * k];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut kk = 0;
            while kk < kv {
                // SAFETY: kk + 8 <= kv <= k, inside weight row j and each x row.
                let wv = load8(wr.as_ptr().add(kk));
                for (i, a) in acc.iter_mut().enumerate().take(m) {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i * k + kk)), *a);
                }
                kk += 8;
            }
            for (i, a) in acc.iter().enumerate().take(m) {
                let mut s = hsum256(*a);
                for t in kv..k {
                    s += wr[t].to_f32() * x[i * k + t];
                }
                out.row(i)[j] = s + bias.map_or(0.0, |b| b[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Checks `linear` against an f64 triple loop over the upcast weights; the tolerance is f32
    /// accumulation error, 1e-5 relative to sum |x||w| per output.
    fn check<W: FloatElement>(m: usize, k: usize, n: usize, with_bias: bool, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random(&mut rng, m * k);
        let w: Vec<W> = random(&mut rng, n * k)
            .into_iter()
            .map(W::from_f32)
            .collect();
        let bias = with_bias.then(|| random(&mut rng, n));
        let mut y = vec![f32::NAN; m * n];
        linear(&x, m, k, &w, n, bias.as_deref(), &mut y);
        for i in 0..m {
            for j in 0..n {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let p = x[i * k + t] as f64 * w[j * k + t].to_f32() as f64;
                    want += p;
                    mag += p.abs();
                }
                if let Some(b) = &bias {
                    want += b[j] as f64;
                    mag += (b[j] as f64).abs();
                }
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag + 1e-30,
                    "{} m={m} k={k} n={n} bias={with_bias} at ({i},{j}): got {got}, want {want}",
                    W::DTYPE
                );
            }
        }
    }

    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (1, 37, 13),
        (1, 896, 67),
        (3, 129, 31),
        (4, 300, 9),
        (17, 77, 45),
        (17, 250, 130),
        (64, 333, 71),
    ];

    fn check_all<W: FloatElement>() {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            check::<W>(m, k, n, false, s as u64);
            check::<W>(m, k, n, true, 100 + s as u64);
        }
    }

    #[test]
    fn f32_weights_match_an_f64_triple_loop() {
        check_all::<f32>();
    }

    #[test]
    fn f16_weights_match_an_f64_triple_loop() {
        check_all::<f16>();
    }

    #[test]
    fn bf16_weights_match_an_f64_triple_loop() {
        check_all::<bf16>();
    }

    #[test]
    fn the_portable_gemv_matches_an_f64_triple_loop() {
        // The SIMD dispatch hides the fallback on this machine; run it directly on one block.
        let (m, k, n) = (3, 45, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = random(&mut rng, m * k);
        let w: Vec<bf16> = random(&mut rng, n * k)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let bias = random(&mut rng, n);
        let mut y = vec![0.0; m * n];
        par_column_blocks(&mut y, m, n, n, |mut out| {
            gemv_portable(&x, m, k, &w, Some(&bias), &mut out)
        });
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t].to_f64())
                    .sum::<f64>()
                    + bias[j] as f64;
                assert!((y[i * n + j] as f64 - want).abs() < 1e-4, "({i},{j})");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_gemv_matches_the_portable_one() {
        if !simd::has_avx2() {
            return;
        }
        let (k, n) = (45, 9);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for m in 1..=4 {
            let x = random(&mut rng, m * k);
            let w: Vec<f16> = random(&mut rng, n * k)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
            par_column_blocks(&mut a, m, n, n, |mut out| {
                // SAFETY: AVX2, FMA and F16C were detected above.
                unsafe { simd::gemv_avx2(&x, m, k, &w, None, &mut out) }
            });
            par_column_blocks(&mut b, m, n, n, |mut out| {
                gemv_portable(&x, m, k, &w, None, &mut out)
            });
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-4, "m={m}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn zero_inputs_give_the_bias() {
        let mut y = vec![f32::NAN; 6];
        linear::<f32>(&[], 2, 0, &[], 3, Some(&[1.0, 2.0, 3.0]), &mut y);
        assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }
}
