// Memory-bound row and element kernels with 16-byte vector accesses: fused residual add + RMSNorm,
// LayerNorm with bias, exact GELU, and the image-row scatter. Host side: src/cuda/rowwise.rs.
//
// Formulas (T = float, __half or __nv_bfloat16; every value computed in f32, one rounding to T per store):
//  - add_rms_norm:  x[r] = T(x[r] + res[r]);  y[r] = T(w · T(x[r] / sqrt(mean(x[r]²) + eps))) (transformers'
//    two roundings, `rms_scale`), the mean taken over the stored (rounded) x, which the next layer reads.
//  - layer_norm:    y[r] = T((x[r] - mean) / sqrt(var + eps) · w + bias), two passes (mean, then the mean
//    of squared deviations) as the CPU reference computes it.
//  - gelu:          y = T(x/2 · (1 + erf(x/√2))) (the exact form InternViT and mlp1 use).
//  - scatter_rows:  x[rows[i], :] = src[i, :] (InternVL's image rows written into the <IMG_CONTEXT> rows).
// Layouts: x, res, y, src row-major [rows, width]; w, bias [width].
// Vector path: when width·sizeof(T) is a multiple of 16 (width % 8 for 16-bit types, % 4 for f32), every
// access is a 16-byte load or store (rows then start 16-byte aligned: allocations are 256-byte aligned);
// otherwise the same kernel takes a scalar loop (`vec` = 0). Row kernels: grid = rows, one block per row
// (blockDim a multiple of 32, at most 1024). Elementwise: grid-stride over n / V vectors, scalar tail.
//
// Verified by awq-kernels/tests/attention_gpu.rs (section "row kernels") against the CPU ops on random
// rows, widths with and without the vector path, f32, f16 and bf16, poisoned outputs.

#include "common.cuh"

template <typename T>
__device__ void add_rms_norm(T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w, T* __restrict__ y,
                             int width, float eps, int vec) {
    constexpr int N = Vec<T>::N;
    const size_t base = (size_t)blockIdx.x * width;
    T* xr = x + base;
    const T* rr = res + base;
    T* yr = y + base;
    float ss = 0.0f;
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a, b;
            a.load(xr + c);
            b.load(rr + c);
#pragma unroll
            for (int i = 0; i < N; ++i) {
                a.e[i] = from_f32<T>(to_f32(a.e[i]) + to_f32(b.e[i]));
                const float s = to_f32(a.e[i]);
                ss += s * s;
            }
            a.store(xr + c);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) {
            const T s = from_f32<T>(to_f32(xr[c]) + to_f32(rr[c]));
            xr[c] = s;
            const float f = to_f32(s);
            ss += f * f;
        }
    }
    const float inv = rsqrtf(block_sum(ss) / width + eps);
    // Each thread reads back exactly the elements it wrote above: no barrier needed for them.
    rms_store_row<T>(xr, w, yr, width, inv, vec);
}

template <typename T>
__device__ void layer_norm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                           T* __restrict__ y, int width, float eps, int vec) {
    constexpr int N = Vec<T>::N;
    const size_t base = (size_t)blockIdx.x * width;
    const T* xr = x + base;
    T* yr = y + base;
    float sum = 0.0f;
    if (vec && RowRegs<T>::fits(width)) {
        // The row read once into registers; the three passes (mean, variance, output) use them, in the
        // loops' order.
        RowRegs<T> a;
        a.load(xr, width);
        sum = a.sum(width, [](float v) { return v; });
        const float mean = block_sum(sum) / width;
        const float sq = a.sum(width, [mean](float v) {
            const float d = v - mean;
            return d * d;
        });
        const float inv = rsqrtf(block_sum(sq) / width + eps);
#pragma unroll
        for (int r = 0; r < ROW_VECS; ++r)
            if (a.col(r) < width) {
                const int c = a.col(r);
                Vec<T> g, bb, out;
                g.load(w + c);
                bb.load(bias + c);
#pragma unroll
                for (int i = 0; i < N; ++i)
                    out.e[i] = from_f32<T>((to_f32(a.v[r].e[i]) - mean) * inv * to_f32(g.e[i]) + to_f32(bb.e[i]));
                out.store(yr + c);
            }
        return;
    }
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a;
            a.load(xr + c);
#pragma unroll
            for (int i = 0; i < N; ++i) sum += to_f32(a.e[i]);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) sum += to_f32(xr[c]);
    }
    const float mean = block_sum(sum) / width;
    float sq = 0.0f;
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a;
            a.load(xr + c);
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const float d = to_f32(a.e[i]) - mean;
                sq += d * d;
            }
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) {
            const float d = to_f32(xr[c]) - mean;
            sq += d * d;
        }
    }
    const float inv = rsqrtf(block_sum(sq) / width + eps);
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a, g, bb, out;
            a.load(xr + c);
            g.load(w + c);
            bb.load(bias + c);
#pragma unroll
            for (int i = 0; i < N; ++i)
                out.e[i] = from_f32<T>((to_f32(a.e[i]) - mean) * inv * to_f32(g.e[i]) + to_f32(bb.e[i]));
            out.store(yr + c);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x)
            yr[c] = from_f32<T>((to_f32(xr[c]) - mean) * inv * to_f32(w[c]) + to_f32(bias[c]));
    }
}

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

template <typename T>
__device__ void gelu(const T* __restrict__ x, T* __restrict__ y, long long n) {
    constexpr int N = Vec<T>::N;
    const long long vecs = n / N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vecs; i += stride) {
        Vec<T> a;
        a.load(x + i * N);
#pragma unroll
        for (int j = 0; j < N; ++j) a.e[j] = from_f32<T>(gelu_erf(to_f32(a.e[j])));
        a.store(y + i * N);
    }
    // The n % N last elements: the first threads of block 0, one each.
    if (blockIdx.x == 0 && threadIdx.x < n - vecs * N) {
        const long long t = vecs * N + threadIdx.x;
        y[t] = from_f32<T>(gelu_erf(to_f32(x[t])));
    }
}

template <typename T>
__device__ void scatter_rows(T* __restrict__ x, const int* __restrict__ rows, const T* __restrict__ src, int width,
                             int vec) {
    copy_row<T>(src + (size_t)blockIdx.x * width, x + (size_t)rows[blockIdx.x] * width, width, vec);
}

#define INSTANTIATE(name, T)                                                                                 \
    extern "C" __global__ void add_rms_norm_##name(T* x, const T* res, const T* w, T* y, int width, float eps, \
                                                   int vec) {                                                \
        add_rms_norm<T>(x, res, w, y, width, eps, vec);                                                      \
    }                                                                                                        \
    extern "C" __global__ void layer_norm_##name(const T* x, const T* w, const T* bias, T* y, int width,      \
                                                 float eps, int vec) {                                       \
        layer_norm<T>(x, w, bias, y, width, eps, vec);                                                       \
    }                                                                                                        \
    extern "C" __global__ void gelu_##name(const T* x, T* y, long long n) { gelu<T>(x, y, n); }              \
    extern "C" __global__ void scatter_rows_##name(T* x, const int* rows, const T* src, int width, int vec) { \
        scatter_rows<T>(x, rows, src, width, vec);                                                           \
    }

INSTANTIATE(f32, float)
INSTANTIATE(f16, __half)
INSTANTIATE(bf16, __nv_bfloat16)
