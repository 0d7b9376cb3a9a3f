// AWQ W4A16 linear on the GPU: y[M, N] = x[M, K] · dequant(W)ᵀ (+ bias[N]), x/y/bias f16 or bf16, f32
// accumulation. Host side, plan and path choice: src/ops/awq/cuda.rs. Built for compute_80 (runs on sm_80..sm_90).
//
// Formula. W[n][k] = (q - z) · s with the 4-bit code q of (k, n), the zero z and scale s of (k / G, n).
// Every kernel forms the weight exactly as the plain low-precision dequantization does: (q - z) is exact in
// f16/bf16, and one rounded multiply by s gives round_T((q - z) · s), bit-identical to rounding the CPU
// reference's f32 value to T. Products and sums are f32 (tensor cores: mma f32 accumulate; or cuBLAS with
// CUBLAS_COMPUTE_32F), one rounding to T at the end, after the bias is added in f32.
//
// int4 -> T without conversion instructions: OR-ing a nibble into the mantissa of MAGIC (f16 0x6400 = 1024,
// bf16 0x4300 = 128, both with a unit ulp) gives MAGIC + q; fma(that, 1, -(MAGIC + z)) = q - z exactly; then
// fma(q - z, s, -0) = round((q - z)·s) (ptxas emits HADD2 + HMUL2). Two codes per 32-bit register (bits 0-3 and 16-19), so a packed word
// yields four T pairs via shifts by 0/4/8/12 and the mask 0x000f000f.
//
// Repacked layout (written once at load by the CPU, src/ops/awq/cuda.rs `repack`, tested there against
// the CPU dequantization). N is padded to NP = 64·NS (padding: code 0, zero 0, scale 0, so it adds 0).
// A "strip" is 64 output columns = 8 tiles of 8 columns (the n8 of mma.m16n8k16). A "chunk" is 16 values
// of k (one mma k-step). Lane l = 4·g + t of a warp (g = l / 4, t = l % 4) owns, for every chunk, the
// columns strip·64 + 8j + g (j = 0..7) and the rows kc·16 + 4t + {0,1,2,3}: mma's B fragment of lane l
// holds k-rows {2t, 2t+1} and {2t+8, 2t+9} of column g; we relabel the chunk's k so that those logical
// rows are the physical rows 4t..4t+3 (the sum over k is the same when A uses the same relabeling, so the
// lane reads its A fragment as one 8-byte load per row: a0|a2 = x[row][k0+4t .. k0+4t+4)).
//  - qw   u32 [NS][K/16][32 lanes][4 words]: one 16-byte load per lane per chunk. Word w holds tiles
//         2w and 2w+1; nibble i (bits 4i..4i+3) = tile 2w + ((i%4)/2), k = 4t + 2·((i%4)%2) + i/4, i.e.
//         nibbles (0,4) = tile 2w rows (4t, 4t+1) = b0; (1,5) = tile 2w rows (4t+2, 4t+3) = b1;
//         (2,6) and (3,7) the same for tile 2w+1.
//  - sc   T   [NS][K/G][8 g][8 j]: scale of column strip·64 + 8j + g; one 16-byte load per lane per group.
//  - zr   u32 [NS][K/G][8 g]: nibble j = zero of column strip·64 + 8j + g.
// Bytes: N·K/2 + N·K/G·2.5, the same as the AWQ tensors.
// Constraints (checked on the host): G % 16 == 0, K % G == 0, N % 8 == 0, M ≤ 64 for the streaming
// kernels (≤ 256 with MT = 4), pointers to x/y/bias 8-byte aligned.
//
// Kernels.
//  - awq_stream_<T>_mt<MT>_sw<SW>_cb<CB> (decode and small M, M ≤ 16·MT, MT ∈ {1,2,4}; with MT = 4 also
//    up to 256 rows, in row blocks of 64 placed side by side in grid.x so that they share the weights
//    through L2, `row_block`): memory-bound
//    weight streaming on tensor cores. CB = chunks loaded per batch (the largest of 8/4/2/1 dividing G/16;
//    at most 2 for MT = 4, whose 128 accumulators leave no registers for more). Block = 8 warps = SW
//    strips × KW = 8/SW k-lanes; grid = (ceil(NS/SW) column blocks × row blocks, S2 k-splits). Split s covers groups [s·gpw·KW, (s+1)·gpw·KW); k-lane kl of it takes the
//    groups s·gpw·KW + kl + KW·i. Per batch a warp issues CB independent 16-byte weight loads
//    (ld.global.nc.L1::no_allocate: read once) before using them, loads its A fragments through L1 (the
//    SW warps of a k-lane read the same x; rows ≥ M point at a zero row so no load is predicated),
//    dequantizes in registers and issues MT·8 mma per chunk. The KW k-lanes are summed through shared memory in a fixed tree; with S2 > 1 each block
//    writes its f32 partial tile (rows < M) to a scratch buffer, and the last block of a column block to
//    arrive (an atomic counter per column block, threadfence pattern) sums the S2 partials in split order,
//    adds the bias, rounds once and writes y, then resets its counter to 0 for the next launch. So y is
//    written by one launch, and the result is deterministic (fixed summation order).
//  - awq_stagger_<T>_mt<MT>_sw<SW>_cb<CB>: awq_stream with the odd warps of each block starting STAGGER_NS
//    late, so that half the warps load while the other half compute (stream_kernel); same bits.
//  - awq_swap_<T>_nt<NT>_sw<SW>_cb<CB> (M ≤ 8·NT, NT ∈ {1, 2}): the same kernel, plan and finish with the
//    mma's operands swapped (ColTile): the weights are the A operand (64 columns = 4 row-tiles of 16), the
//    tokens the B operand (n8 tiles of 8), so one token tile runs 4 mma per chunk, not 8, and holds 16
//    accumulators, not 32 (80 registers, three blocks per SM). awq_swapgs_*: the same with each group's
//    scale applied to its f32 sums after the mma (no HMUL2 per weight pair). awq_swapb*_* keep each batch's
//    loads all in flight (BATCH), awq_swapdb*_* the next batch in flight during the math (stream_kernel_db).
//  - awq_streamb_<T>_mt1_sw<SW>_cb<CB>: awq_stream with BATCH (ptxas otherwise issues 3-4 of the batch's
//    loads before the math and the rest during it); same bits. The autotuner weighs all of them.
//  - awq_pipe_<T>_mt<MT>_sw<SW>_st<ST>: the same kernel (same plan, same warp <-> group assignment, same
//    order of mma, same finish: bit-identical y) with the weights, scales and zeros of whole groups moved by
//    a per-warp cp.async ring of ST stages in shared memory, so a warp has ST - 1 groups (4 KB each at
//    G = 128) in flight while it multiplies the oldest, without holding registers for them.
//  - awq_dequant_<T>[_lanes4|_tiles1|_tiles2]: repacked weights -> dense W [N, K] (T, row-major), the input of
//    a cuBLAS GEMM for large M (x · Wᵀ, the TN GEMM torch's F.linear runs). Four ways to move the same bits
//    (one or four lane-chunks per thread, or a shared-memory tile written as whole rows); the host times them
//    on the GPU at hand and keeps the fastest (src/ops/awq/tune.rs).
//
// Cost (MT = 1, G = 128, sm_90 SASS): ~94 instructions per warp per chunk (8 HMMA, 16 HADD2 + 16 HMUL2,
// 12 SHF + 16 LOP3 for the nibbles, 1 LDG.128 + 2 LDG.64, the rest addressing), 127 registers, no spills,
// 2 blocks (16 warps) per SM. At the H200's ~4.5 TB/s an SM must retire a warp's 4 KB group every ~220
// cycles; the group costs ~750 instructions = ~190 issue cycles, so the kernel should stay memory-bound but
// with little slack. ptxas interleaves some of the 8 weight loads with the math under the 128-register cap;
// a cp.async shared-memory pipeline would keep more bytes in flight if the bench shows a shortfall.
//
// Verified by awq-kernels/tests/awq_gpu.rs: awq_dequant output equals the CPU dequantization rounded to T
// bit for bit (which also pins this layout's nibble order as the kernel reads it), and awq_linear (both
// paths, forced and dispatched) against the CPU reference awq_linear on random shapes, codes (zeros 0 and
// 15 included), f16 and bf16, with and without bias, every output poisoned with NaN first.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned int u32;
typedef unsigned long long u64;

// The block's dynamic shared memory as an array of T (the CPU emulator hands it out by a call).
#ifdef INTERNVL_EMULATE
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu::dynamic_shared())
#else
#define DYNAMIC_SHARED(T, name) extern __shared__ __align__(128) T name[]
#endif

