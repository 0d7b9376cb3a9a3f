//! The AWQ W4A16 linear on the CPU, read straight from the packed GEMM layout (`crate::awq_format`).
//!
//! - `m == 1` (decode, the hot path): a GEMV that streams the packed weights once. Per group `g` and output
//!   column it accumulates `acc = Σ_k q[k]·x[k]` and uses `Σ_k (q - z)·s·x[k] = s·(acc - z·Σ_k x[k])`, so the
//!   inner loop is only "unpack a nibble, multiply-add" and the zero point and scale are applied once per
//!   group. The AVX-512 kernel keeps the 8 nibble slots of 16 packed words in 8 accumulators and only maps
//!   slots to columns (the AWQ order) once per group for the scales and once per block for the output.
//! - `m > 1` (prefill): each rayon task dequantizes a block of columns into an f32 panel and runs the dense
//!   path's GEMM on it (`ops::linear::cpu::gemm_panel`).

use crate::awq_format::{unpack_column, unpack_word, PACK_FACTOR, PACK_ORDER};
use crate::dtype::FloatElement;
use crate::ops::linear::cpu::{
    column_block, gemm_panel, par_column_blocks, with_scratch, PanelLayout,
};

/// Borrowed AWQ GEMM-layout weights of a linear with k inputs, n outputs, group size `group`.
///
/// Preconditions (asserted by [`dequantize`] and [`awq_linear`]): `group > 0`, `k % group == 0`,
/// `group % 8 == 0`, `n % 8 == 0`, and the slices have exactly the lengths noted on the fields.
#[derive(Clone, Copy)]
pub struct AwqWeights<'a, S> {
    pub qweight: &'a [u32], // [k, n/8]
    pub qzeros: &'a [u32],  // [k/group, n/8]
    pub scales: &'a [S],    // [k/group, n]
    pub k: usize,
    pub n: usize,
    pub group: usize,
}

impl<S> AwqWeights<'_, S> {
    /// Packed words per row (`n / 8`).
    fn words(&self) -> usize {
        self.n / PACK_FACTOR
    }

    fn groups(&self) -> usize {
        self.k / self.group
    }

    fn assert_valid(&self) {
        let (k, n, g) = (self.k, self.n, self.group);
        assert!(
            g > 0 && k % g == 0,
            "AWQ: group size {g} must divide k = {k}"
        );
        assert!(
            g % PACK_FACTOR == 0,
            "AWQ: group size {g} must be a multiple of 8"
        );
        assert!(n % PACK_FACTOR == 0, "AWQ: n = {n} must be a multiple of 8");
        assert_eq!(
            self.qweight.len(),
            k * self.words(),
            "AWQ: qweight must be [k, n/8]"
        );
        assert_eq!(
            self.qzeros.len(),
            self.groups() * self.words(),
            "AWQ: qzeros must be [k/group, n/8]"
        );
        assert_eq!(
            self.scales.len(),
            self.groups() * n,
            "AWQ: scales must be [k/group, n]"
        );
    }
}

/// The dequantized weight W [n, k] (PyTorch layout), W[col][row] = (q - z) * s. The plain reference.
///
/// # Panics
/// If the preconditions on [`AwqWeights`] do not hold.
pub fn dequantize<S: FloatElement>(w: AwqWeights<S>) -> Vec<f32> {
    w.assert_valid();
    let (k, n, nw) = (w.k, w.n, w.words());
    let mut out = vec![0.0f32; n * k];
    for row in 0..k {
        let g = row / w.group;
        let qrow = &w.qweight[row * nw..(row + 1) * nw];
        let zrow = &w.qzeros[g * nw..(g + 1) * nw];
        for col in 0..n {
            let q = unpack_column(qrow, col) as f32;
            let z = unpack_column(zrow, col) as f32;
            out[col * k + row] = (q - z) * w.scales[g * n + col].to_f32();
        }
    }
    out
}

