// The small kernels of the Qwen2 forward on the GPU: embedding gather, RMSNorm, residual add, SiLU gate,
// rotary embedding (alone, or fused with the q|k|v split and the KV-cache write), KV-cache write, paged
// causal attention (straightforward: one warp per query row and head, online softmax; f16/bf16 with head
// dims 64 and 128 take the tensor-core kernels of attention.cu, so this one serves f32 and other head dims),
// row gather, bias add, casts.
//
// T is the activation type: __half, __nv_bfloat16 or float. Every kernel computes in f32 and rounds once
// when it stores. Shapes use the project's names: t rows (tokens), h query heads, h_kv KV heads, d head dim.
// The memory-bound ones move 16-byte vectors where the row width allows (a `vec` argument, decided by the
// host from the width; element by element otherwise): they should run at the copy bandwidth
// (benches/rowwise_gpu.rs measures them).
// Verified by awq-kernels/tests/ops_gpu.rs against the CPU implementations on random inputs, with widths
// that take each path.
#include "common.cuh"

// out[i, :] = table[ids[i], :]; grid = t rows. Ids were range-checked on the host.
template <typename T>
__device__ void embedding(const T* __restrict__ table, const unsigned* __restrict__ ids, T* __restrict__ out,
                          int width, int vec) {
    copy_row<T>(table + (size_t)ids[blockIdx.x] * width, out + (size_t)blockIdx.x * width, width, vec);
}

// out = w * T(x / sqrt(mean(x^2) + eps)) (transformers' two roundings, `rms_scale`); one block per row; 16-byte
// vectors when `vec`.
template <typename T>
__device__ void rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int width, float eps,
                         int vec) {
    constexpr int N = Vec<T>::N;
    const T* row = x + (size_t)blockIdx.x * width;
    T* o = out + (size_t)blockIdx.x * width;
    float ss = 0.0f;
    if (vec && RowRegs<T>::fits(width)) {
        // The row read once: the sum of squares, then the outputs from the same registers.
        RowRegs<T> a;
        a.load(row, width);
        ss = a.sum(width, [](float v) { return v * v; });
        const float inv = rsqrtf(block_sum(ss) / width + eps);
#pragma unroll
        for (int r = 0; r < ROW_VECS; ++r)
            if (a.col(r) < width) {
                Vec<T> g, y;
                g.load(w + a.col(r));
#pragma unroll
                for (int i = 0; i < N; ++i) y.e[i] = rms_scale<T>(g.e[i], to_f32(a.v[r].e[i]), inv);
                y.store(o + a.col(r));
            }
        return;
    }
    if (vec) {
        for (int c = threadIdx.x * N; c < width; c += blockDim.x * N) {
            Vec<T> a;
            a.load(row + c);
#pragma unroll
            for (int i = 0; i < N; ++i) ss += to_f32(a.e[i]) * to_f32(a.e[i]);
        }
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) { float v = to_f32(row[c]); ss += v * v; }
    }
    rms_store_row<T>(row, w, o, width, rsqrtf(block_sum(ss) / width + eps), vec);
}

// Element-wise kernels: n / N 16-byte vectors in a grid-stride loop (allocations are 256-byte aligned), the
// n % N last elements by the first threads of block 0. `f(a, b)` gives one output from one element of each input.
template <typename T, class F>
__device__ __forceinline__ void binary_elementwise(const T* a, const T* b, T* out, long long n, F f) {
    constexpr int N = Vec<T>::N;
    const long long vecs = n / N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vecs; i += stride) {
        Vec<T> x, y, z;
        x.load(a + i * N);
        y.load(b + i * N);
#pragma unroll
        for (int j = 0; j < N; ++j) z.e[j] = f(x.e[j], y.e[j]);
        z.store(out + i * N);
    }
    if (blockIdx.x == 0 && threadIdx.x < n - vecs * N) {
        const long long t = vecs * N + threadIdx.x;
        out[t] = f(a[t], b[t]);
    }
}

