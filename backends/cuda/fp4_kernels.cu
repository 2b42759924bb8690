#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/fp4_kernels.h"
#include "common/status_macros.h"

namespace vb::backends::cuda::fp4 {
namespace {

using backends::fp4::block_size;
using backends::fp4::byte_scale_to_float;
using backends::fp4::element_to_float;
using backends::fp4::has_byte_scales;
using backends::fp4::scale_element;

// ---------------------------------------------------------------------------------------
// Dequantization: one thread per 16 elements (8 code bytes, always inside one row and one
// block since k is a multiple of 16), written as 4 float4 or 2 x 16 bytes of bf16.

constexpr int kDequantThreads = 256;

template <Format F, bool kBf16>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_kernel(const uint8_t* __restrict__ codes, const void* __restrict__ scales,
                      float tensor_scale, int64_t k, int64_t groups, void* __restrict__ out) {
  __shared__ float elements[16];
  if (threadIdx.x < 16) elements[threadIdx.x] = element_to_float(F, threadIdx.x);
  __syncthreads();
  constexpr int kBlock = block_size(F);
  const int64_t blocks_per_row = k / kBlock;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < groups;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t first = i * 16;
    const int64_t row = first / k;
    const int64_t block = (first - row * k) / kBlock;
    const int64_t scale_index = row * blocks_per_row + block;
    const uint32_t scale_bits = has_byte_scales(F)
                                    ? uint32_t{static_cast<const uint8_t*>(scales)[scale_index]}
                                    : static_cast<const uint32_t*>(scales)[scale_index];
    const uint2 packed = reinterpret_cast<const uint2*>(codes)[i];
    float v[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      const uint32_t word = e < 8 ? packed.x : packed.y;
      const uint32_t code = (word >> (4 * (e % 8))) & 15u;
      v[e] = scale_element(F, elements[code], scale_bits, tensor_scale);
    }
    if constexpr (kBf16) {
      uint32_t h[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
        std::memcpy(&h[e], &pair, 4);
      }
      uint4* o = reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + first);
      o[0] = make_uint4(h[0], h[1], h[2], h[3]);
      o[1] = make_uint4(h[4], h[5], h[6], h[7]);
    } else {
      float4* o = reinterpret_cast<float4*>(static_cast<float*>(out) + first);
#pragma unroll
      for (int q = 0; q < 4; ++q)
        o[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
  }
}

absl::Status check_view(const DeviceWeightView& w, const char* what) {
  VB_RETURN_IF_ERROR(backends::fp4::check_shape(w.format, w.n, w.k));
  if (w.n * w.k > 0 && (w.codes == nullptr || w.scales == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": weight codes or scales are null"));
  }
  const uintptr_t codes = reinterpret_cast<uintptr_t>(w.codes);
  const uintptr_t code_alignment = w.k % 32 == 0 ? 16 : 8;
  if (codes % code_alignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": weight codes at 0x", absl::Hex(codes),
                                                   ": expected ", code_alignment,
                                                   "-byte alignment"));
  }
  if (!has_byte_scales(w.format) && reinterpret_cast<uintptr_t>(w.scales) % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": float scales at 0x",
                                                   absl::Hex(reinterpret_cast<uintptr_t>(w.scales)),
                                                   ": expected 4-byte alignment"));
  }
  return absl::OkStatus();
}

absl::Status launch_status(const char* what) { return cuda_status(cudaGetLastError(), what); }

int grid_for(int64_t work_items, int threads) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t needed = (work_items + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t{sms} * 16)));
}

template <bool kBf16>
absl::Status dequantize(const DeviceWeightView& w, void* out, cudaStream_t stream,
                        const char* what) {
  VB_RETURN_IF_ERROR(check_view(w, what));
  if (reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": out is not 16-byte aligned"));
  }
  const int64_t groups = w.n * w.k / 16;
  if (groups == 0) return absl::OkStatus();
  const int grid = grid_for(groups, kDequantThreads);
  switch (w.format) {
    case Format::kNvfp4:
      dequantize_kernel<Format::kNvfp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, w.k, groups, out);
      break;
    case Format::kMxfp4:
      dequantize_kernel<Format::kMxfp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, w.k, groups, out);
      break;
    case Format::kNf4:
      dequantize_kernel<Format::kNf4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, w.k, groups, out);
      break;
    case Format::kBnbFp4:
      dequantize_kernel<Format::kBnbFp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, w.k, groups, out);
      break;
  }
  return launch_status(what);
}