/// y[m, n] = x[m, k] · dequant(W)ᵀ (+ bias[n]).
///
/// # Panics
/// If the preconditions on [`AwqWeights`] do not hold, `x.len() != m * k`, `y.len() != m * n`, or `bias` is
/// given with `len() != n`. The Tensor-level wrapper validates shapes first.
pub fn awq_linear<S: FloatElement>(
    x: &[f32],
    m: usize,
    w: AwqWeights<S>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    w.assert_valid();
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), m * k, "AWQ: x must be [m, k]");
    assert_eq!(y.len(), m * n, "AWQ: y must be [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "AWQ: bias must be [n]");
    }
    if m == 0 || n == 0 {
        return;
    }
    if m == 1 {
        decode(x, w, bias, y);
    } else {
        prefill(x, m, w, bias, y);
    }
}

/// Packed words per SIMD chunk (one 512-bit register of words, 128 output columns).
const CHUNK_WORDS: usize = 16;

/// The m == 1 path: rayon over column blocks, each a multiple of 16 packed words.
fn decode<S: FloatElement>(x: &[f32], w: AwqWeights<S>, bias: Option<&[f32]>, y: &mut [f32]) {
    // Σ x over each group, shared by every column.
    let sx: Vec<f32> = x.chunks_exact(w.group).map(|c| c.iter().sum()).collect();
    // A few blocks per thread so rayon can balance two cores that are also running other work.
    let per: usize = std::env::var("AWQ_B")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let block_words = column_block(w.words(), CHUNK_WORDS, per * rayon::current_num_threads());
    par_column_blocks(y, 1, w.n, block_words * PACK_FACTOR, |mut out| {
        let w0 = out.n0() / PACK_FACTOR;
        let words = out.width() / PACK_FACTOR;
        let yb = out.row(0);
        #[cfg(target_arch = "x86_64")]
        if crate::ops::linear::cpu::simd::has_avx512() {
            // SAFETY: the CPU supports the kernel's target features (checked just above).
            if std::env::var("AWQ_V").is_ok_and(|v| v == "rows") {
                unsafe { simd::decode_block_avx512_rows(x, &sx, &w, w0, words, yb) };
            } else {
                unsafe { simd::decode_block_avx512(x, &sx, &w, w0, words, yb) };
            }
            add_bias(yb, bias, out_range(w0, words));
            return;
        }
        decode_block_portable(x, &sx, &w, w0, words, yb);
        add_bias(yb, bias, out_range(w0, words));
    });
}

fn out_range(w0: usize, words: usize) -> std::ops::Range<usize> {
    w0 * PACK_FACTOR..(w0 + words) * PACK_FACTOR
}

fn add_bias(yb: &mut [f32], bias: Option<&[f32]>, cols: std::ops::Range<usize>) {
    if let Some(b) = bias {
        for (v, bv) in yb.iter_mut().zip(&b[cols]) {
            *v += bv;
        }
    }
}

/// Scalar decode for the words `w0 .. w0 + words` (columns `8·w0 ..`): writes `yb` (without bias).
// Group index g addresses several arrays at once (x rows, sx, qzeros, scales); a range loop reads clearer.
#[allow(clippy::needless_range_loop)]
fn decode_block_portable<S: FloatElement>(
    x: &[f32],
    sx: &[f32],
    w: &AwqWeights<S>,
    w0: usize,
    words: usize,
    yb: &mut [f32],
) {
    let nw = w.words();
    let cols = words * PACK_FACTOR;
    let mut acc = vec![0.0f32; cols];
    yb.fill(0.0);
    for g in 0..w.groups() {
        acc.fill(0.0);
        for row in g * w.group..(g + 1) * w.group {
            let xv = x[row];
            let qrow = &w.qweight[row * nw + w0..row * nw + w0 + words];
            for (a, &word) in acc.chunks_exact_mut(PACK_FACTOR).zip(qrow) {
                for (av, q) in a.iter_mut().zip(unpack_word(word)) {
                    *av += q as f32 * xv;
                }
            }
        }
        let zrow = &w.qzeros[g * nw + w0..g * nw + w0 + words];
        let srow = &w.scales[g * w.n + w0 * PACK_FACTOR..g * w.n + (w0 + words) * PACK_FACTOR];
        for (c, &zword) in zrow.iter().enumerate() {
            for (j, z) in unpack_word(zword).into_iter().enumerate() {
                let col = c * PACK_FACTOR + j;
                yb[col] += srow[col].to_f32() * (acc[col] - z as f32 * sx[g]);
            }
        }
    }
}

