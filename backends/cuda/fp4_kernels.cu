#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/fp4_bit_decode.cuh"
#include "backends/cuda/fp4_kernels.h"
#include "common/status_macros.h"

namespace vb::backends::cuda::fp4 {
namespace {

using backends::fp4::block_size;
using backends::fp4::byte_scale_to_float;
using backends::fp4::e4m3_to_float;
using backends::fp4::element_to_float;
using backends::fp4::has_byte_scales;
using backends::fp4::scale_element;

// ---------------------------------------------------------------------------------------
// Dequantization: one thread per 8 elements (4 code bytes, always inside one row and one
// block: k and every block size are multiples of 16), so that a warp's store is 512
// contiguous bytes of bf16 (1 KiB of float) and its code load 128 contiguous bytes. Each
// thread takes kDequantUnroll such groups a pass, loading all of them before it converts any,
// so that several loads are in flight. (One thread per 16 elements, storing 2 x 16 bytes 32
// bytes apart, streamed at 2.6-2.9 TB/s of read + write on the H200.)

constexpr int kDequantThreads = 256;
constexpr int kDequantUnroll = 4;

template <Format F, bool kBf16>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_kernel(const uint8_t* __restrict__ codes, const void* __restrict__ scales,
                      float tensor_scale, uint32_t octets_per_row, int64_t octets,
                      void* __restrict__ out) {
  __shared__ float elements[16];
  if (threadIdx.x < 16) elements[threadIdx.x] = element_to_float(F, threadIdx.x);
  __syncthreads();
  constexpr int kOctetsPerBlock = block_size(F) / 8;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t base = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; base < octets;
       base += kDequantUnroll * stride) {
    uint32_t words[kDequantUnroll], scale_bits[kDequantUnroll];
#pragma unroll
    for (int u = 0; u < kDequantUnroll; ++u) {
      const int64_t i = base + u * stride;  // octet i: elements 8i .. 8i + 7
      if (i >= octets) break;
      // 32-bit division: the host keeps octets below 2^32.
      const uint32_t row = static_cast<uint32_t>(i) / octets_per_row;
      const uint32_t column = static_cast<uint32_t>(i) - row * octets_per_row;
      const int64_t scale_index =
          int64_t{row} * (octets_per_row / kOctetsPerBlock) + column / kOctetsPerBlock;
      words[u] = reinterpret_cast<const uint32_t*>(codes)[i];
      scale_bits[u] = has_byte_scales(F)
                          ? uint32_t{static_cast<const uint8_t*>(scales)[scale_index]}
                          : static_cast<const uint32_t*>(scales)[scale_index];
    }
#pragma unroll
    for (int u = 0; u < kDequantUnroll; ++u) {
      const int64_t i = base + u * stride;
      if (i >= octets) break;
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = scale_element(F, elements[(words[u] >> (4 * e)) & 15u], scale_bits[u], tensor_scale);
      }
      if constexpr (kBf16) {
        uint32_t h[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
          std::memcpy(&h[e], &pair, 4);
        }
        reinterpret_cast<uint4*>(out)[i] = make_uint4(h[0], h[1], h[2], h[3]);
      } else {
        float4* o = reinterpret_cast<float4*>(out) + 2 * i;
        o[0] = make_float4(v[0], v[1], v[2], v[3]);
        o[1] = make_float4(v[4], v[5], v[6], v[7]);
      }
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
  const int64_t octets = w.n * w.k / 8;
  if (octets == 0) return absl::OkStatus();
  if (octets >= (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": n * k = ", w.n * w.k, " elements; at most 2^35 - 8 are taken"));
  }
  const int grid = grid_for((octets + kDequantUnroll - 1) / kDequantUnroll, kDequantThreads);
  const auto octets_per_row = static_cast<uint32_t>(w.k / 8);
  switch (w.format) {
    case Format::kNvfp4:
      dequantize_kernel<Format::kNvfp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, octets_per_row, octets, out);
      break;
    case Format::kMxfp4:
      dequantize_kernel<Format::kMxfp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, octets_per_row, octets, out);
      break;
    case Format::kNf4:
      dequantize_kernel<Format::kNf4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, octets_per_row, octets, out);
      break;
    case Format::kBnbFp4:
      dequantize_kernel<Format::kBnbFp4, kBf16><<<grid, kDequantThreads, 0, stream>>>(
          w.codes, w.scales, w.tensor_scale, octets_per_row, octets, out);
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

// Per-lane tables (256 entries, 32 copies): lane `lane`'s copy of entry e is word 32 e + lane,
// so a warp's 32 lookups fall in 32 different banks whatever the entries.
__device__ __forceinline__ void fill_lane_copies(uint32_t* table, int e, uint32_t value) {
  // Thread e starts at copy e, so that a warp's stores fall in 32 different banks too.
#pragma unroll 8
  for (int copy = 0; copy < 32; ++copy) table[(e << 5) | ((copy + e) & 31)] = value;
}

// Lane `lane`'s copy of the entry indexed by byte `b` of `word` (lane8 = lane * 8). Its byte
// offset 128 e + 4 lane is built in two instructions: a byte permute puts the byte at bits
// 8..15 next to lane * 8 at bits 0..7, and a shift halves it.
__device__ __forceinline__ uint32_t lane_lookup(const uint32_t* table, uint32_t word, int b,
                                                uint32_t lane8) {
  const uint32_t offset = __byte_perm(word, lane8, 0x5504 | (b << 4)) >> 1;
  return *reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(table) + offset);
}

// One 128-wide k step of one 16-row tile: decodes the lane's 16 code bytes of rows g and g + 8
// (c0, c1) through the per-lane table, multiplies by the block scales (`scale[row g, g + 8][k
// half]`, 16-bit pairs) and runs the 8 MMAs of the step against each batch tile's x pairs.
template <typename T, int kBatchTiles>
__device__ __forceinline__ void mma_row_tile(float (&acc)[kBatchTiles][4], const uint4& c0,
                                             const uint4& c1, const uint32_t (&scale)[2][2],
                                             const uint32_t (&xs)[kBatchTiles][16],
                                             const uint32_t* lut, uint32_t lane8) {
  auto decode = [lut, lane8](uint32_t word, int b) { return lane_lookup(lut, word, b, lane8); };
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t w0 = (&c0.x)[j / 2];  // row g: bytes 2j, 2j + 1 of the 16
    const uint32_t w1 = (&c1.x)[j / 2];  // row g + 8
    const int b = 2 * (j % 2);           // their index in the word
    const int half = j / 4;              // bytes 0..7 are k 0..15, 8..15 are k 16..31
    uint32_t a[4];
    a[0] = Half<T>::mul2(decode(w0, b), scale[0][half]);
    a[1] = Half<T>::mul2(decode(w1, b), scale[1][half]);
    a[2] = Half<T>::mul2(decode(w0, b + 1), scale[0][half]);
    a[3] = Half<T>::mul2(decode(w1, b + 1), scale[1][half]);
#pragma unroll
    for (int bt = 0; bt < kBatchTiles; ++bt) {
      Half<T>::mma(acc[bt], a, xs[bt][2 * j], xs[bt][2 * j + 1]);
    }
  }
}

// x pairs in the element order of e2m1_word_bits: for word w of the lane's 32 k, MMA u (0, 1) takes
// elements (3 - 2u, 7 - 2u) as its first pair and (2 - 2u, 6 - 2u) as its second. `xs` holds
// x[kt + 2q], x[kt + 2q + 1] in xs[q]; the result holds MMA (w, u)'s pairs at 4 w + 2 u + v.
template <int kBatchTiles>
__device__ __forceinline__ void permute_x_for_e2m1(uint32_t (&xs)[kBatchTiles][16]) {
#pragma unroll
  for (int bt = 0; bt < kBatchTiles; ++bt) {
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint32_t q0 = xs[bt][4 * w], q1 = xs[bt][4 * w + 1];
      const uint32_t q2 = xs[bt][4 * w + 2], q3 = xs[bt][4 * w + 3];
      xs[bt][4 * w] = __byte_perm(q1, q3, 0x7632);      // elements 3, 7
      xs[bt][4 * w + 1] = __byte_perm(q1, q3, 0x5410);  // 2, 6
      xs[bt][4 * w + 2] = __byte_perm(q0, q2, 0x7632);  // 1, 5
      xs[bt][4 * w + 3] = __byte_perm(q0, q2, 0x5410);  // 0, 4
    }
  }
}

template <int kBatchTiles>
__device__ __forceinline__ void mma_row_tile_e2m1(float (&acc)[kBatchTiles][4], const uint4& c0,
                                                  const uint4& c1, const uint32_t (&scale)[2][2],
                                                  const uint32_t (&xp)[kBatchTiles][16]) {
  using H = Half<__nv_bfloat16>;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t lo[4], hi[4];  // rows g and g + 8
    e2m1_word_bits((&c0.x)[w], lo);
    e2m1_word_bits((&c1.x)[w], hi);
    const int half = w / 2;  // words 0, 1 are k 0..15 (one block), 2, 3 the next
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      uint32_t a[4];
      a[0] = H::mul2(lo[2 * u], scale[0][half]);
      a[1] = H::mul2(hi[2 * u], scale[1][half]);
      a[2] = H::mul2(lo[2 * u + 1], scale[0][half]);
      a[3] = H::mul2(hi[2 * u + 1], scale[1][half]);
#pragma unroll
      for (int bt = 0; bt < kBatchTiles; ++bt) {
        H::mma(acc[bt], a, xp[bt][4 * w + 2 * u], xp[bt][4 * w + 2 * u + 1]);
      }
    }
  }
}

// Fills the per-lane decode table (byte -> element of the low nibble, element of the high
// nibble, 16 bits each; lane i's copy of entry b at word 32 b + i) and the byte-scale table.
template <typename T>
__device__ __forceinline__ void build_tables(Format format, uint32_t* lut, uint32_t* scale_lut) {
  for (int e = threadIdx.x; e < 256; e += blockDim.x) {  // each entry computed once
    fill_lane_copies(lut, e,
                     Half<T>::bits(element_to_float(format, e & 15u)) |
                         (Half<T>::bits(element_to_float(format, e >> 4)) << 16));
  }
  if (has_byte_scales(format)) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      const uint32_t h = Half<T>::bits(byte_scale_to_float(format, i));
      scale_lut[i] = h | (h << 16);
    }
  }
}

// x[b][kt .. kt + 31] of batch tile bt's row b = g + 8 bt as 16 pairs, zero past batch or k.
template <typename T, int kBatchTiles>
__device__ __forceinline__ void load_x(const LinearParams& p, int64_t kt, int g,
                                       uint32_t (&xs)[kBatchTiles][16]) {
  const T* x = static_cast<const T*>(p.x);
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
}

// The second half of the split-K sum (after each warp wrote its sums to `partial`, warps x
// kRows x kCols floats, and the block synchronized): the block adds them per output in warp
// order (so the result does not depend on timing), applies the tensor scale and the bias, and
// writes y. Bias and y move as whole 16-bit words (one ld/st.global.u16 each): a 2-byte memcpy
// here became two single-byte accesses per element, and on the GPU the output's low byte came
// back as 0.
template <typename T, int kRows, int kCols>
__device__ __forceinline__ void add_partials_and_store(const LinearParams& p, const float* partial,
                                                       int64_t row0) {
  const int warps = blockDim.x >> 5;
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  uint16_t* y = static_cast<uint16_t*>(p.y);
  for (int i = threadIdx.x; i < kRows * kCols; i += blockDim.x) {
    const int b = i / kRows;
    const int row = i % kRows;
    const int64_t n = row0 + row;
    if (b >= p.batch || n >= p.n) continue;
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += partial[(w * kRows + row) * kCols + b];
    sum *= p.tensor_scale;
    if (bias != nullptr) sum += Half<T>::to_float(bias[n]);
    y[b * p.n + n] = static_cast<uint16_t>(Half<T>::bits(sum));
  }
}