// silu(v) · u as transformers computes it in f32 (one rounding to T at the store).
__device__ __forceinline__ float silu_times(float v, float u) { return v / (1.0f + __expf(-v)) * u; }

template <typename T>
__device__ void add_inplace(T* a, const T* __restrict__ b, long long n) {
    binary_elementwise<T>(a, b, a, n, [](T x, T y) { return from_f32<T>(to_f32(x) + to_f32(y)); });
}

template <typename T>
__device__ void silu_mul(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ out, long long n) {
    binary_elementwise<T>(g, u, out, n, [](T x, T y) { return from_f32<T>(silu_times(to_f32(x), to_f32(y))); });
}

// The fused gate|up projection of a gated MLP: x [rows, 2·half] -> out[r][j] = silu(x[r][j]) · x[r][half + j]
// (the formula of silu_mul). With `vec` (half a multiple of N) each thread takes 16-byte vectors, unit u =
// (row u / (half/N), vector u % (half/N)); the host keeps rows·half/N below 2^31. Otherwise one element each.
template <typename T>
__device__ void silu_mul_halves(const T* __restrict__ x, T* __restrict__ out, long long total, int half, int vec) {
    constexpr int N = Vec<T>::N;
    const long long stride = (long long)gridDim.x * blockDim.x;
    if (vec) {
        const int hv = half / N;
        for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < total / N; u += stride) {
            const int r = (int)((unsigned)u / (unsigned)hv);
            const int j = (int)((unsigned)u - (unsigned)r * (unsigned)hv) * N;
            const T* row = x + (size_t)r * 2 * half;
            Vec<T> g, up, y;
            g.load(row + j);
            up.load(row + half + j);
#pragma unroll
            for (int e = 0; e < N; ++e) y.e[e] = from_f32<T>(silu_times(to_f32(g.e[e]), to_f32(up.e[e])));
            y.store(out + (size_t)r * half + j);
        }
    } else {
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
            const long long r = i / half;
            const int j = (int)(i - r * half);
            const T* row = x + r * 2 * (long long)half;
            out[i] = from_f32<T>(silu_times(to_f32(row[j]), to_f32(row[half + j])));
        }
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

// y[m, n] = bias[n]: the C operand of a GEMM with beta = 1, so the bias is added to the f32 accumulator before the
// one rounding (as torch's addmm does), not to an already rounded product.
template <typename T>
__device__ void bias_rows(T* __restrict__ y, const T* __restrict__ bias, long long total, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] = bias[i % n];
}

// y[m, n] = round_T(product[m, n] + bias[n]): a GEMM's f32 product and its bias, rounded once. A thread
// takes `vec` consecutive elements: 8 (two 16-byte product loads, one 16-byte bias load and store, one
// division; the host passes it when n % 8 == 0 and the pointers are 16-byte aligned, so the 8 share a row)
// or 1.
template <typename T>
__device__ void add_bias_round(const float* __restrict__ product, const T* __restrict__ bias, T* __restrict__ y,
                               long long total, int n, int vec) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec == Vec<T>::N) {
        const long long i = t * Vec<T>::N;
        if (i >= total) return;
        const float4 p0 = reinterpret_cast<const float4*>(product + i)[0];
        const float4 p1 = reinterpret_cast<const float4*>(product + i)[1];
        const float p[8] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
        Vec<T> b, out;
        b.load(bias + (int)(i % n));
#pragma unroll
        for (int j = 0; j < Vec<T>::N; ++j) out.e[j] = from_f32<T>(p[j] + to_f32(b.e[j]));
        out.store(y + i);
        return;
    }
    if (t < total) y[t] = from_f32<T>(product[t] + to_f32(bias[t % n]));
}

