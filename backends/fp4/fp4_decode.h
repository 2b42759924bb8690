// Decoding of the 4-bit element codes and of the block scales, shared by the CPU reference
// (backends/fp4) and the CUDA kernels (backends/cuda/fp4_kernels.cu): the same functions
// compile as host and device code, so both sides decode the same bits to the same float.
//
// Every function here is exact: each returns the IEEE float32 value of its code (built from
// bits, never through a rounding operation), and the dequantized weight is one product
// rounded once (see dequantize_value). NaN results are always the canonical quiet NaN
// 0x7FC00000 on both sides, so float outputs can be compared bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define VB_FP4_HD __host__ __device__ __forceinline__
#else
#define VB_FP4_HD inline
#endif

namespace vb::backends::fp4 {

// The four weight formats. Values are stored in serialized blobs: never renumber.
enum class Format : uint32_t { kNvfp4 = 0, kMxfp4 = 1, kNf4 = 2, kBnbFp4 = 3 };

// Elements per scale block along K.
VB_FP4_HD constexpr int block_size(Format format) {
  return format == Format::kNvfp4 ? 16 : format == Format::kMxfp4 ? 32 : 64;
}

// Whether a block's scale is one byte (E4M3 for NVFP4, E8M0 for MXFP4) rather than a float32
// absmax (NF4, bnb_fp4).
VB_FP4_HD constexpr bool has_byte_scales(Format format) {
  return format == Format::kNvfp4 || format == Format::kMxfp4;
}

VB_FP4_HD float float_from_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

VB_FP4_HD uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

constexpr uint32_t kCanonicalNanBits = 0x7FC00000u;
VB_FP4_HD float canonical_nan() { return float_from_bits(kCanonicalNanBits); }

// E2M1 (OCP FP4): bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa. Magnitude codes
// 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6.
VB_FP4_HD float e2m1_to_float(uint32_t code) {
  const uint32_t sign = (code & 8u) << 28;
  const uint32_t mag = code & 7u;
  uint32_t bits;
  if (mag == 0) {
    bits = 0;
  } else if (mag == 1) {
    bits = 0x3F000000u;  // 0.5
  } else {
    bits = (((mag >> 1) + 126u) << 23) | ((mag & 1u) << 22);  // 2^(e-1) * (1 + m/2)
  }
  return float_from_bits(sign | bits);
}

// FP8 E4M3 (OCP "E4M3FN"): bias 7, no infinities, 0x7F and 0xFF are NaN, subnormals m * 2^-9,
// largest finite 448.
VB_FP4_HD bool e4m3_is_nan(uint32_t byte) { return (byte & 0x7Fu) == 0x7Fu; }
VB_FP4_HD float e4m3_to_float(uint32_t byte) {
  if (e4m3_is_nan(byte)) return canonical_nan();
  const uint32_t sign = (byte & 0x80u) << 24;
  const uint32_t exponent = (byte >> 3) & 15u;
  const uint32_t mantissa = byte & 7u;
  if (exponent == 0) {
    // m * 2^-9 for m = 1..7: the float of m is exact, and so is the shift of its exponent.
    if (mantissa == 0) return float_from_bits(sign);
    const uint32_t m_bits = bits_from_float(static_cast<float>(mantissa));
    return float_from_bits(sign | (m_bits - (9u << 23)));
  }
  return float_from_bits(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

// E8M0 (OCP MX scale): 2^(e - 127); 0xFF is NaN. 2^-127 (e = 0) is a float32 subnormal.
VB_FP4_HD bool e8m0_is_nan(uint32_t byte) { return byte == 0xFFu; }
VB_FP4_HD float e8m0_to_float(uint32_t byte) {
  if (e8m0_is_nan(byte)) return canonical_nan();
  return float_from_bits(byte == 0 ? 0x00400000u : (byte << 23));
}

// bitsandbytes' NF4 table (csrc/kernels.cu, nf4_dequantization_lut), index = code 0..15.
VB_FP4_HD float nf4_to_float(uint32_t code) {
  switch (code & 15u) {
    case 0:
      return -1.0f;
    case 1:
      return -0.6961928009986877f;
    case 2:
      return -0.5250730514526367f;
    case 3:
      return -0.39491748809814453f;
    case 4:
      return -0.28444138169288635f;
    case 5:
      return -0.18477343022823334f;
    case 6:
      return -0.09105003625154495f;
    case 7:
      return 0.0f;
    case 8:
      return 0.07958029955625534f;
    case 9:
      return 0.16093020141124725f;
    case 10:
      return 0.24611230194568634f;
    case 11:
      return 0.33791524171829224f;
    case 12:
      return 0.44070982933044434f;
    case 13:
      return 0.5626170039176941f;
    case 14:
      return 0.7229568362236023f;
    default:
      return 1.0f;
  }
}

// bitsandbytes' own "fp4" (csrc/kernels.cu, fp4_dequantization_lut): bit 3 sign, bits 2..0
// index a table of magnitudes that is not E2M1 (it is E2M1-like values divided by 12, with
// 0.0625/12 as its subnormal).
VB_FP4_HD float bnb_fp4_magnitude(uint32_t mag) {
  switch (mag & 7u) {
    case 0:
      return 0.0f;
    case 1:
      return 0.005208333333f;
    case 2:
      return 0.66666667f;
    case 3:
      return 1.0f;
    case 4:
      return 0.33333333f;
    case 5:
      return 0.5f;
    case 6:
      return 0.16666667f;
    default:
      return 0.25f;
  }
}
VB_FP4_HD float bnb_fp4_to_float(uint32_t code) {
  const float m = bnb_fp4_magnitude(code);
  return (code & 8u) ? -m : m;
}

// The element value of a 4-bit code, before any scale.
VB_FP4_HD float element_to_float(Format format, uint32_t code) {
  switch (format) {
    case Format::kNf4:
      return nf4_to_float(code);
    case Format::kBnbFp4:
      return bnb_fp4_to_float(code);
    default:
      return e2m1_to_float(code);
  }
}

// The decoded value of a byte block scale (NVFP4: E4M3; MXFP4: E8M0).
VB_FP4_HD float byte_scale_to_float(Format format, uint32_t byte) {
  return format == Format::kNvfp4 ? e4m3_to_float(byte) : e8m0_to_float(byte);
}

// One dequantized weight from its element value (element_to_float) and its block's scale:
// `scale_bits` is the byte for NVFP4/MXFP4, the float32's bits for NF4/bnb_fp4.
//  - NVFP4: (e2m1 * e4m3) * tensor_scale. The first product is exact (2 x 4 significant
//    bits), so the result is the exact product rounded once.
//  - MXFP4: e2m1 * 2^(e-127), exact (a power of two; 2^-127 * 0.5 is still a float32).
//  - NF4, bnb_fp4: table value * absmax, rounded once.
// A NaN scale (E4M3 0x7F/0xFF, E8M0 0xFF) makes the whole block the canonical NaN.
VB_FP4_HD float scale_element(Format format, float element, uint32_t scale_bits,
                              float tensor_scale) {
  if (format == Format::kNvfp4) {
    if (e4m3_is_nan(scale_bits)) return canonical_nan();
    return (element * e4m3_to_float(scale_bits)) * tensor_scale;
  }
  if (format == Format::kMxfp4) {
    if (e8m0_is_nan(scale_bits)) return canonical_nan();
    return element * e8m0_to_float(scale_bits);
  }
  const float value = element * float_from_bits(scale_bits);
  return value != value ? canonical_nan() : value;
}

VB_FP4_HD float dequantize_value(Format format, uint32_t code, uint32_t scale_bits,
                                 float tensor_scale) {
  return scale_element(format, element_to_float(format, code), scale_bits, tensor_scale);
}

}  // namespace vb::backends::fp4
