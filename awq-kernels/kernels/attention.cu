// Attention on tensor cores: flash attention forward for prefill (variable-length batches, causal or not,
// grouped-query heads, keys and values contiguous or in the paged KV cache) and split-KV decode over the
// paged cache, with its combine step. Host side: src/cuda/attention.rs. Built for compute_80 (sm_80 path:
// mma.sync m16n8k16, ldmatrix, cp.async; runs on sm_80..sm_90).
//
// Formula. For query row i of a sequence and head hq (KV head hq / (h / h_kv)):
//   o[i] = Σ_p softmax_p(scale · q[i]·k[p]) · v[p]   over the keys p the row sees:
//   non-causal: p = 0 .. kv_len-1;  causal: p = 0 .. kv_len - q_len + i (the query rows are the sequence's
//   newest q_len tokens; with kv_len = q_len this is the plain lower-triangular mask).
// Online softmax in base 2 (scores pre-multiplied by scale·log2 e, exp2), running max m and sum l per row,
// all in f32; QKᵀ and PV on tensor cores with f32 accumulation; P is rounded to T (f16/bf16) as the A
// operand of PV (as FlashAttention does), l sums the unrounded p. One rounding to T when o is stored.
//
// Operands (T = __half or __nv_bfloat16, D = head dim 64 or 128):
//   q, o  [t_q, h, D] rows of h·D elements;  k, v  rows of h_kv·D elements, either
//   contiguous [t_k, h_kv, D] (key p of sequence s is row kv_start[s] + p), or
//   paged: the cache [slots, h_kv, D], key p of sequence s is row tables[kv_start[s] + p / bs]·bs + p % bs
//   (block_size bs > 0 selects paged; slot = block·bs + offset as in src/kv_cache.rs).
//   meta  i32 [4][b]: q_start (first query row), q_len, kv_start, kv_len per sequence.
// Constraints (checked on the host): D ∈ {64, 128}, h % h_kv == 0, kv_len ≥ 1, causal ⇒ kv_len ≥ q_len,
// rows 16-byte aligned (D·2 bytes), decode: h / h_kv ≤ 16 and q_len = 1.
//
// Shared-memory tiles are [rows][D] with 16-byte chunks swizzled: chunk c of row r sits at c ^ (r % 8). A
// row is 128 or 256 bytes, so the 8 rows one ldmatrix 8x8 reads land in 8 different 16-byte bank groups
// (no bank conflicts), and cp.async writes whole chunks.
//
// Kernels.
//  - flash_fwd_<T>_d<D>[_r128]: grid (m blocks, h, b), 128 threads = 4 warps, BM = 64 query rows per CTA (16
//    per warp; `_r128`: 128, 32 per warp in two m-tiles that share every K and V fragment read from shared
//    memory, Q re-read from it per tile), BN = 64 keys per tile. Q tile and K/V tiles double-buffered in
//    shared memory by cp.async ((BM + 4·64)·D·2 bytes: 40 / 48 KB for D = 64, 80 / 96 KB for D = 128, 2 CTAs
//    per SM). The host picks the tile (src/cuda/attention.rs `FlashTile`). Per tile a warp computes
//    S = Q·Kᵀ (16 x 64 per m-tile: D/16 · 8 mma), masks, rescales, and O += P·V (P straight from the S
//    accumulators: the C fragment of m16n8k16 is the A fragment of the next mma once packed to T). m blocks are taken
//    from the last (longest under the causal mask) to the first, so the heavy CTAs start first. Causal CTAs
//    stop at the last key their last row sees; only tiles crossing kv_len or the diagonal are masked.
//  - decode_split_<T>_d<D>: one query row per sequence, paged keys. Grid (splits, h_kv, b), 128 threads.
//    All G = h / h_kv query heads of a KV head form the 16 rows of one mma A operand (rows ≥ G zero), so
//    each K/V element is read from memory once for its whole group. The CTA takes keys
//    [split·chunk, min((split+1)·chunk, kv_len)) in tiles of 64 keys through a 3-stage cp.async ring
//    (3·2·64·D·2 bytes: 48 KB for D = 64, 96 KB for D = 128); warp w takes keys 16w..16w+15 of each tile
//    with its own online softmax; the 4 warps are merged in shared memory. With one split the CTA writes o;
//    otherwise it writes its normalized partial o (f32) and log2-sum-exp lse = m + log2 l, and the last CTA
//    of its (sequence, KV head) to arrive (an atomic counter, threadfence pattern; it resets the counter)
//    combines the group's partials: o = Σ_s w_s·o_s / Σ_s w_s, w_s = exp2(lse_s - max lse), over the
//    ceil(kv_len / chunk) splits the sequence has, in split order. One launch per step instead of a split
//    kernel and a combine kernel.
//
// Verified by awq-kernels/tests/attention_gpu.rs against the CPU attention (f32) on random shapes: lengths
// not multiples of the tiles, GQA ratios 1, 5, 7, 8, D 64 and 128, f16 and bf16, causal and not, contiguous
// and paged, decode against the last row of prefill, later keys not changing earlier rows, poisoned outputs.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned int u32;