// Rotate-half RoPE. inv_freq [d/2] comes from the host (computed once as transformers does, 1 / theta^(2i/d) in
// f32), so the angle pos · inv_freq is the same f32 product on both sides even at positions of tens of
// thousands; the rotation (a, b) -> (a·cos − b·sin, b·cos + a·sin) of the pair (i, i + d/2) is rounded as the
// CPU computes it (products, then the sum, no fused multiply-add).
//
// Both kernels run one block per row: a thread owns G consecutive pairs (G = 16-byte vector width, or 1 when
// d/2 is not a multiple of it) at the same place of every head, so it computes their cos and sin once and
// applies them to each head it visits (heads thread / (d/2/G), stepping by blockDim / (d/2/G)); the host makes
// blockDim a multiple of d/2/G.
template <int G>
struct Rotation {
    float c[G], s[G];
    __device__ __forceinline__ Rotation(int pos, const float* __restrict__ inv_freq, int i0) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float angle = (float)pos * inv_freq[i0 + j];
            c[j] = cosf(angle);
            s[j] = sinf(angle);
        }
    }
    __device__ __forceinline__ float first(float a, float b, int j) const {
        return __fsub_rn(__fmul_rn(a, c[j]), __fmul_rn(b, s[j]));
    }
    __device__ __forceinline__ float second(float a, float b, int j) const {
        return __fadd_rn(__fmul_rn(b, c[j]), __fmul_rn(a, s[j]));
    }
};

// Pairs i0 .. i0 + G - 1 of one head, rotated from `src` into `dst` (which may be the same head).
template <typename T, int G>
__device__ __forceinline__ void rotate_pairs(const T* src, T* dst, int i0, int half, const Rotation<G>& rot) {
    if constexpr (G == Vec<T>::N) {
        Vec<T> a, b, x, y;
        a.load(src + i0);
        b.load(src + i0 + half);
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float fa = to_f32(a.e[j]), fb = to_f32(b.e[j]);
            x.e[j] = from_f32<T>(rot.first(fa, fb, j));
            y.e[j] = from_f32<T>(rot.second(fa, fb, j));
        }
        x.store(dst + i0);
        y.store(dst + i0 + half);
    } else {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float fa = to_f32(src[i0 + j]), fb = to_f32(src[i0 + j + half]);
            dst[i0 + j] = from_f32<T>(rot.first(fa, fb, j));
            dst[i0 + j + half] = from_f32<T>(rot.second(fa, fb, j));
        }
    }
}

// Pairs i0 .. i0 + G - 1 of one head copied unrotated (the v heads of a fused q|k|v row).
template <typename T, int G>
__device__ __forceinline__ void copy_pairs(const T* src, T* dst, int i0, int half) {
    if constexpr (G == Vec<T>::N) {
        Vec<T> a, b;
        a.load(src + i0);
        b.load(src + i0 + half);
        a.store(dst + i0);
        b.store(dst + i0 + half);
    } else {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            dst[i0 + j] = src[i0 + j];
            dst[i0 + j + half] = src[i0 + j + half];
        }
    }
}

// In place on x [t, heads, d]; grid = t.
template <typename T, int G>
__device__ __forceinline__ void rope_rows(T* __restrict__ x, const int* __restrict__ positions,
                                          const float* __restrict__ inv_freq, int heads, int d) {
    const int half = d / 2, per_head = half / G, step = blockDim.x / per_head;
    if ((int)threadIdx.x >= step * per_head) return;
    const int i0 = (threadIdx.x % per_head) * G, r = blockIdx.x;
    const Rotation<G> rot(positions[r], inv_freq, i0);
    T* row = x + (size_t)r * heads * d;
    for (int h = threadIdx.x / per_head; h < heads; h += step) rotate_pairs<T, G>(row + h * d, row + h * d, i0, half, rot);
}

template <typename T>
__device__ void rope(T* __restrict__ x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                     int heads, int d, int vec) {
    if (vec)
        rope_rows<T, Vec<T>::N>(x, positions, inv_freq, heads, d);
    else
        rope_rows<T, 1>(x, positions, inv_freq, heads, d);
}