// ---------------------------------------------------------------------------------------
// Fused Linear for batch <= 16.
//
// A block owns kRows = 16 * kRowTiles consecutive output rows (weight rows) and all of K; its
// warps split K: warp w takes the 128-wide k steps w, w + warps, ... and the block adds the
// warps' partial sums at the end. Per step a lane (group g = lane / 4, t = lane % 4) loads 16
// code bytes (k = kb + 32t .. kb + 32t + 31) of rows g and g + 8 of each row tile, and 32 x
// values of batch rows g (and g + 8) at the same k. The MMA's K index is a permutation of
// the real k, the same for A and B: MMA j (0..7) of the step takes, at lane t, the real
// k = kb + 32t + 4j + {0, 1} as its columns 2t, 2t+1 and kb + 32t + 4j + {2, 3} as 2t+8, 2t+9,
// i.e. code bytes 2j and 2j+1 and x pairs 2j and 2j+1. Rows are M (16 per tile), batch is N
// (8 per MMA), so every weight byte is loaded once and used for the whole batch.

constexpr int kStepK = 128;
// Latency, not arithmetic, limits this kernel (Nsight Compute on the H200: 25% occupancy,
// capped by 118-122 registers, warps mostly waiting on their loads). Up to 8 batch rows a
// block takes one row tile: 60 registers, 4 blocks (32 warps) an SM, measured 1.26x faster at
// 28672 x 8192 than two tiles. From 9 rows on, two row tiles with two blocks an SM measured
// faster at 8192 x 8192 (fewer, fuller waves) and within 10% at 28672 x 8192.
__host__ __device__ constexpr int row_tiles_for(int batch_tiles) {
  return batch_tiles == 1 ? 1 : 2;
}
constexpr int kMaxWarps = 8;
constexpr int kLutWords = 256 * 32;  // one copy per lane: lane i reads bank i only

template <typename T>
struct Half;
template <>
struct Half<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
  static __device__ __forceinline__ float to_float(uint16_t b) {
    return __bfloat162float(__ushort_as_bfloat16(b));
  }
  static __device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
    __nv_bfloat162 x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const __nv_bfloat162 r = __hmul2(x, y);
    uint32_t out;
    std::memcpy(&out, &r, 4);
    return out;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct Half<__half> {
  static __device__ __forceinline__ uint32_t bits(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
  static __device__ __forceinline__ float to_float(uint16_t b) {
    return __half2float(__ushort_as_half(b));
  }
  static __device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
    __half2 x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const __half2 r = __hmul2(x, y);
    uint32_t out;
    std::memcpy(&out, &r, 4);
    return out;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct LinearParams {
  Format format;
  int64_t n;
  int64_t k;
  const uint8_t* codes;
  const void* scales;
  float tensor_scale;
  const void* x;
  int batch;
  const void* bias;
  void* y;
};

// 16 code bytes of `row` at byte offset `byte` (k = 2 * byte), zero past k or past n.
__device__ __forceinline__ uint4 load_codes(const LinearParams& p, int64_t row, int64_t kt,
                                            bool aligned16) {
  uint4 v = make_uint4(0, 0, 0, 0);
  if (row >= p.n || kt >= p.k) return v;
  const uint8_t* src = p.codes + row * (p.k / 2) + kt / 2;
  if (kt + 32 <= p.k && aligned16) {
    v = __ldg(reinterpret_cast<const uint4*>(src));
  } else {
    const uint2 lo = __ldg(reinterpret_cast<const uint2*>(src));  // k is a multiple of 16
    v.x = lo.x;
    v.y = lo.y;
    if (kt + 32 <= p.k) {
      const uint2 hi = __ldg(reinterpret_cast<const uint2*>(src + 8));
      v.z = hi.x;
      v.w = hi.y;
    }
  }
  return v;
}

// The block scale (as a 16-bit pair) of `row` at element k, 0 past k or past n.
template <typename T>
__device__ __forceinline__ uint32_t load_scale(const LinearParams& p, const uint32_t* scale_lut,
                                               int64_t row, int64_t k, int block_shift) {
  if (row >= p.n || k >= p.k) return 0;
  const int64_t index = row * (p.k >> block_shift) + (k >> block_shift);
  if (has_byte_scales(p.format)) return scale_lut[static_cast<const uint8_t*>(p.scales)[index]];
  const uint32_t h = Half<T>::bits(__ldg(static_cast<const float*>(p.scales) + index));
  return h | (h << 16);
}

template <typename T, int kBatchTiles>
__global__ void __launch_bounds__(kMaxWarps * 32, kBatchTiles == 1 ? 4 : 2)
    fused_linear_kernel(LinearParams p) {
  constexpr int kRowTiles = row_tiles_for(kBatchTiles);
  constexpr int kRows = 16 * kRowTiles;
  __shared__ uint32_t lut[kLutWords];
  __shared__ uint32_t scale_lut[256];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;

  // Byte -> (element of the low nibble, element of the high nibble), 16 bits each.
  for (int i = threadIdx.x; i < kLutWords; i += blockDim.x) {
    const uint32_t byte = i >> 5;
    lut[i] = Half<T>::bits(element_to_float(p.format, byte & 15u)) |
             (Half<T>::bits(element_to_float(p.format, byte >> 4)) << 16);
  }
  if (has_byte_scales(p.format)) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      const uint32_t h = Half<T>::bits(byte_scale_to_float(p.format, i));
      scale_lut[i] = h | (h << 16);
    }
  }
  __syncthreads();

  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t row0 = int64_t{blockIdx.x} * kRows;
  const int block_shift = p.format == Format::kNvfp4 ? 4 : p.format == Format::kMxfp4 ? 5 : 6;
  const bool aligned16 = p.k % 32 == 0;
  const int64_t steps = (p.k + kStepK - 1) / kStepK;
  const T* x = static_cast<const T*>(p.x);

  float acc[kRowTiles][kBatchTiles][4];
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
    for (int b = 0; b < kBatchTiles; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][b][i] = 0.0f;

  for (int64_t step = warp; step < steps; step += warps) {
    const int64_t kt = step * kStepK + 32 * t;  // this lane's 32 k
    uint4 codes[kRowTiles][2];
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
      codes[r][0] = load_codes(p, row0 + 16 * r + g, kt, aligned16);
      codes[r][1] = load_codes(p, row0 + 16 * r + g + 8, kt, aligned16);
    }
    uint32_t xs[kBatchTiles][16];  // x[b][kt + 2q], x[b][kt + 2q + 1] in xs[.][q]
#pragma unroll
    for (int bt = 0; bt < kBatchTiles; ++bt) {
      const int b = g + 8 * bt;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (b < p.batch && kt + 8 * c + 8 <= p.k) {
          v = __ldg(reinterpret_cast<const uint4*>(x + b * p.k + kt + 8 * c));
        }
        xs[bt][4 * c] = v.x;
        xs[bt][4 * c + 1] = v.y;
        xs[bt][4 * c + 2] = v.z;
        xs[bt][4 * c + 3] = v.w;
      }
    }
    uint32_t scales[kRowTiles][2][2];  // [tile][row g, g + 8][k half]
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int half = 0; half < 2; ++half)
          scales[r][h][half] =
              load_scale<T>(p, scale_lut, row0 + 16 * r + g + 8 * h, kt + 16 * half, block_shift);