struct F16 {
    typedef __half T;
    static constexpr u32 MAGIC = 0x6400u;     // 1024.0
    static constexpr u32 ONE2 = 0x3c003c00u;  // (1.0, 1.0)
    static __device__ __forceinline__ u32 fma2(u32 a, u32 b, u32 c) {
#ifdef INTERNVL_EMULATE
        return emu::fma2(a, b, c, false);
#else
        u32 d;
        asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
        return d;
#endif
    }
    static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#ifdef INTERNVL_EMULATE
        emu::mma_m16n8k16(c, a, b0, b1, false);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    static __device__ __forceinline__ float to_f32(T v) { return __half2float(v); }
    static __device__ __forceinline__ T round(float v) { return __float2half_rn(v); }
    // The value of 16 bits of T (the low half of `bits`).
    static __device__ __forceinline__ float bits_to_f32(u32 bits) {
        return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
    }
    // Two floats -> one register of two T, `lo` in bits 0..15 (the lower address).
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<u32*>(&h);
    }
};

struct BF16 {
    typedef __nv_bfloat16 T;
    static constexpr u32 MAGIC = 0x4300u;     // 128.0
    static constexpr u32 ONE2 = 0x3f803f80u;  // (1.0, 1.0)
    static __device__ __forceinline__ u32 fma2(u32 a, u32 b, u32 c) {
#ifdef INTERNVL_EMULATE
        return emu::fma2(a, b, c, true);
#else
        u32 d;
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
        return d;
#endif
    }
    static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#ifdef INTERNVL_EMULATE
        emu::mma_m16n8k16(c, a, b0, b1, true);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    static __device__ __forceinline__ float to_f32(T v) { return __bfloat162float(v); }
    static __device__ __forceinline__ T round(float v) { return __float2bfloat16_rn(v); }
    static __device__ __forceinline__ float bits_to_f32(u32 bits) { return __uint_as_float(bits << 16); }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<u32*>(&h);
    }
};

static constexpr u32 NEG_ZERO2 = 0x80008000u;  // (-0, -0) in both f16 and bf16
static constexpr u32 LOW_NIBBLES = 0x000f000fu;

// A 16-byte load of data read once (the weights): not kept in L1, so x stays there.
static __device__ __forceinline__ uint4 ld_stream(const uint4* p) {
#ifdef INTERNVL_EMULATE
    return *p;
#else
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#endif
}

// ld_stream for a batch held in flight by a __syncwarp (stream_kernel's BATCH): a weak load (not .nc),
// which a warp barrier orders, so ptxas cannot sink it below the barrier. ptxas sinks .nc loads past any
// barrier, and left to itself it keeps only 3-4 of a warp's 8 weight loads in flight (sm_90a SASS of
// awq_stream_*: the 4th load issues after the 1st chunk's math), ~1.5 KB a warp.
static __device__ __forceinline__ uint4 ld_stream_ordered(const uint4* p) {
#ifdef INTERNVL_EMULATE
    return *p;
#else
    uint4 v;
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
#endif
}

// Weak 8- and 4-byte loads for the double-buffered kernel's batches (ordered by a warp barrier, as above).
static __device__ __forceinline__ uint2 ld_ordered_u2(const uint2* p) {
#ifdef INTERNVL_EMULATE
    return *p;
#else
    uint2 v;
    asm volatile("ld.global.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
    return v;
#endif
}
static __device__ __forceinline__ u32 ld_ordered_u32(const u32* p) {
#ifdef INTERNVL_EMULATE
    return *p;
#else
    u32 v;
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}
static __device__ __forceinline__ uint4 ld_ordered_u4(const uint4* p) {
#ifdef INTERNVL_EMULATE
    return *p;
#else
    uint4 v;
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
#endif
}

// The calling thread idles about ns nanoseconds (sm_70+; nothing on the CPU emulator, whose threads run
// one at a time).
static __device__ __forceinline__ void nanosleep_ns(unsigned ns) {
#ifdef INTERNVL_EMULATE
    (void)ns;
#else
    __nanosleep(ns);
#endif
}

// The T bits of scale j (0..7) from the 16-byte scale vector of a lane, in both halves of a register.
static __device__ __forceinline__ u32 splat_scale(const uint4& sv, int j) {
    u32 w = (j < 2) ? sv.x : (j < 4) ? sv.y : (j < 6) ? sv.z : sv.w;
    u32 h = (j & 1) ? (w >> 16) : (w & 0xffffu);
    return h * 0x00010001u;
}

// -(MAGIC + z_j) in both halves, z_j = nibble j of the lane's zero word.
template <class D>
static __device__ __forceinline__ u32 neg_zero(u32 zw, int j) {
    u32 h = (D::MAGIC | ((zw >> (4 * j)) & 0xfu)) | 0x8000u;
    return h * 0x00010001u;
}

// q - z (exact in T) for the two codes at bits (sh..sh+3) and (16+sh..16+sh+3) of q.
template <class D>
static __device__ __forceinline__ u32 dq_unscaled(u32 q, int sh, u32 nz) {
    u32 p;
    // p = ((q >> sh) & LOW_NIBBLES) | MAGIC2 in one instruction (lut 0xEA = (a & b) | c).
#ifdef INTERNVL_EMULATE
    p = ((q >> sh) & LOW_NIBBLES) | (D::MAGIC * 0x00010001u);
#else
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(p) : "r"(q >> sh), "n"(LOW_NIBBLES), "n"(D::MAGIC * 0x00010001u));
#endif
    return D::fma2(p, D::ONE2, nz);
}

// (q - z) · s for the two codes at bits (sh..sh+3) and (16+sh..16+sh+3) of q.
template <class D>
static __device__ __forceinline__ u32 dq(u32 q, int sh, u32 nz, u32 s) {
    return D::fma2(dq_unscaled<D>(q, sh, nz), s, NEG_ZERO2);
}

// Row pointers of the A fragments of lane (g, t): rows >= M read a zero row (K zeros), so no load is predicated.
template <class D, int MT>
static __device__ __forceinline__ void a_rows(const typename D::T* (&xr)[MT][2], const typename D::T* x,
                                              const typename D::T* zero_row, int M, int K, int g, int t) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = mt * 16 + g + 8 * h;
            xr[mt][h] = (row < M ? x + (size_t)row * K : zero_row) + 4 * t;
        }
}

// A warp's accumulators zeroed and its A-fragment row pointers set (the start of both streaming kernels).
template <class D, int MT>
static __device__ __forceinline__ void start_tile(float (&acc)[MT][8][4], const typename D::T* (&xr)[MT][2],
                                                  const typename D::T* x, const typename D::T* zero_row, int M,
                                                  int K, int g, int t) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mt][j][r] = 0.0f;
    a_rows<D, MT>(xr, x, zero_row, M, K, g, t);
}

// One chunk (16 values of k at koff) of one strip: the lane's A fragments from x (through L1), its 16-byte
// weight piece q dequantized in registers with the group's scales s2v and -(MAGIC + zero) nz2v, 8·MT mma.
template <class D, int MT>
static __device__ __forceinline__ void chunk_mma(float (&acc)[MT][8][4], const typename D::T* const (&xr)[MT][2],
                                                 int koff, const uint4& q, const u32 (&s2v)[8],
                                                 const u32 (&nz2v)[8]) {
    u32 a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const uint2 v0 = __ldg(reinterpret_cast<const uint2*>(xr[mt][0] + koff));
        const uint2 v1 = __ldg(reinterpret_cast<const uint2*>(xr[mt][1] + koff));
        a[mt][0] = v0.x;
        a[mt][1] = v1.x;
        a[mt][2] = v0.y;
        a[mt][3] = v1.y;
    }
    const u32 qq[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int j0 = 2 * w, j1 = 2 * w + 1;
        const u32 b00 = dq<D>(qq[w], 0, nz2v[j0], s2v[j0]);
        const u32 b01 = dq<D>(qq[w], 4, nz2v[j0], s2v[j0]);
        const u32 b10 = dq<D>(qq[w], 8, nz2v[j1], s2v[j1]);
        const u32 b11 = dq<D>(qq[w], 12, nz2v[j1], s2v[j1]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            D::mma(acc[mt][j0], a[mt], b00, b01);
            D::mma(acc[mt][j1], a[mt], b10, b11);
        }
    }
}

// The group's scale and -(MAGIC + zero) pairs of the lane's 8 columns, from its scale vector and zero word.
template <class D>
static __device__ __forceinline__ void group_constants(const uint4& sv, u32 zw, u32 (&s2v)[8], u32 (&nz2v)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        s2v[j] = splat_scale(sv, j);
        nz2v[j] = neg_zero<D>(zw, j);
    }
}

// Where a thread of a streaming kernel's block sits: its lane (g = lane / 4, t = lane % 4 in the mma
// fragments), its warp, that warp's strip s of the block and k-lane kl, and the strip's global index.
struct Place {
    int lane, warp, s, kl, g, t, strip;
};
template <int SW>
static __device__ __forceinline__ Place place(int colblock) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    return Place{lane, warp, warp % SW, warp / SW, lane >> 2, lane & 3, colblock * SW + warp % SW};
}