// The split-K sum of a block: every warp's accumulators go to shared memory (`partial`,
// warps x 16 kRowTiles x 8 kBatchTiles floats, which may alias the decode table: the caller
// has synchronized), then add_partials_and_store.
template <typename T, int kRowTiles, int kBatchTiles>
__device__ __forceinline__ void reduce_and_store(const LinearParams& p,
                                                 const float (&acc)[kRowTiles][kBatchTiles][4],
                                                 float* partial, int64_t row0) {
  constexpr int kRows = 16 * kRowTiles;
  constexpr int kCols = 8 * kBatchTiles;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
    for (int bt = 0; bt < kBatchTiles; ++bt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = 16 * r + g + 8 * (i / 2);
        const int b = 8 * bt + 2 * t + (i % 2);
        partial[(warp * kRows + row) * kCols + b] = acc[r][bt][i];
      }
  __syncthreads();
  add_partials_and_store<T, kRows, kCols>(p, partial, row0);
}

// The general kernel (any k that is a multiple of 16): each step's codes, scales and x are
// loaded into registers and used at once.
template <typename T, int kBatchTiles>
__global__ void __launch_bounds__(kMaxWarps * 32, kBatchTiles == 1 ? 4 : 2)
    fused_linear_kernel(LinearParams p) {
  constexpr int kRowTiles = row_tiles_for(kBatchTiles);
  constexpr int kRows = 16 * kRowTiles;
  __shared__ uint32_t lut[kLutWords];
  __shared__ uint32_t scale_lut[256];
  static_assert(kMaxWarps * kRows * 16 <= kLutWords, "partial sums must fit the table");
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  build_tables<T>(p.format, lut, scale_lut);
  __syncthreads();

  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t row0 = int64_t{blockIdx.x} * kRows;
  const int block_shift = p.format == Format::kNvfp4 ? 4 : p.format == Format::kMxfp4 ? 5 : 6;
  const bool aligned16 = p.k % 32 == 0;
  const int64_t steps = (p.k + kStepK - 1) / kStepK;

  float acc[kRowTiles][kBatchTiles][4] = {};
  for (int64_t step = warp; step < steps; step += warps) {
    const int64_t kt = step * kStepK + 32 * t;  // this lane's 32 k
    uint4 codes[kRowTiles][2];
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
      codes[r][0] = load_codes(p, row0 + 16 * r + g, kt, aligned16);
      codes[r][1] = load_codes(p, row0 + 16 * r + g + 8, kt, aligned16);
    }
    uint32_t xs[kBatchTiles][16];  // x[b][kt + 2q], x[b][kt + 2q + 1] in xs[.][q]
    load_x<T, kBatchTiles>(p, kt, g, xs);
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
    for (int r = 0; r < kRowTiles; ++r) {
      mma_row_tile<T, kBatchTiles>(acc[r], codes[r][0], codes[r][1], scales[r], xs, lut, lane * 8);
    }
  }
  __syncthreads();  // the table's space becomes the partial sums
  reduce_and_store<T, kRowTiles, kBatchTiles>(p, acc, reinterpret_cast<float*>(lut), row0);
}

// ---------------------------------------------------------------------------------------
// The staged kernel (k a multiple of 128, codes 16-byte and scales 8-byte aligned). A
// persistent grid (as many blocks as fit the SMs at once) walks the row groups of 16
// kRowTiles rows: block b takes groups b, b + grid, ... and its warps split each group's k
// as in the register kernel, adding their partial sums through shared memory after each
// group. Each warp copies the codes, scales and x of its next kStages - 1 steps into its own
// ring of shared-memory stages with cp.async (__pipeline_memcpy_async) while it computes the
// current one; the ring runs on across groups. Codes are copied and read by the same lane;
// scales and x are copied by some lanes and read by others, hence a __syncwarp after the
// wait, and another before a consumed stage is refilled.
//
// How it got here (H200, 28672 x 8192 NVFP4, batch 1; docs/fp4.md has the numbers): staging
// alone took the register kernel's 84 us to 62 us; a first staged loop issued ~460
// instructions per warp and step, and trimming it (the scale encoding as a template
// parameter, sources advanced by constants, a table lookup as byte permute + shift-add +
// shared load) took it to 58 us. The persistent grid, deeper rings, twice the warps, staging
// x, one contiguous k range per warp and decoding E2M1 with bit operations each measured
// within a few percent of that; what remains is latency with ~4 warps per scheduler (Nsight
// Compute: 0.56 instructions issued per cycle, stalls spread over fixed-latency, shared and
// global dependencies).

enum class ScaleKind { kE4m3Per16, kE8m0Per32, kFloatPer64 };

ScaleKind scale_kind(Format format) {
  return format == Format::kNvfp4   ? ScaleKind::kE4m3Per16
         : format == Format::kMxfp4 ? ScaleKind::kE8m0Per32
                                    : ScaleKind::kFloatPer64;
}

// Bytes of one row's scales in one 128-wide step.
__host__ __device__ constexpr int scale_step_bytes(ScaleKind kind) {
  return kind == ScaleKind::kE8m0Per32 ? 4 : 8;
}

constexpr int kStagedMaxWarps = 16;
constexpr int kTableBytes = (kLutWords + 256) * 4;
// The bit-decoding kernel keeps only the scale table, one copy per lane (conflict-free).
constexpr int kBitsTableBytes = 256 * 32 * 4;

// Table bytes, then the split-K partial sums (warps x rows x batch columns floats), then each
// warp's ring of stages (codes [tile][row][t] 16 bytes, scales [tile][row] 8 bytes, then the
// step's x: [batch row][128] 16-bit values).
size_t staged_smem_bytes(bool bits, int batch, int row_tiles, int stages, int warps) {
  const int batch_tiles = batch <= 8 ? 1 : 2;
  const size_t stage_bytes = row_tiles * (16 * 64 + 16 * 8) + batch * kStepK * 2;
  const size_t partial_bytes = size_t{4} * warps * 16 * row_tiles * 8 * batch_tiles;
  return (bits ? kBitsTableBytes : kTableBytes) + partial_bytes + warps * stages * stage_bytes;
}

// kBits: NVFP4 with bf16 activations through mma_row_tile_e2m1 (no element table).
template <typename T, ScaleKind kScale, int kBatchTiles, int kRowTiles, int kStages, bool kBits>
__global__ void __launch_bounds__(kStagedMaxWarps * 32, 1) staged_linear_kernel(LinearParams p) {
  static_assert(!kBits || (kScale == ScaleKind::kE4m3Per16 && std::is_same_v<T, __nv_bfloat16>),
                "bit decoding is for NVFP4 with bf16 activations");
  constexpr int kRows = 16 * kRowTiles;
  constexpr int kCodeBytes = kRowTiles * 16 * 64;
  constexpr int kScaleBytes = kRowTiles * 16 * 8;
  constexpr int kXRows = 8 * kBatchTiles;
  // A stage holds the x rows of the batch only (256 bytes each).
  const int stage_bytes = kCodeBytes + kScaleBytes + p.batch * kStepK * 2;
  constexpr int kScaleStep = scale_step_bytes(kScale);
  constexpr int kTables = kBits ? kBitsTableBytes : kTableBytes;
  extern __shared__ __align__(16) uint8_t smem[];
  uint32_t* lut = reinterpret_cast<uint32_t*>(smem);  // kBits: the per-lane scale table
  uint32_t* scale_lut = lut + kLutWords;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  float* partial = reinterpret_cast<float*>(smem + kTables);
  uint8_t* const ring =
      smem + kTables + warps * kRows * 8 * kBatchTiles * 4 + warp * kStages * stage_bytes;

  const int64_t groups = (p.n + kRows - 1) / kRows;
  const int64_t group_stride = int64_t{gridDim.x} * kRows;  // rows from one group to the next
  const int my_groups =
      blockIdx.x < groups ? static_cast<int>((groups - 1 - blockIdx.x) / gridDim.x) + 1 : 0;
  const int steps = static_cast<int>(p.k / kStepK);
  // The warp's steps: warp, warp + warps, ... (one contiguous range of k per warp measured no
  // different on the H200).
  const int my_steps = warp < steps ? (steps - warp + warps - 1) / warps : 0;
  const int64_t row_bytes = p.k / 2;
  const int64_t scale_row_bytes = p.k / kStepK * kScaleStep;

  // The copy side: the warp's steps of each of its groups in order, as one sequence. Sources
  // are set at a group's first step and advanced by `warps` steps per copy; rows past n read
  // row n - 1 instead (their sums are never stored).
  int issue_left = my_groups * my_steps;
  int issue_step = 0;
  int64_t issue_row0 = int64_t{blockIdx.x} * kRows;
  int write_slot = 0;
  const uint8_t* code_src[kRowTiles][2];
  const uint8_t* scale_src[kRowTiles];
  const T* x_copy_src = nullptr;  // this lane's x chunk in batch row lane / 16
  auto issue = [&]() {
    if (issue_left > 0) {
      if (issue_step == 0) {
        x_copy_src =
            static_cast<const T*>(p.x) + (lane / 16) * p.k + warp * kStepK + (lane % 16) * 8;
        auto row = [&](int r) { return issue_row0 + r < p.n ? issue_row0 + r : p.n - 1; };
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
          for (int h = 0; h < 2; ++h)
            code_src[r][h] = p.codes + row(16 * r + g + 8 * h) * row_bytes + warp * 64 + 16 * t;
          scale_src[r] = static_cast<const uint8_t*>(p.scales) +
                         row(16 * r + (lane & 15)) * scale_row_bytes + warp * kScaleStep;
        }
      }
      uint8_t* stage = ring + write_slot * stage_bytes;
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // Row g + 8 h of tile r, chunk t, at (row * 4 + t) * 16 = 1024 r + 512 h + 16 lane.
          __pipeline_memcpy_async(stage + 1024 * r + 512 * h + 16 * lane, code_src[r][h], 16);
          code_src[r][h] += 64 * warps;
        }
        if (lane < 16) {
          __pipeline_memcpy_async(stage + kCodeBytes + (16 * r + lane) * 8, scale_src[r],
                                  kScaleStep);
        }
        scale_src[r] += kScaleStep * warps;
      }
      // x of the step (batch rows below p.batch): row b's 256 bytes as 16 chunks of 16.
#pragma unroll
      for (int j = 0; j < kXRows / 2; ++j) {
        if (lane / 16 + 2 * j < p.batch) {  // batch row lane / 16 + 2 j, 8 elements lane % 16
          __pipeline_memcpy_async(stage + kCodeBytes + kScaleBytes + (lane + 32 * j) * 16,
                                  x_copy_src + 2 * j * p.k, 16);
        }
      }
      x_copy_src += warps * kStepK;
      write_slot = write_slot + 1 == kStages ? 0 : write_slot + 1;
      --issue_left;
      if (++issue_step == my_steps) {
        issue_step = 0;
        issue_row0 += group_stride;
      }
    }
    __pipeline_commit();  // empty past the last step, so the wait below counts uniformly
  };

  // The first stages are requested before the tables are built, so their latency overlaps.
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue();
  if constexpr (kBits) {
    for (int e = threadIdx.x; e < 256; e += blockDim.x) {
      const uint32_t h = Half<T>::bits(e4m3_to_float(e) * kE2m1ScaleBias);
      fill_lane_copies(lut, e, h | (h << 16));
    }
    p.tensor_scale *= kE2m1OutputBias;
  } else {
    build_tables<T>(p.format, lut, scale_lut);
  }
  __syncthreads();

  bool x_live[kBatchTiles];
