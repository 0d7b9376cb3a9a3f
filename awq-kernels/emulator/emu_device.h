// What the CUDA kernels of awq-kernels/kernels see when the CPU emulator compiles them as C++ (forced in front
// of every kernel file; see README.md): CUDA's qualifiers, built-in variables, vector and 16-bit float types,
// math and bit intrinsics, warp-collective functions, and the emulated forms of the PTX the kernels write in
// inline assembly (`#ifdef INTERNVL_EMULATE` there). Each CUDA thread is a fiber of emu_runtime.cpp; the
// collective functions below switch fibers until every live lane of the warp has arrived.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define INTERNVL_EMULATE 1

#define __device__
#define __host__
#ifdef EMU_LIST_KERNELS  // the registry generator finds the kernels by this mark in the preprocessed source
#define __global__ __emu_global__
#else
#define __global__
#endif
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- built-in variables and vector types ----
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {
// The running fiber's thread index, and the launch's block index and shapes (emu_runtime.cpp).
const uint3& thread_idx();
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
// This launch's dynamic shared memory.
void* dynamic_shared();
// Block barrier (__syncthreads).
void sync_threads();
// Every live lane of the calling warp deposits `bytes` (at most 64) from `mine`; returns the 32 lanes'
// deposits, 64 bytes apart (lane i at offset 64·i), valid until the warp's next collective.
const unsigned char* warp_gather(const void* mine, size_t bytes);
// Lane of the calling thread, and the mask of the live lanes of its warp.
int lane_id();
unsigned live_lanes();
// cp.async of 16 bytes (n of them read from src, the rest zero), its commit and wait (emu_runtime.cpp keeps
// each thread's copies pending until its wait, so shared memory read before the wait holds old bytes).
void cp_async(void* dst, const void* src, int n);
void cp_async_commit();
void cp_async_wait(int pending_groups);
}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// ---- 16-bit floats ----
#include "emu_half.h"

// As CUDA's: converting constructors from float (rounding to nearest even) and back.
struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(emu::f32_to_f16_bits(f)) {}
    operator float() const { return emu::f16_bits_to_f32(__x); }
};
struct __half2 {
    __half x, y;
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(emu::f32_to_bf16_bits(f)) {}
    operator float() const { return emu::bf16_bits_to_f32(__x); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __half __ushort_as_half(unsigned short bits) {
    __half h;
    h.__x = bits;
    return h;
}
inline float __half2float(__half h) { return emu::f16_bits_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__half(lo), __half(hi)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return emu::bf16_bits_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__nv_bfloat16(lo), __nv_bfloat16(hi)};
}

// ---- math and bit intrinsics (the file is compiled with -ffp-contract=off: a product rounds on its own) ----
inline float __expf(float x) { return std::exp(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
inline float __uint_as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned v;
    std::memcpy(&v, &f, 4);
    return v;
}
inline int __float_as_int(float f) {
    int v;
    std::memcpy(&v, &f, 4);
    return v;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
// CUDA's min/max take mixed integer types (the usual arithmetic conversions) and floats.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __syncthreads() { emu::sync_threads(); }
template <class T>
inline T atomicAdd(T* p, T v) {  // fibers switch only at collectives: a plain read-modify-write is atomic
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    if (old < v) *p = v;
    return old;
}
template <class T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}

// ---- warp collectives ----
inline int __lane_id() { return emu::lane_id(); }
inline void __syncwarp(unsigned = 0xffffffffu) { (void)emu::warp_gather(nullptr, 0); }
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    static_assert(sizeof(T) <= 64, "shuffle of a large type");
    const unsigned char* all = emu::warp_gather(&v, sizeof(T));
    const int lane = emu::lane_id(), base = lane & ~(width - 1);
    T out;
    std::memcpy(&out, all + 64 * (base + (src & (width - 1))), sizeof(T));
    return out;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    const unsigned char* all = emu::warp_gather(&v, sizeof(T));
    const int lane = emu::lane_id(), src = lane ^ lane_mask;
    T out = v;
    if ((src & ~(width - 1)) == (lane & ~(width - 1))) std::memcpy(&out, all + 64 * src, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned char* all = emu::warp_gather(&v, sizeof(T));
    const int lane = emu::lane_id(), src = lane + (int)delta;
    T out = v;
    if ((src & ~(width - 1)) == (lane & ~(width - 1))) std::memcpy(&out, all + 64 * src, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned char* all = emu::warp_gather(&v, sizeof(T));
    const int lane = emu::lane_id(), src = lane - (int)delta;
    T out = v;
    if (src >= 0 && (src & ~(width - 1)) == (lane & ~(width - 1))) std::memcpy(&out, all + 64 * src, sizeof(T));
    return out;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    const int p = pred != 0;
    const unsigned char* all = emu::warp_gather(&p, sizeof p);
    unsigned out = 0;
    const unsigned live = emu::live_lanes() & mask;
    for (int i = 0; i < 32; ++i) {
        int v;
        std::memcpy(&v, all + 64 * i, sizeof v);
        if ((live >> i) & 1u && v) out |= 1u << i;
    }
    return out;
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
    const unsigned char* all = emu::warp_gather(&v, sizeof(T));
    unsigned out = 0;
    const unsigned live = emu::live_lanes() & mask;
    for (int i = 0; i < 32; ++i)
        if ((live >> i) & 1u && std::memcmp(all + 64 * i, &v, sizeof(T)) == 0) out |= 1u << i;
    return out;
}

// ---- the PTX of the kernels' inline assembly ----
namespace emu {
// fma.rn.{f16,bf16}x2: d = a·b + c per half, one rounding (the product of two 16-bit values is exact in
// double, and so is its sum with a third in every case the kernels produce).
inline unsigned fma2(unsigned a, unsigned b, unsigned c, bool bf16) {
    unsigned out = 0;
    for (int h = 0; h < 2; ++h) {
        const unsigned short x = (unsigned short)(a >> (16 * h)), y = (unsigned short)(b >> (16 * h)),
                             z = (unsigned short)(c >> (16 * h));
        const auto to = bf16 ? bf16_bits_to_f32 : f16_bits_to_f32;
        const double r = (double)to(x) * (double)to(y) + (double)to(z);
        // Rounding the double to float first can double-round; the kernels' operands make r exact in float.
        const unsigned short bits = bf16 ? f32_to_bf16_bits((float)r) : f32_to_f16_bits((float)r);
        out |= (unsigned)bits << (16 * h);
    }
    return out;
}
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 (the fragment layouts of the PTX ISA).
void mma_m16n8k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, bool bf16);
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: each lane passes the row address of its matrix row.
void ldmatrix_x4(unsigned (&r)[4], const void* row, bool trans);
}  // namespace emu