// The block's dynamic shared memory as an array of T (the CPU emulator hands it out by a call).
#ifdef INTERNVL_EMULATE
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu::dynamic_shared())
#else
#define DYNAMIC_SHARED(T, name) extern __shared__ __align__(128) T name[]
#endif

#define NEG_INF __int_as_float(0xff800000)

struct F16 {
    typedef __half T;
    static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#ifdef INTERNVL_EMULATE
        emu::mma_m16n8k16(c, a, b0, b1, false);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    // Two floats -> one register of two T, `lo` in bits 0..15 (the lower address).
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<u32*>(&v);
    }
};

struct BF16 {
    typedef __nv_bfloat16 T;
    static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#ifdef INTERNVL_EMULATE
        emu::mma_m16n8k16(c, a, b0, b1, true);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<u32*>(&v);
    }
};


// 16 bytes global -> shared, bypassing L1 (.cg: tiles are read once per CTA; reuse across CTAs is in L2).
// With valid = false nothing is read and the 16 bytes are zero-filled (src-size 0), so a row past the end
// contributes 0, never stale data or NaN. The "memory" clobbers keep the compiler from moving plain shared
// memory accesses across the copies and waits.
#ifdef INTERNVL_EMULATE
static void cp_async16(void* dst, const void* src, bool valid) { emu::cp_async(dst, src, valid ? 16 : 0); }
static void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
static void cp_async_wait() {
    emu::cp_async_wait(N);
}
static void ldmatrix_x4(u32 (&r)[4], const void* row) { emu::ldmatrix_x4(r, row, false); }
static void ldmatrix_x4_trans(u32 (&r)[4], const void* row) { emu::ldmatrix_x4(r, row, true); }
#else
static __device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}
static __device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
                 : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Each lane passes the address of its row of the four 8x8 matrices (lanes 8i..8i+7: the rows of matrix i).
static __device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
#endif

// Element offset of 16-byte chunk c of row r in a swizzled [rows][D] tile.
template <int D>
static __device__ __forceinline__ int swz(int r, int c) {
    return r * D + ((c ^ (r & 7)) << 3);
}

// The memory row of key p of a sequence: contiguous (bs == 0) or through its block table.
static __device__ __forceinline__ size_t key_row(const int* __restrict__ tables, int kv_start, int bs, int p) {
    if (bs == 0) return (size_t)(kv_start + p);
    return (size_t)tables[kv_start + p / bs] * bs + p % bs;
}

// Loads keys [p0, p0 + ROWS) of one KV head (rows at or past p_end zero-filled) into swizzled tiles sk, sv.
// NT threads; each thread copies the same chunk column of ROWS·(D/8)/NT rows.
template <int D, int ROWS, int NT, class T>
static __device__ __forceinline__ void load_kv_tile(T* sk, T* sv, const T* __restrict__ k, const T* __restrict__ v,
                                                    const int* __restrict__ tables, int kv_start, int bs,
                                                    int p0, int p_end, size_t kv_stride, int kv_head) {
    constexpr int CH = D / 8;
    constexpr int ROW_STEP = NT / CH;
    const int c = threadIdx.x % CH;
#pragma unroll
    for (int r = threadIdx.x / CH; r < ROWS; r += ROW_STEP) {
        const int p = p0 + r;
        const bool ok = p < p_end;
        size_t off = 0;
        if (ok) off = key_row(tables, kv_start, bs, p) * kv_stride + (size_t)kv_head * D + c * 8;
        cp_async16(sk + swz<D>(r, c), k + off, ok);
        cp_async16(sv + swz<D>(r, c), v + off, ok);
    }
}

