// Sampling helpers on the GPU. argmax_rows: the index of the largest logit of each row, so greedy
// decoding copies one u32 per sequence to the host instead of the whole vocabulary row (151674 values).
// Semantics equal the CPU sampler's greedy path (src/sampling.rs): NaN counts as -inf, and the first index
// wins a tie (as torch.argmax); a row of all -inf gives 0. Host side: src/cuda/sampling.rs.
// Layout: logits row-major [rows, width] of T (float, __half or __nv_bfloat16); out [rows] u32.
// Launch: grid = rows, one block per row, blockDim a multiple of 32 (at most 1024).
// Verified by awq-kernels/tests/ops_gpu.rs against the CPU op (ties, NaN, -inf rows, vocabulary widths).
//
// top_k_rows: the k best temperature-scaled logits of each row, most likely first, so a sampled decode step
// copies k (index, value) pairs per sequence instead of the row. The scaled value is the host sampler's:
// s = (NaN ? -inf : v) · inv_t in f32 (one rounded product). Order: larger s by IEEE total order (-0 < +0,
// as Rust's f32::total_cmp), then smaller index: exactly src/sampling.rs `top_k_rows` on the CPU, which
// ranks as the sampler's top-k selection does. Method: a radix select of the k-th largest order key
// (4 passes of 8 bits with a shared histogram), a collecting pass that takes every key above it and the
// lowest-indexed keys equal to it (a block-wide prefix count in index order), and a bitonic sort of the
// (at most TOP_K_MAX) candidates. Launch: grid = rows, 1024 threads (a multiple of 32; at least TOP_K_MAX).
// Output row r: idx[r·TOP_K_MAX + j], val[...] for j < min(k_r, width); the rest index 0xffffffff, -inf.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float logit_f32(float v) { return v; }
__device__ __forceinline__ float logit_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float logit_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

#define NO_INDEX 0x7fffffff
#define NEG_INF (-__int_as_float(0x7f800000))

// Keeps the better of (best, idx) and (v, i): larger value, then smaller index.
__device__ __forceinline__ void better(float& best, int& idx, float v, int i) {
    if (v > best || (v == best && i < idx)) {
        best = v;
        idx = i;
    }
}

__device__ __forceinline__ void warp_best(float& best, int& idx) {
    for (int off = 16; off > 0; off >>= 1) {
        float ob = __shfl_down_sync(0xffffffffu, best, off);
        int oi = __shfl_down_sync(0xffffffffu, idx, off);
        better(best, idx, ob, oi);
    }
}

template <typename T>
__device__ void argmax_rows(const T* __restrict__ logits, unsigned* __restrict__ out, int width) {
    const T* row = logits + (size_t)blockIdx.x * width;
    float best = NEG_INF;
    int idx = NO_INDEX;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = logit_f32(row[i]);
        if (v != v) v = NEG_INF;
        better(best, idx, v, i);
    }
    warp_best(best, idx);
    __shared__ float warp_value[32];
    __shared__ int warp_index[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warp_value[warp] = best;
        warp_index[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / 32;
        best = lane < warps ? warp_value[lane] : NEG_INF;
        idx = lane < warps ? warp_index[lane] : NO_INDEX;
        warp_best(best, idx);
        if (lane == 0) out[blockIdx.x] = idx == NO_INDEX ? 0u : (unsigned)idx;
    }
}

extern "C" __global__ void __launch_bounds__(1024) argmax_rows_f32(const float* l, unsigned* o, int w) { argmax_rows(l, o, w); }
extern "C" __global__ void __launch_bounds__(1024) argmax_rows_f16(const __half* l, unsigned* o, int w) { argmax_rows(l, o, w); }
extern "C" __global__ void __launch_bounds__(1024) argmax_rows_bf16(const __nv_bfloat16* l, unsigned* o, int w) { argmax_rows(l, o, w); }

#define TOP_K_MAX 64

