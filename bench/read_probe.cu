#include "bench/read_probe.h"

#include <cuda_runtime_api.h>

#include <cuda/ptx>

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

// Folds one 16-byte word into `fold` with `kRounds` rounds of integer-pipe work (about 4
// instructions each) that the compiler cannot shorten: each round depends on the last.
template <int kRounds>
__device__ __forceinline__ uint32_t work(uint32_t fold, const uint4& v) {
  uint32_t a = fold ^ v.x, b = v.y ^ v.z, c = v.w;
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    a = __byte_perm(a, b, 0x7632 - r) ^ ((c << 4) & 0x80008000u) ^ ((a >> 6) & 0x01C001C0u);
    c ^= a;
  }
  return a ^ c;
}

// 16 rows a group, 8 rows x 64 bytes a load (rows g and g + 8 of lane g, t): each warp of the
// grid takes groups in turn, each group's row_bytes / 64 steps, loads kInFlight steps ahead.
template <int kInFlight, int kRounds>
__global__ void __launch_bounds__(256)
    rows_work_registers_kernel(const uint8_t* __restrict__ src, int rows, int row_bytes,
                               uint32_t* sink) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int warps = gridDim.x * 8;
  const int groups = rows / 16;
  const int steps = row_bytes / 64;
  uint32_t fold = 0;
  for (int group = blockIdx.x * 8 + (threadIdx.x >> 5); group < groups; group += warps) {
    const uint8_t* row_g = src + static_cast<size_t>(group * 16 + g) * row_bytes + 16 * t;
    const uint8_t* row_g8 = row_g + static_cast<size_t>(8) * row_bytes;
    uint4 ring[kInFlight][2];
#pragma unroll
    for (int s = 0; s < kInFlight; ++s) {
      ring[s][0] = load_streaming(row_g + 64 * s);
      ring[s][1] = load_streaming(row_g8 + 64 * s);
    }
    for (int i = 0; i < steps; i += kInFlight) {
#pragma unroll
      for (int s = 0; s < kInFlight; ++s) {
        const uint4 c0 = ring[s][0], c1 = ring[s][1];
        if (i + s + kInFlight < steps) {
          ring[s][0] = load_streaming(row_g + 64 * (i + s + kInFlight));
          ring[s][1] = load_streaming(row_g8 + 64 * (i + s + kInFlight));
        }
        fold = work<kRounds>(fold, c0);
        fold = work<kRounds>(fold, c1);
      }
    }
  }
  if (fold == kNeverEqual) *sink = fold;
}

constexpr int kBulkRows = 16;         // rows of a group
constexpr int kBulkBytes = 512;       // bytes of each row a stage holds
constexpr int kBulkPitch = 512 + 64;  // a row's bytes in a stage: rows 64 bytes apart in banks
constexpr int kBulkConsumers = 8;     // warps; warp w reads bytes 64 w .. 64 w + 63 of a row
constexpr int kBulkStageBytes = kBulkRows * kBulkPitch;

