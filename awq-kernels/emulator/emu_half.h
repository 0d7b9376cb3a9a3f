// IEEE binary16 and bfloat16 bit patterns to and from float, for the emulator's kernels (emu_device.h) and
// its cuBLAS (emu_cublas.cpp): round to nearest even, subnormals, infinities and NaN as the hardware does.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace emu {

inline uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float f16_bits_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F;
    uint32_t mantissa = h & 0x3FF;
    if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in f32
        float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 0x1F) {  // infinity or NaN (payload kept)
        return bits_float(sign | 0x7F800000 | (mantissa << 13));
    }
    return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Rounds to nearest even, into subnormals, to infinity above the largest finite half; NaN stays NaN.
inline uint16_t f32_to_f16_bits(float f) {
    uint32_t x = float_bits(f);
    uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
    uint32_t magnitude = x & 0x7FFFFFFF;
    if (magnitude >= 0x7F800000) {  // infinity, or NaN made quiet with the top of its payload
        return magnitude == 0x7F800000 ? sign | 0x7C00 : sign | 0x7E00 | ((magnitude >> 13) & 0x3FF);
    }
    if (magnitude >= 0x477FF000) {  // >= 65520, halfway between 65504 and 2^16: rounds to infinity
        return sign | 0x7C00;
    }
    if (magnitude >= 0x38800000) {  // >= 2^-14: normal; rebias the exponent, round away 13 mantissa bits
        uint32_t h = (magnitude - 0x38000000) >> 13;
        uint32_t rest = magnitude & 0x1FFF;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) {
            ++h;  // a carry into the exponent is still the right result
        }
        return sign | static_cast<uint16_t>(h);
    }
    // Subnormal or zero: the result counts units of 2^-24; the value is m x 2^(e - 150) with the implicit
    // bit in m, so that count is m >> (126 - e) before rounding.
    uint32_t e = magnitude >> 23;
    uint32_t shift = 126 - e;
    if (e == 0 || shift > 24) {  // below 2^-25 (half the smallest subnormal): rounds to zero
        return sign;
    }
    uint32_t m = (magnitude & 0x7FFFFF) | 0x800000;
    uint32_t h = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1))) {
        ++h;  // may become 0x400, the smallest normal, which is right
    }
    return sign | static_cast<uint16_t>(h);
}

inline float bf16_bits_to_f32(uint16_t b) {
    return bits_float(uint32_t(b) << 16);
}

// Rounds to nearest even (overflowing to infinity); NaN stays NaN, made quiet.
inline uint16_t f32_to_bf16_bits(float f) {
    uint32_t x = float_bits(f);
    if ((x & 0x7FFFFFFF) > 0x7F800000) {
        return static_cast<uint16_t>((x >> 16) | 0x40);
    }
    x += 0x7FFF + ((x >> 16) & 1);
    return static_cast<uint16_t>(x >> 16);
}

}  // namespace emu