#pragma unroll
  for (int bt = 0; bt < kBatchTiles; ++bt) x_live[bt] = g + 8 * bt < p.batch;
  int read_slot = 0;
  for (int group = 0; group < my_groups; ++group) {
    const int64_t row0 = int64_t{blockIdx.x} * kRows + group * group_stride;
    float acc[kRowTiles][kBatchTiles][4] = {};
    for (int i = 0; i < my_steps; ++i) {
      issue();
      __pipeline_wait_prior(kStages - 1);  // this lane's copies of this step have landed
      __syncwarp();                        // and so have the other lanes' (scales, x)
      const uint8_t* stage = ring + read_slot * stage_bytes;
      uint32_t xs[kBatchTiles][16];  // x[b][kt + 2q], x[b][kt + 2q + 1] in xs[.][q]
#pragma unroll
      for (int bt = 0; bt < kBatchTiles; ++bt) {
        const uint4* row_x =
            reinterpret_cast<const uint4*>(stage + kCodeBytes + kScaleBytes) + (g + 8 * bt) * 16;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const uint4 v = x_live[bt] ? row_x[4 * t + c] : make_uint4(0, 0, 0, 0);
          xs[bt][4 * c] = v.x;
          xs[bt][4 * c + 1] = v.y;
          xs[bt][4 * c + 2] = v.z;
          xs[bt][4 * c + 3] = v.w;
        }
      }
      if constexpr (kBits) permute_x_for_e2m1<kBatchTiles>(xs);
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        const uint4 c0 = *reinterpret_cast<const uint4*>(stage + 1024 * r + 16 * lane);
        const uint4 c1 = *reinterpret_cast<const uint4*>(stage + 1024 * r + 512 + 16 * lane);
        uint32_t scale[2][2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint8_t* row_scales = stage + kCodeBytes + (16 * r + g + 8 * h) * 8;
          if constexpr (kBits) {  // the per-lane scale table, as the element table is read
            const uint32_t pair = *reinterpret_cast<const uint16_t*>(row_scales + 2 * t);
            scale[h][0] = lane_lookup(lut, pair, 0, lane * 8);
            scale[h][1] = lane_lookup(lut, pair, 1, lane * 8);
          } else if constexpr (kScale == ScaleKind::kE4m3Per16) {  // bytes 2t, 2t + 1
            const uint32_t pair = *reinterpret_cast<const uint16_t*>(row_scales + 2 * t);
            scale[h][0] = scale_lut[pair & 0xFF];
            scale[h][1] = scale_lut[pair >> 8];
          } else if constexpr (kScale == ScaleKind::kE8m0Per32) {  // byte t
            scale[h][0] = scale[h][1] = scale_lut[row_scales[t]];
          } else {  // float t / 2
            const uint32_t bits = Half<T>::bits(reinterpret_cast<const float*>(row_scales)[t >> 1]);
            scale[h][0] = scale[h][1] = bits | (bits << 16);
          }
        }
        if constexpr (kBits) {
          mma_row_tile_e2m1<kBatchTiles>(acc[r], c0, c1, scale, xs);
        } else {
          mma_row_tile<T, kBatchTiles>(acc[r], c0, c1, scale, xs, lut, lane * 8);
        }
      }
      __syncwarp();  // every lane is done with this stage before it is refilled
      read_slot = read_slot + 1 == kStages ? 0 : read_slot + 1;
    }
    reduce_and_store<T, kRowTiles, kBatchTiles>(p, acc, partial, row0);
    __syncthreads();  // the partial sums are read before the next group writes them
  }
  __pipeline_wait_prior(0);
}

// Only the variant that measured fastest is built: on the H200 one row tile, four row tiles and
// 3 or 4 stages were each slower at every batch and format measured (docs/fp4.md), and every
// variant is instantiated for 2 activation types x 3 scale encodings.
constexpr const char* kStagedVariants = "built: row_tiles 2 with pipeline_stages 2";

// Whether the staged kernel can take this weight (see its comment).
bool staged_applies(const LinearParams& p) {
  return p.k % kStepK == 0 && reinterpret_cast<uintptr_t>(p.codes) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.scales) % 8 == 0;
}

// What a launch needs to know of a kernel on the current device: the SM count, the shared
// memory a block may opt in to, and how many blocks of `threads` threads with `smem` bytes of
// dynamic shared memory fit an SM. Queried once per kernel, device and shape, then cached:
// asked on every call they cost microseconds of host time, which small layers at batch 1 feel.
// The kernel's dynamic shared memory limit is raised here as needed (and never lowered, so a
// cached answer for a larger size stays valid).
struct LaunchFacts {
  int sms = 0;
  int smem_limit = 0;
  int blocks_per_sm = 0;  // 0 where smem > smem_limit
};

absl::StatusOr<LaunchFacts> launch_facts(const void* kernel, int threads, size_t smem) {
  int device = 0;
  VB_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  using Key = std::tuple<const void*, int, int, size_t>;
  static std::mutex mutex;
  static auto* facts = new std::map<Key, LaunchFacts>();
  static auto* opened = new std::map<std::pair<const void*, int>, size_t>();
  std::lock_guard<std::mutex> lock(mutex);
  const Key key{kernel, device, threads, smem};
  if (auto it = facts->find(key); it != facts->end()) return it->second;
  LaunchFacts f;
  VB_RETURN_IF_ERROR(cuda_status(
      cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device), "SM count"));
  VB_RETURN_IF_ERROR(cuda_status(
      cudaDeviceGetAttribute(&f.smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "shared memory limit"));
  if (smem <= static_cast<size_t>(f.smem_limit)) {
    size_t& open = (*opened)[{kernel, device}];
    if (smem > open) {
      VB_RETURN_IF_ERROR(
          cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)),
                      "cudaFuncSetAttribute"));
      open = smem;
    }
    VB_RETURN_IF_ERROR(cuda_status(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&f.blocks_per_sm, kernel, threads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor"));
  }
  facts->emplace(key, f);
  return f;
}

template <typename T, ScaleKind kScale, int kBatchTiles, int kRowTiles, int kStages, bool kBits>
absl::Status launch_staged(const LinearParams& p, int warps, int max_blocks, cudaStream_t stream) {
  auto* kernel = staged_linear_kernel<T, kScale, kBatchTiles, kRowTiles, kStages, kBits>;
  const size_t smem = staged_smem_bytes(kBits, p.batch, kRowTiles, kStages, warps);
  VB_ASSIGN_OR_RETURN(const LaunchFacts facts,
                      launch_facts(reinterpret_cast<const void*>(kernel), warps * 32, smem));
  if (smem > static_cast<size_t>(facts.smem_limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_linear: row_tiles = ", kRowTiles, ", pipeline_stages = ", kStages,
                     ", warps_per_block = ", warps, " need ", smem,
                     " bytes of shared memory a block; the GPU allows ", facts.smem_limit));
  }
  if (facts.blocks_per_sm == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_linear: row_tiles = ", kRowTiles, ", pipeline_stages = ", kStages,
                     ", warps_per_block = ", warps, ": a block does not fit an SM"));
  }
  const int64_t groups = (p.n + 16 * kRowTiles - 1) / (16 * kRowTiles);
  int64_t grid = std::min<int64_t>(groups, int64_t{facts.sms} * facts.blocks_per_sm);
  if (max_blocks > 0) grid = std::min<int64_t>(grid, max_blocks);
  kernel<<<static_cast<int>(grid), warps * 32, smem, stream>>>(p);
  return absl::OkStatus();
}

// The staged variants built, as (batch tiles, row tiles, stages); kStagedVariants lists them.
template <typename T, ScaleKind kScale>
absl::Status launch_staged(const LinearParams& p, int warps, int row_tiles, int stages, bool bits,
                           int max_blocks, cudaStream_t stream) {
  const int batch_tiles = p.batch <= 8 ? 1 : 2;
  // NVFP4 with bf16 activations decodes with bit operations unless asked not to.
  constexpr bool kBitsBuilt = kScale == ScaleKind::kE4m3Per16 && std::is_same_v<T, __nv_bfloat16>;
#define VB_STAGED(BT, R, S)                                                                \
  if (batch_tiles == BT && row_tiles == R && stages == S) {                                \
    if (kBitsBuilt && bits) {                                                              \
      return launch_staged<T, kScale, BT, R, S, kBitsBuilt>(p, warps, max_blocks, stream); \
    }                                                                                      \
    return launch_staged<T, kScale, BT, R, S, false>(p, warps, max_blocks, stream);        \
  }
  VB_STAGED(1, 2, 2)
  VB_STAGED(2, 2, 2)
#undef VB_STAGED
  return absl::InvalidArgumentError(absl::StrCat(
      "fp4_linear: no staged kernel for batch ", p.batch, " with row_tiles = ", row_tiles,
      " and pipeline_stages = ", stages, " (", kStagedVariants, ")"));
}

// The staged kernel for the weight's scale encoding.
template <typename T>
absl::Status launch_staged(const LinearParams& p, int warps, int row_tiles, int stages, bool bits,
                           int max_blocks, cudaStream_t stream) {
  switch (scale_kind(p.format)) {
    case ScaleKind::kE4m3Per16:
      return launch_staged<T, ScaleKind::kE4m3Per16>(p, warps, row_tiles, stages, bits, max_blocks,
                                                     stream);
    case ScaleKind::kE8m0Per32:
      return launch_staged<T, ScaleKind::kE8m0Per32>(p, warps, row_tiles, stages, false, max_blocks,
                                                     stream);
    case ScaleKind::kFloatPer64:
      break;
  }
  return launch_staged<T, ScaleKind::kFloatPer64>(p, warps, row_tiles, stages, false, max_blocks,
                                                  stream);
}

// ---------------------------------------------------------------------------------------
// The direct kernel: NVFP4 with bf16 activations, batch <= 8, k a multiple of 128, x small
// enough to keep in shared memory (kDirectMaxXBytes). The staged kernel's copy ring costs a
// shared-memory write and read of every code byte and a 32 KiB scale table a block; here each
// lane loads its 16 code bytes of its two MMA rows (and their two scale bytes) straight into
// registers, two steps ahead of the one it computes, and converts the scales with arithmetic.
// x is copied into shared memory once per block, already permuted for e2m1_word_bits. Blocks own
// row groups and their 8 warps split k as in the other kernels (warp w takes steps w, w + 8,
// ...), adding their partial sums in warp order.
//
// Measured on the H200, 28672 x 8192, batch 1 (docs/fp4.md): 50.8 us (2.19x bf16 cuBLAS)
// with two segments and two row tiles, against 55-58 us for the staged kernel. A plain read of
// the codes alone in the same shape takes ~34 us (whole lines) to ~36 us (64-byte pieces):
// the remaining time is the decode and MMA work not hidden behind the loads. Loading 3 or 4
// steps ahead, and unrolling the step loop twice, measured slower.

constexpr int kDirectWarps = 8;
constexpr int64_t kDirectMaxXBytes = 64 * 1024;
// The direct kernel is the default (two segments, two row tiles) up to this batch.
constexpr int64_t kDirectDefaultMaxBatch = 4;
// The direct and the integer kernels are defaults only on layers of at least this many rows:
// below, their persistent grids have too few row groups to balance, and the staged kernel
// measured as fast or faster at 8192 rows (docs/fp4.md).
constexpr int64_t kLargeLayerRows = 16384;

// 16 bytes streamed past L1 (each code byte is read once).
__device__ __forceinline__ uint4 load_streaming(const uint8_t* src) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(src));
  return v;
}

template <int kRowTiles>
struct DirectStage {
  uint4 codes[kRowTiles][2];      // the lane's 16 bytes of its two rows of each tile
  uint32_t scales[kRowTiles][2];  // their two block-scale bytes
};