// Max and sum over the 4 lanes of a quad (the lanes holding one row of an mma C fragment).
static __device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
static __device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// One online-softmax step for the two rows (g, g + 8) a lane holds: s[NT8][4] are the scores of this tile
// (already in log2 units, -inf where masked); rescales o and l by exp2(m_old - m_new) and turns s into p.
template <int NT8, int DT8>
static __device__ __forceinline__ void online_softmax(float (&s)[NT8][4], float (&o)[DT8][4], float (&m)[2],
                                                      float (&l)[2]) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float mx = m[hr];
#pragma unroll
        for (int j = 0; j < NT8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hr], s[j][2 * hr + 1]));
        mx = quad_max(mx);
        // A row that has seen only masked keys keeps m = -inf; exp2 against 0 then gives 0, not NaN.
        const float base = mx == NEG_INF ? 0.0f : mx;
        const float corr = exp2f(m[hr] - base);
        m[hr] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NT8; ++j) {
            s[j][2 * hr] = exp2f(s[j][2 * hr] - base);
            s[j][2 * hr + 1] = exp2f(s[j][2 * hr + 1] - base);
            sum += s[j][2 * hr] + s[j][2 * hr + 1];
        }
        // This lane's part of the row sum (the quad is summed at the end). An explicit fma, as the scaling
        // of the scores below is an explicit multiply: the compiler may not contract one instantiation
        // (64- or 128-row tile) differently from the other, so both give the same bits.
        l[hr] = __fmaf_rn(l[hr], corr, sum);
#pragma unroll
        for (int j = 0; j < DT8; ++j) {
            o[j][2 * hr] *= corr;
            o[j][2 * hr + 1] *= corr;
        }
    }
}

// O[16 x D] += P[16 x 16·KS] · V[keys v_row0 .. v_row0 + 16·KS, D], P from the score accumulators
// s[2·KS][4] (n-tiles of 8 keys), V from a swizzled shared tile.
template <class DT, int D, int KS, class T>
static __device__ __forceinline__ void pv_mma(const float (&s)[2 * KS][4], float (&o)[D / 8][4], const T* sv,
                                              int v_row0, int lane) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        const u32 a[4] = {DT::pack(s[2 * kk][0], s[2 * kk][1]), DT::pack(s[2 * kk][2], s[2 * kk][3]),
                          DT::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                          DT::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const int row = v_row0 + kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
        for (int dd = 0; dd < D / 16; ++dd) {
            u32 b[4];
            ldmatrix_x4_trans(b, sv + swz<D>(row, dd * 2 + (lane >> 4)));
            DT::mma(o[2 * dd], a, b[0], b[1]);
            DT::mma(o[2 * dd + 1], a, b[2], b[3]);
        }
    }
}

// S[16 x 16·NS] = Q[16 x D] · K[keys k_row0 .. k_row0 + 16·NS]ᵀ, Q as A fragments qf[D/16][4].
template <class DT, int D, int NS, class T>
static __device__ __forceinline__ void qk_mma(const u32 (&qf)[D / 16][4], float (&s)[2 * NS][4], const T* sk,
                                              int k_row0, int lane) {
#pragma unroll
    for (int j = 0; j < 2 * NS; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int nn = 0; nn < NS; ++nn) {
            u32 b[4];
            const int row = k_row0 + nn * 16 + (lane & 7) + ((lane >> 4) << 3);
            ldmatrix_x4(b, sk + swz<D>(row, kk * 2 + ((lane >> 3) & 1)));
            DT::mma(s[2 * nn], qf[kk], b[0], b[1]);
            DT::mma(s[2 * nn + 1], qf[kk], b[2], b[3]);
        }
    }
}