// The rows and the column block of a streaming kernel's block. A block takes at most 64 rows (4 m-tiles);
// more rows (M > 64) are cut into RB row blocks of 64 that sit side by side in grid.x (x = column block · RB +
// row block), so the RB blocks that stream the same weights run together and share them through L2. Each row
// block has its own region of split-K partials (a row stride of min(M, 64)) and its own counters. With
// M ≤ 64: RB = 1, the column block is blockIdx.x and nothing moves; only the 4-m-tile kernels take M > 64
// (the host's plan), so the others skip the arithmetic (and keep their registers).
struct RowBlock {
    int colblock, rows;
    size_t row0, partials_at, counters_at;
};
template <int MT, int SW>
static __device__ __forceinline__ RowBlock row_block(int M, int S2) {
    if constexpr (MT < 4) return RowBlock{(int)blockIdx.x, M, 0, 0, 0};
    const int RB = (M + 63) / 64;
    const int rb = (int)blockIdx.x % RB, cols = (int)gridDim.x / RB;
    return RowBlock{(int)blockIdx.x / RB, min(64, M - rb * 64), (size_t)rb * 64,
                    (size_t)rb * cols * S2 * min(M, 64) * (SW * 64), (size_t)rb * cols};
}

// A streaming kernel's start: x, y, the split-K partials and counters moved to this block's row block, M cut
// to its rows; returns where the thread sits.
template <int MT, int SW, class T>
static __device__ __forceinline__ Place enter_row_block(const T* __restrict__& x, T* __restrict__& y,
                                                        float* __restrict__& partials, u32* __restrict__& counters,
                                                        int& M, int N, int K, int S2) {
    const RowBlock rows = row_block<MT, SW>(M, S2);
    x += rows.row0 * K;
    y += rows.row0 * N;
    if (S2 > 1) {
        partials += rows.partials_at;
        counters += rows.counters_at;
    }
    M = rows.rows;
    return place<SW>(rows.colblock);
}

// Sums the KW k-lanes of each strip into k-lane 0: a fixed tree through shared memory, PASSES passes of
// COUNT fragment floats per lane (frag(p, i) is float i of pass p). Buffer b holds one warp's fragments,
// element i·32 + lane (conflict-free); `red` holds 4 warps' (4 · 1024 floats).
template <int KW, int SW, int PASSES, int COUNT, class Frag>
static __device__ __forceinline__ void klane_sum(Frag frag, float (*red)[8 * 4 * 32], int kl, int s, int lane) {
    static_assert(COUNT <= 32, "a pass holds at most 32 floats per lane");
    if (KW == 1) return;
#pragma unroll
    for (int p = 0; p < PASSES; ++p) {
#pragma unroll
        for (int half = KW / 2; half >= 1; half >>= 1) {
            if (kl >= half && kl < 2 * half) {
                float* b = red[(kl - half) * SW + s];
#pragma unroll
                for (int i = 0; i < COUNT; ++i) b[i * 32 + lane] = frag(p, i);
            }
            __syncthreads();
            if (kl < half) {
                const float* b = red[kl * SW + s];
#pragma unroll
                for (int i = 0; i < COUNT; ++i) frag(p, i) += b[i * 32 + lane];
            }
            __syncthreads();
        }
    }
}

// Split-K, after k-lane 0 of every warp has stored its strip's partial tile ([M][SW·64] f32 of this column
// block and split, `part`): the last block of the column block to arrive (an atomic counter per column block)
// sums the S2 partials in split order, adds the bias, rounds once, writes y and resets its counter. It loads
// up to INFLIGHT partials (4 registers each) before adding them; the order of the sum does not depend on it.
template <class D, int SW, int INFLIGHT = 16>
static __device__ __forceinline__ void sum_partials_last(u32* s_last, const typename D::T* __restrict__ bias,
                                                         typename D::T* __restrict__ y,
                                                         const float* __restrict__ partials,
                                                         u32* __restrict__ counters, int M, int N, int S2,
                                                         int colblock) {
    constexpr int WIDTH = SW * 64;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *s_last = (atomicAdd(counters + colblock, 1u) == (u32)(S2 - 1)) ? 1u : 0u;
    __syncthreads();
    if (*s_last == 0u) return;
    __threadfence();

    // The last block of this column block: y = Σ_split partial (in split order) + bias.
    const float* base = partials + (size_t)colblock * S2 * (size_t)M * WIDTH;
    const int q4 = WIDTH / 4;
    const int total4 = M * q4;
    for (int e = threadIdx.x; e < total4; e += blockDim.x) {
        const int row = e / q4;
        const int c4 = (e % q4) * 4;
        const int col = colblock * WIDTH + c4;
        if (col >= N) continue;  // N % 8 == 0 and c4 % 4 == 0: col < N means col + 3 < N
        float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        // Up to 16 splits (the host plan) in batches of INFLIGHT loads; more one at a time (kept for safety).
#pragma unroll
        for (int b0 = 0; b0 < 16; b0 += INFLIGHT) {
            if (b0 >= S2) break;
            float4 v[INFLIGHT];
#pragma unroll
            for (int i = 0; i < INFLIGHT; ++i)
                if (b0 + i < S2)
                    v[i] = __ldcg(reinterpret_cast<const float4*>(base + ((size_t)(b0 + i) * M + row) * WIDTH + c4));
#pragma unroll
            for (int i = 0; i < INFLIGHT; ++i)
                if (b0 + i < S2) {
                    sum.x += v[i].x;
                    sum.y += v[i].y;
                    sum.z += v[i].z;
                    sum.w += v[i].w;
                }
        }
        for (int sp = 16; sp < S2; ++sp) {
            const float4 u = __ldcg(reinterpret_cast<const float4*>(base + ((size_t)sp * M + row) * WIDTH + c4));
            sum.x += u.x;
            sum.y += u.y;
            sum.z += u.z;
            sum.w += u.w;
        }
        if (bias != nullptr) {
            sum.x += D::to_f32(bias[col]);
            sum.y += D::to_f32(bias[col + 1]);
            sum.z += D::to_f32(bias[col + 2]);
            sum.w += D::to_f32(bias[col + 3]);
        }
        *reinterpret_cast<uint2*>(y + (size_t)row * N + col) = make_uint2(D::pack(sum.x, sum.y), D::pack(sum.z, sum.w));
    }
    if (threadIdx.x == 0) counters[colblock] = 0u;
}

// This block's split-K partial tile [M][SW·64] f32 (of its column block and split, in the row block's region).
template <int SW>
static __device__ __forceinline__ float* partial_tile(float* __restrict__ partials, int colblock, int M, int S2) {
    return partials + ((size_t)colblock * S2 + blockIdx.y) * (size_t)M * (SW * 64);
}

// After the main loop of a streaming kernel: the KW k-lanes of each strip are summed, then y is written
// (S2 == 1) or the block's partial tile is stored and the last block of the column block sums the S2
// partials in split order. `red` holds 4 warps' fragments (4 · 1024 floats); `s_last` one shared word.
template <class D, int MT, int SW>
static __device__ __forceinline__ void finish(float (&acc)[MT][8][4], float (*red)[8 * 4 * 32], u32* s_last,
                                              const typename D::T* __restrict__ bias, typename D::T* __restrict__ y,
                                              float* __restrict__ partials, u32* __restrict__ counters, int M,
                                              int N, int S2, const Place& at, bool strip_ok) {
    constexpr int KW = 8 / SW;
    const auto [lane, warp, s, kl, g, t, strip] = at;
    (void)warp;
    const int colblock = strip / SW;  // strip = colblock · SW + s, s < SW
    // One m-tile per pass, float j·4 + r of it = acc[mt][j][r].
    klane_sum<KW, SW, MT, 32>([&](int p, int i) -> float& { return acc[p][i / 4][i % 4]; }, red, kl, s, lane);

    if (S2 == 1) {
        // One block per column block: k-lane 0 writes y straight from its fragments (c0,c1: row g, columns
        // 2t, 2t+1 of tile j; c2,c3: row g+8).
        if (kl == 0 && strip_ok) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int col = strip * 64 + 8 * j + 2 * t;
                if (col < N) {
                    float b0 = 0.0f, b1 = 0.0f;
                    if (bias != nullptr) {
                        b0 = D::to_f32(bias[col]);
                        b1 = D::to_f32(bias[col + 1]);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            const int row = mt * 16 + g + 8 * h;
                            if (row < M)
                                *reinterpret_cast<u32*>(y + (size_t)row * N + col) =
                                    D::pack(acc[mt][j][2 * h] + b0, acc[mt][j][2 * h + 1] + b1);
                        }
                }
            }
        }
        return;
    }

    constexpr int WIDTH = SW * 64;
    float* part = partial_tile<SW>(partials, colblock, M, S2);
    if (kl == 0) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = mt * 16 + g + 8 * h;
                    if (row < M)
                        *reinterpret_cast<float2*>(part + (size_t)row * WIDTH + s * 64 + 8 * j + 2 * t) =
                            make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
                }
    }
    sum_partials_last<D, SW>(s_last, bias, y, partials, counters, M, N, S2, colblock);
}