#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int word = j / 2;          // codes word holding bytes 2j, 2j + 1
      const int shift = 16 * (j % 2);  // bit offset of byte 2j in that word
      const int half = j / 4;          // bytes 0..7 are k 0..15, 8..15 are k 16..31
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        const uint32_t w0 = (&codes[r][0].x)[word] >> shift;  // row g
        const uint32_t w1 = (&codes[r][1].x)[word] >> shift;  // row g + 8
        uint32_t a[4];
        a[0] = Half<T>::mul2(lut[((w0 & 0xFF) << 5) | lane], scales[r][0][half]);
        a[1] = Half<T>::mul2(lut[((w1 & 0xFF) << 5) | lane], scales[r][1][half]);
        a[2] = Half<T>::mul2(lut[(((w0 >> 8) & 0xFF) << 5) | lane], scales[r][0][half]);
        a[3] = Half<T>::mul2(lut[(((w1 >> 8) & 0xFF) << 5) | lane], scales[r][1][half]);
#pragma unroll
        for (int bt = 0; bt < kBatchTiles; ++bt) {
          Half<T>::mma(acc[r][bt], a, xs[bt][2 * j], xs[bt][2 * j + 1]);
        }
      }
    }
  }

  // Split-K reduction through shared memory (the lookup table's space).
  __syncthreads();
  float* partial = reinterpret_cast<float*>(lut);  // [warp][row in block][batch 16]
  static_assert(kMaxWarps * kRows * 16 <= kLutWords, "partial sums must fit the table");
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
    for (int bt = 0; bt < kBatchTiles; ++bt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = 16 * r + g + 8 * (i / 2);
        const int b = 8 * bt + 2 * t + (i % 2);
        partial[(warp * kRows + row) * 16 + b] = acc[r][bt][i];
      }
  __syncthreads();
  // Bias and y move as whole 16-bit words (one ld/st.global.u16 each): a 2-byte memcpy here
  // became two single-byte accesses per element, and on the GPU the output's low byte came
  // back as 0 (y kept only sign, exponent and the top mantissa bits).
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  uint16_t* y = static_cast<uint16_t*>(p.y);
  for (int i = threadIdx.x; i < kRows * 16; i += blockDim.x) {
    const int b = i / kRows;
    const int row = i % kRows;
    const int64_t n = row0 + row;
    if (b >= p.batch || n >= p.n) continue;
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += partial[(w * kRows + row) * 16 + b];
    sum *= p.tensor_scale;
    if (bias != nullptr) sum += Half<T>::to_float(bias[n]);
    y[b * p.n + n] = static_cast<uint16_t>(Half<T>::bits(sum));
  }
}