// S[mt] = Q[mt]·Kᵀ for the MT m-tiles of a warp (its rows q_row0 + 16·mt of the swizzled Q tile sq), Q's A
// fragments read from shared memory at every k-step: two m-tiles of Q do not fit in registers beside their
// score and output accumulators. Each K fragment serves all MT m-tiles.
template <class DT, int D, int NS, int MT, class T>
static __device__ __forceinline__ void qk_mma_shared_q(const T* sq, int q_row0, float (&s)[MT][2 * NS][4],
                                                       const T* sk, int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 2 * NS; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        u32 a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            ldmatrix_x4(a[mt], sq + swz<D>(q_row0 + 16 * mt + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int nn = 0; nn < NS; ++nn) {
            u32 b[4];
            const int row = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
            ldmatrix_x4(b, sk + swz<D>(row, kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                DT::mma(s[mt][2 * nn], a[mt], b[0], b[1]);
                DT::mma(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// O[mt] += P[mt] · V for the MT m-tiles of a warp (P from their score accumulators), each V fragment read from
// shared memory once for all of them.
template <class DT, int D, int KS, int MT, class T>
static __device__ __forceinline__ void pv_mma_tiles(const float (&s)[MT][2 * KS][4], float (&o)[MT][D / 8][4],
                                                    const T* sv, int lane) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        u32 a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            a[mt][0] = DT::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            a[mt][1] = DT::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            a[mt][2] = DT::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            a[mt][3] = DT::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
        const int row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
        for (int dd = 0; dd < D / 16; ++dd) {
            u32 b[4];
            ldmatrix_x4_trans(b, sv + swz<D>(row, dd * 2 + (lane >> 4)));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                DT::mma(o[mt][2 * dd], a[mt], b[0], b[1]);
                DT::mma(o[mt][2 * dd + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

namespace flash {
constexpr int BN = 64, NT = 128;
}

// MT m-tiles of 16 query rows per warp: BM = 64·MT rows per CTA of 4 warps. MT = 1 keeps the warp's Q
// fragments in registers for the whole key loop; MT = 2 re-reads them from shared memory at every key tile
// but reads each K and V fragment once for 32 rows, halving the shared-memory reads per mma (the tile
// FlashAttention-2 uses for head dims 64 and 128). Warp w holds the CTA's rows 16·MT·w .. 16·MT·(w+1).
template <class DT, int D, int MT>
__device__ __forceinline__ void flash_fwd(const typename DT::T* __restrict__ q, const typename DT::T* __restrict__ k,
                                          const typename DT::T* __restrict__ v, typename DT::T* __restrict__ o,
                                          const int* __restrict__ meta, const int* __restrict__ tables, int b,
                                          int block_size, int h, int h_kv, int causal, float scale_log2) {
    typedef typename DT::T T;
    using namespace flash;
    constexpr int BM = 64 * MT;
    constexpr int CH = D / 8;
    DYNAMIC_SHARED(unsigned char, smem_raw);
    T* sq = reinterpret_cast<T*>(smem_raw);  // [BM][D]
    T* sk = sq + BM * D;                      // [2][BN][D]
    T* sv = sk + 2 * BN * D;                  // [2][BN][D]

    const int seq = blockIdx.z, head = blockIdx.y;
    const int m_block = gridDim.x - 1 - blockIdx.x;
    const int q_start = meta[seq], q_len = meta[b + seq], kv_start = meta[2 * b + seq], kv_len = meta[3 * b + seq];
    if (m_block * BM >= q_len) return;
    const int kv_head = head / (h / h_kv);
    const int offset = causal ? kv_len - q_len : 0;  // key position of query row 0
    const int n_end = causal ? min(kv_len, offset + (m_block + 1) * BM) : kv_len;
    const int n_tiles = (n_end + BN - 1) / BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t q_stride = (size_t)h * D, kv_stride = (size_t)h_kv * D;

    // Q tile (rows past q_len zero) and the first K/V tile: cp.async group 0.
    {
        const int c = tid % CH;
#pragma unroll
        for (int r = tid / CH; r < BM; r += NT / CH) {
            const int row = m_block * BM + r;
            const bool ok = row < q_len;
            const T* src = ok ? q + (size_t)(q_start + row) * q_stride + (size_t)head * D + c * 8 : q;
            cp_async16(sq + swz<D>(r, c), src, ok);
        }
    }
    load_kv_tile<D, BN, NT>(sk, sv, k, v, tables, kv_start, block_size, 0, n_end, kv_stride, kv_head);
    cp_async_commit();

    float acc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < D / 8; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = NEG_INF;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    u32 qf[MT == 1 ? D / 16 : 1][4];  // MT = 1: the warp's Q fragments, loaded once
    const int warp_row = warp * 16 * MT;  // the warp's first row in the CTA's tile
    // Rows this lane holds in the C fragments of m-tile mt (and + 8), relative to the sequence's first row.
    const int row0 = m_block * BM + warp_row + (lane >> 2);
    const int first_diag_row = m_block * BM;

    for (int j = 0; j < n_tiles; ++j) {
        const int buf = j & 1;
        // Prefetch tile j + 1 into the other buffer (last read in iteration j - 1, which ended with a barrier).
        if (j + 1 < n_tiles)
            load_kv_tile<D, BN, NT>(sk + (buf ^ 1) * BN * D, sv + (buf ^ 1) * BN * D, k, v, tables, kv_start,
                                    block_size, (j + 1) * BN, n_end, kv_stride, kv_head);
        cp_async_commit();
        cp_async_wait<1>();  // everything but the group just issued: tile j (and Q) landed
        __syncthreads();
        float s[MT][BN / 8][4];
        if constexpr (MT == 1) {
            if (j == 0) {
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk)
                    ldmatrix_x4(qf[kk], sq + swz<D>(warp_row + (lane & 15), kk * 2 + (lane >> 4)));
            }
            qk_mma<DT, D, BN / 16>(qf, s[0], sk + buf * BN * D, 0, lane);
        } else {
            qk_mma_shared_q<DT, D, BN / 16, MT>(sq, warp_row, s, sk + buf * BN * D, lane);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int jj = 0; jj < BN / 8; ++jj)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][jj][e] = __fmul_rn(s[mt][jj][e], scale_log2);
        const bool crosses_end = (j + 1) * BN > kv_len;
        const bool crosses_diag = causal && (j + 1) * BN - 1 > offset + first_diag_row;
        if (crosses_end || crosses_diag) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int jj = 0; jj < BN / 8; ++jj)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int col = j * BN + jj * 8 + 2 * (lane & 3) + (e & 1);
                        const int row = row0 + 16 * mt + (e >> 1) * 8;
                        if (col >= kv_len || (causal && col > offset + row)) s[mt][jj][e] = NEG_INF;
                    }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) online_softmax(s[mt], acc[mt], m[mt], l[mt]);
        if constexpr (MT == 1) {
            pv_mma<DT, D, BN / 16>(s[0], acc[0], sv + buf * BN * D, 0, lane);
        } else {
            pv_mma_tiles<DT, D, BN / 16, MT>(s, acc, sv + buf * BN * D, lane);
        }
        __syncthreads();  // all warps are done with buffer `buf` before iteration j + 1 refills it
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const float total = quad_sum(l[mt][hr]);
            const float inv = total > 0.0f ? 1.0f / total : 0.0f;
            const int row = row0 + 16 * mt + hr * 8;
            if (row < q_len) {
                T* dst = o + (size_t)(q_start + row) * q_stride + (size_t)head * D + 2 * (lane & 3);
#pragma unroll
                for (int jj = 0; jj < D / 8; ++jj)
                    *reinterpret_cast<u32*>(dst + jj * 8) =
                        DT::pack(acc[mt][jj][2 * hr] * inv, acc[mt][jj][2 * hr + 1] * inv);
            }
        }
}

namespace decode {
constexpr int BN = 64, NT = 128, STAGES = 3;
}

template <class DT, int D>
__device__ __forceinline__ void decode_split(const typename DT::T* __restrict__ q, const typename DT::T* __restrict__ kc,
                                             const typename DT::T* __restrict__ vc, typename DT::T* __restrict__ o,
                                             float* __restrict__ part_o, float* __restrict__ part_lse,
                                             unsigned* __restrict__ counters, const int* __restrict__ meta,
                                             const int* __restrict__ tables, int b, int block_size, int h,
                                             int h_kv, int chunk, float scale_log2) {
    typedef typename DT::T T;
    using namespace decode;
    DYNAMIC_SHARED(unsigned char, smem_raw);
    T* sk = reinterpret_cast<T*>(smem_raw);  // [STAGES][BN][D]
    T* sv = sk + STAGES * BN * D;            // [STAGES][BN][D]

    const int seq = blockIdx.z, kv_head = blockIdx.y, split = blockIdx.x, splits = gridDim.x;
    const int q_row = meta[seq], kv_start = meta[2 * b + seq], kv_len = meta[3 * b + seq];
    const int p_begin = split * chunk;
    if (p_begin >= kv_len) return;  // this sequence has fewer splits (the combine knows)
    const int p_end = min(p_begin + chunk, kv_len);
    const int n_tiles = (p_end - p_begin + BN - 1) / BN;
    const int group = h / h_kv;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t kv_stride = (size_t)h_kv * D;

    // Start the ring: tiles 0 .. STAGES-2, one cp.async group each (empty groups past the end).
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < n_tiles)
            load_kv_tile<D, BN, NT>(sk + st * BN * D, sv + st * BN * D, kc, vc, tables, kv_start, block_size,
                                    p_begin + st * BN, p_end, kv_stride, kv_head);
        cp_async_commit();
    }

    // Q of the group as A fragments: row g = query head kv_head·G + g (rows ≥ G are zero), scale applied
    // to the scores later. Straight from global memory (each warp reads the same 16·D elements; L1 hits).
    u32 qf[D / 16][4];
    {
        const int g = lane >> 2, t = lane & 3;
        const T* q0 = q + ((size_t)q_row * h + (size_t)kv_head * group) * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int c0 = kk * 16 + 2 * t;
            qf[kk][0] = g < group ? *reinterpret_cast<const u32*>(q0 + (size_t)g * D + c0) : 0u;
            qf[kk][1] = g + 8 < group ? *reinterpret_cast<const u32*>(q0 + (size_t)(g + 8) * D + c0) : 0u;
            qf[kk][2] = g < group ? *reinterpret_cast<const u32*>(q0 + (size_t)g * D + c0 + 8) : 0u;
            qf[kk][3] = g + 8 < group ? *reinterpret_cast<const u32*>(q0 + (size_t)(g + 8) * D + c0 + 8) : 0u;
        }
    }

    float acc[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};

    for (int j = 0; j < n_tiles; ++j) {
        // Refill the stage read in iteration j - 1 (free after that iteration's closing barrier).
        const int next = j + STAGES - 1;
        if (next < n_tiles) {
            const int st = next % STAGES;
            load_kv_tile<D, BN, NT>(sk + st * BN * D, sv + st * BN * D, kc, vc, tables, kv_start, block_size,
                                    p_begin + next * BN, p_end, kv_stride, kv_head);
        }
        cp_async_commit();
        cp_async_wait<STAGES - 1>();  // tile j landed
        __syncthreads();
        const int st = j % STAGES;
        float s[2][4];
        qk_mma<DT, D, 1>(qf, s, sk + st * BN * D, warp * 16, lane);
        const int key0 = p_begin + j * BN + warp * 16;
#pragma unroll
        for (int jj = 0; jj < 2; ++jj)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + jj * 8 + 2 * (lane & 3) + (e & 1);
                s[jj][e] = key < p_end ? s[jj][e] * scale_log2 : NEG_INF;
            }
        online_softmax(s, acc, m, l);
        pv_mma<DT, D, 1>(s, acc, sv + st * BN * D, warp * 16, lane);
        __syncthreads();
    }
    cp_async_wait<0>();
    __syncthreads();

    // Merge the 4 warps: each writes m, l and its f32 o for the group's rows into the (now idle) ring.
    float* s_m = reinterpret_cast<float*>(smem_raw);  // [4][16]
    float* s_l = s_m + 4 * 16;                         // [4][16]
    float* s_o = s_l + 4 * 16;                         // [4][16][D]
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int row = (lane >> 2) + hr * 8;
        const float total = quad_sum(l[hr]);
        if ((lane & 3) == 0) {
            s_m[warp * 16 + row] = m[hr];
            s_l[warp * 16 + row] = total;
        }
#pragma unroll
        for (int jj = 0; jj < D / 8; ++jj) {
            float* dst = s_o + (warp * 16 + row) * D + jj * 8 + 2 * (lane & 3);
            dst[0] = acc[jj][2 * hr];
            dst[1] = acc[jj][2 * hr + 1];
        }
    }
    __syncthreads();
    for (int i = tid; i < group * D; i += NT) {
        const int row = i / D, col = i % D;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < 4; ++w) mx = fmaxf(mx, s_m[w * 16 + row]);
        float lsum = 0.0f, osum = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const float mw = s_m[w * 16 + row];
            const float f = mw == NEG_INF ? 0.0f : exp2f(mw - mx);  // a warp with no key contributes 0
            lsum += f * s_l[w * 16 + row];
            osum += f * s_o[(w * 16 + row) * D + col];
        }
        const int head = kv_head * group + row;
        const float val = osum / lsum;
        if (splits == 1) {
            o[((size_t)q_row * h + head) * D + col] = typename DT::T(val);
        } else {
            const size_t part = ((size_t)seq * h + head) * splits + split;
            part_o[part * D + col] = val;
            if (col == 0) part_lse[part] = mx + log2f(lsum);
        }
    }
    if (splits == 1) return;

    // The last CTA of this (sequence, KV head) to arrive combines its group's partials (read through L2:
    // other CTAs wrote them).
    unsigned* s_last = reinterpret_cast<unsigned*>(s_o + 4 * 16 * D);
    const int n = (kv_len + chunk - 1) / chunk;
    unsigned* counter = counters + (size_t)seq * h_kv + kv_head;
    __threadfence();
    __syncthreads();
    if (tid == 0) *s_last = atomicAdd(counter, 1u) == (unsigned)(n - 1) ? 1u : 0u;
    __syncthreads();
    if (*s_last == 0u) return;
    __threadfence();
    for (int i = tid; i < group * D; i += NT) {
        const int row = i / D, col = i % D;
        const size_t base = ((size_t)seq * h + kv_head * group + row) * splits;
        float mx = NEG_INF;
        for (int sp = 0; sp < n; ++sp) mx = fmaxf(mx, __ldcg(part_lse + base + sp));
        float wsum = 0.0f, osum = 0.0f;
        for (int sp = 0; sp < n; ++sp) {
            const float w = exp2f(__ldcg(part_lse + base + sp) - mx);
            wsum += w;
            osum += w * __ldcg(part_o + (base + sp) * D + col);
        }
        o[((size_t)q_row * h + kv_head * group + row) * D + col] = T(osum / wsum);
    }
    if (tid == 0) *counter = 0u;
}

