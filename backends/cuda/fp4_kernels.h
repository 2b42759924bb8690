// CUDA kernels for the 4-bit weight formats of backends/fp4 (same layout, same decode
// functions: backends/fp4/fp4_decode.h), on the CUDA runtime alone.
//
//  - dequantize_to_float / dequantize_to_bf16: the whole weight, bit-exact with the CPU
//    reference (fp4::dequantize; bf16 is that float rounded to nearest even).
//  - fp4_linear: y = x W^T (+ bias) for batch 1..16 with x, y in bf16 or fp16, float32
//    accumulation, reading the packed codes and scales directly: each weight byte is read
//    once per call and no dequantized weight is written anywhere. Tensor-core mma.sync
//    (m16n8k16): each warp decodes its weights into registers (a per-lane table in shared
//    memory, or bit operations for NVFP4 with bf16), multiplies by the block scale in the
//    16-bit type, and feeds the products to the MMA with the batch as its N side. Five
//    kernels: the register kernel (any k), the staged kernel (a cp.async ring in shared
//    memory), the direct kernel (NVFP4 + bf16, batch <= 8: loads straight into registers), the
//    integer kernel (NVFP4, batch <= 4: 8-bit integer MMA on exact block sums) and the k-split
//    kernel (NVFP4 + bf16, batch <= 16: blocks own chunks of k, added in a thread block
//    cluster or by a second kernel); LinearOptions picks one, the defaults are the measured best
//    (docs/fp4.md).
//  - fp4_gemm (fp4_gemm.cu): above 16 rows, every format with bf16 activations on Hopper, a
//    warpgroup-MMA (wgmma) GEMM that decodes the packed weight into its A operand, fed by the
//    tensor memory accelerator. Where it does not apply (fp4_gemm_supported says why), callers
//    dequantize to bf16 into a scratch buffer (dequantize_to_bf16) and run a bf16 GEMM
//    (cuBLAS); docs/fp4.md has the measurements.
//
// Precision of fp4_linear: NVFP4 and MXFP4 weights (element x block scale) are exact in bf16;
// NF4 and bnb_fp4 table values and absmax are rounded to the 16-bit type (relative 2^-9 in
// bf16, 2^-12 in fp16). With fp16 activations the decoded weights must fit fp16: MXFP4 block
// scales within 2^-24 .. 2^13, NF4/bnb_fp4 absmax <= 65504 (bf16 has no such limit). NVFP4's
// tensor scale and the bias are applied in float32 at the end.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "backends/fp4/fp4.h"

namespace vb::backends::cuda::fp4 {

using backends::fp4::Format;

// A packed weight in device memory, laid out as backends/fp4/fp4.h says. `codes` must be
// 16-byte aligned (8 is enough when k is not a multiple of 32), float scales 4-byte aligned.
struct DeviceWeightView {
  Format format = Format::kNvfp4;
  int64_t n = 0;
  int64_t k = 0;
  const uint8_t* codes = nullptr;  // n * k / 2 bytes
  const void* scales = nullptr;    // n * k / block bytes (NVFP4, MXFP4) or float32s
  float tensor_scale = 1.0f;
};

// Device copies of a PackedWeight's codes and scales (cudaMalloc'd on the current device).
class DeviceWeight {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceWeight>> upload(
      const backends::fp4::PackedWeight& weight);
  ~DeviceWeight();
  DeviceWeight(const DeviceWeight&) = delete;
  DeviceWeight& operator=(const DeviceWeight&) = delete;
  const DeviceWeightView& view() const { return view_; }

