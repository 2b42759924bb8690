#include "bench/read_probe.h"

#include <cuda_runtime_api.h>

namespace vb::bench {
namespace {

__device__ __forceinline__ uint4 load_streaming(const uint8_t* src) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(src));
  return v;
}

// The loaded words are folded into one value that is stored only if it equals a constant, so
// the compiler keeps every load and the kernel writes (almost) nothing.
constexpr uint32_t kNeverEqual = 0x9e3779b9u;

__global__ void plain_read_kernel(const uint8_t* __restrict__ src, size_t count, uint32_t* sink) {
  uint32_t fold = 0;
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < count; i += 4 * stride) {
    const uint4 a = load_streaming(src + 16 * i);
    const uint4 b = load_streaming(src + 16 * (i + stride));
    const uint4 c = load_streaming(src + 16 * (i + 2 * stride));
    const uint4 d = load_streaming(src + 16 * (i + 3 * stride));
    fold ^= a.x ^ a.w ^ b.y ^ b.z ^ c.x ^ c.w ^ d.y ^ d.z;
  }
  for (; i < count; i += stride) {
    const uint4 a = load_streaming(src + 16 * i);
    fold ^= a.x ^ a.w;
  }
  if (fold == kNeverEqual) *sink = fold;
}

// Each warp reads row groups of kRowsPerLoad rows in turn (group w, w + all warps, ...):
// with a warp for every group, one each; with a smaller grid (as resident as the 4-bit
// kernels), several.
template <int kRowsPerLoad, int kInFlight>
__global__ void __launch_bounds__(256)
    rows_read_kernel(const uint8_t* __restrict__ src, int rows, int row_bytes, uint32_t* sink) {
  constexpr int kLanesPerRow = 32 / kRowsPerLoad;
  constexpr int kBytesPerRow = 512 / kRowsPerLoad;
  const int lane = threadIdx.x & 31;
  const int groups = rows / kRowsPerLoad;
  const int warps = gridDim.x * 8;
  const int loads = row_bytes / kBytesPerRow;
  uint32_t fold = 0;
  for (int group = blockIdx.x * 8 + (threadIdx.x >> 5); group < groups; group += warps) {
    const uint8_t* p = src +
                       static_cast<size_t>(group * kRowsPerLoad + lane / kLanesPerRow) * row_bytes +
                       16 * (lane % kLanesPerRow);
    for (int i = 0; i < loads; i += kInFlight) {
      uint4 v[kInFlight];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        v[j] = i + j < loads ? load_streaming(p + static_cast<size_t>(i + j) * kBytesPerRow)
                             : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) fold ^= v[j].x ^ v[j].w;
    }
  }
  if (fold == kNeverEqual) *sink = fold;
}

template <int kRowsPerLoad>
void rows_read(const void* src, int rows, int row_bytes, int loads_in_flight, int blocks,
               uint32_t* sink) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  if (loads_in_flight == 2) {
    rows_read_kernel<kRowsPerLoad, 2><<<blocks, 256>>>(bytes, rows, row_bytes, sink);
  } else if (loads_in_flight == 4) {
    rows_read_kernel<kRowsPerLoad, 4><<<blocks, 256>>>(bytes, rows, row_bytes, sink);
  } else {
    rows_read_kernel<kRowsPerLoad, 8><<<blocks, 256>>>(bytes, rows, row_bytes, sink);
  }
}

// Launches rows_read_kernel with `blocks` blocks of 8 warps; false for a shape not built.
bool rows_read_grid(const void* src, int rows, int row_bytes, int rows_per_load,
                    int loads_in_flight, int blocks, uint32_t* sink) {
  if (row_bytes % 512 != 0 || rows_per_load <= 0 || rows % rows_per_load != 0 || blocks <= 0 ||
      (loads_in_flight != 2 && loads_in_flight != 4 && loads_in_flight != 8)) {
    return false;
  }
  switch (rows_per_load) {
    case 1:
      rows_read<1>(src, rows, row_bytes, loads_in_flight, blocks, sink);
      return true;
    case 2:
      rows_read<2>(src, rows, row_bytes, loads_in_flight, blocks, sink);
      return true;
    case 4:
      rows_read<4>(src, rows, row_bytes, loads_in_flight, blocks, sink);
      return true;
    case 8:
      rows_read<8>(src, rows, row_bytes, loads_in_flight, blocks, sink);
      return true;
    case 16:
      rows_read<16>(src, rows, row_bytes, loads_in_flight, blocks, sink);
      return true;
    default:
      return false;
  }
}

}  // namespace

void launch_plain_read(const void* src, size_t bytes, int sms, int blocks_per_sm, uint32_t* sink) {
  plain_read_kernel<<<sms * blocks_per_sm, 256>>>(static_cast<const uint8_t*>(src), bytes / 16,
                                                  sink);
}

bool launch_rows_read(const void* src, int rows, int row_bytes, int rows_per_load,
                      int loads_in_flight, uint32_t* sink) {
  if (rows_per_load <= 0) return false;
  const int warps = (rows + rows_per_load - 1) / rows_per_load;  // one a row group
  return rows_read_grid(src, rows, row_bytes, rows_per_load, loads_in_flight, (warps + 7) / 8,
                        sink);
}

bool launch_rows_read_resident(const void* src, int rows, int row_bytes, int rows_per_load,
                               int loads_in_flight, int sms, int blocks_per_sm, uint32_t* sink) {
  if (sms <= 0 || blocks_per_sm <= 0) return false;
  return rows_read_grid(src, rows, row_bytes, rows_per_load, loads_in_flight, sms * blocks_per_sm,
                        sink);
}

}  // namespace vb::bench
