// The small kernels of the Qwen2 forward on the GPU: embedding gather, RMSNorm, residual add, SiLU gate,
// rotary embedding, KV-cache write, paged causal attention (straightforward: one warp per query row and
// head, online softmax; f16/bf16 with head dims 64 and 128 take the tensor-core kernels of attention.cu, so
// this one serves f32 and other head dims), row gather, bias add, casts.
//
// T is the activation type: __half, __nv_bfloat16 or float. Every kernel computes in f32 and rounds once
// when it stores. Shapes use the project's names: t rows (tokens), h query heads, h_kv KV heads, d head dim.
// Verified by awq-kernels/tests/ops_gpu.rs against the CPU implementations on random inputs.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of any size that is a multiple of 32 (at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
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

// out[i, :] = table[ids[i], :]; grid = t rows. Ids were range-checked on the host.
template <typename T>
__device__ void embedding(const T* __restrict__ table, const unsigned* __restrict__ ids, T* __restrict__ out, int width) {
    const T* src = table + (size_t)ids[blockIdx.x] * width;
    T* dst = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

// out = w * (x / sqrt(mean(x^2) + eps)); one block per row.
template <typename T>
__device__ void rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int width, float eps) {
    const T* row = x + (size_t)blockIdx.x * width;
    T* o = out + (size_t)blockIdx.x * width;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) { float v = to_f32(row[c]); ss += v * v; }
    float inv = rsqrtf(block_sum(ss) / width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) o[c] = from_f32<T>(to_f32(w[c]) * (to_f32(row[c]) * inv));
}

template <typename T>
__device__ void add_inplace(T* __restrict__ a, const T* __restrict__ b, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename T>
__device__ void silu_mul(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { float v = to_f32(g[i]); out[i] = from_f32<T>(v / (1.0f + __expf(-v)) * to_f32(u[i])); }
}

// The fused gate|up projection of a gated MLP: x [rows, 2·half] -> out[r][j] = silu(x[r][j]) · x[r][half + j]
// (the same formula as silu_mul).
template <typename T>
__device__ void silu_mul_halves(const T* __restrict__ x, T* __restrict__ out, long long total, int half) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        const long long r = i / half;
        const int j = (int)(i - r * half);
        const T* row = x + r * 2 * (long long)half;
        float v = to_f32(row[j]);
        out[i] = from_f32<T>(v / (1.0f + __expf(-v)) * to_f32(row[half + j]));
    }
}

// The fused q|k|v projection split into its three parts: x [rows, w0 + w1 + w2] -> a [rows, w0],
// b [rows, w1], c [rows, w2]; one thread per element of x.
template <typename T>
__device__ void split_columns3(const T* __restrict__ x, T* __restrict__ a, T* __restrict__ b, T* __restrict__ c,
                               long long total, int w0, int w1, int w2) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int width = w0 + w1 + w2;
    const long long r = i / width;
    const int col = (int)(i - r * width);
    const T v = x[i];
    if (col < w0)
        a[r * w0 + col] = v;
    else if (col < w0 + w1)
        b[r * w1 + (col - w0)] = v;
    else
        c[r * w2 + (col - w0 - w1)] = v;
}

// y[m, n] += bias[n]
template <typename T>
__device__ void add_bias(T* __restrict__ y, const T* __restrict__ bias, long long total, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] = from_f32<T>(to_f32(y[i]) + to_f32(bias[i % n]));
}

// Rotate-half RoPE in place on x [t, heads, d]; grid = (t, heads), block = d/2 threads.
// inv_freq [d/2] comes from the host (computed once as transformers does, 1 / theta^(2i/d) in f32), so the
// angle pos * inv_freq is the same f32 product on both sides even at positions of tens of thousands.
// The rotation of element pair (i, i + d/2) of one head by pos · inv_freq[i], from `src` into `dst` (which may
// be the same head): the one place both rope kernels take it from, so they produce the same bits.
template <typename T>
__device__ __forceinline__ void rotate_pair(const T* src, T* dst, int i, int half_d, int pos,
                                            const float* __restrict__ inv_freq) {
    float angle = (float)pos * inv_freq[i];
    float c = cosf(angle), s = sinf(angle);
    float a = to_f32(src[i]), b = to_f32(src[i + half_d]);
    dst[i] = from_f32<T>(a * c - b * s);
    dst[i + half_d] = from_f32<T>(b * c + a * s);
}