// A warp's accumulator tile with x as mma's A operand (row-major, 16 rows) and the weights as B: MT m-tiles of
// 16 rows by the strip's 64 columns (8 n8-tiles). The register, staggered and pipelined kernels use it.
template <class D, int MT_>
struct RowTile {
    static constexpr int MT = MT_;  // m-tiles (the row-block arithmetic: only MT = 4 takes M > 64)
    float acc[MT][8][4];
    const typename D::T* xr[MT][2];
    __device__ __forceinline__ void start(const typename D::T* x, const typename D::T* zero_row, int M, int K, int g,
                                          int t) {
        start_tile<D, MT>(acc, xr, x, zero_row, M, K, g, t);
    }
    __device__ __forceinline__ void chunk(int koff, const uint4& q, const u32 (&s2v)[8], const u32 (&nz2v)[8]) {
        chunk_mma<D, MT>(acc, xr, koff, q, s2v, nz2v);
    }
    __device__ __forceinline__ void end_group(const uint4&) {}
    template <int SW>
    __device__ __forceinline__ void finish_block(float (*red)[8 * 4 * 32], u32* s_last,
                                                 const typename D::T* __restrict__ bias, typename D::T* __restrict__ y,
                                                 float* __restrict__ partials, u32* __restrict__ counters, int M, int N,
                                                 int S2, const Place& at, bool strip_ok) {
        finish<D, MT, SW>(acc, red, s_last, bias, y, partials, counters, M, N, S2, at, strip_ok);
    }
};

// The swapped tile: the weights as mma's A operand (the strip's 64 columns as 4 row-tiles of 16) and x as B
// (NT n8-tiles of 8 tokens), for M ≤ 8·NT. The repacked layout serves it unchanged: word w of a lane's
// 16-byte piece holds columns 8·2w + g and 8·(2w+1) + g, i.e. rows g and g + 8 of A tile w, at the same
// relabeled k rows (4t, 4t+1 | 4t+2, 4t+3) that B used, so a0..a3 are the four dq pairs of the word in the
// order (0, 8, 4, 12). A token's x fragment (b0 | b1) is one 8-byte load. Against RowTile at M ≤ 8: half the
// mma (4 per chunk, not 8), half the x loads and half the accumulators (16 floats, not 32); the dequantized
// weights are the same, the products and sums the same in exact arithmetic, so the outputs agree with the
// CPU reference as closely (the tensor cores' internal summation order may differ in the last bit).
// C fragment: acc[nt][w][2h + e] = column strip·64 + 16w + 8h + g, token nt·8 + 2t + e.
//
// GS (group scale): the mma take q - z (exact small integers in T) into a per-group accumulator, and the
// group's scale multiplies that sum in f32 at the end of the group (a lane's accumulator rows are its own
// columns 8j + g, whose scales it holds). That drops the 16 HMUL2 of every chunk (128 a group) for 16 FFMA
// and 8 conversions a group; and the weights are no longer rounded to T before the products, so the result
// is closer to the exact one than the reference's (which rounds (q - z)·s to T first).
template <class D, int NT, bool GS>
struct ColTile {
    static constexpr int MT = 1;  // at most 16 rows: one row block
    float acc[NT][4][4];
    float gacc[GS ? NT : 1][4][4];  // the group's unscaled sums (GS only)
    const typename D::T* xr[NT];
    __device__ __forceinline__ void start(const typename D::T* x, const typename D::T* zero_row, int M, int K, int g,
                                          int t) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[nt][w][r] = 0.0f;
            const int row = nt * 8 + g;
            xr[nt] = (row < M ? x + (size_t)row * K : zero_row) + 4 * t;
        }
        clear_group();
    }
    __device__ __forceinline__ void clear_group() {
#pragma unroll
        for (int nt = 0; nt < (GS ? NT : 1); ++nt)
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int r = 0; r < 4; ++r) gacc[nt][w][r] = 0.0f;
    }
    // The B fragments (b0 | b1) of the NT token tiles for the chunk at koff. ORDERED: weak loads, which a
    // warp barrier after them keeps in flight (the double-buffered kernel loads them with the weights).
    template <bool ORDERED = false>
    __device__ __forceinline__ void load_x(int koff, uint2 (&b)[NT]) const {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint2* p = reinterpret_cast<const uint2*>(xr[nt] + koff);
            b[nt] = ORDERED ? ld_ordered_u2(p) : __ldg(p);
        }
    }
    __device__ __forceinline__ void chunk(int koff, const uint4& q, const u32 (&s2v)[8], const u32 (&nz2v)[8]) {
        uint2 b[NT];
        load_x(koff, b);
        chunk_x(b, q, s2v, nz2v);
    }
    // One chunk's mma from its B fragments and its weight piece.
    __device__ __forceinline__ void chunk_x(const uint2 (&b)[NT], const uint4& q, const u32 (&s2v)[8],
                                            const u32 (&nz2v)[8]) {
        const u32 qq[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int j0 = 2 * w, j1 = 2 * w + 1;
            if constexpr (GS) {
                const u32 a[4] = {dq_unscaled<D>(qq[w], 0, nz2v[j0]), dq_unscaled<D>(qq[w], 8, nz2v[j1]),
                                  dq_unscaled<D>(qq[w], 4, nz2v[j0]), dq_unscaled<D>(qq[w], 12, nz2v[j1])};
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) D::mma(gacc[nt][w], a, b[nt].x, b[nt].y);
            } else {
                const u32 a[4] = {dq<D>(qq[w], 0, nz2v[j0], s2v[j0]), dq<D>(qq[w], 8, nz2v[j1], s2v[j1]),
                                  dq<D>(qq[w], 4, nz2v[j0], s2v[j0]), dq<D>(qq[w], 12, nz2v[j1], s2v[j1])};
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) D::mma(acc[nt][w], a, b[nt].x, b[nt].y);
            }
        }
    }
    // GS: acc += scale · (the group's sum), one rounding per element, then the group sums restart at 0.
    __device__ __forceinline__ void end_group(const uint4& sv) {
        if constexpr (GS) {
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float sc = D::bits_to_f32(splat_scale(sv, 2 * w + h));
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e)
                            acc[nt][w][2 * h + e] = __fmaf_rn(sc, gacc[nt][w][2 * h + e], acc[nt][w][2 * h + e]);
                }
            clear_group();
        }
    }
    template <int SW>
    __device__ __forceinline__ void finish_block(float (*red)[8 * 4 * 32], u32* s_last,
                                                 const typename D::T* __restrict__ bias, typename D::T* __restrict__ y,
                                                 float* __restrict__ partials, u32* __restrict__ counters, int M, int N,
                                                 int S2, const Place& at, bool strip_ok) {
        constexpr int KW = 8 / SW;
        const int lane = at.lane, s = at.s, kl = at.kl, g = at.g, t = at.t, strip = at.strip;
        const int colblock = strip / SW;
        klane_sum<KW, SW, 1, NT * 16>([&](int, int i) -> float& { return acc[i / 16][(i / 4) % 4][i % 4]; }, red,
                                      kl, s, lane);
        if (S2 == 1) {
            if (kl == 0 && strip_ok) {
#pragma unroll
                for (int w = 0; w < 4; ++w)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int col = strip * 64 + 16 * w + 8 * h + g;
                        if (col >= N) continue;
                        const float b = bias != nullptr ? D::to_f32(bias[col]) : 0.0f;
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                            for (int e = 0; e < 2; ++e) {
                                const int row = nt * 8 + 2 * t + e;
                                if (row < M) y[(size_t)row * N + col] = D::round(acc[nt][w][2 * h + e] + b);
                            }
                    }
            }
            return;
        }
        constexpr int WIDTH = SW * 64;
        float* part = partial_tile<SW>(partials, colblock, M, S2);
        if (kl == 0) {
#pragma unroll
            for (int w = 0; w < 4; ++w)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int row = nt * 8 + 2 * t + e;
                            if (row < M) part[(size_t)row * WIDTH + s * 64 + 16 * w + 8 * h + g] = acc[nt][w][2 * h + e];
                        }
        }
        // 8 partials in flight, not 16: the 3-blocks-per-SM register budget (80) holds them without spills.
        sum_partials_last<D, SW, 8>(s_last, bias, y, partials, counters, M, N, S2, colblock);
    }
};