// An unsigned key whose order is the IEEE total order of the float (negative: all bits flipped; positive:
// the sign bit set).
__device__ __forceinline__ unsigned order_key(float s) {
    const unsigned b = __float_as_uint(s);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ float scaled_logit(const T* row, int i, float inv_t) {
    float v = logit_f32(row[i]);
    if (v != v) v = NEG_INF;
    return v * inv_t;
}

template <typename T>
__device__ void top_k_rows(const T* __restrict__ logits, const float* __restrict__ inv_temperature,
                           const int* __restrict__ ks, unsigned* __restrict__ out_idx, float* __restrict__ out_val,
                           int width) {
    const T* row = logits + (size_t)blockIdx.x * width;
    const float inv_t = inv_temperature[blockIdx.x];
    const int k = min(min(ks[blockIdx.x], TOP_K_MAX), width);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;

    __shared__ unsigned hist[256];
    __shared__ int s_bin, s_remaining, s_gt, s_ties, s_done;
    __shared__ int warp_ties[32];
    __shared__ unsigned long long cand[TOP_K_MAX];

    // 1. The k-th largest key `threshold`; `remaining` = how many keys equal to it belong to the k best.
    unsigned prefix = 0, mask = 0;
    int remaining = k;
    if (k > 0) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
            __syncthreads();
            // Logits share a few exponents, so most keys of a pass fall in a few bins: lanes with the same
            // bin add once per warp (match_any), not 32 contended shared atomics.
            for (int base = 0; base < width; base += blockDim.x) {
                const int i = base + tid;
                unsigned bin = 0xffffffffu;
                if (i < width) {
                    const unsigned key = order_key(scaled_logit(row, i, inv_t));
                    if ((key & mask) == prefix) bin = (key >> shift) & 255u;
                }
                const unsigned peers = __match_any_sync(0xffffffffu, bin);
                if (bin != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
            }
            __syncthreads();
            if (tid == 0) {
                int cum = 0, b = 255;
                for (; b > 0; --b) {
                    if (cum + (int)hist[b] >= remaining) break;
                    cum += (int)hist[b];
                }
                s_bin = b;
                s_remaining = remaining - cum;
            }
            __syncthreads();
            prefix |= (unsigned)s_bin << shift;
            mask |= 255u << shift;
            remaining = s_remaining;
            __syncthreads();
        }
    }
    const unsigned threshold = prefix;
    const int above = k - remaining;  // keys strictly above the threshold, all among the k best

    // 2. Collect: keys above the threshold in any order, then the `remaining` lowest-indexed equal keys.
    if (tid == 0) {
        s_gt = 0;
        s_ties = 0;
    }
    if (tid < TOP_K_MAX) cand[tid] = 0ull;
    __syncthreads();
    for (int base = 0; k > 0 && base < width; base += blockDim.x) {
        const int i = base + tid;
        unsigned key = 0;
        if (i < width) key = order_key(scaled_logit(row, i, inv_t));
        const bool gt = i < width && key > threshold;
        const bool eq = i < width && key == threshold;
        // Every key is its value's bits and the index's complement, so sorting the 64-bit words in
        // descending order gives larger value first, then smaller index.
        const unsigned long long word = ((unsigned long long)key << 32) | (unsigned)(~i);
        if (gt) cand[atomicAdd(&s_gt, 1)] = word;
        const unsigned ballot = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_ties[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < warps; ++w) {
            before += w < warp ? warp_ties[w] : 0;
            total += warp_ties[w];
        }
        const int rank = s_ties + before + __popc(ballot & ((1u << lane) - 1u));
        if (eq && rank < remaining) cand[above + rank] = word;
        __syncthreads();
        // Thread 0 decides while the counters are still: a warp that went on to the next chunk could
        // otherwise raise s_gt under a slower warp still reading it, and the break would not be uniform.
        if (tid == 0) {
            s_ties += total;
            s_done = (s_gt >= above && s_ties >= remaining) ? 1 : 0;
        }
        __syncthreads();
        if (s_done) break;  // written again only after the next chunk's second barrier
    }
    __syncthreads();

    // 3. Bitonic sort of the candidates, descending (unused slots are 0 and sort last).
    for (int size = 2; size <= TOP_K_MAX; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            if (tid < TOP_K_MAX) {
                const int j = tid ^ stride;
                if (j > tid) {
                    const bool descending = (tid & size) == 0 || size == TOP_K_MAX;
                    const unsigned long long a = cand[tid], b = cand[j];
                    if ((a < b) == descending) {
                        cand[tid] = b;
                        cand[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
    if (tid < TOP_K_MAX) {
        const size_t o = (size_t)blockIdx.x * TOP_K_MAX + tid;
        if (tid < k) {
            const int i = (int)(~(unsigned)(cand[tid] & 0xffffffffull));
            out_idx[o] = (unsigned)i;
            out_val[o] = scaled_logit(row, i, inv_t);
        } else {
            out_idx[o] = 0xffffffffu;
            out_val[o] = NEG_INF;
        }
    }
}

#define TOP_K_ROWS(name, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(1024) top_k_rows_##name(                                      \
        const T* l, const float* inv_t, const int* k, unsigned* idx, float* val, int w) {                      \
        top_k_rows(l, inv_t, k, idx, val, w);                                                                  \
    }
TOP_K_ROWS(f32, float)
TOP_K_ROWS(f16, __half)
TOP_K_ROWS(bf16, __nv_bfloat16)