 private:
  DeviceWeight() = default;
  DeviceWeightView view_;
  void* codes_ = nullptr;
  void* scales_ = nullptr;
};

// The 16-bit type of x, bias and y.
enum class Activation { kBf16, kFp16 };

// Largest batch fp4_linear takes; larger batches go through fp4_gemm (bf16 on Hopper) or
// dequantize_to_bf16 + a GEMM.
constexpr int64_t kFusedMaxBatch = 16;

// out: n * k float32 (16-byte aligned), on `stream`.
absl::Status dequantize_to_float(const DeviceWeightView& weight, float* out, cudaStream_t stream);
// out: n * k bfloat16 as raw bits (16-byte aligned), on `stream`.
absl::Status dequantize_to_bf16(const DeviceWeightView& weight, uint16_t* out, cudaStream_t stream);

// Which kernel fp4_linear runs and its shape; the defaults are the measured best (docs/fp4.md).
struct LinearOptions {
  // Split-K ways inside a block: 1, 2, 4, 8 or 16 (the register kernel: at most 8); 0: chosen.
  int warps_per_block = 0;
  // 0: the register kernel (any k). n > 0: the staged kernel, each warp copying its next n - 1
  // steps of codes and scales into shared memory while it computes (k a multiple of 128,
  // codes 16-byte and scales 8-byte aligned; built for n = 2). -1: staged where the weight
  // allows it. The direct, integer and k-split kernels read it as their load depth.
  int pipeline_stages = -1;
  // Staged kernel: 16-row tiles a row group (0: chosen; built for 2).
  int row_tiles = 0;
  // Staged kernel: at most this many blocks (0: as many as fit the GPU at once).
  int max_blocks = 0;
  // Staged kernel, NVFP4 with bf16 activations: decode E2M1 with bit operations rather than
  // the shared-memory table.
  bool bit_decode = true;
  // The direct kernel (NVFP4, bf16 activations, k a multiple of 128 x direct, at most 64 KiB of
  // x): codes and scales loaded straight into registers, x kept in shared memory. 1 or 2: use
  // it with that many 128-wide k segments an MMA (2: whole 128-byte lines a load, batch <= 4;
  // 1: batch <= 8), INVALID_ARGUMENT where it cannot run (row_tiles 1 or 2, 8 warps);
  // 0: never; -1: chosen at small batches where the other fields leave the choice open.
  int direct = -1;
  // The integer kernel (NVFP4, bf16 or fp16 activations, batch <= 4, k a multiple of 128, at
  // most 96 KiB of x as staged: batch * k * 3 bytes): codes as 8-bit integer MMA operands, x as
  // 15-bit fixed point per 16-element block, block scales applied to the MMA's exact sums
  // (docs/fp4.md). 1: use it (INVALID_ARGUMENT where it cannot run; 8 warps, row_tiles 1, or 2
  // for one batch row; pipeline_stages -1 or 2); 0: never; -1: chosen for one fp16 batch row on
  // layers of 16384 rows or more, where the other fields leave the choice open.
  int integer = -1;
  // The k-split kernel (NVFP4, bf16 activations, batch <= 16, k a multiple of 128): k is cut
  // into chunks (k_split_chunk), each block keeps one chunk of x in shared memory and its warps
  // walk 16-row tiles over it without a barrier; float partial sums go to a stream-ordered
  // workspace (cudaMallocAsync, 4 * chunks * batch * n bytes) that a second kernel adds up in
  // chunk order, or in shared memory through a thread block cluster (k_split_sum). 1: use it
  // (INVALID_ARGUMENT where it cannot run; 8 warps, row_tiles 1, pipeline_stages -1, 2 or 3);
  // 0: never; -1: chosen for 9..16 batch rows on layers of 8192 rows or more and for 7..16 on
  // layers of 16384 or more, where the other fields leave the choice open.
  int k_split = -1;
  // k-split kernel: k of one chunk, a multiple of 128 up to 2048 (0: chosen, 1024). The last
  // chunk may be shorter; chunks are made as even as the 128-wide steps allow.
  int k_split_chunk = 0;
  // k-split kernel: how the chunks' sums meet. 1: in shared memory, through a thread block
  // cluster of one block a chunk (at most 8 chunks, and each warp's tiles' sums must fit its
  // block's shared memory; INVALID_ARGUMENT otherwise): no workspace, no second kernel. 0: the
  // workspace and the second kernel. -1: the cluster where it can run on layers of 16384 rows
  // or more (measured faster there only), else the workspace.
  int k_split_sum = -1;
};

// y[b, j] = sum_k x[b, k] * W[j, k] (+ bias[j]) for b < batch, j < n. x: [batch, k] (16-byte
// aligned), bias: n values or null, y: [batch, n]; all of type `type`, on the device.
// INVALID_ARGUMENT for batch outside 0..16, bad alignment or a bad weight shape.
absl::Status fp4_linear(const DeviceWeightView& weight, const void* x, int64_t batch,
                        Activation type, const void* bias, void* y, cudaStream_t stream,
                        LinearOptions options = {});

// OK where fp4_gemm can run this weight at this batch on the current device: k a positive
// multiple of 256 (MXFP4: of 512), bf16 activations, codes and scales 16-byte
// aligned, a compute capability 9.0 GPU (the kernel is built for sm_90a). Otherwise
// INVALID_ARGUMENT or FAILED_PRECONDITION naming the field and what was expected.
absl::Status fp4_gemm_supported(const DeviceWeightView& weight, int64_t batch, Activation type);

// How fp4_gemm's blocks take the tiles: one block a tile, in waves; or one block a slot (an SM
// holds one or two), the tiles that fill whole waves one to a block and the rest shared step
// by step (stream-K).
enum class GemmGrid { kChosen, kTilePerBlock, kResident };

// fp4_gemm's shape; by default all of it is chosen by a cost model measured on the H200
// (docs/fp4.md).
struct GemmOptions {
  // Batch rows a tile: 16, 32, 64, 128 or 256 (0: chosen).
  int batch_tile = 0;
  // Blocks an SM: 2 (tiles of 16, 32 or 64 batch rows, 4-7 stages a block) or 1 (64, 128 or
  // 256, 3-8 stages); 0: chosen.
  int blocks_per_sm = 0;
  // At most this many blocks in the grid (0: by `grid`): never more than the 128-wide k steps,
  // and fewer where the shared tiles would leave a block without a step. The tiles that fill
  // whole waves of blocks go one to a block; the rest are shared step by step (stream-K).
  int max_blocks = 0;
  GemmGrid grid = GemmGrid::kChosen;
  // L2 eviction priorities on the copies: x (read by every block) last, the weight (read
  // once) first.
  bool l2_hints = true;
  // y written in 8-byte words (4 weight rows of a batch row), regrouped by exchanges between
  // lanes, where n % 4 == 0 and y is 8-byte aligned; else, or false, one bf16 a store.
  bool word_stores = true;
};

// y[b, j] = sum_k x[b, k] * W[j, k] (+ bias[j]) for any batch >= 1 (meant for batch > 16,
// where the fp4_linear kernels stop), float32 accumulation, each output rounded to bf16 once.
// x: [batch, k] bf16, 16-byte aligned; bias: n bf16 values or null; y: [batch, n] bf16.
// Stream-ordered scratch memory: x permuted into the decode's k order and padded to whole
// batch tiles (about batch * k * 2 bytes), and two float32 slots of 128 x batch_tile values a
// block for the tiles blocks share. The sum order is fixed: the same inputs give the same bits.
absl::Status fp4_gemm(const DeviceWeightView& weight, const void* x, int64_t batch, Activation type,
                      const void* bias, void* y, cudaStream_t stream, GemmOptions options = {});

// Makes the device's default stream-ordered memory pool keep freed scratch memory (the k-split
// workspace, fp4_gemm's permuted x) instead of returning it to the driver at every
// synchronization. Called by the kernels that take scratch memory.
absl::Status keep_scratch_pool(int device);

}  // namespace vb::backends::cuda::fp4