// Half a block's warps (the odd ones) idle about this long before their first load in awq_stagger_*.
constexpr unsigned STAGGER_NS = 1500;

// The register streaming kernel for a warp tile (RowTile: awq_stream_*, awq_stagger_*; ColTile: awq_swap_*).
// STAGGER: the odd warps start STAGGER_NS late. Every warp of a wave otherwise starts together, loads its
// group, waits, then computes with nothing in flight, so the SM's loads and its math take turns (the H100
// profile: 45-50% of DRAM bandwidth at 8192x8192). Late warps load while the others compute, and the two
// halves then stay out of phase. Same arithmetic: bit-identical to STAGGER = false.
// BATCH: the CB weight loads of a batch are all issued before its math starts (ld_stream_ordered, then a
// __syncwarp that ptxas may not move them past): 4 KB a warp in flight at CB = 8 instead of ~1.5 KB. Same
// arithmetic: bit-identical to BATCH = false.
template <class D, class Tile, int SW, int CB, bool STAGGER, bool BATCH = false>
static __device__ __forceinline__ void stream_kernel(
    const typename D::T* __restrict__ x, const typename D::T* __restrict__ zero_row, const uint4* __restrict__ qw, const uint4* __restrict__ sc,
    const u32* __restrict__ zr, const typename D::T* __restrict__ bias, typename D::T* __restrict__ y,
    float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K, int NS, int G, int gpw,
    int S2) {
    constexpr int KW = 8 / SW;
    const Place at = enter_row_block<Tile::MT, SW>(x, y, partials, counters, M, N, K, S2);
    const auto [lane, warp, s, kl, g, t, strip] = at;
    (void)s;
    const bool strip_ok = strip < NS;
    const int NG = K / G;
    const int KC = K / 16;
    const int cpg = G / 16;

    Tile tile;
    tile.start(x, zero_row, M, K, g, t);

    if (strip_ok) {
        if (STAGGER && (warp & 1)) nanosleep_ns(STAGGER_NS);
        const int gbeg = blockIdx.y * gpw * KW;
        for (int i = 0; i < gpw; ++i) {
            const int grp = gbeg + kl + KW * i;
            if (grp >= NG) break;
            const size_t sidx = ((size_t)strip * NG + grp) * 8 + g;
            u32 s2v[8], nz2v[8];
            const uint4 sv = __ldg(sc + sidx);
            group_constants<D>(sv, __ldg(zr + sidx), s2v, nz2v);
            // cpg is a multiple of CB (the host picks CB), so every batch is full.
            for (int cb = 0; cb < cpg; cb += CB) {
                const int kc = grp * cpg + cb;
                const uint4* wp = qw + ((size_t)strip * KC + kc) * 32 + lane;
                uint4 q[CB];
#pragma unroll
                for (int c = 0; c < CB; ++c) q[c] = BATCH ? ld_stream_ordered(wp + c * 32) : ld_stream(wp + c * 32);
                if (BATCH) __syncwarp();
#pragma unroll
                for (int c = 0; c < CB; ++c) tile.chunk((kc + c) * 16, q[c], s2v, nz2v);
            }
            tile.end_group(sv);
        }
    }
    __shared__ float red[4][8 * 4 * 32];
    __shared__ u32 s_last;
    tile.template finish_block<SW>(red, &s_last, bias, y, partials, counters, M, N, S2, at, strip_ok);
}

// What the double-buffered kernel loads for one batch of HB chunks of a group: the lane's weight pieces, the
// token tiles' B fragments of those chunks, and the group's scale vector and zero word (the second batch of a
// group loads them again: two small L1/L2 hits instead of registers held across batches).
template <int HB, int NT>
struct DbBatch {
    uint4 q[HB];
    uint2 x[HB][NT];
    uint4 sv;
    u32 zw;
};

// The swapped-tile kernel double-buffered: a warp's groups cut into batches of HB chunks, and batch b + 1's
// loads (weights, x fragments, scales and zeros: weak loads, then a __syncwarp that keeps them before the
// math) issued before batch b's math, so every warp keeps a batch in flight while it computes. The loads of a
// batch are consumed one loop turn after they are issued (the copy nxt -> cur is where ptxas waits for them),
// and the math issues no load of its own, so no wait of the math covers the batch in flight (the failed
// register double buffer waited on x loads that shared a scoreboard with the next batch's weights). Same
// plan, group order and finish as stream_kernel, so the same bits as awq_swap_* (GS = false) or
// awq_swapgs_* (GS = true) with the same plan.
template <class D, int NT, bool GS, int SW, int HB>
static __device__ __forceinline__ void stream_kernel_db(
    const typename D::T* __restrict__ x, const typename D::T* __restrict__ zero_row, const uint4* __restrict__ qw,
    const uint4* __restrict__ sc, const u32* __restrict__ zr, const typename D::T* __restrict__ bias,
    typename D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,
    int NS, int G, int gpw, int S2) {
    typedef ColTile<D, NT, GS> Tile;
    constexpr int KW = 8 / SW;
    const Place at = enter_row_block<Tile::MT, SW>(x, y, partials, counters, M, N, K, S2);
    const int lane = at.lane, kl = at.kl, g = at.g, strip = at.strip;
    const bool strip_ok = strip < NS;
    const int NG = K / G;
    const int KC = K / 16;
    const int cpg = G / 16;
    const int bpg = cpg / HB;  // batches per group (the host picks HB dividing cpg)

    Tile tile;
    tile.start(x, zero_row, M, K, g, at.t);

    if (strip_ok) {
        const int first = blockIdx.y * gpw * KW + kl;  // the warp's groups: first + KW·i, i < ng
        const int ng = first < NG ? min(gpw, (NG - 1 - first) / KW + 1) : 0;
        const int nb = ng * bpg;
        // `after` is 0 at run time but computed from the previous batch's data, so these loads cannot issue
        // before that batch has landed (see below).
        auto load = [&](int b, DbBatch<HB, NT>& to, u32 after) {
            const int grp = first + KW * (b / bpg);
            const int kc = grp * cpg + (b % bpg) * HB;
            const uint4* wp = qw + ((size_t)strip * KC + kc) * 32 + lane + after;
#pragma unroll
            for (int c = 0; c < HB; ++c) to.q[c] = ld_stream_ordered(wp + c * 32);
#pragma unroll
            for (int c = 0; c < HB; ++c) tile.template load_x<true>((kc + c) * 16, to.x[c]);
            const size_t sidx = ((size_t)strip * NG + grp) * 8 + g;
            to.sv = ld_ordered_u4(sc + sidx);
            to.zw = ld_ordered_u32(zr + sidx);
        };
        auto math = [&](int b, const DbBatch<HB, NT>& cur) {
            u32 s2v[8], nz2v[8];
            group_constants<D>(cur.sv, cur.zw, s2v, nz2v);
#pragma unroll
            for (int c = 0; c < HB; ++c) tile.chunk_x(cur.x[c], cur.q[c], s2v, nz2v);
            if (b % bpg == bpg - 1) tile.end_group(cur.sv);
        };
        // ptxas puts every load of the loop on one scoreboard, so the first use of a batch waits for all the
        // loads issued so far: the math of batch b, placed after batch b + 1's loads, would wait for those
        // too (what sank the register double buffer, PERF-NOTES.md). So batch b + 1's weight addresses take a
        // zero computed from batch b's last word: the wait for batch b comes first, then batch b + 1's loads,
        // then batch b's math with nothing left to wait for. The zero comes from a kernel argument (M < 0
        // never holds), which ptxas cannot fold. Two buffers (the loop unrolled by two) avoid a copy.
        const u32 zero_mask = M < 0 ? 0xffffffffu : 0u;
        DbBatch<HB, NT> ping, pong;
        if (nb > 0) load(0, ping, 0u);
        __syncwarp();
        // The last turn loads its last batch again rather than branch around the loads: a branch there lets
        // ptxas see a path without the wait and wait again after the loads.
        for (int b = 0; b < nb; b += 2) {
            load(min(b + 1, nb - 1), pong, ping.zw & zero_mask);
            __syncwarp();  // the next batch's loads stay above this line, in flight during the math below
            math(b, ping);
            if (b + 1 >= nb) break;
            load(min(b + 2, nb - 1), ping, pong.zw & zero_mask);
            __syncwarp();
            math(b + 1, pong);
        }
    }
    __shared__ float red[4][8 * 4 * 32];
    __shared__ u32 s_last;
    tile.template finish_block<SW>(red, &s_last, bias, y, partials, counters, M, N, S2, at, strip_ok);
}