// A fused q|k|v projection row [(heads + 2·kv_heads)·d] taken apart in one pass: q heads rotated into
// q [t, heads, d], k heads rotated and v heads copied into the cache rows slots[r] ([slots, kv_heads, d]).
// grid = t. Replaces a column split, two rope launches and a cache write, with the same bits.
template <typename T, int G>
__device__ __forceinline__ void qkv_rope_rows(const T* __restrict__ qkv, T* __restrict__ q, T* __restrict__ kc,
                                              T* __restrict__ vc, const int* __restrict__ positions,
                                              const float* __restrict__ inv_freq, const int* __restrict__ slots,
                                              int heads, int kv_heads, int d) {
    const int half = d / 2, per_head = half / G, step = blockDim.x / per_head;
    if ((int)threadIdx.x >= step * per_head) return;
    const int i0 = (threadIdx.x % per_head) * G, r = blockIdx.x;
    const Rotation<G> rot(positions[r], inv_freq, i0);
    const T* src = qkv + (size_t)r * (heads + 2 * kv_heads) * d;
    T* const q_row = q + (size_t)r * heads * d;
    const size_t cache_row = (size_t)slots[r] * kv_heads * d;
    for (int y = threadIdx.x / per_head; y < heads + 2 * kv_heads; y += step) {
        const T* head = src + (size_t)y * d;
        if (y < heads)
            rotate_pairs<T, G>(head, q_row + (size_t)y * d, i0, half, rot);
        else if (y < heads + kv_heads)
            rotate_pairs<T, G>(head, kc + cache_row + (size_t)(y - heads) * d, i0, half, rot);
        else
            copy_pairs<T, G>(head, vc + cache_row + (size_t)(y - heads - kv_heads) * d, i0, half);
    }
}

template <typename T>
__device__ void qkv_rope_write(const T* __restrict__ qkv, T* __restrict__ q, T* __restrict__ kc,
                               T* __restrict__ vc, const int* __restrict__ positions,
                               const float* __restrict__ inv_freq, const int* __restrict__ slots, int heads,
                               int kv_heads, int d, int vec) {
    if (vec)
        qkv_rope_rows<T, Vec<T>::N>(qkv, q, kc, vc, positions, inv_freq, slots, heads, kv_heads, d);
    else
        qkv_rope_rows<T, 1>(qkv, q, kc, vc, positions, inv_freq, slots, heads, kv_heads, d);
}

// cache[slots[i], :] = src[i, :] for keys and values; grid = t rows, row width = h_kv * d.
template <typename T>
__device__ void kv_write(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc, T* __restrict__ vc,
                         const int* __restrict__ slots, int width, int vec) {
    const size_t src = (size_t)blockIdx.x * width, dst = (size_t)slots[blockIdx.x] * width;
    copy_row<T>(k + src, kc + dst, width, vec);
    copy_row<T>(v + src, vc + dst, width, vec);
}