template <int kStages, int kRounds>
__global__ void __launch_bounds__((kBulkConsumers + 1) * 32)
    rows_work_bulk_kernel(const uint8_t* __restrict__ src, int rows, int row_bytes,
                          uint32_t* sink) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* stages = smem;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kBulkStageBytes);
  uint64_t* empty = full + kStages;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      cuda::ptx::mbarrier_init(&full[s], 1);                // the producer's arrive + the bytes
      cuda::ptx::mbarrier_init(&empty[s], kBulkConsumers);  // one arrive per consumer warp
    }
    cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
  }
  __syncthreads();
  const int groups = rows / kBulkRows;
  const int per_group = row_bytes / kBulkBytes;  // stages a group fills
  const int my_groups =
      blockIdx.x < groups ? (groups - 1 - static_cast<int>(blockIdx.x)) / gridDim.x + 1 : 0;
  const int fills = my_groups * per_group;
  if (warp == kBulkConsumers) {  // the producer
    for (int i = 0; i < fills; ++i) {
      const int s = i % kStages;
      if (i >= kStages) {  // wait until the consumers are done with the stage's last fill
        while (!cuda::ptx::mbarrier_try_wait_parity(&empty[s], ((i / kStages) - 1) & 1)) {
        }
      }
      const int group = blockIdx.x + (i / per_group) * gridDim.x;
      const int part = i % per_group;
      if (lane == 0) {
        cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta,
                                             cuda::ptx::space_shared, &full[s],
                                             kBulkRows * kBulkBytes);
      }
      __syncwarp();
      if (lane < kBulkRows) {
        cuda::ptx::cp_async_bulk(
            cuda::ptx::space_cluster, cuda::ptx::space_global,
            stages + s * kBulkStageBytes + lane * kBulkPitch,
            src + static_cast<size_t>(group * kBulkRows + lane) * row_bytes + part * kBulkBytes,
            kBulkBytes, &full[s]);
      }
    }
    return;
  }
  // Consumer warp `warp`: lane (g, t) reads 16 bytes of rows g and g + 8 of its column.
  const int g = lane >> 2, t = lane & 3;
  uint32_t fold = 0;
  for (int i = 0; i < fills; ++i) {
    const int s = i % kStages;
    while (!cuda::ptx::mbarrier_try_wait_parity(&full[s], (i / kStages) & 1)) {
    }
    const uint8_t* stage = stages + s * kBulkStageBytes + warp * 64 + 16 * t;
    const uint4 c0 = *reinterpret_cast<const uint4*>(stage + g * kBulkPitch);
    const uint4 c1 = *reinterpret_cast<const uint4*>(stage + (g + 8) * kBulkPitch);
    __syncwarp();
    if (lane == 0) cuda::ptx::mbarrier_arrive(&empty[s]);  // the words are in registers
    fold = work<kRounds>(fold, c0);
    fold = work<kRounds>(fold, c1);
  }
  if (fold == kNeverEqual) *sink = fold;
}

}  // namespace

bool launch_rows_work_registers(const void* src, int rows, int row_bytes, int loads_in_flight,
                                int rounds, int sms, int blocks_per_sm, uint32_t* sink) {
  if (rows % 16 != 0 || row_bytes % 256 != 0 || sms <= 0 || blocks_per_sm <= 0) return false;
  const auto* bytes = static_cast<const uint8_t*>(src);
  const int blocks = sms * blocks_per_sm;
#define VB_WORK(F, R)                                                                \
  if (loads_in_flight == F && rounds == R) {                                         \
    rows_work_registers_kernel<F, R><<<blocks, 256>>>(bytes, rows, row_bytes, sink); \
    return true;                                                                     \
  }
  VB_WORK(2, 0)
  VB_WORK(2, 25)
  VB_WORK(2, 32)
  VB_WORK(4, 25)
#undef VB_WORK
  return false;
}

bool launch_rows_work_bulk(const void* src, int rows, int row_bytes, int stages, int rounds,
                           int sms, int blocks_per_sm, uint32_t* sink) {
  if (rows % kBulkRows != 0 || row_bytes % kBulkBytes != 0 || sms <= 0 || blocks_per_sm <= 0 ||
      reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    return false;
  }
  const auto* bytes = static_cast<const uint8_t*>(src);
  const int blocks = sms * blocks_per_sm;
  const int threads = (kBulkConsumers + 1) * 32;
#define VB_BULK(S, R)                                                             \
  if (stages == S && rounds == R) {                                               \
    const size_t smem = size_t{S} * kBulkStageBytes + 2 * S * sizeof(uint64_t);   \
    auto* kernel = rows_work_bulk_kernel<S, R>;                                   \
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                             static_cast<int>(smem)) != cudaSuccess) {            \
      return false;                                                               \
    }                                                                             \
    kernel<<<blocks, threads, smem>>>(bytes, rows, row_bytes, sink);              \
    return true;                                                                  \
  }
  VB_BULK(4, 0)
  VB_BULK(4, 25)
  VB_BULK(8, 0)
  VB_BULK(8, 25)
  VB_BULK(8, 32)
#undef VB_BULK
  return false;
}

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
