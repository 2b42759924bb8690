// The bit decode of NVFP4 codes and scales into bf16 MMA operands, shared by the fused
// kernels (fp4_kernels.cu, sm_90) and fp4_gemm (fp4_gemm.cu, sm_90a). Device code only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "backends/fp4/fp4_decode.h"

namespace vb::backends::cuda::fp4 {

// NVFP4 with bf16 activations, decoded with bit operations instead of the table (the staged
// kernel's shared-memory pipe was its busiest unit: one table load per two weights). An E2M1
// nibble s e1 e0 m moved to bf16 bits 15 (s) and 8..6 (e1 e0 m) reads as its value times
// 2^-126 (e1 e0 = 0 is the subnormal 0.5 * 2^-126 for m = 1), and nibbles i and i + 4 of a
// word sit 16 bits apart, so one mask-and-shift decodes both halves of a register. The block
// scale is taken from a table holding e4m3 * 2^119 (all finite, normal bf16), so each product
// is the exact weight times 2^-7, a normal bf16; the 2^7 is given back in float32 at the end.
constexpr float kE2m1ScaleBias = 0x1p119f;
constexpr float kE2m1OutputBias = 0x1p7f;

// The four bf16 pairs of code word q: pairs[i] holds nibbles 3 - i and 7 - i, each as
// (q << 4 i) & 0x80008000 (the signs, bits 15 and 31) | ((q << 4 i) >> 6) & 0x01C001C0 (the
// magnitudes, bits 6..8 and 22..24). Built from left shifts (which the compiler may issue as
// IMAD.SHL on the FMA pipe) and one right shift, rather than a right shift per pair on the
// integer pipe.
__device__ __forceinline__ void e2m1_word_bits(uint32_t q, uint32_t (&pairs)[4]) {
  const uint32_t q8 = q >> 8;
  auto pick = [](uint32_t sign_source, uint32_t magnitude_source) {
    return (sign_source & 0x80008000u) | (magnitude_source & 0x01C001C0u);
  };
  pairs[0] = pick(q8 << 8, q8 << 2);   // nibbles 3, 7
  pairs[1] = pick(q8 << 12, q8 << 6);  // 2, 6
  pairs[2] = pick(q << 8, q << 2);     // 1, 5
  pairs[3] = pick(q << 12, q << 6);    // 0, 4
}

// Two E4M3 bytes (the low 16 bits of `pair`) as floats, exactly; NaN stays NaN.
__device__ __forceinline__ void e4m3_pair_to_floats(uint32_t pair, float& first, float& second) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t halves;  // both bytes as fp16, exactly (E4M3 fits fp16), low byte in the low half
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(static_cast<unsigned short>(pair)));
  __half2 h;
  std::memcpy(&h, &halves, 4);
  first = __low2float(h);
  second = __high2float(h);
#else
  first = backends::fp4::e4m3_to_float(pair & 0xFFu);
  second = backends::fp4::e4m3_to_float((pair >> 8) & 0xFFu);
#endif
}

// Scale bytes 0 and 1 of `pair` (E4M3) as bf16 pairs holding e4m3 * 2^119 in both halves, the
// scale that bit decoding needs (see kE2m1ScaleBias); exact, NaN stays NaN.
__device__ __forceinline__ void e4m3_pair_to_scales(uint32_t pair, uint32_t& first,
                                                    uint32_t& second) {
  float f0, f1;
  e4m3_pair_to_floats(pair, f0, f1);
  f0 *= kE2m1ScaleBias;
  f1 *= kE2m1ScaleBias;
  const __nv_bfloat162 b0 = __floats2bfloat162_rn(f0, f0);
  const __nv_bfloat162 b1 = __floats2bfloat162_rn(f1, f1);
  std::memcpy(&first, &b0, 4);
  std::memcpy(&second, &b1, 4);
}

}  // namespace vb::backends::cuda::fp4
