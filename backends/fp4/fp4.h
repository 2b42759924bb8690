// 4-bit weight formats (NVFP4, MXFP4, NF4, bitsandbytes fp4) on the CPU: the packed layout,
// quantization, dequantization, a reference Linear, and one-blob serialization. Plain C++17
// on raw arrays (no LibTorch), so the CUDA kernels share its layout and decode tables
// (fp4_decode.h). docs/fp4.md says the same with examples.
//
// Layout. A weight W is [n, k] row-major; blocks run along k and never cross a row, so k must
// be a multiple of block_size(format) (16 NVFP4, 32 MXFP4, 64 NF4 and bnb_fp4); n is free.
//  - codes: n * k / 2 bytes, row-major; byte j of row r holds k = 2j in its low nibble and
//    k = 2j + 1 in its high nibble.
//  - scales: one per block, row-major [n, k / block]: one byte for NVFP4 (E4M3) and MXFP4
//    (E8M0); a little-endian float32 absmax (4 bytes) for NF4 and bnb_fp4.
//  - tensor_scale: NVFP4's per-tensor float32; exactly 1 for the other formats.
//
// Quantization rules (quantize):
//  - Inputs must be finite: a NaN or infinity is INVALID_ARGUMENT naming its row and column.
//  - Rounding is to nearest, ties to even, with saturation (a value beyond the largest
//    magnitude becomes the largest), for the E2M1 elements and for the E4M3 scales alike. For
//    the tables (NF4, bnb_fp4) "even" means the even code: NF4 rounds x / absmax to the nearest
//    of its 16 sorted values, ties to the even index; bnb_fp4 rounds |x| / absmax to the
//    nearest magnitude, ties to the even code (its low bit plays the mantissa), sign apart.
//    Quotients are formed in float64 from the float32 operands, then rounded once.
//  - Signs are kept: a negative value that rounds to zero is stored as -0 (E2M1, bnb_fp4).
//  - NVFP4: tensor_scale = float(amax / 2688) (448 * 6 = 2688), block scale =
//    e4m3(block_amax / 6 / tensor_scale), element = e2m1(x / (decoded block scale *
//    tensor_scale)). An all-zero tensor has tensor_scale 0; a block whose scale rounds to 0
//    stores zero codes. A tensor so small that amax / 2688 underflows float32 uses the
//    smallest subnormal as tensor_scale.
//  - MXFP4 (OCP MX v1.0): shared exponent = floor(log2(block_amax)) - 2 (2 = emax of E2M1),
//    clamped to [-127, 127]; an all-zero block gets 2^-127. Elements = e2m1(x / 2^exp).
//  - NF4, bnb_fp4: absmax = max |x| of the block (float32); an all-zero block stores zero
//    codes (NF4's index 7, bnb_fp4's 0).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "backends/fp4/fp4_decode.h"

namespace vb::backends::fp4 {

// "nvfp4", "mxfp4", "nf4", "bnb_fp4" (exact, lower case).
absl::StatusOr<Format> parse_format(absl::string_view name);
const char* format_name(Format format);

struct PackedWeight {
  Format format = Format::kNvfp4;
  int64_t n = 0;
  int64_t k = 0;
  std::vector<uint8_t> codes;   // n * k / 2
  std::vector<uint8_t> scales;  // n * (k / block) * scale_bytes(format)
  float tensor_scale = 1.0f;

  int64_t blocks_per_row() const { return k / block_size(format); }
  // The block scale of (row, block) as dequantize_value wants it (byte, or float32 bits).
  uint32_t scale_bits(int64_t row, int64_t block) const;
};

// Bytes per block scale: 1 (NVFP4, MXFP4) or 4 (NF4, bnb_fp4).
int scale_bytes(Format format);
// Checks n >= 0, k >= 0 and a multiple of the block, k even, the buffer sizes, and the
// tensor scale (finite and >= 0 for NVFP4, 1 otherwise); float absmax scales must be finite
// and >= 0. Messages name the field, its value and what was expected.
absl::Status validate(const PackedWeight& weight);
// Checks n >= 0 and k >= 0, a multiple of the format's block.
absl::Status check_shape(Format format, int64_t n, int64_t k);

// Quantizes w ([n, k] row-major float32) by the rules in the header comment.
absl::StatusOr<PackedWeight> quantize(const float* w, int64_t n, int64_t k, Format format);

// Writes the n * k float32 values of the weight into `out` (dequantize_value per element).
absl::Status dequantize(const PackedWeight& weight, float* out);

// Reference Linear: y[b, j] = sum_k x[b, k] * W[j, k] (+ bias[j]), accumulated in float64 and
// rounded once. x is [batch, k], y is [batch, n], bias is n floats or null.
absl::Status linear(const float* x, int64_t batch, const PackedWeight& weight, const float* bias,
                    float* y);

// One blob, little-endian: a 64-byte header ("VBFP4W\0\0", version 1, format, block size,
// n, k, tensor_scale, zero padding), then the codes, then the scales. The codes start at
// offset 64, so a blob copied whole to the device keeps them 16-byte aligned.
constexpr int64_t kBlobHeaderBytes = 64;
std::string serialize(const PackedWeight& weight);
absl::StatusOr<PackedWeight> deserialize(absl::string_view blob);

// What a blob's header says, checked against the blob's total size: enough to point a
// kernel at the codes and scales of a blob that lives in device memory.
struct BlobHeader {
  Format format = Format::kNvfp4;
  int64_t n = 0;
  int64_t k = 0;
  float tensor_scale = 1.0f;
  int64_t codes_offset = 0;
  int64_t scales_offset = 0;
};
absl::StatusOr<BlobHeader> parse_blob_header(absl::string_view blob_start, uint64_t blob_bytes);

// The rounding primitives of quantize, exposed for tests. Inputs are finite.
uint8_t encode_e2m1(double x);               // RNE, saturating to +-6; sign kept
uint8_t encode_e4m3(double x);               // RNE, saturating to +-448; never NaN
uint8_t encode_nf4(double x);                // nearest table value to x (x in units of absmax)
uint8_t encode_bnb_fp4(double x);            // nearest table magnitude to |x|, sign kept
uint8_t mxfp4_scale_byte(float block_amax);  // E8M0 byte by the OCP rule

// float32 -> bfloat16 / float16 bits, round to nearest even (NaN -> a quiet NaN). Used to
// build references for the 16-bit outputs of the kernels.
uint16_t float_to_bf16_bits(float f);
float bf16_bits_to_float(uint16_t bits);
uint16_t float_to_fp16_bits(float f);
float fp16_bits_to_float(uint16_t bits);

}  // namespace vb::backends::fp4