template <typename T>
__device__ void rope(T* __restrict__ x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                     int heads, int d) {
    int i = threadIdx.x, half_d = d / 2;
    if (i >= half_d) return;
    T* head = x + ((size_t)blockIdx.x * heads + blockIdx.y) * d;
    rotate_pair<T>(head, head, i, half_d, positions[blockIdx.x], inv_freq);
}

// A fused q|k|v projection row [(heads + 2·kv_heads)·d] taken apart in one pass: q heads rotated into
// q [t, heads, d], k heads rotated and v heads copied into the cache rows slots[r] ([slots, kv_heads, d]).
// grid = (t, heads + 2·kv_heads), block = d/2 threads: block (r, y) is head y of row r. Replaces a column
// split, two rope launches and a cache write (the same bits: rotate_pair, and copies).
template <typename T>
__device__ void qkv_rope_write(const T* __restrict__ qkv, T* __restrict__ q, T* __restrict__ kc,
                               T* __restrict__ vc, const int* __restrict__ positions,
                               const float* __restrict__ inv_freq, const int* __restrict__ slots, int heads,
                               int kv_heads, int d) {
    const int r = blockIdx.x, y = blockIdx.y, i = threadIdx.x, half_d = d / 2;
    if (i >= half_d) return;
    const T* src = qkv + ((size_t)r * (heads + 2 * kv_heads) + y) * d;
    const size_t cache_row = (size_t)slots[r] * kv_heads * d;
    if (y < heads) {
        rotate_pair<T>(src, q + ((size_t)r * heads + y) * d, i, half_d, positions[r], inv_freq);
    } else if (y < heads + kv_heads) {
        rotate_pair<T>(src, kc + cache_row + (size_t)(y - heads) * d, i, half_d, positions[r], inv_freq);
    } else {
        T* dst = vc + cache_row + (size_t)(y - heads - kv_heads) * d;
        dst[i] = src[i];
        dst[i + half_d] = src[i + half_d];
    }
}

// cache[slots[i], :] = src[i, :] for keys and values; grid = t rows, row width = h_kv * d.
template <typename T>
__device__ void kv_write(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc, T* __restrict__ vc,
                         const int* __restrict__ slots, int width) {
    size_t src = (size_t)blockIdx.x * width, dst = (size_t)slots[blockIdx.x] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) { kc[dst + c] = k[src + c]; vc[dst + c] = v[src + c]; }
}

// Causal attention over the paged cache. One warp per (query row, head): grid = (t, h), block = 32.
// Row r sees positions 0..=row_pos[r] of its sequence, whose block table starts at tables[row_table[r]].
// Each lane holds d/32 elements of q and of the running output; online softmax in f32. d <= 256.
template <typename T>
__device__ void paged_attention(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                const int* __restrict__ tables, const int* __restrict__ row_table,
                                const int* __restrict__ row_pos, T* __restrict__ out, int heads, int kv_heads,
                                int d, int block_size, float scale) {
    const int row = blockIdx.x, head = blockIdx.y, lane = threadIdx.x;
    const int per_lane = d / 32, kv_head = head / (heads / kv_heads), kv_stride = kv_heads * d;
    const T* qv = q + ((size_t)row * heads + head) * d;
    float qr[8], acc[8];
    for (int j = 0; j < per_lane; ++j) { qr[j] = to_f32(qv[lane * per_lane + j]) * scale; acc[j] = 0.0f; }
    const int* table = tables + row_table[row];
    float m = __int_as_float(0xff800000), l = 0.0f;  // -inf
    for (int p = 0; p <= row_pos[row]; ++p) {
        size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
        const T* kp = kc + slot * kv_stride + (size_t)kv_head * d + lane * per_lane;
        float s = 0.0f;
        for (int j = 0; j < per_lane; ++j) s += qr[j] * to_f32(kp[j]);
        s = warp_sum(s);
        float m_new = fmaxf(m, s), correction = __expf(m - m_new), w = __expf(s - m_new);
        const T* vp = vc + slot * kv_stride + (size_t)kv_head * d + lane * per_lane;
        for (int j = 0; j < per_lane; ++j) acc[j] = acc[j] * correction + w * to_f32(vp[j]);
        l = l * correction + w;
        m = m_new;
    }
    T* o = out + ((size_t)row * heads + head) * d + lane * per_lane;
    for (int j = 0; j < per_lane; ++j) o[j] = from_f32<T>(acc[j] / l);
}