#define INSTANTIATE_D(name, DT, D)                                                                           \
    extern "C" __global__ void __launch_bounds__(flash::NT, 2)                                               \
        flash_fwd_##name##_d##D(const DT::T* q, const DT::T* k, const DT::T* v, DT::T* o, const int* meta,   \
                                const int* tables, int b, int block_size, int h, int h_kv, int causal,       \
                                float scale_log2) {                                                          \
        flash_fwd<DT, D, 1>(q, k, v, o, meta, tables, b, block_size, h, h_kv, causal, scale_log2);           \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(flash::NT, 2)                                               \
        flash_fwd_##name##_d##D##_r128(const DT::T* q, const DT::T* k, const DT::T* v, DT::T* o,             \
                                       const int* meta, const int* tables, int b, int block_size, int h,     \
                                       int h_kv, int causal, float scale_log2) {                             \
        flash_fwd<DT, D, 2>(q, k, v, o, meta, tables, b, block_size, h, h_kv, causal, scale_log2);           \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(decode::NT, 2)                                              \
        decode_split_##name##_d##D(const DT::T* q, const DT::T* kc, const DT::T* vc, DT::T* o, float* part_o, \
                                   float* part_lse, unsigned* counters, const int* meta, const int* tables,  \
                                   int b, int block_size, int h, int h_kv, int chunk, float scale_log2) {    \
        decode_split<DT, D>(q, kc, vc, o, part_o, part_lse, counters, meta, tables, b, block_size, h, h_kv,  \
                            chunk, scale_log2);                                                              \
    }

#define INSTANTIATE(name, DT)   \
    INSTANTIATE_D(name, DT, 64) \
    INSTANTIATE_D(name, DT, 128)

INSTANTIATE(f16, F16)
INSTANTIATE(bf16, BF16)
