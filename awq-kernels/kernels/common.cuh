// Helpers shared by the memory-bound kernel files (ops.cu, rowwise.cu): f32 <-> T conversions, 16-byte
// vectors, warp and block sums. T = float, __half or __nv_bfloat16; every kernel computes in f32 and rounds
// once when it stores.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// One RMSNorm output as transformers computes it (Qwen2RMSNorm, InternRMSNorm: `weight * (x * inv).to(dtype)`):
// x · inv in f32 rounded to T, then times the weight in T. The product of two 16-bit values is exact in f32,
// so rounding it once more gives T's own product. For T = float both roundings do nothing.
template <typename T>
__device__ __forceinline__ T rms_scale(T w, float x, float inv) {
    return from_f32<T>(to_f32(w) * to_f32(from_f32<T>(x * inv)));
}

// N = 16 / sizeof(T) elements moved as one 16-byte access (the address must be 16-byte aligned).
template <typename T>
struct Vec {
    static constexpr int N = 16 / sizeof(T);
    union {
        uint4 raw;
        T e[N];
    };
    __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
    __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
};

// A thread's share of one row held in registers: its 16-byte vectors c = (r·blockDim + thread)·N for r < R
// (the same elements, in the same order, as the strided loops below). The row kernels load it once with
// all R loads in flight, instead of a loop of one load at a time and a second read of the row for the
// next pass; wider rows (fits() false) take the loops.
constexpr int ROW_VECS = 4;
template <typename T>
struct RowRegs {
    static constexpr int N = Vec<T>::N;
    Vec<T> v[ROW_VECS];
    static __device__ __forceinline__ bool fits(int width) { return width <= ROW_VECS * (int)blockDim.x * N; }
    // Column of vector r of this thread (past the row's end when the row is short).
    static __device__ __forceinline__ int col(int r) { return (r * (int)blockDim.x + (int)threadIdx.x) * N; }
    __device__ __forceinline__ void load(const T* row, int width) {
#pragma unroll
        for (int r = 0; r < ROW_VECS; ++r)
            if (col(r) < width) v[r].load(row + col(r));
    }
    __device__ __forceinline__ void store(T* row, int width) const {
#pragma unroll
        for (int r = 0; r < ROW_VECS; ++r)
            if (col(r) < width) v[r].store(row + col(r));
    }
    // Σ f(x) over this thread's elements of the row, in the loops' order.
    template <class F>
    __device__ __forceinline__ float sum(int width, F f) const {
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < ROW_VECS; ++r)
            if (col(r) < width)
#pragma unroll
                for (int i = 0; i < N; ++i) s += f(to_f32(v[r].e[i]));
        return s;
    }
};

// dst[0..width) = src[0..width) by the block: 16-byte vectors when `vec` (width·sizeof(T) a multiple of 16, so
// every row of a row-major tensor starts aligned), else element by element.
template <typename T>
__device__ __forceinline__ void copy_row(const T* __restrict__ src, T* __restrict__ dst, int width, int vec) {
    constexpr int N = Vec<T>::N;
    if (vec && RowRegs<T>::fits(width)) {
        RowRegs<T> a;
        a.load(src, width);
        a.store(dst, width);
    } else if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a;
            a.load(src + c);
            a.store(dst + c);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
    }
}

// The second pass of an RMSNorm over one row: out = rms_scale(w, x, inv) for every element the block's threads
// own (16-byte vectors when `vec`; the same elements each thread read in its first pass).
template <typename T>
__device__ __forceinline__ void rms_store_row(const T* x, const T* __restrict__ w, T* __restrict__ out, int width,
                                              float inv, int vec) {
    constexpr int N = Vec<T>::N;
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a, g, y;
            a.load(x + c);
            g.load(w + c);
#pragma unroll
            for (int i = 0; i < N; ++i) y.e[i] = rms_scale<T>(g.e[i], to_f32(a.e[i]), inv);
            y.store(out + c);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) out[c] = rms_scale<T>(w[c], to_f32(x[c]), inv);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. Reusable
// back to back.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers of `total` and `partial` are done
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}