// out[i, :] = x[rows[i], :]; grid = number of rows.
template <typename T>
__device__ void gather_rows(const T* __restrict__ x, const int* __restrict__ rows, T* __restrict__ out, int width) {
    const T* src = x + (size_t)rows[blockIdx.x] * width;
    T* dst = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

template <typename S, typename D>
__device__ void cast(const S* __restrict__ src, D* __restrict__ dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_f32<D>(to_f32(src[i]));
}

#define FOR_EACH_TYPE(X) X(f32, float) X(f16, __half) X(bf16, __nv_bfloat16)

#define INSTANTIATE(name, T)                                                                                 \
    extern "C" __global__ void embedding_##name(const T* table, const unsigned* ids, T* out, int width) {    \
        embedding<T>(table, ids, out, width);                                                                \
    }                                                                                                        \
    extern "C" __global__ void rms_norm_##name(const T* x, const T* w, T* out, int width, float eps) {       \
        rms_norm<T>(x, w, out, width, eps);                                                                  \
    }                                                                                                        \
    extern "C" __global__ void add_inplace_##name(T* a, const T* b, long long n) { add_inplace<T>(a, b, n); } \
    extern "C" __global__ void silu_mul_##name(const T* g, const T* u, T* out, long long n) {                \
        silu_mul<T>(g, u, out, n);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void silu_mul_halves_##name(const T* x, T* out, long long total, int half) {       \
        silu_mul_halves<T>(x, out, total, half);                                                             \
    }                                                                                                        \
    extern "C" __global__ void split_columns3_##name(const T* x, T* a, T* b, T* c, long long total, int w0,  \
                                                     int w1, int w2) {                                       \
        split_columns3<T>(x, a, b, c, total, w0, w1, w2);                                                    \
    }                                                                                                        \
    extern "C" __global__ void add_bias_##name(T* y, const T* bias, long long total, int n) {                \
        add_bias<T>(y, bias, total, n);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void rope_##name(T* x, const int* positions, const float* inv_freq, int heads,     \
                                           int d) {                                                          \
        rope<T>(x, positions, inv_freq, heads, d);                                                           \
    }                                                                                                        \
    extern "C" __global__ void kv_write_##name(const T* k, const T* v, T* kc, T* vc, const int* slots,      \
                                               int width) {                                                  \
        kv_write<T>(k, v, kc, vc, slots, width);                                                             \
    }                                                                                                        \
    extern "C" __global__ void qkv_rope_write_##name(const T* qkv, T* q, T* kc, T* vc, const int* positions, \
                                                     const float* inv_freq, const int* slots, int heads,     \
                                                     int kv_heads, int d) {                                  \
        qkv_rope_write<T>(qkv, q, kc, vc, positions, inv_freq, slots, heads, kv_heads, d);                   \
    }                                                                                                        \
    extern "C" __global__ void paged_attention_##name(const T* q, const T* kc, const T* vc, const int* tables, \
                                                      const int* row_table, const int* row_pos, T* out,      \
                                                      int heads, int kv_heads, int d, int block_size,        \
                                                      float scale) {                                         \
        paged_attention<T>(q, kc, vc, tables, row_table, row_pos, out, heads, kv_heads, d, block_size, scale); \
    }                                                                                                        \
    extern "C" __global__ void gather_rows_##name(const T* x, const int* rows, T* out, int width) {          \
        gather_rows<T>(x, rows, out, width);                                                                 \
    }

FOR_EACH_TYPE(INSTANTIATE)

#define INSTANTIATE_CASTS(name, T)                                                                           \
    extern "C" __global__ void cast_##name##_to_f32(const T* src, float* dst, long long n) {                 \
        cast<T, float>(src, dst, n);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void cast_f32_to_##name(const float* src, T* dst, long long n) {                   \
        cast<float, T>(src, dst, n);                                                                         \
    }

INSTANTIATE_CASTS(f16, __half)
INSTANTIATE_CASTS(bf16, __nv_bfloat16)
// Between the 16-bit types through f32 (exact), one rounding: what the host conversion does.
extern "C" __global__ void cast_f16_to_bf16(const __half* src, __nv_bfloat16* dst, long long n) {
    cast<__half, __nv_bfloat16>(src, dst, n);
}
extern "C" __global__ void cast_bf16_to_f16(const __nv_bfloat16* src, __half* dst, long long n) {
    cast<__nv_bfloat16, __half>(src, dst, n);
}