// kSegments (1 or 2): the MMA's 16 rows are 16 / kSegments weight rows times kSegments
// consecutive 128-wide k segments, and its 8 columns batch rows times segments (column
// b * kSegments + s holds batch row b's x of segment s). With 2, one 16-byte load of a warp
// covers 4 rows x 128 bytes (whole 128-byte lines) instead of 8 rows x 64 bytes: measured on
// the H200 as a plain read, 64-byte pieces stream ~10% slower than whole lines. The products of
// row segment s with x of another segment land in columns that are never read. Batch <= 8 /
// kSegments.
//
// The grid is persistent (as many blocks as fit the GPU at once, or fewer): block b takes row
// groups b, b + grid, ..., so x is staged once per block, and each warp's loads run on across
// its groups, kDepth steps ahead of the one it computes (a shift register of stages).
template <int kRowTiles, int kSegments, int kDepth, int kMinBlocks>
__global__ void __launch_bounds__(kDirectWarps * 32, kMinBlocks)
    direct_linear_kernel(LinearParams p) {
  static_assert(kSegments == 1 || kSegments == 2, "one or two segments");
  constexpr int kTileRows = 16 / kSegments;  // weight rows of an MMA tile
  constexpr int kRows = kTileRows * kRowTiles;
  constexpr int kStep = kStepK * kSegments;  // k of one step
  extern __shared__ __align__(16) uint8_t smem[];
  float* partial = reinterpret_cast<float*>(smem);
  uint4* x_words = reinterpret_cast<uint4*>(smem + kDirectWarps * kRows * 8 * 4);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int segment = g % kSegments;  // of MMA rows g and g + 8, and of MMA column g

  const int64_t groups = (p.n + kRows - 1) / kRows;
  const int my_groups =
      blockIdx.x < groups ? static_cast<int>((groups - 1 - blockIdx.x) / gridDim.x) + 1 : 0;
  const int64_t group_stride = int64_t{gridDim.x} * kRows;  // rows from one group to the next
  const int steps = static_cast<int>(p.k / kStep);
  const int my_steps = warp < steps ? (steps - warp + kDirectWarps - 1) / kDirectWarps : 0;
  const int64_t row_bytes = p.k / 2;
  const int64_t scale_row_bytes = p.k / 16;

  // The load side: the warp's steps of each of its groups, as one sequence.
  int issue_left = my_groups * my_steps;
  int issue_step = 0;
  int64_t issue_row0 = int64_t{blockIdx.x} * kRows;
  const uint8_t* code_src[kRowTiles][2];
  const uint16_t* scale_src[kRowTiles][2];
  auto load = [&](DirectStage<kRowTiles>& stage) {
    if (issue_left <= 0) return;  // past the last step: the stage is never read
    if (issue_step == 0) {
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // MMA rows g and g + 8
          const int64_t wanted = issue_row0 + kTileRows * r + (g + 8 * h) / kSegments;
          const int64_t row = wanted < p.n ? wanted : p.n - 1;  // rows past n are never stored
          code_src[r][h] = p.codes + row * row_bytes + warp * (kStep / 2) + 64 * segment + 16 * t;
          scale_src[r][h] = reinterpret_cast<const uint16_t*>(
              static_cast<const uint8_t*>(p.scales) + row * scale_row_bytes + warp * (kStep / 16) +
              8 * segment + 2 * t);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        stage.codes[r][h] = load_streaming(code_src[r][h]);
        stage.scales[r][h] = __ldg(scale_src[r][h]);
        code_src[r][h] += kStep / 2 * kDirectWarps;
        scale_src[r][h] += kStep / 32 * kDirectWarps;  // kStep / 16 bytes a step
      }
    }
    --issue_left;
    if (++issue_step == my_steps) {
      issue_step = 0;
      issue_row0 += group_stride;
    }
  };
  DirectStage<kRowTiles> ring[kDepth];
#pragma unroll
  for (int s = 0; s < kDepth; ++s) load(ring[s]);
  // While the first steps load: x, each 8 elements permuted as permute_x_for_e2m1 does per step
  // in the staged kernel.
  const int x_groups = static_cast<int>(p.batch * p.k / 8);
  for (int i = threadIdx.x; i < x_groups; i += blockDim.x) {
    const uint4 v = __ldg(static_cast<const uint4*>(p.x) + i);
    x_words[i] = make_uint4(__byte_perm(v.y, v.w, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                            __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.x, v.z, 0x5410));
  }
  __syncthreads();  // x is in shared memory

  // MMA column g: batch row g / kSegments, segment g % kSegments; zeros past the batch.
  const int x_row = g / kSegments;
  const bool x_live = x_row < p.batch;
  const uint4* const x_first =
      x_words + (x_live ? x_row : 0) * (p.k / 8) + warp * (kStep / 8) + 16 * segment + 4 * t;
  p.tensor_scale *= kE2m1OutputBias;
  for (int group = 0; group < my_groups; ++group) {
    const int64_t row0 = int64_t{blockIdx.x} * kRows + group * group_stride;
    const uint4* x_src = x_first;
    float acc[kRowTiles][1][4] = {};  // one batch tile
    for (int i = 0; i < my_steps; ++i) {
      const DirectStage<kRowTiles> stage = ring[0];
#pragma unroll
      for (int s = 0; s + 1 < kDepth; ++s) ring[s] = ring[s + 1];
      load(ring[kDepth - 1]);
      uint32_t xp[1][16];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint4 v = x_live ? x_src[q] : make_uint4(0, 0, 0, 0);
        xp[0][4 * q] = v.x;
        xp[0][4 * q + 1] = v.y;
        xp[0][4 * q + 2] = v.z;
        xp[0][4 * q + 3] = v.w;
      }
      x_src += kStep / 8 * kDirectWarps;
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        uint32_t scale[2][2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          e4m3_pair_to_scales(stage.scales[r][h], scale[h][0], scale[h][1]);
        }
        mma_row_tile_e2m1<1>(acc[r], stage.codes[r][0], stage.codes[r][1], scale, xp);
      }
    }
    if constexpr (kSegments == 1) {
      reduce_and_store<__nv_bfloat16, kRowTiles, 1>(p, acc, partial, row0);
    } else {
      // Lane (g, t) holds columns 2t (segment 0) and 2t + 1 (segment 1) of batch row t: its own
      // segment's sums of MMA rows g and g + 8, added to the other segment's from lane g ^ 1.
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float sum = segment == 0 ? acc[r][0][2 * h] : acc[r][0][2 * h + 1];  // static index
          sum += __shfl_xor_sync(0xffffffffu, sum, 4);
          if (segment == 0) {
            const int row = kTileRows * r + (g + 8 * h) / 2;
            partial[(warp * kRows + row) * 4 + t] = sum;
          }
        }
      }
      __syncthreads();
      add_partials_and_store<__nv_bfloat16, kRows, 4>(p, partial, row0);
    }
    __syncthreads();  // the partial sums are read before the next group writes them
  }
}

// Whether the direct kernel with `segments` k segments an MMA can take this call (see its
// comment).
bool direct_applies(const LinearParams& p, Activation type, int segments) {
  return p.format == Format::kNvfp4 && type == Activation::kBf16 &&
         p.k % (kStepK * segments) == 0 && p.batch <= 8 / segments &&
         int64_t{p.batch} * p.k * 2 <= kDirectMaxXBytes &&
         reinterpret_cast<uintptr_t>(p.codes) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.scales) % 2 == 0;
}

constexpr const char* kDirectVariants =
    "built: direct = 1 or 2 with row_tiles 1 or 2 and pipeline_stages 2 (3 and 4 measured "
    "slower)";

// depth: the steps each warp loads ahead (LinearOptions::pipeline_stages).
absl::Status launch_direct(const LinearParams& p, int segments, int row_tiles, int depth,
                           int max_blocks, cudaStream_t stream) {
  void (*kernel)(LinearParams) = nullptr;
#define VB_DIRECT(S, R, D, B) \
  if (segments == S && row_tiles == R && depth == D) kernel = direct_linear_kernel<R, S, D, B>;
  VB_DIRECT(1, 1, 2, 3)
  VB_DIRECT(1, 2, 2, 2)
  VB_DIRECT(2, 1, 2, 3)
  VB_DIRECT(2, 2, 2, 2)
#undef VB_DIRECT
  if (kernel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp4_linear: no direct kernel for direct = ", segments, " with row_tiles = ", row_tiles,
        " and pipeline_stages = ", depth, " (", kDirectVariants, ")"));
  }
  const int rows = 16 / segments * row_tiles;
  const size_t smem = size_t{4} * kDirectWarps * rows * 8 + size_t{2} * p.batch * p.k;
  VB_ASSIGN_OR_RETURN(const LaunchFacts facts,
                      launch_facts(reinterpret_cast<const void*>(kernel), kDirectWarps * 32, smem));
  if (facts.blocks_per_sm == 0) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_linear: the direct kernel needs ", smem,
                                                   " bytes of shared memory a block; the GPU "
                                                   "allows ",
                                                   facts.smem_limit));
  }
  const int64_t groups = (p.n + rows - 1) / rows;
  int64_t grid = std::min<int64_t>(groups, int64_t{facts.sms} * facts.blocks_per_sm);
  if (max_blocks > 0) grid = std::min<int64_t>(grid, max_blocks);
  kernel<<<static_cast<int>(grid), kDirectWarps * 32, smem, stream>>>(p);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// The k-split kernel: NVFP4 with bf16 activations, batch <= 16, k a multiple of 128. The staged
// kernel's warps split k, so each copies its own x: 4 KB of x (16 batch rows x 128 k) per 2 KB
// of codes and scales. A first answer, warps owning 16 rows over all of k and sharing x slices
// of 512 k (the row-split kernel), made all 8 warps of a block meet at a barrier every 4 steps
// and had too few blocks for 8192 rows: 89.5 us at 28672 x 8192, 68.7 us at 8192 x 8192 (H200,
// batch 16). Here k is cut into chunks, and every block takes one chunk: it stages that chunk of
// x (16 batch rows, permuted for e2m1_word_bits, laid out by k_split_x_word) once, and its
// warps then walk tiles of 16 rows over the chunk with no barrier at all, codes and scales
// loaded straight into registers kDepth steps ahead (the load sequence runs on across a warp's
// tiles): 73.7 us with chunks of 2048 k, 68.2 us with 1024 (more, shorter tiles: the last ones
// leave fewer warps idle). Two row tiles a warp (x read once for 32 rows) need more than the 128
// registers that two blocks an SM allow, and spill. The chunks' float sums meet either in
// shared memory, through a thread block cluster of one block a chunk (kCluster), or in a
// workspace, [chunk][batch row][n], that a second kernel adds up; both add the chunks in order
// (the result does not depend on timing), apply the tensor scale and the bias and write y.
// Every weight byte is still read once.
constexpr int kKSplitWarps = 8;
// Chunks of 1024 k by default; at most 2048 (16 batch rows x 2048 k of bf16 x: 64 KiB of shared
// memory a block).
constexpr int kKSplitDefaultChunk = 1024;
constexpr int kKSplitMaxChunk = 2048;
// The default from this many rows up (the staged kernel below: one launch, no workspace),
// for more than 8 batch rows; from kLargeLayerRows rows (where it adds its chunks in a
// cluster), for more than kKSplitLargeLayerMinBatch - 1. Measured on the H200 at
// 28672 x 8192 (docs/fp4.md): 60.7 / 60.9 us at 7 / 8 rows against the staged kernel's
// 62.0 / 62.9, a tie at 5 and 6 rows; at 8192 x 8192 it is slower below 9 rows (24.2-24.7
// against 19.1-20.0 us).
constexpr int64_t kKSplitDefaultMinRows = 8192;
constexpr int64_t kKSplitLargeLayerMinBatch = 7;
constexpr int kKSplitFinishThreads = 256;

// The k-split kernel keeps x in shared memory with the four 16-byte words of each lane
// transposed within a step: word w = 16 j + 4 t + q (step j, lane t, its word q) of a batch
// row is stored at 16 j + 4 q + t, and rows are kKSplitXRowPad words longer than the chunk.
// The 8 lanes of a quarter warp (two rows g, lanes t = 0..3) then read 8 different 16-byte
// bank groups (t, and t + 4 for the odd row, as the row length is 4 mod 8), and a lane's
// words lie at constant offsets from one pointer, so reading x takes no address arithmetic
// beyond one add a step (the swizzle it replaces took ~25 instructions a warp-step).
constexpr int kKSplitXRowPad = 4;
__device__ __forceinline__ int k_split_x_word(int w) {
  return (w & ~15) | ((w & 3) << 2) | ((w >> 2) & 3);
}

// Output b * n + row of the k-split kernel from its chunks' sum: the tensor scale, the 2^7 of
// the bit decode and the bias, rounded to bf16 once.
__device__ __forceinline__ void k_split_store(const LinearParams& p, int64_t i, float sum) {
  sum *= p.tensor_scale * kE2m1OutputBias;
  if (p.bias != nullptr) {
    sum += Half<__nv_bfloat16>::to_float(static_cast<const uint16_t*>(p.bias)[i % p.n]);
  }
  static_cast<uint16_t*>(p.y)[i] = static_cast<uint16_t>(Half<__nv_bfloat16>::bits(sum));
}