// Attention of each query row over the keys 0..=row_pos[r] of its sequence, read through a block table that
// starts at tables[row_table[r]] (the paged cache; keys held contiguously in memory are a table of
// consecutive rows with block size 1). The fallback for what the flash and decode kernels do not take (f32
// activations, head dims other than 64 and 128). One warp per (query row, head): grid = (t, h), block = 32.
// Keys go 32 at a time: each lane scores one key (the whole dot product, q from shared memory), the warp
// takes the chunk's max and sum once (online softmax in f32), and each lane then accumulates its elements
// l, l + 32, ... of the output over the chunk's keys (any d up to 256).
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <typename T>
__device__ void paged_attention(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                const int* __restrict__ tables, const int* __restrict__ row_table,
                                const int* __restrict__ row_pos, T* __restrict__ out, int heads, int kv_heads,
                                int d, int block_size, float scale) {
    constexpr int PER_LANE = 8;  // d <= 32 · 8
    __shared__ float qs[32 * PER_LANE];
    __shared__ float weights[32];
    const int row = blockIdx.x, head = blockIdx.y, lane = threadIdx.x;
    const size_t kv_off = (size_t)(head / (heads / kv_heads)) * d, kv_stride = (size_t)kv_heads * d;
    const T* qv = q + ((size_t)row * heads + head) * d;
    for (int c = lane; c < d; c += 32) qs[c] = to_f32(qv[c]) * scale;
    float acc[PER_LANE];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) acc[j] = 0.0f;
    __syncwarp();
    const int* table = tables + row_table[row];
    auto slot = [&](int p) { return (size_t)table[p / block_size] * block_size + p % block_size; };
    const int n = row_pos[row] + 1;
    float m = __int_as_float(0xff800000), l = 0.0f;  // -inf
    for (int p0 = 0; p0 < n; p0 += 32) {
        const int p = p0 + lane;
        float s = __int_as_float(0xff800000);
        if (p < n) {
            const T* kp = kc + slot(p) * kv_stride + kv_off;
            s = 0.0f;
            for (int c = 0; c < d; ++c) s += qs[c] * to_f32(kp[c]);
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float correction = __expf(m - m_new), w = p < n ? __expf(s - m_new) : 0.0f;
        l = l * correction + warp_sum(w);
        weights[lane] = w;
        __syncwarp();
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) acc[j] *= correction;
        const int keys = min(32, n - p0);
        for (int i = 0; i < keys; ++i) {
            const T* vp = vc + slot(p0 + i) * kv_stride + kv_off;
            const float wi = weights[i];
#pragma unroll
            for (int j = 0; j < PER_LANE; ++j) {
                const int c = lane + 32 * j;
                if (c < d) acc[j] += wi * to_f32(vp[c]);
            }
        }
        __syncwarp();  // every lane has read the weights before the next chunk writes them
        m = m_new;
    }
    T* o = out + ((size_t)row * heads + head) * d;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        const int c = lane + 32 * j;
        if (c < d) o[c] = from_f32<T>(acc[j] / l);
    }
}

// out[i, :] = x[rows[i], :]; grid = number of rows.
template <typename T>
__device__ void gather_rows(const T* __restrict__ x, const int* __restrict__ rows, T* __restrict__ out, int width,
                            int vec) {
    copy_row<T>(x + (size_t)rows[blockIdx.x] * width, out + (size_t)blockIdx.x * width, width, vec);
}

template <typename S, typename D>
__device__ void cast(const S* __restrict__ src, D* __restrict__ dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_f32<D>(to_f32(src[i]));
}

// Synthetic tensors (src/synthetic.rs, which states the formula): element i of seed s is drawn from
// splitmix64(s ^ i * 0x2545f4914f6cdd1d); the same bits as the host makes. Grid-stride, any length.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// kind 0: uniform in [-a, a); 1: the constant a.
template <typename T>
__device__ void synthetic_float(T* __restrict__ out, long long n, int kind, float a, unsigned long long seed) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = a;
        if (kind == 0) {
            unsigned long long r = splitmix64(seed ^ ((unsigned long long)i * 0x2545f4914f6cdd1dull));
            // 24 bits scaled to [0, 1), then to [-1, 1): exact in f32; the product with a rounds once.
            float u = (float)(r >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
            v = __fmul_rn(u, a);
        }
        out[i] = from_f32<T>(v);
    }
}

// kind 2: random words (AWQ codes); 3: every code 8 (AWQ zero points).
extern "C" __global__ void synthetic_words(unsigned* __restrict__ out, long long n, int kind, unsigned long long seed) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = kind == 2 ? (unsigned)splitmix64(seed ^ ((unsigned long long)i * 0x2545f4914f6cdd1dull)) : 0x88888888u;
    }
}

#define FOR_EACH_TYPE(X) X(f32, float) X(f16, __half) X(bf16, __nv_bfloat16)