// awq_swapdb_* / awq_swapgsdb_*: the double-buffered swapped-tile kernels, one token tile (M ≤ 8), batches of
// HB chunks (4, or 2 and 1 for groups of 32 and 16 values).
#define AWQ_SWAPDB_AS(D, NAME, PREFIX, GS, SW, HB)                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) PREFIX##_##NAME##_nt1_sw##SW##_cb##HB(                \
        const D::T* __restrict__ x, const D::T* __restrict__ zero_row, const uint4* __restrict__ qw,          \
        const uint4* __restrict__ sc, const u32* __restrict__ zr, const D::T* __restrict__ bias,              \
        D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,  \
        int NS, int G, int gpw, int S2) {                                                                      \
        stream_kernel_db<D, 1, GS, SW, HB>(x, zero_row, qw, sc, zr, bias, y, partials, counters, M, N, K, NS, G, \
                                           gpw, S2);                                                           \
    }
#define AWQ_SWAPDB_SW_HB(D, NAME, SW, HB)                  \
    AWQ_SWAPDB_AS(D, NAME, awq_swapdb, false, SW, HB)      \
    AWQ_SWAPDB_AS(D, NAME, awq_swapgsdb, true, SW, HB)
#define AWQ_SWAPDB_ALL(D, NAME)          \
    AWQ_SWAPDB_SW_HB(D, NAME, 1, 4)      \
    AWQ_SWAPDB_SW_HB(D, NAME, 1, 2)      \
    AWQ_SWAPDB_SW_HB(D, NAME, 1, 1)      \
    AWQ_SWAPDB_SW_HB(D, NAME, 2, 4)      \
    AWQ_SWAPDB_SW_HB(D, NAME, 2, 2)      \
    AWQ_SWAPDB_SW_HB(D, NAME, 2, 1)

#define AWQ_STREAM_AS(D, NAME, PREFIX, STAGGER, BATCH, MT, SW, CB, MINB)                                        \
    extern "C" __global__ void __launch_bounds__(256, MINB) PREFIX##_##NAME##_mt##MT##_sw##SW##_cb##CB(       \
        const D::T* __restrict__ x, const D::T* __restrict__ zero_row, const uint4* __restrict__ qw,          \
        const uint4* __restrict__ sc, const u32* __restrict__ zr, const D::T* __restrict__ bias,              \
        D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,  \
        int NS, int G, int gpw, int S2) {                                                                      \
        stream_kernel<D, RowTile<D, MT>, SW, CB, STAGGER, BATCH>(x, zero_row, qw, sc, zr, bias, y, partials,    \
                                                                 counters, M, N, K, NS, G, gpw, S2);           \
    }
// awq_stream_* and its staggered twin awq_stagger_*.
#define AWQ_STREAM(D, NAME, MT, SW, CB, MINB)                          \
    AWQ_STREAM_AS(D, NAME, awq_stream, false, false, MT, SW, CB, MINB) \
    AWQ_STREAM_AS(D, NAME, awq_stagger, true, false, MT, SW, CB, MINB)

// MT = 1 keeps 2 blocks (16 warps) per SM within 128 registers; MT = 2 and 4 need more registers than that
// and run one block per SM.
#define AWQ_STREAM_CB(D, NAME, MT, SW, MINB) \
    AWQ_STREAM(D, NAME, MT, SW, 8, MINB)     \
    AWQ_STREAM(D, NAME, MT, SW, 4, MINB)     \
    AWQ_STREAM(D, NAME, MT, SW, 2, MINB)     \
    AWQ_STREAM(D, NAME, MT, SW, 1, MINB)
// MT = 4 holds 128 accumulators; batches of more than 2 chunks would spill, so it has only CB = 1, 2.
#define AWQ_STREAM_ALL(D, NAME)           \
    AWQ_STREAM_CB(D, NAME, 1, 1, 2)       \
    AWQ_STREAM_CB(D, NAME, 1, 2, 2)       \
    AWQ_STREAM_CB(D, NAME, 2, 1, 1)       \
    AWQ_STREAM_CB(D, NAME, 2, 2, 1)       \
    AWQ_STREAM(D, NAME, 4, 1, 2, 1)       \
    AWQ_STREAM(D, NAME, 4, 1, 1, 1)       \
    AWQ_STREAM(D, NAME, 4, 2, 2, 1)       \
    AWQ_STREAM(D, NAME, 4, 2, 1, 1)

AWQ_STREAM_ALL(F16, f16)
AWQ_STREAM_ALL(BF16, bf16)
// awq_streamb_*: the register kernel with whole batches in flight (BATCH), one m-tile (decode).
#define AWQ_STREAMB_ALL(D, NAME)                                    \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 1, 8, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 1, 4, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 1, 2, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 1, 1, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 2, 8, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 2, 4, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 2, 2, 2)   \
    AWQ_STREAM_AS(D, NAME, awq_streamb, false, true, 1, 2, 1, 2)
AWQ_STREAMB_ALL(F16, f16)
AWQ_STREAMB_ALL(BF16, bf16)

// The swapped-tile kernels (ColTile: the weights as mma's A operand), for M ≤ 8·NT:
//  - awq_swap_*: as the register kernel; NT = 1 fits 80 registers, three blocks per SM;
//  - awq_swapgs_*: the group's scale applied in f32 after its mma (ColTile GS); its 16 more accumulators fit
//    three blocks per SM at NT = 1 only with batches of at most 4 chunks (the host caps the batch);
//  - awq_swapb_*, awq_swapgsb_*: the same with whole batches in flight (BATCH), two blocks per SM (114-128
//    registers); the group-scaled one takes batches of 8 at NT = 1, at most 4 at NT = 2 (8 spill).
#define AWQ_SWAP_AS(D, NAME, PREFIX, GS, BATCH, NT, SW, CB, MINB)                                              \
    extern "C" __global__ void __launch_bounds__(256, MINB) PREFIX##_##NAME##_nt##NT##_sw##SW##_cb##CB(        \
        const D::T* __restrict__ x, const D::T* __restrict__ zero_row, const uint4* __restrict__ qw,          \
        const uint4* __restrict__ sc, const u32* __restrict__ zr, const D::T* __restrict__ bias,              \
        D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,  \
        int NS, int G, int gpw, int S2) {                                                                      \
        stream_kernel<D, ColTile<D, NT, GS>, SW, CB, false, BATCH>(x, zero_row, qw, sc, zr, bias, y, partials,  \
                                                                   counters, M, N, K, NS, G, gpw, S2);         \
    }
// Batches of 4, 2 and 1 chunk of the four kernels for NT and SW (NT = 1: three blocks per SM unbatched).
#define AWQ_SWAP_SMALL_CB(D, NAME, NT, SW, MINB, CB)                     \
    AWQ_SWAP_AS(D, NAME, awq_swap, false, false, NT, SW, CB, MINB)       \
    AWQ_SWAP_AS(D, NAME, awq_swapgs, true, false, NT, SW, CB, MINB)      \
    AWQ_SWAP_AS(D, NAME, awq_swapb, false, true, NT, SW, CB, 2)          \
    AWQ_SWAP_AS(D, NAME, awq_swapgsb, true, true, NT, SW, CB, 2)
#define AWQ_SWAP_NT_SW(D, NAME, NT, SW, MINB)                            \
    AWQ_SWAP_AS(D, NAME, awq_swap, false, false, NT, SW, 8, MINB)        \
    AWQ_SWAP_AS(D, NAME, awq_swapb, false, true, NT, SW, 8, 2)           \
    AWQ_SWAP_SMALL_CB(D, NAME, NT, SW, MINB, 4)                          \
    AWQ_SWAP_SMALL_CB(D, NAME, NT, SW, MINB, 2)                          \
    AWQ_SWAP_SMALL_CB(D, NAME, NT, SW, MINB, 1)
#define AWQ_SWAP_ALL(D, NAME)                                            \
    AWQ_SWAP_NT_SW(D, NAME, 1, 1, 3)                                     \
    AWQ_SWAP_NT_SW(D, NAME, 1, 2, 3)                                     \
    AWQ_SWAP_NT_SW(D, NAME, 2, 1, 2)                                     \
    AWQ_SWAP_NT_SW(D, NAME, 2, 2, 2)                                     \
    AWQ_SWAP_AS(D, NAME, awq_swapgsb, true, true, 1, 1, 8, 2)            \
    AWQ_SWAP_AS(D, NAME, awq_swapgsb, true, true, 1, 2, 8, 2)
AWQ_SWAP_ALL(F16, f16)
AWQ_SWAP_ALL(BF16, bf16)
AWQ_SWAPDB_ALL(F16, f16)
AWQ_SWAPDB_ALL(BF16, bf16)