// kCluster: the blocks of one chunk group (blockIdx.x / chunks) form a thread block cluster,
// one block a chunk. Each warp keeps its tiles' float sums in its block's shared memory
// (`tile_slots` tiles of 16 batch x 16 rows a warp) instead of the workspace; after a cluster
// barrier every block adds a share of the group's outputs over the chunks, in chunk order,
// through distributed shared memory, and writes y. No workspace, no second kernel.
template <int kDepth, bool kCluster>
__global__ void __launch_bounds__(kKSplitWarps * 32, 2)
    k_split_linear_kernel(LinearParams p, int chunk_steps, int chunks, int tile_slots,
                          float* partial) {
  constexpr int kRows = 16;
  extern __shared__ __align__(16) uint8_t smem[];
  uint4* const x_chunk = reinterpret_cast<uint4*>(smem);  // [16 batch rows][chunk_words]
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  // Blocks chunk, chunk + chunks, ... share a chunk; their warps split its tiles.
  const int chunk = blockIdx.x % chunks;
  const int warps_in_chunk = gridDim.x / chunks * kKSplitWarps;
  const int warp_in_chunk = blockIdx.x / chunks * kKSplitWarps + warp;
  const int first_step = chunk * chunk_steps;
  const int my_steps = min(chunk_steps, static_cast<int>(p.k / kStepK) - first_step);
  const int64_t tiles = (p.n + kRows - 1) / kRows;
  const int my_tiles = warp_in_chunk < tiles
                           ? static_cast<int>((tiles - 1 - warp_in_chunk) / warps_in_chunk) + 1
                           : 0;
  const int64_t tile_stride = int64_t{warps_in_chunk} * kRows;  // rows from one tile to the next

  // The load side: the warp's steps of each of its tiles, as one sequence.
  const int64_t row_bytes = p.k / 2;
  const int64_t scale_row_bytes = p.k / 16;
  int issue_left = my_tiles * my_steps;
  int issue_step = 0;
  int64_t issue_row0 = int64_t{warp_in_chunk} * kRows;
  const uint8_t* code_src[2];
  const uint16_t* scale_src[2];
  auto load = [&](DirectStage<1>& stage) {
    if (issue_left <= 0) return;  // past the last step: the stage is never read
    if (issue_step == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows g and g + 8 of the tile
        const int64_t wanted = issue_row0 + g + 8 * h;
        const int64_t row = wanted < p.n ? wanted : p.n - 1;  // rows past n are never stored
        code_src[h] = p.codes + row * row_bytes + first_step * (kStepK / 2) + 16 * t;
        scale_src[h] = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(p.scales) +
                                                         row * scale_row_bytes +
                                                         first_step * (kStepK / 16) + 2 * t);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      stage.codes[0][h] = load_streaming(code_src[h]);
      stage.scales[0][h] = __ldg(scale_src[h]);
      code_src[h] += kStepK / 2;
      scale_src[h] += kStepK / 32;  // 8 bytes a step
    }
    --issue_left;
    if (++issue_step == my_steps) {
      issue_step = 0;
      issue_row0 += tile_stride;
    }
  };
  DirectStage<1> ring[kDepth];
#pragma unroll
  for (int s = 0; s < kDepth; ++s) load(ring[s]);
  // While the first steps load: the block's chunk of x, zero past the batch and past k.
  const int chunk_words = chunk_steps * (kStepK / 8);  // 16-byte words of one batch row
  const int x_row_words = chunk_words + kKSplitXRowPad;
  for (int i = threadIdx.x; i < 16 * chunk_words; i += blockDim.x) {
    const int b = i / chunk_words;
    const int w = i % chunk_words;
    const int64_t k = int64_t{first_step} * kStepK + 8 * w;
    const uint4 v = b < p.batch && k < p.k
                        ? __ldg(reinterpret_cast<const uint4*>(
                              static_cast<const __nv_bfloat16*>(p.x) + b * p.k + k))
                        : make_uint4(0, 0, 0, 0);
    x_chunk[b * x_row_words + k_split_x_word(w)] =
        make_uint4(__byte_perm(v.y, v.w, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                   __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.x, v.z, 0x5410));
  }
  __syncthreads();  // the only barrier: x stays put from here on
  // Word q of the lane's four in step j sits at x_lane[bt] + 16 j + 4 q (k_split_x_word).
  const uint4* const x_lane[2] = {x_chunk + g * x_row_words + t,
                                  x_chunk + (g + 8) * x_row_words + t};

  // kCluster: [warp][tile slot][16 batch rows][16 rows] after x.
  float* const slots = reinterpret_cast<float*>(x_chunk + 16 * x_row_words);
  float* const chunk_partial = kCluster ? nullptr : partial + int64_t{chunk} * p.batch * p.n;
  for (int tile = 0; tile < my_tiles; ++tile) {
    const int64_t row0 = (warp_in_chunk + int64_t{tile} * warps_in_chunk) * kRows;
    float acc[2][4] = {};  // batch tiles 0..7 and 8..15
    for (int j = 0; j < my_steps; ++j) {
      const DirectStage<1> stage = ring[0];
#pragma unroll
      for (int s = 0; s + 1 < kDepth; ++s) ring[s] = ring[s + 1];
      load(ring[kDepth - 1]);
      uint32_t xp[2][16];  // batch rows g and g + 8: the lane's 32 k of this step
#pragma unroll
      for (int bt = 0; bt < 2; ++bt) {
        const uint4* x_src = x_lane[bt] + 16 * j;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint4 v = x_src[4 * q];
          xp[bt][4 * q] = v.x;
          xp[bt][4 * q + 1] = v.y;
          xp[bt][4 * q + 2] = v.z;
          xp[bt][4 * q + 3] = v.w;
        }
      }
      uint32_t scale[2][2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        e4m3_pair_to_scales(stage.scales[0][h], scale[h][0], scale[h][1]);
      }
      mma_row_tile_e2m1<2>(acc, stage.codes[0][0], stage.codes[0][1], scale, xp);
    }
    // Lane (g, t) holds rows g, g + 8 x batch rows 8 bt + 2t, 8 bt + 2t + 1.
#pragma unroll
    for (int bt = 0; bt < 2; ++bt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i / 2);
        const int b = 8 * bt + 2 * t + (i % 2);
        if constexpr (kCluster) {
          slots[((warp * tile_slots + tile) * 16 + b) * kRows + r] = acc[bt][i];
        } else if (b < p.batch && row0 + r < p.n) {
          chunk_partial[b * p.n + row0 + r] = acc[bt][i];
        }
      }
    }
  }
  if constexpr (kCluster) {
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    cluster.sync();  // every chunk's sums are in place
    // Item ((w * tile_slots + s) * 16 + b) * 16 + r: row r of slot s of warp w, batch row b.
    // Slots past a warp's tiles hold garbage and have row0 >= n.
    const int group = blockIdx.x / chunks;
    const int items = kKSplitWarps * tile_slots * 16 * kRows;
    for (int item = chunk * blockDim.x + threadIdx.x; item < items; item += chunks * blockDim.x) {
      const int r = item % kRows;
      const int b = item / kRows % 16;
      const int slot = item / (16 * kRows);
      const int64_t row0 = (int64_t{group} * kKSplitWarps + slot / tile_slots +
                            int64_t{slot % tile_slots} * warps_in_chunk) *
                           kRows;
      if (b >= p.batch || row0 + r >= p.n) continue;
      float sum = 0.0f;
      for (int c = 0; c < chunks; ++c) sum += cluster.map_shared_rank(slots, c)[item];
      k_split_store(p, int64_t{b} * p.n + row0 + r, sum);
    }
    cluster.sync();  // no block leaves while another reads its shared memory
  }
}

// y = (the chunks' sums added in chunk order) x tensor scale (+ bias), one thread an output.
__global__ void __launch_bounds__(kKSplitFinishThreads)
    k_split_finish_kernel(LinearParams p, int chunks, const float* partial) {
  const int64_t outputs = int64_t{p.batch} * p.n;
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;  // b * n + row
  if (i >= outputs) return;
  float sum = 0.0f;
  for (int c = 0; c < chunks; ++c) sum += partial[c * outputs + i];
  k_split_store(p, i, sum);
}

// Whether the k-split kernel can take this call (see its comment).
bool k_split_applies(const LinearParams& p, Activation type) {
  return p.format == Format::kNvfp4 && type == Activation::kBf16 && p.k % kStepK == 0 &&
         reinterpret_cast<uintptr_t>(p.codes) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.scales) % 2 == 0;
}

constexpr const char* kKSplitVariants = "built: pipeline_stages 2 or 3, row_tiles 1, 8 warps";

using KSplitKernel = void (*)(LinearParams, int, int, int, float*);

// The most chunks the cluster sum takes: one block a chunk in a cluster, and 8 is the largest
// cluster every GPU of compute capability 9.0 launches.
constexpr int kKSplitMaxClusterChunks = 8;

// The launch configuration of the cluster sum: one cluster of `chunks` blocks a chunk group.
// Not copyable: `config` points at `cluster`.
struct KSplitClusterLaunch {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute cluster = {};
  KSplitClusterLaunch(int64_t groups, int chunks, size_t smem, cudaStream_t stream) {
    config.gridDim = dim3(static_cast<unsigned>(groups * chunks));
    config.blockDim = dim3(kKSplitWarps * 32);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = chunks;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
  }
  KSplitClusterLaunch(const KSplitClusterLaunch&) = delete;
  KSplitClusterLaunch& operator=(const KSplitClusterLaunch&) = delete;
};

struct KSplitClusterPlan {
  int64_t groups = 0;  // clusters: blocks a chunk
  int tile_slots = 0;  // tiles a warp keeps
  size_t smem = 0;
};

// The grid of the cluster sum: as many chunk groups as can run at once (2 blocks an SM at
// most), each warp keeping all of its tiles' sums in shared memory. Cached per shape.
absl::StatusOr<KSplitClusterPlan> plan_k_split_cluster(KSplitKernel kernel, int chunks,
                                                       size_t x_smem, int64_t tiles,
                                                       int max_blocks) {
  if (chunks > kKSplitMaxClusterChunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_linear: k_split_sum = 1 takes at most ", kKSplitMaxClusterChunks,
                     " chunks (one thread block cluster a chunk group); got ", chunks));
  }
  int device = 0;
  VB_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  using Key = std::tuple<KSplitKernel, int, int, size_t, int64_t, int>;
  static std::mutex mutex;
  static auto* plans = new std::map<Key, KSplitClusterPlan>();
  const Key key{kernel, device, chunks, x_smem, tiles, max_blocks};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = plans->find(key); it != plans->end()) return it->second;
  }
  int sms = 0;
  VB_RETURN_IF_ERROR(cuda_status(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count"));
  int64_t groups = std::max<int64_t>(1, int64_t{sms} * 2 / chunks);
  groups = std::min<int64_t>(groups, (tiles + kKSplitWarps - 1) / kKSplitWarps);
  if (max_blocks > 0) groups = std::min<int64_t>(groups, std::max(1, max_blocks / chunks));
  // Fewer groups than asked fit: each warp then keeps more tiles, which takes more shared
  // memory, so ask again until the answer holds (the count only falls).
  while (true) {
    KSplitClusterPlan plan;
    plan.groups = groups;
    const int64_t slots = (tiles + groups * kKSplitWarps - 1) / (groups * kKSplitWarps);
    plan.smem = x_smem + sizeof(float) * kKSplitWarps * slots * 16 * 16;
    VB_ASSIGN_OR_RETURN(const LaunchFacts facts, launch_facts(reinterpret_cast<const void*>(kernel),
                                                              kKSplitWarps * 32, plan.smem));
    if (facts.blocks_per_sm == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("fp4_linear: k_split_sum = 1 keeps ", slots, " tiles a warp, ", plan.smem,
                       " bytes of shared memory a block; the GPU allows ", facts.smem_limit));
    }
    plan.tile_slots = static_cast<int>(slots);
    const KSplitClusterLaunch launch(groups, chunks, plan.smem, nullptr);
    int fit = 0;
    VB_RETURN_IF_ERROR(cuda_status(
        cudaOccupancyMaxActiveClusters(&fit, reinterpret_cast<const void*>(kernel), &launch.config),
        "cudaOccupancyMaxActiveClusters"));
    if (fit == 0) {
      return absl::InvalidArgumentError(absl::StrCat("fp4_linear: k_split_sum = 1: no cluster of ",
                                                     chunks, " blocks with ", plan.smem,
                                                     " bytes of shared memory each fits the GPU"));
    }
    if (fit >= groups) {
      std::lock_guard<std::mutex> lock(mutex);
      plans->emplace(key, plan);
      return plan;
    }
    groups = fit;
  }
}

