// Sampling helpers on the GPU. argmax_rows: the index of the largest logit of each row, so greedy
// decoding copies one u32 per sequence to the host instead of the whole vocabulary row (151674 values).
// Semantics equal the CPU sampler's greedy path (src/sampling.rs): NaN counts as -inf, and the first index
// wins a tie (as torch.argmax); a row of all -inf gives 0. Host side: src/cuda/sampling.rs.
// Layout: logits row-major [rows, width] of T (float, __half or __nv_bfloat16); out [rows] u32.
// Launch: grid = rows, one block per row, blockDim a multiple of 32 (at most 1024).
// Verified by awq-kernels/tests/ops_gpu.rs against the CPU op (ties, NaN, -inf rows, vocabulary widths).

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