// cp.async helpers (sm_80+): a 16-byte global -> shared copy that bypasses L1 (the weights are read once),
// and the group bookkeeping.
#ifdef INTERNVL_EMULATE
static void cp_async16(void* dst, const void* src) { emu::cp_async(dst, src, 16); }
static void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
static void cp_async_wait() {
    emu::cp_async_wait(N);
}
#else
static __device__ __forceinline__ u32 smem_u32(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}
static __device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// uint4 slots of one pipeline stage of one warp: a whole group of one strip, i.e. cpg chunks of 32 lanes'
// 16-byte weight pieces, then the group's scales (8 × 16 bytes: slot cpg·32 + g is lane g·4+t's scale
// vector) and zeros (8 words in 2 slots).
static __device__ __forceinline__ int pipe_stage_slots(int cpg) { return cpg * 32 + 10; }

// The streaming kernel with the weights moved by a per-warp cp.async ring of ST stages in shared memory
// instead of registers: a warp has up to ST - 1 whole groups in flight while it multiplies the oldest, and
// the loads hold no registers (the register double-buffer of the streaming kernel was limited by the
// 128-register cap; PERF-NOTES.md). Same warp <-> group assignment, same chunk order, same finish: the
// result is bit-identical to awq_stream_* with the same plan. Each lane copies, and later reads, its own
// weight pieces; lanes 0..9 copy the group's scales and zeros, which all lanes read after a __syncwarp.
// Dynamic shared memory: 8 warps × ST stages × pipe_stage_slots(cpg) × 16 bytes (≥ the 16 KB the finish
// reuses for its k-lane sum, once every warp is past its loop).
template <class D, int MT, int SW, int ST>
static __device__ __forceinline__ void pipe_kernel(
    const typename D::T* __restrict__ x, const typename D::T* __restrict__ zero_row, const uint4* __restrict__ qw,
    const uint4* __restrict__ sc, const u32* __restrict__ zr, const typename D::T* __restrict__ bias,
    typename D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,
    int NS, int G, int gpw, int S2) {
    typedef typename D::T T;
    constexpr int KW = 8 / SW;
    DYNAMIC_SHARED(uint4, ring_all);
    const Place at = enter_row_block<MT, SW>(x, y, partials, counters, M, N, K, S2);
    const auto [lane, warp, s, kl, g, t, strip] = at;
    const bool strip_ok = strip < NS;
    const int NG = K / G;
    const int KC = K / 16;
    const int cpg = G / 16;
    const int slots = pipe_stage_slots(cpg);
    uint4* ring = ring_all + (size_t)warp * ST * slots;

    float acc[MT][8][4];
    const T* xr[MT][2];
    start_tile<D, MT>(acc, xr, x, zero_row, M, K, g, t);

    if (strip_ok) {
        const int gbeg = blockIdx.y * gpw * KW;
        // The warp's groups: gbeg + kl + KW·i for i < n.
        const int first = gbeg + kl;
        const int n = first < NG ? min(gpw, (NG - 1 - first) / KW + 1) : 0;
        // (Structured bindings cannot be captured by reference in C++17: the lane and strip are copied.)
        auto issue = [&, lane = lane, strip = strip](int i) {
            uint4* st = ring + (i % ST) * slots;
            const int grp = first + KW * i;
            const uint4* wp = qw + ((size_t)strip * KC + (size_t)grp * cpg) * 32 + lane;
            for (int c = 0; c < cpg; ++c) cp_async16(st + c * 32 + lane, wp + c * 32);
            const size_t gidx = (size_t)strip * NG + grp;
            if (lane < 8)
                cp_async16(st + cpg * 32 + lane, sc + gidx * 8 + lane);
            else if (lane < 10)
                cp_async16(st + cpg * 32 + lane, reinterpret_cast<const uint4*>(zr + gidx * 8) + (lane - 8));
        };
        // Start the ring: groups 0 .. ST-2, one cp.async group each (empty groups past the end keep the
        // count that wait_group relies on).
#pragma unroll
        for (int p = 0; p < ST - 1; ++p) {
            if (p < n) issue(p);
            cp_async_commit();
        }
        for (int i = 0; i < n; ++i) {
            cp_async_wait<ST - 2>();  // group i landed (this lane's copies) ...
            __syncwarp();             // ... and every lane's, and every lane is done with stage (i - 1) % ST
            if (i + ST - 1 < n) issue(i + ST - 1);
            cp_async_commit();
            const uint4* st = ring + (i % ST) * slots;
            u32 s2v[8], nz2v[8];
            group_constants<D>(st[cpg * 32 + g], reinterpret_cast<const u32*>(st + cpg * 32 + 8)[g], s2v, nz2v);
            const int kc0 = (first + KW * i) * cpg;
            for (int c = 0; c < cpg; ++c) chunk_mma<D, MT>(acc, xr, (kc0 + c) * 16, st[c * 32 + lane], s2v, nz2v);
        }
        cp_async_wait<0>();
    }
    // The ring is reused for the k-lane sum (16 KB: the host sizes the ring to at least that, which matters
    // only for groups of 16): every warp must be past its loop first.
    __syncthreads();
    __shared__ u32 s_last;
    finish<D, MT, SW>(acc, reinterpret_cast<float(*)[8 * 4 * 32]>(ring_all), &s_last, bias, y, partials, counters,
                      M, N, S2, at, strip_ok);
}

#define AWQ_PIPE(D, NAME, MT, SW, ST, MINB)                                                                    \
    extern "C" __global__ void __launch_bounds__(256, MINB) awq_pipe_##NAME##_mt##MT##_sw##SW##_st##ST(       \
        const D::T* __restrict__ x, const D::T* __restrict__ zero_row, const uint4* __restrict__ qw,          \
        const uint4* __restrict__ sc, const u32* __restrict__ zr, const D::T* __restrict__ bias,              \
        D::T* __restrict__ y, float* __restrict__ partials, u32* __restrict__ counters, int M, int N, int K,  \
        int NS, int G, int gpw, int S2) {                                                                      \
        pipe_kernel<D, MT, SW, ST>(x, zero_row, qw, sc, zr, bias, y, partials, counters, M, N, K, NS, G, gpw,   \
                                   S2);                                                                        \
    }

// MT = 1: 3 stages of a 128-group (8 warps × 3 × 4.2 KB = 102 KB), two blocks per SM on Hopper (228 KB).
// MT = 2, 4 run one block per SM (registers), so 4 stages.
#define AWQ_PIPE_ALL(D, NAME)        \
    AWQ_PIPE(D, NAME, 1, 1, 3, 2)    \
    AWQ_PIPE(D, NAME, 1, 2, 3, 2)    \
    AWQ_PIPE(D, NAME, 2, 1, 4, 1)    \
    AWQ_PIPE(D, NAME, 2, 2, 4, 1)    \
    AWQ_PIPE(D, NAME, 4, 1, 4, 1)    \
    AWQ_PIPE(D, NAME, 4, 2, 4, 1)

AWQ_PIPE_ALL(F16, f16)
AWQ_PIPE_ALL(BF16, bf16)

// The four values k = kc·16 + 4t .. 4t+3 of column strip·64 + 8j + g, for j = 0..7, from lane (g, t)'s 16-byte
// piece q of chunk kc, its group's scale vector sv and zero word zw: put(j, (k 4t, 4t+1) | (k 4t+2, 4t+3)).
template <class D, class Put>
static __device__ __forceinline__ void dequant_lane_chunk(const uint4& q, const uint4& sv, u32 zw, Put put) {
    const u32 qq[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int tt = 0; tt < 2; ++tt) {
            const int j = 2 * w + tt;
            const u32 s2 = splat_scale(sv, j);
            const u32 nz = neg_zero<D>(zw, j);
            put(j, make_uint2(dq<D>(qq[w], 8 * tt, nz, s2), dq<D>(qq[w], 8 * tt + 4, nz, s2)));
        }
}

// Lane (g = lane / 4) of chunk kc of a strip: its 16-byte weight piece, and its group's scale vector and zero
// word (the loads of one lane-chunk, issued together).
struct LaneChunk {
    uint4 q, sv;
    u32 zw;
};
static __device__ __forceinline__ LaneChunk load_lane_chunk(const uint4* __restrict__ qw, const uint4* __restrict__ sc,
                                                            const u32* __restrict__ zr, int strip, int kc, int lane,
                                                            int KC, int NG, int G) {
    const size_t sidx = ((size_t)strip * NG + kc * 16 / G) * 8 + (lane >> 2);
    return LaneChunk{ld_stream(qw + ((size_t)strip * KC + kc) * 32 + lane), __ldg(sc + sidx), __ldg(zr + sidx)};
}