// chunk: k of one chunk (a multiple of kStepK, at most kKSplitMaxChunk). sum: 1 the cluster
// sum; 0 the workspace; -1 the cluster sum where it can run on layers of kLargeLayerRows or
// more, else the workspace. Measured on the H200 (docs/fp4.md), batch 16: 62.4 against 65.2 us
// at 28672 x 8192, but 27.1 against 25.4 us at 8192 x 8192. Only 30 clusters of 8 blocks fit
// at once where 33 groups of blocks do without clusters, so each warp takes more tiles: 3
// instead of 2 at 8192 rows, where that tail outweighs the second kernel.
absl::Status launch_k_split(const LinearParams& p, int depth, int chunk, int sum, int max_blocks,
                            cudaStream_t stream) {
  KSplitKernel workspace_kernel = nullptr, cluster_kernel = nullptr;
  if (depth == 2) {
    workspace_kernel = k_split_linear_kernel<2, false>;
    cluster_kernel = k_split_linear_kernel<2, true>;
  }
  if (depth == 3) {
    workspace_kernel = k_split_linear_kernel<3, false>;
    cluster_kernel = k_split_linear_kernel<3, true>;
  }
  if (workspace_kernel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fp4_linear: no k-split kernel for pipeline_stages = ", depth, " (", kKSplitVariants, ")"));
  }
  const int steps = static_cast<int>(p.k / kStepK);
  // Chunks as even as the steps allow, none of them empty.
  const int max_chunk_steps = chunk / kStepK;
  const int fewest_chunks = (steps + max_chunk_steps - 1) / max_chunk_steps;
  const int chunk_steps = (steps + fewest_chunks - 1) / fewest_chunks;
  const int chunks = (steps + chunk_steps - 1) / chunk_steps;
  const size_t x_smem = size_t{16} * (chunk_steps * kStepK * 2 + kKSplitXRowPad * 16);
  const int64_t tiles = (p.n + 15) / 16;
  if (sum == 1 || (sum == -1 && p.n >= kLargeLayerRows)) {
    const absl::StatusOr<KSplitClusterPlan> plan =
        plan_k_split_cluster(cluster_kernel, chunks, x_smem, tiles, max_blocks);
    if (plan.ok()) {
      const KSplitClusterLaunch launch(plan->groups, chunks, plan->smem, stream);
      return cuda_status(cudaLaunchKernelEx(&launch.config, cluster_kernel, p, chunk_steps, chunks,
                                            plan->tile_slots, static_cast<float*>(nullptr)),
                         "cudaLaunchKernelEx");
    }
    if (sum == 1 || !absl::IsInvalidArgument(plan.status())) return plan.status();
  }
  VB_ASSIGN_OR_RETURN(
      const LaunchFacts facts,
      launch_facts(reinterpret_cast<const void*>(workspace_kernel), kKSplitWarps * 32, x_smem));
  if (facts.blocks_per_sm == 0) {
    return absl::InternalError(absl::StrCat("fp4_linear: the k-split kernel needs ", x_smem,
                                            " bytes of shared memory a block; the GPU allows ",
                                            facts.smem_limit));
  }
  // As many blocks as fit the GPU at once, the same number for every chunk, at least one each,
  // and no more than a chunk's tiles can keep busy.
  int64_t per_chunk = std::max<int64_t>(1, int64_t{facts.sms} * facts.blocks_per_sm / chunks);
  per_chunk = std::min<int64_t>(per_chunk, (tiles + kKSplitWarps - 1) / kKSplitWarps);
  if (max_blocks > 0) per_chunk = std::min<int64_t>(per_chunk, std::max(1, max_blocks / chunks));
  const int64_t grid = per_chunk * chunks;
  if (grid > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_linear: k = ", p.k, " is too large"));
  }
  int device = 0;
  VB_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  VB_RETURN_IF_ERROR(keep_scratch_pool(device));
  const int64_t outputs = int64_t{p.batch} * p.n;
  float* partial = nullptr;
  const size_t workspace_bytes = sizeof(float) * chunks * outputs;
  if (const cudaError_t e =
          cudaMallocAsync(reinterpret_cast<void**>(&partial), workspace_bytes, stream);
      e != cudaSuccess) {
    cudaGetLastError();  // clear it: the call is refused, the context is fine
    return absl::ResourceExhaustedError(
        absl::StrCat("fp4_linear: the k-split kernel's workspace of ", workspace_bytes,
                     " bytes: ", cudaGetErrorString(e)));
  }
  workspace_kernel<<<static_cast<int>(grid), kKSplitWarps * 32, x_smem, stream>>>(
      p, chunk_steps, chunks, 0, partial);
  k_split_finish_kernel<<<static_cast<int>((outputs + kKSplitFinishThreads - 1) /
                                           kKSplitFinishThreads),
                          kKSplitFinishThreads, 0, stream>>>(p, chunks, partial);
  return cuda_status(cudaFreeAsync(partial, stream), "cudaFreeAsync");
}

// ---------------------------------------------------------------------------------------
// The integer kernel: NVFP4 weights, bf16 or fp16 activations, batch <= kIntegerMaxBatch, k a
// multiple of 128. Nsight Compute on the direct kernel (H200, 28672 x 8192, batch 1) shows it
// bound by instruction issue, not memory: ~512 instructions a warp-step, most of them turning
// codes into bf16 and multiplying them by their block scales, and the math pipes throttling.
// Here the codes become the 8-bit operands of an integer MMA, and the block scales multiply
// the MMA's sums instead of every code:
//
// - Weights. Code c (E2M1 value e) becomes the unsigned byte 192 + 2e (180..204). One prmt looks
//   up 192 + 2|e| by each code's magnitude; where the code's sign bit is set, prmt's
//   sign-replicate mode gives 0xFF instead (every table byte has its top bit set). A second
//   prmt, on the codes with their sign bits flipped, looks up 192 - 2|e| the same way. Their AND
//   is the byte: two prmt and an AND for four codes, against eight operations and a multiply
//   for two in the bf16 decode.
// - x. Each 16-element block of a batch row becomes 15-bit fixed point, X = rint(x 2^E), with E
//   chosen so the block's largest |x| 2^E lies in [2^13, 2^14), and X = 256 hi + lo with hi and
//   lo signed bytes. That is exact for every element of at least 1/64 of its block's largest in
//   bf16 (8 significant bits; 1/8 in fp16, 11 bits), and rounds the others by at most 2^-14 of
//   the largest (bf16 itself rounds by 2^-9 of the element).
//   The block stages it once in shared memory, laid out as the MMA's B fragments.
// - The MMA (m16n8k32, u8 x s8 into s32). Lane t of a row group holds 8 codes of its own 16-byte
//   chunk of the row. Column (h, c) of B holds part h (hi or lo) of x only at the k of lane c's
//   codes, and zeros elsewhere. So each output column is one NVFP4 block's dot product, and two
//   chained MMAs finish it exactly in int32. The accumulator starts at 0x4B400000 - 192 sum(X):
//   the bits of the float 1.5 * 2^23, less the 192 offset's share. Its final bits then read as
//   the float 1.5 * 2^23 + dot, and one subtraction gives the dot exactly, with no integer
//   conversion.
// - In float32: acc += dot * block scale * 2^(8 - E) for hi, or 2^-E for lo. At the end the lanes
//   add their columns and the warps their k ranges, in a fixed order.
// x that is Inf or NaN gives its block a NaN factor, so every output of that batch row is NaN.
// (IEEE arithmetic would give +-Inf where no weight of the row is zero.)
//
// Measured on the H200 (docs/fp4.md), 28672 x 8192, batch 1: 51.3 us in bf16 (the direct kernel
// 51.0 us in the same run) and 51.4 us in fp16 (the staged kernel 58.8 us), the default there.
// It issues ~400 instructions a warp-step of 32 rows, against the direct kernel's ~512, yet runs
// no faster: Nsight Compute's source view puts a quarter of its stall samples on the first use
// of each step's loads. Neither more bytes in flight (loads issued two steps ahead instead of
// one; a cp.async ring of 4 to 12 stages in shared memory; L2 prefetches) nor a row-tiled
// layout of the codes (each warp-step one contiguous KiB, tried as a probe) moved it by more
// than the noise, and several were slower; docs/fp4.md lists them.

constexpr int kIntegerWarps = 8;
constexpr int kIntegerMaxBatch = 4;
// The integer kernel is the default for fp16 activations up to this batch, on layers of
// kLargeLayerRows or more. Measured on the H200 (docs/fp4.md), 28672 x 8192 NVFP4, batch 1:
// 51.4 us against the staged kernel's 58.8 us in fp16; in bf16 it ties the direct kernel
// (51.3 against 51.0 us), and from 2 batch rows it is slower than both (its MMA columns are
// one block each, so every batch row takes MMAs of its own).
constexpr int64_t kIntegerDefaultMaxBatch = 1;
// Shared memory a batch row and 128-wide step: B fragments (two blocks x 8 columns x 16 bytes),
// then the accumulator starts and the factors (4 lanes t x 4 values each).
constexpr int kIntegerFragmentBytes = 256;
constexpr int kIntegerStepBytes = kIntegerFragmentBytes + 64 + 64;
// x staged in shared memory at most this large (2 blocks an SM fit).
constexpr int64_t kIntegerMaxXBytes = 96 * 1024;
constexpr uint32_t kMagicBits = 0x4B400000u;  // 1.5 * 2^23 as float bits
constexpr float kMagic = 12582912.0f;
// 192 + 2e by magnitude (bytes 0..7 of the pair), and 192 - 2e.
constexpr uint32_t kPlus0 = 0xC3C2C1C0u, kPlus1 = 0xCCC8C6C4u;
constexpr uint32_t kMinus0 = 0xBDBEBFC0u, kMinus1 = 0xB4B8BABCu;

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  // Default mode: a selector nibble with its top bit set replicates the chosen byte's sign.
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

// The 8 codes of word q as offset bytes 192 + 2e: codes 0..3 in `low`, 4..7 in `high`, each in k
// order (byte i = code i).
__device__ __forceinline__ void e2m1_word_u8(uint32_t q, uint32_t& low, uint32_t& high) {
  const uint32_t flipped = q ^ 0x88888888u;
  low = prmt(kPlus0, kPlus1, q) & prmt(kMinus0, kMinus1, flipped);
  high = prmt(kPlus0, kPlus1, q >> 16) & prmt(kMinus0, kMinus1, flipped >> 16);
}