/// The m > 1 path: per column block, dequantize into an f32 [k, nb] panel and run the GEMM on it.
fn prefill<S: FloatElement>(
    x: &[f32],
    m: usize,
    w: AwqWeights<S>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (k, n) = (w.k, w.n);
    // Panel of about 1 MiB (stays in L2 for gemm's packing), a multiple of 16 columns, and at least
    // two blocks per thread where n allows.
    let nb = column_block(n, 16, 2 * rayon::current_num_threads())
        .min((256 * 1024 / k.max(1)).next_multiple_of(16))
        .max(16);
    par_column_blocks(y, m, n, nb, |mut out| {
        let (n0, width) = (out.n0(), out.width());
        with_scratch(k * width, |panel| {
            dequantize_panel(&w, n0, width, panel);
            gemm_panel(
                x,
                m,
                k,
                panel,
                PanelLayout::KN,
                bias.map(|b| &b[n0..n0 + width]),
                &mut out,
            );
        });
    });
}

/// Writes `panel[row * width + j] = W[n0 + j][row]` for the columns `n0 .. n0 + width` (multiples of 8).
fn dequantize_panel<S: FloatElement>(
    w: &AwqWeights<S>,
    n0: usize,
    width: usize,
    panel: &mut [f32],
) {
    debug_assert_eq!(panel.len(), w.k * width);
    let (nw, w0, words) = (w.words(), n0 / PACK_FACTOR, width / PACK_FACTOR);
    // Zero points and scales of the block for the current group, in column order.
    let mut zs = vec![0.0f32; width];
    let mut ss = vec![0.0f32; width];
    for g in 0..w.groups() {
        let zrow = &w.qzeros[g * nw + w0..g * nw + w0 + words];
        for (c, &zword) in zrow.iter().enumerate() {
            for (j, z) in unpack_word(zword).into_iter().enumerate() {
                zs[c * PACK_FACTOR + j] = z as f32;
            }
        }
        for (s, v) in ss
            .iter_mut()
            .zip(&w.scales[g * w.n + n0..g * w.n + n0 + width])
        {
            *s = v.to_f32();
        }
        let rows = g * w.group..(g + 1) * w.group;
        let qrows = &w.qweight[rows.start * nw..rows.end * nw];
        let prows = &mut panel[rows.start * width..rows.end * width];
        #[cfg(target_arch = "x86_64")]
        if crate::ops::linear::cpu::simd::has_avx512() {
            // SAFETY: the CPU supports the kernel's target features (checked just above).
            unsafe { simd::dequantize_rows_avx512(qrows, nw, w0, words, &zs, &ss, prows) };
            continue;
        }
        for (qrow, prow) in qrows.chunks_exact(nw).zip(prows.chunks_exact_mut(width)) {
            for (c, &word) in qrow[w0..w0 + words].iter().enumerate() {
                for (j, q) in unpack_word(word).into_iter().enumerate() {
                    let col = c * PACK_FACTOR + j;
                    prow[col] = (q as f32 - zs[col]) * ss[col];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! AVX-512 AWQ kernels; callers check the CPU features at run time first.

    use std::arch::x86_64::*;

    use super::{AwqWeights, CHUNK_WORDS, PACK_FACTOR, PACK_ORDER};
    use crate::awq_format::SLOT_OF_COLUMN;
    use crate::dtype::FloatElement;
    use crate::ops::linear::cpu::simd::load16;

    /// Cache level the decode kernel prefetches the next group's words into.
    const PREFETCH_HINT: i32 = _MM_HINT_T1;

    /// `[0.0, 1.0, …, 15.0]`: `_mm512_permutexvar_ps(codes, TABLE)` turns the low nibble of every 32-bit lane
    /// into its float value (the permute only reads the low 4 bits of each index, so no mask is needed).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    fn nibble_table() -> __m512 {
        _mm512_setr_ps(
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
        )
    }

    /// Mask of the first `len` (<= 16) lanes.
    #[inline]
    fn lanes(len: usize) -> __mmask16 {
        if len >= 16 {
            0xFFFF
        } else {
            ((1u32 << len) - 1) as __mmask16
        }
    }

    /// Decode (m == 1) for packed words `w0 .. w0 + words`: writes `yb[j] = Σ_k x[k]·W[8·w0 + j][k]`.
    ///
    /// Works on chunks of 16 words: lane `l` of accumulator `s` sums nibble slot `s` of word `w0 + c + l`, i.e.
    /// column `8·(w0 + c + l) + PACK_ORDER[s]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, FMA and F16C; `w` must satisfy its preconditions; `x` is [k],
    /// `sx` is [k/group], `w0 + words <= n/8`, `yb` is [8·words].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // g indexes x rows, sx, qzeros and scales together.
    pub(super) unsafe fn decode_block_avx512<S: FloatElement>(
        x: &[f32],
        sx: &[f32],
        w: &AwqWeights<S>,
        w0: usize,
        words: usize,
        yb: &mut [f32],
    ) {
        let nw = w.words();
        assert_eq!(x.len(), w.k);
        assert_eq!(sx.len(), w.groups());
        assert!(w0 + words <= nw);
        assert_eq!(yb.len(), words * PACK_FACTOR);
        let table = nibble_table();
        // Gather offsets that pick, for slot s, the scale of column 8·l + PACK_ORDER[s] for lanes l.
        let mut gather_idx = [_mm512_setzero_si512(); 8];
        for (s, idx) in gather_idx.iter_mut().enumerate() {
            let mut v = [0i32; 16];
            for (l, e) in v.iter_mut().enumerate() {
                *e = (PACK_FACTOR * l + PACK_ORDER[s]) as i32;
            }
            *idx = _mm512_loadu_si512(v.as_ptr() as *const __m512i);
        }
        let qw = w.qweight.as_ptr();
        let chunks = words.div_ceil(CHUNK_WORDS);
        // Per chunk, the 8 slot accumulators of the output; they live across groups.
        let mut yacc = vec![_mm512_setzero_ps(); 8 * chunks];
        // Group-major order: all chunks of the block for one group of rows before the next group, so the
        // rows of a group (one 4 KiB page each on wide layers) stay in the TLB and caches while every chunk
        // walks them.
        for g in 0..w.groups() {
            let sxb = _mm512_set1_ps(sx[g]);
            for (ci, ya) in yacc.chunks_exact_mut(8).enumerate() {
                let c = ci * CHUNK_WORDS;
                let len = (words - c).min(CHUNK_WORDS);
                let mask = lanes(len);
                let col0 = PACK_FACTOR * (w0 + c);
                let mut acc = [_mm512_setzero_ps(); 8];
                for row in g * w.group..(g + 1) * w.group {
                    let p = qw.wrapping_add(row * nw + w0 + c);
                    // The same words one group further down, needed after this group's chunks; prefetching
                    // never faults, so the address may run past the end (hence wrapping_add).
                    _mm_prefetch::<PREFETCH_HINT>(p.wrapping_add(w.group * nw) as *const i8);
                    // SAFETY: the `len` masked-in words are qweight[row][w0 + c ..][..len], inside qweight.
                    let mut q = _mm512_maskz_loadu_epi32(mask, p as *const i32);
                    // SAFETY: row < k = x.len().
                    let xb = _mm512_set1_ps(*x.get_unchecked(row));
                    for a in acc.iter_mut() {
                        *a = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, table), xb, *a);
                        q = _mm512_srli_epi32::<4>(q);
                    }
                }
                // Group epilogue: yacc += s·(acc - z·Σx), all in slot order.
                // SAFETY: the `len` masked-in words are qzeros[g][w0 + c ..][..len], inside qzeros.
                let mut z = _mm512_maskz_loadu_epi32(
                    mask,
                    w.qzeros.as_ptr().add(g * nw + w0 + c) as *const i32,
                );
                // Scales of the chunk's 8·len columns, upcast in column order, then gathered per slot.
                let mut sbuf = [0.0f32; CHUNK_WORDS * PACK_FACTOR];
                for (h, dst) in sbuf.chunks_exact_mut(16).enumerate() {
                    let have = (PACK_FACTOR * len).saturating_sub(16 * h);
                    // SAFETY: the masked-in scales are scales[g][col0 + 16h ..][..have], inside row g.
                    let v = load16(w.scales.as_ptr().add(g * w.n + col0 + 16 * h), lanes(have));
                    _mm512_storeu_ps(dst.as_mut_ptr(), v);
                }
                for s in 0..8 {
                    // SAFETY: every offset 8·l + PACK_ORDER[s] < 128 = sbuf.len().
                    let sc = _mm512_i32gather_ps::<4>(gather_idx[s], sbuf.as_ptr());
                    let zf = _mm512_permutexvar_ps(z, table);
                    z = _mm512_srli_epi32::<4>(z);
                    ya[s] = _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(zf, sxb, acc[s]), ya[s]);
                }
            }
        }
        // Undo the nibble order once per block: slot s, lane l of chunk ci is column
        // 8·(16·ci + l) + PACK_ORDER[s].
        let mut tmp = [0.0f32; 16];
        for (ci, ya) in yacc.chunks_exact(8).enumerate() {
            let c = ci * CHUNK_WORDS;
            let len = (words - c).min(CHUNK_WORDS);
            for (s, v) in ya.iter().enumerate() {
                _mm512_storeu_ps(tmp.as_mut_ptr(), *v);
                for (l, &t) in tmp.iter().enumerate().take(len) {
                    yb[PACK_FACTOR * (c + l) + PACK_ORDER[s]] = t;
                }
            }
        }
    }

    /// Row-sequential variant: per group, 4 rows at a time over the whole block width, accumulators in L1.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // g indexes x rows, sx, qzeros and scales together.
    pub(super) unsafe fn decode_block_avx512_rows<S: FloatElement>(
        x: &[f32],
        sx: &[f32],
        w: &AwqWeights<S>,
        w0: usize,
        words: usize,
        yb: &mut [f32],
    ) {
        let nw = w.words();
        assert_eq!(x.len(), w.k);
        assert_eq!(sx.len(), w.groups());
        assert!(w0 + words <= nw);
        assert_eq!(yb.len(), words * PACK_FACTOR);
        assert!(w.group.is_multiple_of(4));
        let table = nibble_table();
        let mut gather_idx = [_mm512_setzero_si512(); 8];
        for (s, idx) in gather_idx.iter_mut().enumerate() {
            let mut v = [0i32; 16];
            for (l, e) in v.iter_mut().enumerate() {
                *e = (PACK_FACTOR * l + PACK_ORDER[s]) as i32;
            }
            *idx = _mm512_loadu_si512(v.as_ptr() as *const __m512i);
        }
        let qw = w.qweight.as_ptr();
        let chunks = words.div_ceil(CHUNK_WORDS);
        let mut yacc = vec![_mm512_setzero_ps(); 8 * chunks];
        let mut acc = vec![_mm512_setzero_ps(); 8 * chunks];
        for g in 0..w.groups() {
            acc.fill(_mm512_setzero_ps());
            let mut row = g * w.group;
            while row < (g + 1) * w.group {
                let x0 = _mm512_set1_ps(x[row]);
                let x1 = _mm512_set1_ps(x[row + 1]);
                let x2 = _mm512_set1_ps(x[row + 2]);
                let x3 = _mm512_set1_ps(x[row + 3]);
                for (ci, a) in acc.chunks_exact_mut(8).enumerate() {
                    let c = ci * CHUNK_WORDS;
                    let mask = lanes(words - c);
                    let p = qw.add(row * nw + w0 + c);
                    let mut q0 = _mm512_maskz_loadu_epi32(mask, p as *const i32);
                    let mut q1 = _mm512_maskz_loadu_epi32(mask, p.add(nw) as *const i32);
                    let mut q2 = _mm512_maskz_loadu_epi32(mask, p.add(2 * nw) as *const i32);
                    let mut q3 = _mm512_maskz_loadu_epi32(mask, p.add(3 * nw) as *const i32);
                    for av in a.iter_mut() {
                        let mut t = _mm512_fmadd_ps(_mm512_permutexvar_ps(q0, table), x0, *av);
                        t = _mm512_fmadd_ps(_mm512_permutexvar_ps(q1, table), x1, t);
                        t = _mm512_fmadd_ps(_mm512_permutexvar_ps(q2, table), x2, t);
                        *av = _mm512_fmadd_ps(_mm512_permutexvar_ps(q3, table), x3, t);
                        q0 = _mm512_srli_epi32::<4>(q0);
                        q1 = _mm512_srli_epi32::<4>(q1);
                        q2 = _mm512_srli_epi32::<4>(q2);
                        q3 = _mm512_srli_epi32::<4>(q3);
                    }
                }
                row += 4;
            }
            let sxb = _mm512_set1_ps(sx[g]);
            for (ci, (ya, a)) in yacc
                .chunks_exact_mut(8)
                .zip(acc.chunks_exact(8))
                .enumerate()
            {
                let c = ci * CHUNK_WORDS;
                let len = (words - c).min(CHUNK_WORDS);
                let mask = lanes(len);
                let col0 = PACK_FACTOR * (w0 + c);
                let mut z = _mm512_maskz_loadu_epi32(
                    mask,
                    w.qzeros.as_ptr().add(g * nw + w0 + c) as *const i32,
                );
                let mut sbuf = [0.0f32; CHUNK_WORDS * PACK_FACTOR];
                for (h, dst) in sbuf.chunks_exact_mut(16).enumerate() {
                    let have = (PACK_FACTOR * len).saturating_sub(16 * h);
                    let v = load16(w.scales.as_ptr().add(g * w.n + col0 + 16 * h), lanes(have));
                    _mm512_storeu_ps(dst.as_mut_ptr(), v);
                }
                for s in 0..8 {
                    let sc = _mm512_i32gather_ps::<4>(gather_idx[s], sbuf.as_ptr());
                    let zf = _mm512_permutexvar_ps(z, table);
                    z = _mm512_srli_epi32::<4>(z);
                    ya[s] = _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(zf, sxb, a[s]), ya[s]);
                }
            }
        }
        let mut tmp = [0.0f32; 16];
        for (ci, ya) in yacc.chunks_exact(8).enumerate() {
            let c = ci * CHUNK_WORDS;
            let len = (words - c).min(CHUNK_WORDS);
            for (s, v) in ya.iter().enumerate() {
                _mm512_storeu_ps(tmp.as_mut_ptr(), *v);
                for (l, &t) in tmp.iter().enumerate().take(len) {
                    yb[PACK_FACTOR * (c + l) + PACK_ORDER[s]] = t;
                }
            }
        }
    }

    /// Dequantizes the rows of one group into `panel` ([rows, 8·words], column order) for the words
    /// `w0 .. w0 + words` of each row of `qrows` ([rows, nw]), with that group's zero points `zs` and
    /// scales `ss` ([8·words], column order, as f32). Bit-identical to `(q - z) * s` in f32.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, FMA and F16C; `qrows.len() == rows·nw`,
    /// `panel.len() == rows·8·words`, `w0 + words <= nw`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(super) unsafe fn dequantize_rows_avx512(
        qrows: &[u32],
        nw: usize,
        w0: usize,
        words: usize,
        zs: &[f32],
        ss: &[f32],
        panel: &mut [f32],
    ) {
        let width = words * PACK_FACTOR;
        assert!(w0 + words <= nw);
        assert_eq!(qrows.len() / nw * width, panel.len());
        assert!(zs.len() == width && ss.len() == width);
        let table = nibble_table();
        // Lane l of a 16-column vector is column 8·(l / 8) + l % 8 of a word pair: take word l / 8 and
        // shift its slot for column l % 8 down to the low nibble.
        let pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut sh = [0i32; 16];
        for (l, e) in sh.iter_mut().enumerate() {
            *e = (4 * SLOT_OF_COLUMN[l % PACK_FACTOR]) as i32;
        }
        let shifts = _mm512_loadu_si512(sh.as_ptr() as *const __m512i);
        for (qrow, prow) in qrows.chunks_exact(nw).zip(panel.chunks_exact_mut(width)) {
            let mut c = 0;
            while c < words {
                let pair = (words - c).min(2);
                let mask = lanes(PACK_FACTOR * pair);
                // SAFETY: `pair` words qrow[w0 + c ..][..pair] are in the row (mask covers 1 or 2 lanes).
                let wv =
                    _mm512_maskz_loadu_epi32(lanes(pair), qrow.as_ptr().add(w0 + c) as *const i32);
                let codes = _mm512_srlv_epi32(_mm512_permutexvar_epi32(pick, wv), shifts);
                let q = _mm512_permutexvar_ps(codes, table);
                let col = PACK_FACTOR * c;
                // SAFETY: the masked-in columns col .. col + 8·pair are inside zs, ss and the panel row.
                let z = _mm512_maskz_loadu_ps(mask, zs.as_ptr().add(col));
                let s = _mm512_maskz_loadu_ps(mask, ss.as_ptr().add(col));
                _mm512_mask_storeu_ps(
                    prow.as_mut_ptr().add(col),
                    mask,
                    _mm512_mul_ps(_mm512_sub_ps(q, z), s),
                );
                c += 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::awq_format::pack_word;
    use half::{bf16, f16};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Codes and their packed form for a random AWQ linear; zero points include 0 and 15.
    struct Fixture<S> {
        q: Vec<u32>, // [k, n] codes, column order
        z: Vec<u32>, // [k/group, n]
        s: Vec<S>,   // [k/group, n]
        qweight: Vec<u32>,
        qzeros: Vec<u32>,
        k: usize,
        n: usize,
        group: usize,
    }

    fn pack_rows(codes: &[u32], n: usize) -> Vec<u32> {
        codes
            .chunks_exact(PACK_FACTOR)
            .map(|c| pack_word(c.try_into().expect("8 codes")))
            .collect::<Vec<_>>()
            .chunks_exact(n / PACK_FACTOR)
            .flatten()
            .copied()
            .collect()
    }

    fn fixture<S: FloatElement>(k: usize, n: usize, group: usize, seed: u64) -> Fixture<S> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q: Vec<u32> = (0..k * n).map(|_| rng.gen_range(0..16)).collect();
        let mut z: Vec<u32> = (0..k / group * n).map(|_| rng.gen_range(0..16)).collect();
        // Make sure the extreme zero points occur.
        z[0] = 0;
        let last = z.len() - 1;
        z[last] = 15;
        z[n / 2] = 15;
        let s: Vec<S> = (0..k / group * n)
            .map(|_| S::from_f32(rng.gen_range(0.001f32..0.05)))
            .collect();
        Fixture {
            qweight: pack_rows(&q, n),
            qzeros: pack_rows(&z, n),
            q,
            z,
            s,
            k,
            n,
            group,
        }
    }

    impl<S: FloatElement> Fixture<S> {
        fn weights(&self) -> AwqWeights<'_, S> {
            AwqWeights {
                qweight: &self.qweight,
                qzeros: &self.qzeros,
                scales: &self.s,
                k: self.k,
                n: self.n,
                group: self.group,
            }
        }
    }

    #[test]
    fn dequantize_of_hand_packed_words_is_q_minus_z_times_s() {
        for (k, n, group) in [(128, 40, 128), (256, 136, 64), (64, 8, 8)] {
            let f = fixture::<f16>(k, n, group, 1);
            let w = dequantize(f.weights());
            for row in 0..k {
                for col in 0..n {
                    let g = row / group;
                    let want = (f.q[row * n + col] as f32 - f.z[g * n + col] as f32)
                        * f.s[g * n + col].to_f32();
                    assert_eq!(w[col * k + row], want, "row {row}, col {col}");
                }
            }
        }
    }

    /// `awq_linear` against x · dequantize(W)ᵀ in f64. The decode path forms s·(Σ q·x − z·Σ x), whose f32
    /// rounding is relative to Σ |x|·(q + z)·|s|, not to the (possibly cancelling) Σ |x·w|.
    fn check<S: FloatElement>(
        m: usize,
        k: usize,
        n: usize,
        group: usize,
        with_bias: bool,
        seed: u64,
    ) {
        let f = fixture::<S>(k, n, group, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 1000);
        let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let bias: Option<Vec<f32>> =
            with_bias.then(|| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
        let wd = dequantize(f.weights());
        let mut y = vec![f32::NAN; m * n];
        awq_linear(&x, m, f.weights(), bias.as_deref(), &mut y);
        for i in 0..m {
            for col in 0..n {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for row in 0..k {
                    let g = row / group;
                    let xv = x[i * k + row] as f64;
                    want += xv * wd[col * k + row] as f64;
                    let (q, z) = (f.q[row * n + col] as f64, f.z[g * n + col] as f64);
                    mag += xv.abs() * (q + z) * (f.s[g * n + col].to_f32() as f64).abs();
                }
                if let Some(b) = &bias {
                    want += b[col] as f64;
                    mag += (b[col] as f64).abs();
                }
                let got = y[i * n + col] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag + 1e-30,
                    "m={m} k={k} n={n} group={group} bias={with_bias} at ({i},{col}): got {got}, want {want}"
                );
            }
        }
    }

    fn check_all<S: FloatElement>(seed: u64) {
        let mut case = 0;
        for m in [1, 2, 5, 16, 33] {
            for k in [128, 256, 384] {
                for n in [8, 40, 136] {
                    for group in [128, 64] {
                        case += 1;
                        check::<S>(m, k, n, group, case % 2 == 0, seed + case);
                    }
                }
            }
        }
    }

    #[test]
    fn awq_linear_with_f16_scales_matches_x_times_the_dequantized_weight() {
        check_all::<f16>(0);
    }

    #[test]
    fn awq_linear_with_bf16_scales_matches_x_times_the_dequantized_weight() {
        check_all::<bf16>(10_000);
    }

    #[test]
    fn awq_linear_with_f32_scales_matches_x_times_the_dequantized_weight() {
        check::<f32>(1, 256, 136, 64, true, 5);
        check::<f32>(3, 256, 136, 64, false, 6);
    }

    #[test]
    fn awq_decode_on_a_wide_layer_uses_several_blocks_and_matches() {
        // n/8 = 200 words: several 16-word chunks per block, a partial last chunk, several blocks.
        check::<f16>(1, 256, 1600, 128, true, 77);
        check::<bf16>(4, 256, 1600, 128, true, 78);
    }

    #[test]
    fn the_portable_decode_matches_the_dispatched_one() {
        let f = fixture::<f16>(256, 136, 64, 9);
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let sx: Vec<f32> = x.chunks_exact(64).map(|c| c.iter().sum()).collect();
        let mut portable = vec![0.0; 136];
        decode_block_portable(&x, &sx, &f.weights(), 0, 17, &mut portable);
        let mut dispatched = vec![0.0; 136];
        awq_linear(&x, 1, f.weights(), None, &mut dispatched);
        for (a, b) in portable.iter().zip(&dispatched) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn the_prefill_panel_equals_the_reference_dequantization() {
        let f = fixture::<bf16>(128, 136, 64, 11);
        let wd = dequantize(f.weights());
        let (n0, width) = (48, 88);
        let mut panel = vec![f32::NAN; 128 * width];
        dequantize_panel(&f.weights(), n0, width, &mut panel);
        for row in 0..128 {
            for j in 0..width {
                assert_eq!(
                    panel[row * width + j],
                    wd[(n0 + j) * 128 + row],
                    "row {row}, col {}",
                    n0 + j
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "multiple of 8")]
    fn a_group_size_that_is_not_a_multiple_of_8_is_rejected() {
        let w = AwqWeights::<f32> {
            qweight: &[0; 12],
            qzeros: &[0; 1],
            scales: &[0.0; 8],
            k: 12,
            n: 8,
            group: 12,
        };
        let _ = dequantize(w);
    }
}