#define INSTANTIATE(name, T)                                                                                 \
    extern "C" __global__ void embedding_##name(const T* table, const unsigned* ids, T* out, int width,      \
                                                int vec) {                                                   \
        embedding<T>(table, ids, out, width, vec);                                                           \
    }                                                                                                        \
    extern "C" __global__ void rms_norm_##name(const T* x, const T* w, T* out, int width, float eps,         \
                                               int vec) {                                                    \
        rms_norm<T>(x, w, out, width, eps, vec);                                                             \
    }                                                                                                        \
    extern "C" __global__ void add_inplace_##name(T* a, const T* b, long long n) { add_inplace<T>(a, b, n); } \
    extern "C" __global__ void silu_mul_##name(const T* g, const T* u, T* out, long long n) {                \
        silu_mul<T>(g, u, out, n);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void silu_mul_halves_##name(const T* x, T* out, long long total, int half,         \
                                                      int vec) {                                             \
        silu_mul_halves<T>(x, out, total, half, vec);                                                        \
    }                                                                                                        \
    extern "C" __global__ void split_columns3_##name(const T* x, T* a, T* b, T* c, long long total, int w0,  \
                                                     int w1, int w2) {                                       \
        split_columns3<T>(x, a, b, c, total, w0, w1, w2);                                                    \
    }                                                                                                        \
    extern "C" __global__ void bias_rows_##name(T* y, const T* bias, long long total, int n) {               \
        bias_rows<T>(y, bias, total, n);                                                                     \
    }                                                                                                        \
    extern "C" __global__ void add_bias_round_##name(const float* product, const T* bias, T* y, long long total, \
                                                     int n, int vec) {                                       \
        add_bias_round<T>(product, bias, y, total, n, vec);                                                  \
    }                                                                                                        \
    extern "C" __global__ void rope_##name(T* x, const int* positions, const float* inv_freq, int heads,     \
                                           int d, int vec) {                                                 \
        rope<T>(x, positions, inv_freq, heads, d, vec);                                                      \
    }                                                                                                        \
    extern "C" __global__ void kv_write_##name(const T* k, const T* v, T* kc, T* vc, const int* slots,      \
                                               int width, int vec) {                                         \
        kv_write<T>(k, v, kc, vc, slots, width, vec);                                                        \
    }                                                                                                        \
    extern "C" __global__ void qkv_rope_write_##name(const T* qkv, T* q, T* kc, T* vc, const int* positions, \
                                                     const float* inv_freq, const int* slots, int heads,     \
                                                     int kv_heads, int d, int vec) {                         \
        qkv_rope_write<T>(qkv, q, kc, vc, positions, inv_freq, slots, heads, kv_heads, d, vec);              \
    }                                                                                                        \
    extern "C" __global__ void paged_attention_##name(const T* q, const T* kc, const T* vc, const int* tables, \
                                                      const int* row_table, const int* row_pos, T* out,      \
                                                      int heads, int kv_heads, int d, int block_size,        \
                                                      float scale) {                                         \
        paged_attention<T>(q, kc, vc, tables, row_table, row_pos, out, heads, kv_heads, d, block_size, scale); \
    }                                                                                                        \
    extern "C" __global__ void gather_rows_##name(const T* x, const int* rows, T* out, int width, int vec) { \
        gather_rows<T>(x, rows, out, width, vec);                                                            \
    }

FOR_EACH_TYPE(INSTANTIATE)

#define INSTANTIATE_CASTS(name, T)                                                                           \
    extern "C" __global__ void cast_##name##_to_f32(const T* src, float* dst, long long n) {                 \
        cast<T, float>(src, dst, n);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void cast_f32_to_##name(const float* src, T* dst, long long n) {                   \
        cast<float, T>(src, dst, n);                                                                         \
    }

#define INSTANTIATE_SYNTHETIC(name, T)                                                                       \
    extern "C" __global__ void synthetic_##name(T* out, long long n, int kind, float a, unsigned long long seed) { \
        synthetic_float<T>(out, n, kind, a, seed);                                                           \
    }