__device__ __forceinline__ void mma_u8s8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// x into the integer kernel's shared-memory layout (see its comment), one 16-element block a
// thread at a time. Per batch row and step: [block q][column 4h + c][16 bytes] B fragments,
// then accumulator starts and factors as [lane t][2q + column parity], for column (h, c) of
// lane t = 2h + c / 2.
// Rows from p.batch up to `rows` are staged as zeros.
template <typename T>
__device__ __forceinline__ void stage_integer_x(const LinearParams& p, int rows, uint8_t* xs) {
  const int blocks_per_row = static_cast<int>(p.k / 16);
  const int steps = static_cast<int>(p.k / kStepK);
  for (int item = threadIdx.x; item < rows * blocks_per_row; item += blockDim.x) {
    const int b = item / blocks_per_row;
    const int block = item % blocks_per_row;
    uint4 first = make_uint4(0, 0, 0, 0), second = first;
    if (b < p.batch) {
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) +
                                                        int64_t{b} * p.k + 16 * block);
      first = __ldg(src);
      second = __ldg(src + 1);
    }
    uint16_t bits[16];
    std::memcpy(bits, &first, 16);
    std::memcpy(bits + 8, &second, 16);
    float v[16];
    float largest = 0.0f;
    bool finite = true;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      v[i] = Half<T>::to_float(bits[i]);
      finite = finite && isfinite(v[i]);
      largest = fmaxf(largest, fabsf(v[i]));
    }
    // 2^13 <= largest 2^shift < 2^14, from the float's exponent field (bf16 and fp16 values are
    // normal floats, or zero; a block of float-subnormal bf16 values takes the largest shift);
    // bounded so that the factors stay normal floats.
    const int biased = (__float_as_int(largest) >> 23) & 0xFF;  // largest in [2^(biased-127), ..)
    const int shift = !finite || largest == 0.0f ? 0 : min(13 - (biased - 127), 100);
    // 2^shift as two exact factors (one float holds at most 2^127).
    const float up_first = __int_as_float((127 + shift / 2) << 23);
    const float up_second = __int_as_float((127 + shift - shift / 2) << 23);
    uint32_t hi_words[4] = {}, lo_words[4] = {};
    int hi_sum = 0, lo_sum = 0;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int fixed = finite ? __float2int_rn(v[i] * up_first * up_second) : 0;  // <= 2^14
      const int hi = (fixed + 128) >> 8;                                           // -64..64
      const int lo = fixed - 256 * hi;                                             // -128..127
      hi_sum += hi;
      lo_sum += lo;
      hi_words[i / 4] |= (static_cast<uint32_t>(hi) & 0xFFu) << (8 * (i % 4));
      lo_words[i / 4] |= (static_cast<uint32_t>(lo) & 0xFFu) << (8 * (i % 4));
    }
    const int step = block / 8;
    const int c = (block % 8) / 2;  // the lane chunk of the step
    const int q = block % 2;        // the block of the chunk
    uint8_t* base = xs + (int64_t{b} * steps + step) * kIntegerStepBytes;
    uint4* fragments = reinterpret_cast<uint4*>(base + q * 128);
    fragments[c] = make_uint4(hi_words[0], hi_words[1], hi_words[2], hi_words[3]);
    fragments[4 + c] = make_uint4(lo_words[0], lo_words[1], lo_words[2], lo_words[3]);
    uint32_t* starts = reinterpret_cast<uint32_t*>(base + kIntegerFragmentBytes);
    float* factors = reinterpret_cast<float*>(base + kIntegerFragmentBytes + 64);
    const float nan = __int_as_float(0x7FC00000);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int index = (2 * h + c / 2) * 4 + 2 * q + c % 2;
      starts[index] = kMagicBits - 192u * static_cast<uint32_t>(h == 0 ? hi_sum : lo_sum);
      factors[index] = finite ? __int_as_float((127 + (h == 0 ? 8 : 0) - shift) << 23) : nan;
    }
  }
}

template <int kRowTiles>
struct IntegerStage {
  uint4 codes[kRowTiles][2];      // the lane's 16 bytes of rows g and g + 8 of each tile
  uint32_t scales[kRowTiles][2];  // their four block scales of the step the lane's columns need
};

// Blocks own row groups of 16 kRowTiles rows (a persistent grid, as in the direct kernel), and
// their 8 warps split k: warp w takes steps w, w + 8, ..., loading two steps ahead.
// kBatch: the batch rows it is built for (1, 2 or 4; p.batch may be fewer).
template <typename T, int kRowTiles, int kBatch>
__global__ void __launch_bounds__(kIntegerWarps * 32, 2) integer_linear_kernel(LinearParams p) {
  constexpr int kRows = 16 * kRowTiles;
  extern __shared__ __align__(16) uint8_t smem[];
  float* partial = reinterpret_cast<float*>(smem);
  uint4* zeros = reinterpret_cast<uint4*>(smem + kIntegerWarps * kRows * kBatch * 4);
  uint8_t* xs = reinterpret_cast<uint8_t*>(zeros + 1);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;

  const int64_t groups = (p.n + kRows - 1) / kRows;
  const int my_groups =
      blockIdx.x < groups ? static_cast<int>((groups - 1 - blockIdx.x) / gridDim.x) + 1 : 0;
  const int64_t group_stride = int64_t{gridDim.x} * kRows;
  const int steps = static_cast<int>(p.k / kStepK);
  const int my_steps = warp < steps ? (steps - warp + kIntegerWarps - 1) / kIntegerWarps : 0;
  const int64_t row_bytes = p.k / 2;
  const int64_t scale_row_bytes = p.k / 16;

  // Steps alternate between two register stages, so that no stage is copied: a copy of a
  // register whose load is in flight waits for it. A group's steps are padded to an even count
  // (the padding step loads and computes nothing), so that step i of every group is in stage
  // i % 2.
  const int padded_steps = my_steps + (my_steps & 1);
  int issue_left = my_groups * padded_steps;
  int issue_step = 0;
  int64_t issue_row0 = int64_t{blockIdx.x} * kRows;
  const uint8_t* code_src[kRowTiles][2];
  const uint32_t* scale_src[kRowTiles][2];
  auto load = [&](IntegerStage<kRowTiles>& stage) {
    if (issue_left <= 0) return;  // past the last step: the stage is never read
    if (issue_step == 0) {
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t wanted = issue_row0 + 16 * r + g + 8 * h;
          const int64_t row = wanted < p.n ? wanted : p.n - 1;  // rows past n are never stored
          code_src[r][h] = p.codes + row * row_bytes + warp * (kStepK / 2) + 16 * t;
          // Scale bytes 4 (t % 2) .. + 3 of the step: blocks of chunks 2 (t % 2) and + 1.
          scale_src[r][h] = reinterpret_cast<const uint32_t*>(
              static_cast<const uint8_t*>(p.scales) + row * scale_row_bytes + warp * (kStepK / 16) +
              4 * (t % 2));
        }
      }
    }
    if (issue_step < my_steps) {
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          stage.codes[r][h] = load_streaming(code_src[r][h]);
          stage.scales[r][h] = __ldg(scale_src[r][h]);
          code_src[r][h] += kStepK / 2 * kIntegerWarps;
          scale_src[r][h] += kStepK / 16 / 4 * kIntegerWarps;  // 8 bytes a step
        }
      }
    }
    --issue_left;
    if (++issue_step == padded_steps) {
      issue_step = 0;
      issue_row0 += group_stride;
    }
  };
  IntegerStage<kRowTiles> ring[2];
  load(ring[0]);
  load(ring[1]);
  if (threadIdx.x == 0) *zeros = make_uint4(0, 0, 0, 0);
  stage_integer_x<T>(p, kBatch, xs);
  __syncthreads();  // x is in shared memory

  // Lane (g, t) holds column g of B where t == g % 4 (chunk t, part g / 4), else zeros: the
  // lanes that hold none read the zero word for every block, batch row and step.
  const bool holds_column = t == (g & 3);
  const int64_t row_step_bytes = int64_t{steps} * kIntegerStepBytes;  // one batch row
  const uint8_t* fragment_first = holds_column ? xs + int64_t{warp} * kIntegerStepBytes + 16 * g
                                               : reinterpret_cast<const uint8_t*>(zeros);
  const int fragment_block_stride = holds_column ? 128 : 0;
  const int64_t fragment_batch_stride = holds_column ? row_step_bytes : 0;
  const int64_t fragment_step_stride =
      holds_column ? int64_t{kIntegerWarps} * kIntegerStepBytes : 0;
  const uint8_t* meta_first =
      xs + int64_t{warp} * kIntegerStepBytes + kIntegerFragmentBytes + 16 * t;
  p.tensor_scale *= 0.5f;  // the MMA's weights are 2e
  for (int group = 0; group < my_groups; ++group) {
    const int64_t row0 = int64_t{blockIdx.x} * kRows + group * group_stride;
    const uint8_t* fragment_src = fragment_first;
    const uint8_t* meta_src = meta_first;
    float acc[kBatch][kRowTiles][4] = {};
    auto compute = [&](const IntegerStage<kRowTiles>& stage) {
      // x of each batch row: B fragments of the step's two blocks, accumulator starts, factors.
      uint4 fragment[kBatch][2];
      uint32_t starts[kBatch][4];
      float factors[kBatch][4];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const uint8_t* src = fragment_src + b * fragment_batch_stride;
        fragment[b][0] = *reinterpret_cast<const uint4*>(src);
        fragment[b][1] = *reinterpret_cast<const uint4*>(src + fragment_block_stride);
        const uint4 start = *reinterpret_cast<const uint4*>(meta_src + b * row_step_bytes);
        const float4 factor = *reinterpret_cast<const float4*>(meta_src + b * row_step_bytes + 64);
        starts[b][0] = start.x;
        starts[b][1] = start.y;
        starts[b][2] = start.z;
        starts[b][3] = start.w;
        factors[b][0] = factor.x;
        factors[b][1] = factor.y;
        factors[b][2] = factor.z;
        factors[b][3] = factor.w;
      }
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        float scale[2][2][2];  // [row half][block q][column parity]
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          e4m3_pair_to_floats(stage.scales[r][h], scale[h][0][0], scale[h][1][0]);
          e4m3_pair_to_floats(stage.scales[r][h] >> 16, scale[h][0][1], scale[h][1][1]);
        }
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          // A registers of words 2q and 2q + 1: row g codes 0..3, row g + 8 codes 0..3, row g
          // codes 4..7, row g + 8 codes 4..7.
          uint32_t a[2][4];
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            e2m1_word_u8((&stage.codes[r][0].x)[2 * q + m], a[m][0], a[m][2]);
            e2m1_word_u8((&stage.codes[r][1].x)[2 * q + m], a[m][1], a[m][3]);
          }
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            int32_t dot[4] = {
                static_cast<int32_t>(starts[b][2 * q]), static_cast<int32_t>(starts[b][2 * q + 1]),
                static_cast<int32_t>(starts[b][2 * q]), static_cast<int32_t>(starts[b][2 * q + 1])};
            mma_u8s8(dot, a[0][0], a[0][1], a[0][2], a[0][3], fragment[b][q].x, fragment[b][q].y);
            mma_u8s8(dot, a[1][0], a[1][1], a[1][2], a[1][3], fragment[b][q].z, fragment[b][q].w);
#pragma unroll
            for (int slot = 0; slot < 4; ++slot) {  // rows g, g, g + 8, g + 8 x parity 0, 1
              const int parity = slot % 2;
              const float weight = scale[slot / 2][q][parity] * factors[b][2 * q + parity];
              acc[b][r][slot] = fmaf(__int_as_float(dot[slot]) - kMagic, weight, acc[b][r][slot]);
            }
          }
        }
      }
      fragment_src += fragment_step_stride;
      meta_src += int64_t{kIntegerWarps} * kIntegerStepBytes;
    };
    for (int i = 0; i < padded_steps; i += 2) {
      compute(ring[0]);
      load(ring[0]);
      if (i + 1 < my_steps) compute(ring[1]);
      load(ring[1]);
    }
    // Each row's sum: its two columns here, then lanes t = 0..3.
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float sum = acc[b][r][2 * h] + acc[b][r][2 * h + 1];
          sum += __shfl_xor_sync(0xffffffffu, sum, 1);
          sum += __shfl_xor_sync(0xffffffffu, sum, 2);
          if (t == 0) partial[(warp * kRows + 16 * r + g + 8 * h) * kBatch + b] = sum;
        }
      }
    }
    __syncthreads();
    add_partials_and_store<T, kRows, kBatch>(p, partial, row0);
    __syncthreads();  // the partial sums are read before the next group writes them
  }
}

// Shared memory of the integer kernel for `rows` a row group.
size_t integer_smem(int rows, int batch_columns, int64_t k) {
  return size_t{4} * kIntegerWarps * rows * batch_columns + 16 +
         static_cast<size_t>(batch_columns) * static_cast<size_t>(k / kStepK) * kIntegerStepBytes;
}