// Dense W [N, K] from the repacked weights, one unit of work per thread: CPT consecutive chunks of one lane of
// one strip (unit u: lane = u % 32, the unit's chunks kb·CPT .. of strip (u / 32) / KCB, KCB = ceil(KC / CPT)).
// Its CPT 16-byte loads are issued before any is used; each chunk is written as eight 8-byte pieces, so a
// warp's store covers 8 rows × 32 contiguous bytes. CPT = 1 is the original kernel (one load in flight per
// thread), CPT = 4 keeps four in flight. Every variant writes the same bits (the autotuner picks by speed).
template <class D, int CPT>
static __device__ __forceinline__ void dequant_lanes_kernel(const uint4* __restrict__ qw,
                                                            const uint4* __restrict__ sc,
                                                            const u32* __restrict__ zr,
                                                            typename D::T* __restrict__ out, int N, int K, int NS,
                                                            int G) {
    const int KC = K / 16;
    const int NG = K / G;
    const u32 KCB = (u32)((KC + CPT - 1) / CPT);
    const size_t total = (size_t)NS * KCB * 32;  // the host checks NS · KCB < 2^32
    for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < total; u += (size_t)gridDim.x * blockDim.x) {
        const int lane = (int)(u & 31);
        const u32 rest = (u32)(u >> 5);
        const int strip = (int)(rest / KCB);
        const int kb = (int)(rest % KCB);
        const int g = lane >> 2;
        const int t = lane & 3;
        LaneChunk lc[CPT];
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const int kc = kb * CPT + c;
            if (CPT == 1 || kc < KC) lc[c] = load_lane_chunk(qw, sc, zr, strip, kc, lane, KC, NG, G);
        }
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const int kc = kb * CPT + c;
            if (CPT == 1 || kc < KC)
                dequant_lane_chunk<D>(lc[c].q, lc[c].sv, lc[c].zw, [&](int j, uint2 v) {
                    const int n = strip * 64 + 8 * j + g;
                    if (n < N) *reinterpret_cast<uint2*>(out + (size_t)n * K + (size_t)kc * 16 + 4 * t) = v;
                });
        }
    }
}

// Dense W [N, K] through a shared-memory tile: block (kt, strip) dequantizes the 64 columns of its strip over
// TK = 128·CPT values of k (warp w, pass c: chunk kt·8·CPT + 8c + w, so the block's loads of a pass are 4 KB
// contiguous) into shared memory, then writes whole rows: each lane stores 16 bytes, a warp 512 contiguous
// bytes (two rows of 256 at CPT = 1, one row of 512 at CPT = 2). Same bits as dequant_lanes_kernel.
template <class D, int CPT>
static __device__ __forceinline__ void dequant_tiles_kernel(const uint4* __restrict__ qw,
                                                            const uint4* __restrict__ sc,
                                                            const u32* __restrict__ zr,
                                                            typename D::T* __restrict__ out, int N, int K, int G) {
    constexpr int TK = 128 * CPT;   // values of k per tile
    constexpr int PITCH = TK + 8;   // 16-bit elements per tile row (+16 bytes: rows start on other banks)
    constexpr int PIECES = TK / 8;  // 16-byte pieces per tile row
    __shared__ __align__(16) unsigned short tile[64 * PITCH];
    const int KC = K / 16;
    const int NG = K / G;
    const int strip = blockIdx.y, kt = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    LaneChunk lc[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        const int kc = kt * 8 * CPT + 8 * c + warp;
        if (kc < KC) lc[c] = load_lane_chunk(qw, sc, zr, strip, kc, lane, KC, NG, G);
    }
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
        const int kc = kt * 8 * CPT + 8 * c + warp;
        if (kc < KC)
            dequant_lane_chunk<D>(lc[c].q, lc[c].sv, lc[c].zw, [&](int j, uint2 v) {
                *reinterpret_cast<uint2*>(tile + (8 * j + g) * PITCH + (8 * c + warp) * 16 + 4 * t) = v;
            });
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 64 * PIECES; e += blockDim.x) {
        const int r = e / PIECES, p = e % PIECES;
        const int n = strip * 64 + r;
        const int k = kt * TK + p * 8;  // K % 16 == 0: a piece is either wholly inside k < K or wholly out
        if (n < N && k < K)
            *reinterpret_cast<uint4*>(out + (size_t)n * K + k) =
                *reinterpret_cast<const uint4*>(tile + r * PITCH + p * 8);
    }
}

#define AWQ_DEQUANT(D, NAME)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) awq_dequant_##NAME(                                          \
        const uint4* __restrict__ qw, const uint4* __restrict__ sc, const u32* __restrict__ zr,                  \
        D::T* __restrict__ out, int N, int K, int NS, int G) {                                                   \
        dequant_lanes_kernel<D, 1>(qw, sc, zr, out, N, K, NS, G);                                                \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) awq_dequant_##NAME##_lanes4(                                 \
        const uint4* __restrict__ qw, const uint4* __restrict__ sc, const u32* __restrict__ zr,                  \
        D::T* __restrict__ out, int N, int K, int NS, int G) {                                                   \
        dequant_lanes_kernel<D, 4>(qw, sc, zr, out, N, K, NS, G);                                                \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) awq_dequant_##NAME##_tiles1(                                 \
        const uint4* __restrict__ qw, const uint4* __restrict__ sc, const u32* __restrict__ zr,                  \
        D::T* __restrict__ out, int N, int K, int NS, int G) {                                                   \
        (void)NS;                                                                                                  \
        dequant_tiles_kernel<D, 1>(qw, sc, zr, out, N, K, G);                                                    \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) awq_dequant_##NAME##_tiles2(                                 \
        const uint4* __restrict__ qw, const uint4* __restrict__ sc, const u32* __restrict__ zr,                  \
        D::T* __restrict__ out, int N, int K, int NS, int G) {                                                   \
        (void)NS;                                                                                                  \
        dequant_tiles_kernel<D, 2>(qw, sc, zr, out, N, K, G);                                                    \
    }

AWQ_DEQUANT(F16, f16)
AWQ_DEQUANT(BF16, bf16)

// Load-time repacking on the device: the layout `repack` in src/ops/awq/cuda.rs makes on the host (that
// function states it; these kernels are its twins, tested bit for bit against it). AutoAWQ qweight
// [K][N/8] -> codes [NS][K/16][32][4]; qzeros [K/G][N/8] and scales [K/G][N] (already in the activation
// type) -> zeros [NS][K/G][8] and scales [NS][K/G][8][8]. Columns past N (the last strip's padding) are 0.
__device__ __forceinline__ unsigned awq_code(const unsigned* __restrict__ row, int col) {
    // AutoAWQ packing: column 8c + j is nibble slot j/2 + 4(j%2) of word c (awq_format.rs, SLOT_OF_COLUMN).
    const int j = col & 7;
    return (row[col >> 3] >> (4 * ((j >> 1) + 4 * (j & 1)))) & 0xFu;
}

// One thread per output word: lane (g, t) = (lane / 4, lane % 4) holds, in nibble i, the code of column
// strip·64 + 8(2w + tile) + g at row 16c + 4t + kk, (tile, kk) = nibble_place(i).
extern "C" __global__ void __launch_bounds__(256) awq_repack_codes(const unsigned* __restrict__ qweight,
                                                                    unsigned* __restrict__ out, int K, int N) {
    const int nw = N / 8, kc = K / 16;
    const size_t total = (size_t)((N + 63) / 64) * kc * 128;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int w = (int)(i & 3), lane = (int)((i >> 2) & 31);
        const size_t chunk = i >> 7;
        const int c = (int)(chunk % kc), strip = (int)(chunk / kc);
        const int g = lane >> 2, t = lane & 3;
        unsigned word = 0;
        for (int nib = 0; nib < 8; ++nib) {
            const int s = nib & 3, tile = s >> 1, kk = 2 * (s & 1) + (nib >> 2);
            const int col = strip * 64 + 8 * (2 * w + tile) + g;
            if (col < N) word |= awq_code(qweight + (size_t)(c * 16 + 4 * t + kk) * nw, col) << (4 * nib);
        }
        out[i] = word;
    }
}

// One thread per (strip, group, g): the zero-point word (nibble j: column strip·64 + 8j + g) and the eight
// scales of those columns.
extern "C" __global__ void __launch_bounds__(256) awq_repack_groups(const unsigned* __restrict__ qzeros,
                                                                     const unsigned short* __restrict__ scales,
                                                                     unsigned* __restrict__ zeros_out,
                                                                     unsigned short* __restrict__ scales_out, int N,
                                                                     int NG) {
    const int nw = N / 8;
    const size_t total = (size_t)((N + 63) / 64) * NG * 8;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int g = (int)(i & 7);
        const size_t sg = i >> 3;
        const int grp = (int)(sg % NG), strip = (int)(sg / NG);
        unsigned z = 0;
        for (int j = 0; j < 8; ++j) {
            const int col = strip * 64 + 8 * j + g;
            unsigned short s = 0;
            if (col < N) {
                s = scales[(size_t)grp * N + col];
                z |= awq_code(qzeros + (size_t)grp * nw, col) << (4 * j);
            }
            scales_out[i * 8 + j] = s;
        }
        zeros_out[i] = z;
    }
}