FOR_EACH_TYPE(INSTANTIATE_SYNTHETIC)

// out[r][j] = w[r][j] · scale[r], the product rounded to f32 and then to the output type: a layer scale
// folded into the layer before it, with the roundings of the host's f32 fold followed by its cast.
template <typename S, typename D>
__device__ void scale_rows(const S* __restrict__ w, const float* __restrict__ scale, D* __restrict__ out,
                           long long total, int k) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        out[i] = from_f32<D>(__fmul_rn(to_f32(w[i]), scale[i / k]));
}

#define INSTANTIATE_SCALE_ROWS_TO(sname, S, dname, D)                                                        \
    extern "C" __global__ void scale_rows_##sname##_to_##dname(const S* w, const float* scale, D* out,       \
                                                               long long total, int k) {                     \
        scale_rows<S, D>(w, scale, out, total, k);                                                           \
    }
#define INSTANTIATE_SCALE_ROWS(sname, S)                                                                     \
    INSTANTIATE_SCALE_ROWS_TO(sname, S, f32, float)                                                          \
    INSTANTIATE_SCALE_ROWS_TO(sname, S, f16, __half)                                                         \
    INSTANTIATE_SCALE_ROWS_TO(sname, S, bf16, __nv_bfloat16)
FOR_EACH_TYPE(INSTANTIATE_SCALE_ROWS)

INSTANTIATE_CASTS(f16, __half)
INSTANTIATE_CASTS(bf16, __nv_bfloat16)
// Between the 16-bit types through f32 (exact), one rounding: what the host conversion does.
extern "C" __global__ void cast_f16_to_bf16(const __half* src, __nv_bfloat16* dst, long long n) {
    cast<__half, __nv_bfloat16>(src, dst, n);
}
extern "C" __global__ void cast_bf16_to_f16(const __nv_bfloat16* src, __half* dst, long long n) {
    cast<__nv_bfloat16, __half>(src, dst, n);
}

// The patch-embedding input of a vision encoder whose one linear layer also adds the class token and the
// position embedding (src/ops/patch `patches_with_positions`): images x [n, c, hh, ww] (f32) -> out
// [n·t, width], t = 1 + (hh/p)·(ww/p). Row 0 of an image is zero but for a 1 at column c·p·p (the class
// token); row i ≥ 1 is patch i - 1 in grid order, flattened (channel, row, column) as a conv weight is, with
// a 1 at column c·p·p + i; zeros elsewhere. The f32 value rounded once to the output type, as the host's
// conversion does.
template <typename D>
__device__ void patches_with_positions(const float* __restrict__ x, D* __restrict__ out, int c, int hh, int ww,
                                       int p, int width, long long total) {
    const int gw = ww / p, t = 1 + (hh / p) * gw, patch = c * p * p;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long row = e / width;
        const int col = (int)(e - row * width);
        const long long img = row / t;
        const int i = (int)(row - img * t);
        float v = 0.0f;
        if (col < patch) {
            if (i > 0) {
                const int py = (i - 1) / gw, px = (i - 1) % gw;
                const int ch = col / (p * p), r = col % (p * p);
                v = x[((img * c + ch) * hh + py * p + r / p) * ww + px * p + r % p];
            }
        } else if (col == patch + i) {
            v = 1.0f;
        }
        out[e] = from_f32<D>(v);
    }
}

#define INSTANTIATE_PATCHES_WITH_POSITIONS(name, D)                                                          \
    extern "C" __global__ void patches_with_positions_##name(const float* x, D* out, int c, int hh, int ww,  \
                                                             int p, int width, long long total) {            \
        patches_with_positions<D>(x, out, c, hh, ww, p, width, total);                                      \
    }
FOR_EACH_TYPE(INSTANTIATE_PATCHES_WITH_POSITIONS)