template <typename T>
void launch_fused(const LinearParams& p, int threads, cudaStream_t stream) {
  const int batch_tiles = p.batch <= 8 ? 1 : 2;
  const int64_t rows = 16 * row_tiles_for(batch_tiles);
  const int grid = static_cast<int>((p.n + rows - 1) / rows);
  if (batch_tiles == 1) {
    fused_linear_kernel<T, 1><<<grid, threads, 0, stream>>>(p);
  } else {
    fused_linear_kernel<T, 2><<<grid, threads, 0, stream>>>(p);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceWeight>> DeviceWeight::upload(
    const backends::fp4::PackedWeight& weight) {
  VB_RETURN_IF_ERROR(backends::fp4::validate(weight));
  std::unique_ptr<DeviceWeight> out(new DeviceWeight());
  const size_t codes = weight.codes.size();
  const size_t scales = weight.scales.size();
  VB_RETURN_IF_ERROR(
      cuda_status(cudaMalloc(&out->codes_, std::max<size_t>(codes, 16)), "cudaMalloc fp4 codes"));
  VB_RETURN_IF_ERROR(cuda_status(cudaMalloc(&out->scales_, std::max<size_t>(scales, 16)),
                                 "cudaMalloc fp4 scales"));
  VB_RETURN_IF_ERROR(cuda_status(
      cudaMemcpy(out->codes_, weight.codes.data(), codes, cudaMemcpyHostToDevice), "fp4 codes"));
  VB_RETURN_IF_ERROR(
      cuda_status(cudaMemcpy(out->scales_, weight.scales.data(), scales, cudaMemcpyHostToDevice),
                  "fp4 scales"));
  out->view_.format = weight.format;
  out->view_.n = weight.n;
  out->view_.k = weight.k;
  out->view_.codes = static_cast<const uint8_t*>(out->codes_);
  out->view_.scales = out->scales_;
  out->view_.tensor_scale = weight.tensor_scale;
  return out;
}

DeviceWeight::~DeviceWeight() {
  cudaFree(codes_);
  cudaFree(scales_);
}

absl::Status dequantize_to_float(const DeviceWeightView& weight, float* out, cudaStream_t stream) {
  return dequantize<false>(weight, out, stream, "fp4 dequantize_to_float");
}

absl::Status dequantize_to_bf16(const DeviceWeightView& weight, uint16_t* out,
                                cudaStream_t stream) {
  return dequantize<true>(weight, out, stream, "fp4 dequantize_to_bf16");
}

absl::Status fp4_linear(const DeviceWeightView& weight, const void* x, int64_t batch,
                        Activation type, const void* bias, void* y, cudaStream_t stream,
                        LinearOptions options) {
  constexpr const char* kWhat = "fp4_linear";
  VB_RETURN_IF_ERROR(check_view(weight, kWhat));
  if (batch < 0 || batch > kFusedMaxBatch) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": batch = ", batch, ": expected 0..",
                                                   kFusedMaxBatch,
                                                   " (dequantize_to_bf16 and a GEMM above)"));
  }
  const int warps = options.warps_per_block;
  if (warps != 1 && warps != 2 && warps != 4 && warps != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": warps_per_block = ", warps, ": expected 1, 2, 4 or 8"));
  }
  if (batch == 0 || weight.n == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": x or y is null"));
  }
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": x at 0x",
                                                   absl::Hex(reinterpret_cast<uintptr_t>(x)),
                                                   ": expected 16-byte alignment"));
  }
  if (reinterpret_cast<uintptr_t>(y) % 2 != 0 || reinterpret_cast<uintptr_t>(bias) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": y or bias is not 2-byte aligned"));
  }
  LinearParams p{weight.format,
                 weight.n,
                 weight.k,
                 weight.codes,
                 weight.scales,
                 weight.tensor_scale,
                 x,
                 static_cast<int>(batch),
                 bias,
                 y};
  if ((weight.n + 15) / 16 > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": n = ", weight.n, " is too large"));
  }
  if (type == Activation::kBf16) {
    launch_fused<__nv_bfloat16>(p, warps * 32, stream);
  } else {
    launch_fused<__half>(p, warps * 32, stream);
  }
  return launch_status(kWhat);
}

}  // namespace vb::backends::cuda::fp4