// The batch rows of the integer kernel built for `batch` (3 runs as 4, its last x row zero).
int integer_batch_columns(int batch) { return batch == 1 ? 1 : batch == 2 ? 2 : 4; }

// Whether the integer kernel can take this call (see its comment).
bool integer_applies(const LinearParams& p) {
  return p.format == Format::kNvfp4 && p.k % kStepK == 0 && p.batch <= kIntegerMaxBatch &&
         int64_t{integer_batch_columns(p.batch)} * (p.k / kStepK) * kIntegerStepBytes <=
             kIntegerMaxXBytes &&
         reinterpret_cast<uintptr_t>(p.codes) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.scales) % 4 == 0;
}

absl::Status launch_integer(const LinearParams& p, Activation type, int row_tiles, int max_blocks,
                            cudaStream_t stream) {
  const int batch_columns = integer_batch_columns(p.batch);
  // Two row tiles only for one batch row: above, 128 registers a thread do not hold them.
  void (*kernel)(LinearParams) = nullptr;
#define VB_INTEGER(T, R, B) \
  if (row_tiles == R && batch_columns == B) kernel = integer_linear_kernel<T, R, B>;
  if (type == Activation::kBf16) {
    VB_INTEGER(__nv_bfloat16, 1, 1)
    VB_INTEGER(__nv_bfloat16, 1, 2)
    VB_INTEGER(__nv_bfloat16, 1, 4)
    VB_INTEGER(__nv_bfloat16, 2, 1)
  } else {
    VB_INTEGER(__half, 1, 1)
    VB_INTEGER(__half, 1, 2)
    VB_INTEGER(__half, 1, 4)
    VB_INTEGER(__half, 2, 1)
  }
#undef VB_INTEGER
  if (kernel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4_linear: no integer kernel for row_tiles = ", row_tiles,
                     " and batch = ", p.batch, " (built: row_tiles 1, and 2 for batch 1)"));
  }
  const int rows = 16 * row_tiles;
  const size_t smem = integer_smem(rows, batch_columns, p.k);
  VB_ASSIGN_OR_RETURN(const LaunchFacts facts, launch_facts(reinterpret_cast<const void*>(kernel),
                                                            kIntegerWarps * 32, smem));
  if (facts.blocks_per_sm == 0) {
    return absl::InvalidArgumentError(absl::StrCat("fp4_linear: the integer kernel needs ", smem,
                                                   " bytes of shared memory a block; the GPU "
                                                   "allows ",
                                                   facts.smem_limit));
  }
  const int64_t groups = (p.n + rows - 1) / rows;
  int64_t grid = std::min<int64_t>(groups, int64_t{facts.sms} * facts.blocks_per_sm);
  if (max_blocks > 0) grid = std::min<int64_t>(grid, max_blocks);
  kernel<<<static_cast<int>(grid), kIntegerWarps * 32, smem, stream>>>(p);
  return absl::OkStatus();
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

// The stream-ordered pool scratch memory comes from keeps up to this much once freed, so that
// a call does not map and unmap memory every time (the default threshold is 0: everything
// back to the driver at each synchronization).
constexpr uint64_t kScratchPoolKeepBytes = uint64_t{256} << 20;

absl::Status keep_scratch_pool(int device) {
  static std::mutex mutex;
  static auto* kept = new std::map<int, bool>();
  std::lock_guard<std::mutex> lock(mutex);
  if ((*kept)[device]) return absl::OkStatus();
  cudaMemPool_t pool = nullptr;
  VB_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool"));
  uint64_t threshold = 0;
  VB_RETURN_IF_ERROR(
      cuda_status(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold),
                  "cudaMemPoolGetAttribute"));
  if (threshold < kScratchPoolKeepBytes) {  // never lowered: another user may want more
    threshold = kScratchPoolKeepBytes;
    VB_RETURN_IF_ERROR(
        cuda_status(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold),
                    "cudaMemPoolSetAttribute"));
  }
  (*kept)[device] = true;
  return absl::OkStatus();
}

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
  const int asked_warps = options.warps_per_block;
  if (asked_warps != 0 && asked_warps != 1 && asked_warps != 2 && asked_warps != 4 &&
      asked_warps != 8 && asked_warps != 16) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": warps_per_block = ", asked_warps,
                                                   ": expected 0 (chosen), 1, 2, 4, 8 or 16"));
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
  // The defaults, as measured on the H200 (docs/fp4.md), where the other fields leave the
  // choice open: on layers of kLargeLayerRows rows or more, the integer kernel for one fp16
  // batch row and the direct kernel with two segments up to kDirectDefaultMaxBatch bf16 batch
  // rows; from kKSplitDefaultMinRows rows, the k-split kernel from 9 bf16 batch rows (from
  // kKSplitLargeLayerMinBatch on kLargeLayerRows rows or more); else the staged kernel
  // wherever it applies, and the register kernel.
  if (options.direct < -1 || options.direct > 2) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": direct = ", options.direct,
                                                   ": expected -1 (chosen), 0 (never), 1 or 2"));
  }
  if (options.direct > 0) {
    const int segments = options.direct;
    if (!direct_applies(p, type, segments)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": direct = ", segments,
          " needs NVFP4 weights, bf16 activations, batch <= ", 8 / segments, ", k a multiple of ",
          kStepK * segments, ", batch * k * 2 <= ", kDirectMaxXBytes,
          " bytes of x and 16-byte aligned codes; got ", backends::fp4::format_name(weight.format),
          type == Activation::kBf16 ? " bf16" : " fp16", ", batch = ", batch, ", k = ", weight.k));
    }
    if (asked_warps != 0 && asked_warps != kDirectWarps) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWhat, ": direct = ", segments, " runs ", kDirectWarps,
                       " warps; got warps_per_block = ", asked_warps));
    }
  }
  if (options.integer < -1 || options.integer > 1) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": integer = ", options.integer,
                                                   ": expected -1 (chosen), 0 (never) or 1"));
  }
  if (options.k_split < -1 || options.k_split > 1) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": k_split = ", options.k_split,
                                                   ": expected -1 (chosen), 0 (never) or 1"));
  }
  if (options.k_split_chunk < 0 || options.k_split_chunk % kStepK != 0 ||
      options.k_split_chunk > kKSplitMaxChunk) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhat, ": k_split_chunk = ", options.k_split_chunk,
        ": expected 0 (chosen) or a multiple of ", kStepK, " up to ", kKSplitMaxChunk));
  }
  if (options.k_split_sum < -1 || options.k_split_sum > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": k_split_sum = ", options.k_split_sum,
                     ": expected -1 (chosen), 0 (workspace) or 1 (cluster)"));
  }
  const bool k_split_fits = k_split_applies(p, type);
  if (options.k_split == 1) {
    if (!k_split_fits) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": k_split = 1 needs NVFP4 weights, bf16 activations, k a multiple of ", kStepK,
          " and 16-byte aligned codes; got ", backends::fp4::format_name(weight.format),
          type == Activation::kBf16 ? " bf16" : " fp16", ", k = ", weight.k));
    }
    if (options.direct > 0 || options.integer == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWhat, ": k_split = 1 with direct = ", options.direct,
                       " and integer = ", options.integer, ": choose one kernel"));
    }
    if ((asked_warps != 0 && asked_warps != kKSplitWarps) ||
        (options.row_tiles != 0 && options.row_tiles != 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWhat, ": k_split = 1 runs ", kKSplitWarps,
                       " warps and row_tiles 1; got warps_per_block = ", asked_warps,
                       ", row_tiles = ", options.row_tiles));
    }
  }
  const bool integer_fits = integer_applies(p);
  if (options.integer == 1) {
    if (!integer_fits) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": integer = 1 needs NVFP4 weights, batch <= ", kIntegerMaxBatch,
          ", k a multiple of ", kStepK, ", batch * k * 3 <= ", kIntegerMaxXBytes,
          " bytes of staged x, 16-byte aligned codes and 4-byte aligned scales; got ",
          backends::fp4::format_name(weight.format), ", batch = ", batch, ", k = ", weight.k));
    }
    if (options.direct > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": integer = 1 with direct = ", options.direct, ": choose one kernel"));
    }
    if ((asked_warps != 0 && asked_warps != kIntegerWarps) ||
        (options.row_tiles != 0 && options.row_tiles != 1 && options.row_tiles != 2) ||
        (options.pipeline_stages != -1 && options.pipeline_stages != 2)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": integer = 1 runs ", kIntegerWarps,
          " warps, row_tiles 1 or 2 and pipeline_stages 2; got warps_per_block = ", asked_warps,
          ", row_tiles = ", options.row_tiles, ", pipeline_stages = ", options.pipeline_stages));
    }
  }
  if (options.integer == 1 ||
      (options.integer == -1 && integer_fits && type == Activation::kFp16 && options.direct == -1 &&
       options.pipeline_stages == -1 && options.bit_decode && options.row_tiles == 0 &&
       asked_warps == 0 && batch <= kIntegerDefaultMaxBatch && weight.n >= kLargeLayerRows)) {
    const int row_tiles = options.row_tiles != 0 ? options.row_tiles : batch == 1 ? 2 : 1;
    VB_RETURN_IF_ERROR(launch_integer(p, type, row_tiles, options.max_blocks, stream));
    return launch_status(kWhat);
  }
  int direct_segments = options.direct > 0 ? options.direct : 0;
  if (options.direct == -1 && options.pipeline_stages == -1 && options.bit_decode &&
      options.row_tiles == 0 && batch <= kDirectDefaultMaxBatch && weight.n >= kLargeLayerRows &&
      (asked_warps == 0 || asked_warps == kDirectWarps) && direct_applies(p, type, 2)) {
    direct_segments = 2;
  }
  if (direct_segments > 0) {
    const int row_tiles = options.row_tiles != 0 ? options.row_tiles : 2;
    const int depth = options.pipeline_stages > 0 ? options.pipeline_stages : 2;
    VB_RETURN_IF_ERROR(
        launch_direct(p, direct_segments, row_tiles, depth, options.max_blocks, stream));
    return launch_status(kWhat);
  }
  if (options.k_split == 1 ||
      (options.k_split == -1 && k_split_fits &&
       ((batch > 8 && weight.n >= kKSplitDefaultMinRows) ||
        (batch >= kKSplitLargeLayerMinBatch && weight.n >= kLargeLayerRows)) &&
       options.row_tiles == 0 && options.pipeline_stages == -1 && options.bit_decode &&
       asked_warps == 0)) {
    const int depth = options.pipeline_stages == -1 ? 2 : options.pipeline_stages;
    const int chunk = options.k_split_chunk != 0 ? options.k_split_chunk : kKSplitDefaultChunk;
    VB_RETURN_IF_ERROR(
        launch_k_split(p, depth, chunk, options.k_split_sum, options.max_blocks, stream));
    return launch_status(kWhat);
  }
  int stages = options.pipeline_stages;
  if (stages < 0) stages = staged_applies(p) ? 2 : 0;
  const int row_tiles = options.row_tiles != 0 ? options.row_tiles : 2;
  const int warps = asked_warps != 0 ? asked_warps : stages > 0 && batch > 8 ? 4 : 8;
  if (stages > 0 && !staged_applies(p)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": pipeline_stages = ", stages, " needs k a multiple of ", kStepK,
                     ", codes 16-byte and scales 8-byte aligned; got k = ", weight.k));
  }
  if (stages == 0 && warps > kMaxWarps) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhat, ": warps_per_block = ", warps, ": the register kernel takes at most ", kMaxWarps));
  }
  if (stages == 0) {
    if (type == Activation::kBf16) {
      launch_fused<__nv_bfloat16>(p, warps * 32, stream);
    } else {
      launch_fused<__half>(p, warps * 32, stream);
    }
    return launch_status(kWhat);
  }
  VB_RETURN_IF_ERROR(
      type == Activation::kBf16
          ? launch_staged<__nv_bfloat16>(p, warps, row_tiles, stages, options.bit_decode,
                                         options.max_blocks, stream)
          : launch_staged<__half>(p, warps, row_tiles, stages, false, options.max_blocks, stream));
  return launch_status(kWhat);
}

}  // namespace vb::backends::cuda::fp4
