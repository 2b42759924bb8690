// 4-bit weight Linear on the GPU against bf16 cuBLAS (at::linear) measured in the same run.
// For K = 8192 and N = 28672 / 8192, batch 1, 16 (fused kernel) and 256 (fp4_gemm where it
// applies, and dequantize to bf16 + at::linear), per format: median time over many runs (CUDA
// events, back-to-back launches), weights rotated over enough copies to exceed the L2 several
// times, the speedup over bf16, the weight bytes streamed per second, and that rate as a fraction
// of a device-to-device cudaMemcpy (read + write bytes) measured first. Each timed configuration is
// checked first.
//
//   build-gpu/bench/fp4_bench [--quick | --variants [BATCH,...] | --shapes | --chunked |
//   --gemm [BATCH,...] |
//   --one STAGES ROW_TILES WARPS BATCH]
//   (--one: STAGES 'direct1' or 'direct2' for the direct kernel, 'integer' for the integer kernel,
//   'ksplit2' or 'ksplit3' for the k-split kernel loading 2 or 3 steps ahead, 'gemm' for fp4_gemm
//   with ROW_TILES as its batch_tile and WARPS as its max_blocks)
#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/fp4_kernels.h"
#include "bench/read_probe.h"
#include "bench/timing.h"

namespace {

namespace fp4 = vb::backends::cuda::fp4;
using vb::backends::fp4::Format;

using vb::bench::check;

void check_cuda(cudaError_t error, const char* what) {
  check(vb::backends::cuda::cuda_status(error, what), what);
}

// Median milliseconds of `run(i)` over `reps` launches enqueued back to back (the host stays
// ahead of the device, so the events time the device work), after `warmup` launches.
double median_ms(int reps, const std::function<void(int)>& run, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) run(i);
  std::vector<cudaEvent_t> events(reps + 1);
  for (auto& e : events) check_cuda(cudaEventCreate(&e), "cudaEventCreate");
  check_cuda(cudaEventRecord(events[0], nullptr), "cudaEventRecord");
  for (int i = 0; i < reps; ++i) {
    run(i);
    check_cuda(cudaEventRecord(events[i + 1], nullptr), "cudaEventRecord");
  }
  check_cuda(cudaEventSynchronize(events[reps]), "cudaEventSynchronize");
  check_cuda(cudaGetLastError(), "launch");
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, events[i], events[i + 1]), "cudaEventElapsedTime");
    times.push_back(ms);
  }
  for (auto& e : events) cudaEventDestroy(e);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

// Random codes and plausible scales on the device (the kernels' speed does not depend on the
// values; the checks compare against the same weights dequantized).
struct Fp4Copy {
  at::Tensor codes, scales;
  fp4::DeviceWeightView view;
};

Fp4Copy make_weight(Format format, int64_t n, int64_t k) {
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  Fp4Copy w;
  w.codes = torch::randint(0, 256, {n * k / 2}, cuda.dtype(torch::kUInt8));
  const int64_t blocks = n * (k / vb::backends::fp4::block_size(format));
  if (format == Format::kNvfp4) {
    w.scales = torch::randint(0x28, 0x40, {blocks}, cuda.dtype(torch::kUInt8));  // 2^-2 .. 2
  } else if (format == Format::kMxfp4) {
    w.scales = torch::randint(118, 124, {blocks}, cuda.dtype(torch::kUInt8));  // 2^-9 .. 2^-4
  } else {
    w.scales = torch::rand({blocks}, cuda.dtype(torch::kFloat)) * 0.05 + 0.01;
  }
  w.view.format = format;
  w.view.n = n;
  w.view.k = k;
  w.view.codes = static_cast<const uint8_t*>(w.codes.data_ptr());
  w.view.scales = w.scales.data_ptr();
  w.view.tensor_scale = format == Format::kNvfp4 ? 0.01f : 1.0f;
  return w;
}

double copy_bandwidth_gbps() {
  const int64_t bytes = int64_t{1} << 30;
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kUInt8);
  const at::Tensor src = torch::randint(0, 256, {bytes}, opts);
  at::Tensor dst = torch::empty({bytes}, opts);
  const double ms = median_ms(20, [&](int) {
    check_cuda(
        cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToDevice, nullptr),
        "cudaMemcpyAsync");
  });
  return 2.0 * bytes / (ms / 1e3) / 1e9;  // read + write
}

// The weights a sweep times at one shape: NVFP4 copies and 16-bit copies (of `dtype`), enough
// of each to rotate past the L2, and the first NVFP4 copy dequantized to bf16 (the reference).
struct SweepWeights {
  int64_t packed_bytes = 0;
  std::vector<Fp4Copy> w4;
  std::vector<at::Tensor> w16;
  at::Tensor dequantized;
};

SweepWeights make_sweep_weights(int64_t n, int64_t k, int64_t rotate_bytes, at::ScalarType dtype) {
  SweepWeights w;
  w.packed_bytes = n * k / 2 + n * (k / 16);
  const int copies = static_cast<int>(std::max<int64_t>(2, rotate_bytes / w.packed_bytes + 1));
  for (int i = 0; i < copies; ++i) w.w4.push_back(make_weight(Format::kNvfp4, n, k));
  const auto options = torch::TensorOptions().device(torch::kCUDA);
  const int copies16 = static_cast<int>(std::max<int64_t>(2, rotate_bytes / (n * k * 2) + 1));
  for (int i = 0; i < copies16; ++i)
    w.w16.push_back(torch::randn({n, k}, options.dtype(dtype)) * 0.02);
  w.dequantized = torch::empty({n, k}, options.dtype(torch::kBFloat16));
  check(fp4::dequantize_to_bf16(w.w4[0].view, static_cast<uint16_t*>(w.dequantized.data_ptr()),
                                nullptr),
        "dequantize_to_bf16");
  return w;
}

// NVFP4 through each kernel variant (register kernel; staged with row tiles, stages, warps)
// at batches 1 to 16, against bf16 at the same batch: the measurements behind the defaults.
void sweep_variants(double copy_gbps, int64_t rotate_bytes, int reps,
                    const std::vector<int64_t>& batches) {
  struct Variant {
    int stages, row_tiles, warps;
    bool bits;
    int direct = 0;
    int integer = 0;
    int k_split = 0;
    int chunk = 0;  // k_split_chunk
    int sum = -1;   // k_split_sum
  };
  // The staged kernel is built with 2 row tiles and 2 stages only (the others measured slower).
  const std::vector<Variant> small = {
      {0, 0, 8, false},       {2, 2, 8, false},         {2, 2, 8, true},
      {2, 2, 16, true},       {-1, 1, 8, true, 1},      {-1, 2, 8, true, 1},
      {-1, 1, 8, true, 2},    {-1, 2, 8, true, 2},      {-1, 1, 8, true, 0, 1},
      {-1, 2, 8, true, 0, 1}, {2, 0, 0, true, 0, 0, 1}, {-1, 0, 0, true, -1, -1, -1}};
  const std::vector<Variant> large = {{0, 0, 8, false},
                                      {2, 2, 4, false},
                                      {2, 2, 4, true},
                                      {2, 2, 8, true},
                                      {2, 0, 0, true, 0, 0, 1, 512},
                                      {2, 0, 0, true, 0, 0, 1, 1024, 0},
                                      {2, 0, 0, true, 0, 0, 1, 1024, 1},
                                      {2, 0, 0, true, 0, 0, 1, 2048, 0},
                                      {2, 0, 0, true, 0, 0, 1, 2048, 1},
                                      {3, 0, 0, true, 0, 0, 1},
                                      {-1, 0, 0, true, -1, -1, -1}};
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  std::printf(
      "\nnvfp4 kernel variants (stages 0: register kernel; bits: E2M1 decoded with bit "
      "operations; direct: the direct kernel's k segments an MMA; int: the integer kernel; ksp: "
      "the k-split kernel, chunk: its k a chunk (0: chosen), sum: its chunks added in a cluster "
      "(1) or a workspace (0); -1: chosen)\n%-12s %5s %7s %9s %6s %5s %6s %5s %4s %4s %4s  %9s "
      "%9s %8s %11s %8s\n",
      "N x K", "batch", "stages", "row_tiles", "warps", "bits", "direct", "chunk", "int", "ksp",
      "sum", "fp4 us", "bf16 us", "speedup", "weight GB/s", "of copy");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 8192}, {8192, 8192}}) {
    const std::string shape = std::to_string(n) + "x" + std::to_string(k);
    const SweepWeights w = make_sweep_weights(n, k, rotate_bytes, torch::kBFloat16);
    const int64_t packed_bytes = w.packed_bytes;
    const auto& w4 = w.w4;
    const int copies = static_cast<int>(w4.size());
    for (int64_t batch : batches) {
      const at::Tensor x = torch::randn({batch, k}, bf16);
      at::Tensor y = torch::empty({batch, n}, bf16);
      const at::Tensor ref = at::linear(x.to(at::kFloat), w.dequantized.to(at::kFloat));
      const double bf16_ms =
          median_ms(reps, [&](int i) { y = at::linear(x, w.w16[i % w.w16.size()]); });
      for (const Variant& v : batch <= 8 ? small : large) {
        fp4::LinearOptions options;
        options.pipeline_stages = v.stages;
        options.row_tiles = v.row_tiles;
        options.warps_per_block = v.warps;
        options.bit_decode = v.bits;
        options.direct = v.direct;
        options.integer = v.integer;
        options.k_split = v.k_split;
        options.k_split_chunk = v.chunk;
        options.k_split_sum = v.sum;
        auto launch = [&](int i) {
          return fp4::fp4_linear(w4[i % copies].view, x.data_ptr(), batch, fp4::Activation::kBf16,
                                 nullptr, y.data_ptr(), nullptr, options);
        };
        y.fill_(std::numeric_limits<float>::quiet_NaN());
        const absl::Status status = launch(0);
        if (!status.ok()) {
          std::printf("%-12s %5ld %7d %9d %6d %5d %6d %5d %4d %4d %4d  not run: %s\n",
                      shape.c_str(), static_cast<long>(batch), v.stages, v.row_tiles, v.warps,
                      v.bits, v.direct, v.chunk, v.integer, v.k_split, v.sum,
                      std::string(status.message()).c_str());
          continue;
        }
        const double err = relative_error(y, ref);
        if (!(err < 1e-2)) {
          std::printf(
              "CHECK FAILED %s batch %ld stages %d row_tiles %d warps %d bits %d direct %d "
              "chunk %d int %d ksp %d sum %d: %.3e\n",
              shape.c_str(), static_cast<long>(batch), v.stages, v.row_tiles, v.warps, v.bits,
              v.direct, v.chunk, v.integer, v.k_split, v.sum, err);
          continue;
        }
        const double ms = median_ms(reps, [&](int i) { check(launch(i), "fp4_linear"); });
        const double gbps = packed_bytes / (ms / 1e3) / 1e9;
        std::printf(
            "%-12s %5ld %7d %9d %6d %5d %6d %5d %4d %4d %4d  %9.1f %9.1f %7.2fx %11.0f %7.0f%%\n",
            shape.c_str(), static_cast<long>(batch), v.stages, v.row_tiles, v.warps, v.bits,
            v.direct, v.chunk, v.integer, v.k_split, v.sum, ms * 1e3, bf16_ms * 1e3, bf16_ms / ms,
            gbps, 100.0 * gbps / copy_gbps);
      }
    }
  }
}

// NVFP4 with fp16 activations: the staged kernel (its default there) against the integer
// kernel, at batches 1 to 4, against fp16 cuBLAS at the same batch.
void sweep_fp16(double copy_gbps, int64_t rotate_bytes, int reps) {
  struct Variant {
    const char* name;
    int stages, row_tiles, integer;
  };
  const std::vector<Variant> variants = {{"staged (default below 16384 rows)", 2, 2, 0},
                                         {"integer, row_tiles 1", -1, 1, 1},
                                         {"integer, row_tiles 2", -1, 2, 1}};
  const auto fp16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kHalf);
  std::printf("\nnvfp4 with fp16 activations\n%-12s %5s %-36s %9s %9s %8s %11s %8s\n", "N x K",
              "batch", "kernel", "fp4 us", "fp16 us", "speedup", "weight GB/s", "of copy");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 8192}, {8192, 8192}}) {
    const std::string shape = std::to_string(n) + "x" + std::to_string(k);
    const SweepWeights w = make_sweep_weights(n, k, rotate_bytes, torch::kHalf);
    const int64_t packed_bytes = w.packed_bytes;
    const auto& w4 = w.w4;
    const int copies = static_cast<int>(w4.size());
    for (int64_t batch : {1, 2, 4}) {
      const at::Tensor x = torch::randn({batch, k}, fp16);
      at::Tensor y = torch::empty({batch, n}, fp16);
      const at::Tensor ref = at::linear(x.to(at::kFloat), w.dequantized.to(at::kFloat));
      const double fp16_ms =
          median_ms(reps, [&](int i) { y = at::linear(x, w.w16[i % w.w16.size()]); });
      for (const Variant& v : variants) {
        fp4::LinearOptions options;
        options.pipeline_stages = v.stages;
        options.row_tiles = v.row_tiles;
        options.integer = v.integer;
        options.direct = 0;
        options.bit_decode = false;
        auto launch = [&](int i) {
          return fp4::fp4_linear(w4[i % copies].view, x.data_ptr(), batch, fp4::Activation::kFp16,
                                 nullptr, y.data_ptr(), nullptr, options);
        };
        const absl::Status status = launch(0);
        if (!status.ok()) {
          std::printf("%-12s %5ld %-36s not run: %s\n", shape.c_str(), static_cast<long>(batch),
                      v.name, std::string(status.message()).c_str());
          continue;
        }
        const double err = relative_error(y, ref);
        if (!(err < 1e-2)) {
          std::printf("CHECK FAILED %s batch %ld %s: %.3e\n", shape.c_str(),
                      static_cast<long>(batch), v.name, err);
          continue;
        }
        const double ms = median_ms(reps, [&](int i) { check(launch(i), "fp4_linear"); });
        const double gbps = packed_bytes / (ms / 1e3) / 1e9;
        std::printf("%-12s %5ld %-36s %9.1f %9.1f %7.2fx %11.0f %7.0f%%\n", shape.c_str(),
                    static_cast<long>(batch), v.name, ms * 1e3, fp16_ms * 1e3, fp16_ms / ms, gbps,
                    100.0 * gbps / copy_gbps);
      }
    }
  }
}

// How a 4-bit Linear is computed: fp4_linear (batch <= 16), fp4_gemm (above 16, Hopper,
// NVFP4), or the weight dequantized to bf16 into `scratch` and at::linear.
enum class Path { kFused, kGemm, kDequantGemm };

const char* path_name(Path path) {
  switch (path) {
    case Path::kFused:
      return "fused";
    case Path::kGemm:
      return "fp4_gemm";
    case Path::kDequantGemm:
      return "dequant+gemm";
  }
  return "?";
}

void run_path(Path path, const fp4::DeviceWeightView& w, const at::Tensor& x, int64_t batch,
              at::Tensor& y, at::Tensor& scratch, fp4::GemmOptions gemm = {}) {
  switch (path) {
    case Path::kFused:
      check(fp4::fp4_linear(w, x.data_ptr(), batch, fp4::Activation::kBf16, nullptr, y.data_ptr(),
                            nullptr),
            "fp4_linear");
      return;
    case Path::kGemm:
      check(fp4::fp4_gemm(w, x.data_ptr(), batch, fp4::Activation::kBf16, nullptr, y.data_ptr(),
                          nullptr, gemm),
            "fp4_gemm");
      return;
    case Path::kDequantGemm:
      check(fp4::dequantize_to_bf16(w, static_cast<uint16_t*>(scratch.data_ptr()), nullptr),
            "dequantize_to_bf16");
      y = at::linear(x, scratch);
      return;
  }
}

// NVFP4: fp4_gemm (each batch tile and blocks an SM that suit the batch) against dequantize +
// at::linear, the fused kernels up to 16 rows, and bf16 at::linear, each batch in the same run;
// the measurements behind fp4_gemm's place in the daemon and its cost model.
void sweep_gemm(double copy_gbps, int64_t rotate_bytes, int reps,
                const std::vector<int64_t>& batches) {
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  std::printf(
      "\nnvfp4: fp4_gemm, dequantize + bf16 GEMM, and up to 16 rows the fused kernels\n%-12s %5s "
      "%-22s "
      "%9s %9s %8s %11s %8s %8s\n",
      "N x K", "batch", "path", "fp4 us", "bf16 us", "speedup", "weight GB/s", "of copy", "TFLOPS");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 8192}, {8192, 8192}}) {
    const std::string shape = std::to_string(n) + "x" + std::to_string(k);
    const SweepWeights w = make_sweep_weights(n, k, rotate_bytes, torch::kBFloat16);
    const int copies = static_cast<int>(w.w4.size());
    at::Tensor scratch = torch::empty({n, k}, bf16);
    for (int64_t batch : batches) {
      const at::Tensor x = torch::randn({batch, k}, bf16);
      at::Tensor y = torch::empty({batch, n}, bf16);
      const at::Tensor ref = at::linear(x.to(at::kFloat), w.dequantized.to(at::kFloat));
      const double bf16_ms =
          median_ms(reps, [&](int i) { y = at::linear(x, w.w16[i % w.w16.size()]); });
      // The default (and without L2 hints, and storing one bf16 at a time), every batch tile
      // and blocks an SM on both grids where the choice is close, dequantize + GEMM, and up to
      // 16 rows the fused kernels the daemon runs there.
      struct Run {
        Path path;
        int tile = 0;    // 0: chosen
        int per_sm = 0;  // 0: chosen
        fp4::GemmGrid grid = fp4::GemmGrid::kChosen;
        bool l2_hints = true;
        bool word_stores = true;
      };
      std::vector<Run> runs;
      if (batch <= fp4::kFusedMaxBatch) runs.push_back({Path::kFused});
      runs.push_back({Path::kGemm});
      Run no_hints{Path::kGemm}, bf16_stores{Path::kGemm};
      no_hints.l2_hints = false;
      bf16_stores.word_stores = false;
      runs.push_back(no_hints);
      runs.push_back(bf16_stores);
      for (auto [tile, per_sm] :
           {std::pair<int, int>{16, 2}, {32, 2}, {64, 2}, {64, 1}, {128, 1}, {256, 1}}) {
        // The tiles a batch fills at least half of, and 64 rows below that.
        if (!(2 * batch > tile && batch <= 4 * tile) && !(tile == 64 && batch < 32)) continue;
        for (fp4::GemmGrid grid : {fp4::GemmGrid::kTilePerBlock, fp4::GemmGrid::kResident}) {
          runs.push_back({Path::kGemm, tile, per_sm, grid});
        }
      }
      runs.push_back({Path::kDequantGemm});
      for (const Run& r : runs) {
        fp4::GemmOptions gemm;
        gemm.batch_tile = r.tile;
        gemm.blocks_per_sm = r.per_sm;
        gemm.grid = r.grid;
        gemm.l2_hints = r.l2_hints;
        gemm.word_stores = r.word_stores;
        std::string name = path_name(r.path);
        if (r.path == Path::kGemm && r.tile != 0) {
          name = "fp4_gemm " + std::to_string(r.tile) + "x" + std::to_string(r.per_sm) +
                 (r.grid == fp4::GemmGrid::kResident ? " shared" : " tile/blk");
        } else if (r.path == Path::kGemm && !r.l2_hints) {
          name += " no hints";
        } else if (r.path == Path::kGemm && !r.word_stores) {
          name += " bf16 stores";
        }
        y.fill_(std::numeric_limits<float>::quiet_NaN());
        run_path(r.path, w.w4[0].view, x, batch, y, scratch, gemm);
        const double err = relative_error(y, ref);
        if (!(err < 1e-2)) {
          std::printf("CHECK FAILED %s batch %ld %s: %.3e\n", shape.c_str(),
                      static_cast<long>(batch), name.c_str(), err);
          continue;
        }
        const double ms = median_ms(reps, [&](int i) {
          run_path(r.path, w.w4[i % copies].view, x, batch, y, scratch, gemm);
        });
        const double gbps = w.packed_bytes / (ms / 1e3) / 1e9;
        std::printf("%-12s %5ld %-22s %9.1f %9.1f %7.2fx %11.0f %7.0f%% %8.0f\n", shape.c_str(),
                    static_cast<long>(batch), name.c_str(), ms * 1e3, bf16_ms * 1e3, bf16_ms / ms,
                    gbps, 100.0 * gbps / copy_gbps, 2.0 * n * k * batch / (ms / 1e3) / 1e12);
      }
    }
  }
}

// Above 16 batch rows: the whole weight dequantized to bf16 and one GEMM, against the same
// done `chunk_rows` weight rows at a time into one of two buffers small enough to stay in the L2
// (a chunk's GEMM then reads its weight from the L2, not DRAM), on one stream, or with the next
// chunk's dequantization on a second stream overlapping the current chunk's GEMM.
void sweep_chunked(double copy_gbps, int64_t rotate_bytes, int reps) {
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  cudaStream_t side = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaEvent_t go = nullptr, dequantized[2] = {}, multiplied[2] = {};
  check_cuda(cudaEventCreateWithFlags(&go, cudaEventDisableTiming), "cudaEventCreate");
  for (int b = 0; b < 2; ++b) {
    check_cuda(cudaEventCreateWithFlags(&dequantized[b], cudaEventDisableTiming),
               "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&multiplied[b], cudaEventDisableTiming), "cudaEventCreate");
  }
  std::printf(
      "\nnvfp4 above 16 batch rows: dequantize + bf16 GEMM, whole or in chunks of rows (two "
      "buffers; 'overlap': the next chunk dequantized on a second stream)\n%-12s %5s %-28s %9s "
      "%9s %8s %11s %8s\n",
      "N x K", "batch", "path", "fp4 us", "bf16 us", "speedup", "weight GB/s", "of copy");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 8192}, {8192, 8192}}) {
    const std::string shape = std::to_string(n) + "x" + std::to_string(k);
    const SweepWeights w = make_sweep_weights(n, k, rotate_bytes, torch::kBFloat16);
    const int copies = static_cast<int>(w.w4.size());
    at::Tensor whole = torch::empty({n, k}, bf16);
    for (int64_t batch : {64, 256}) {
      const at::Tensor x = torch::randn({batch, k}, bf16);
      at::Tensor y = torch::empty({batch, n}, bf16);
      const at::Tensor ref = at::linear(x.to(at::kFloat), w.dequantized.to(at::kFloat));
      const double bf16_ms =
          median_ms(reps, [&](int i) { y = at::linear(x, w.w16[i % w.w16.size()]); });
      auto report = [&](const std::string& path, const std::function<void(int)>& run) {
        y.fill_(std::numeric_limits<float>::quiet_NaN());
        run(0);
        const double err = relative_error(y, ref);
        if (!(err < 1e-2)) {
          std::printf("CHECK FAILED %s batch %ld %s: %.3e\n", shape.c_str(),
                      static_cast<long>(batch), path.c_str(), err);
          return;
        }
        const double ms = median_ms(reps, run);
        const double gbps = w.packed_bytes / (ms / 1e3) / 1e9;
        std::printf("%-12s %5ld %-28s %9.1f %9.1f %7.2fx %11.0f %7.0f%%\n", shape.c_str(),
                    static_cast<long>(batch), path.c_str(), ms * 1e3, bf16_ms * 1e3, bf16_ms / ms,
                    gbps, 100.0 * gbps / copy_gbps);
      };
      report("whole", [&](int i) {
        check(fp4::dequantize_to_bf16(w.w4[i % copies].view,
                                      static_cast<uint16_t*>(whole.data_ptr()), nullptr),
              "dequantize_to_bf16");
        at::linear_out(y, x, whole);
      });
      for (int64_t chunk_rows : {1024, 2048, 4096}) {
        if (n % chunk_rows != 0) continue;
        at::Tensor buffers[2] = {torch::empty({chunk_rows, k}, bf16),
                                 torch::empty({chunk_rows, k}, bf16)};
        for (bool overlap : {false, true}) {
          cudaStream_t dequant_stream = overlap ? side : nullptr;
          report(
              "chunks of " + std::to_string(chunk_rows) + (overlap ? ", overlap" : ""), [&](int i) {
                const fp4::DeviceWeightView& view = w.w4[i % copies].view;
                if (overlap) {  // nothing of this call starts before the call
                  check_cuda(cudaEventRecord(go, nullptr), "cudaEventRecord");
                  check_cuda(cudaStreamWaitEvent(side, go), "cudaStreamWaitEvent");
                }
                for (int64_t r0 = 0, c = 0; r0 < n; r0 += chunk_rows, ++c) {
                  const int b = static_cast<int>(c % 2);
                  fp4::DeviceWeightView part = view;
                  part.n = chunk_rows;
                  part.codes = view.codes + r0 * k / 2;
                  part.scales = static_cast<const uint8_t*>(view.scales) + r0 * (k / 16);
                  if (overlap && c >= 2) {  // the buffer's last GEMM is done
                    check_cuda(cudaStreamWaitEvent(side, multiplied[b]), "cudaStreamWaitEvent");
                  }
                  check(fp4::dequantize_to_bf16(part, static_cast<uint16_t*>(buffers[b].data_ptr()),
                                                dequant_stream),
                        "dequantize_to_bf16");
                  if (overlap) {
                    check_cuda(cudaEventRecord(dequantized[b], side), "cudaEventRecord");
                    check_cuda(cudaStreamWaitEvent(nullptr, dequantized[b]), "cudaStreamWaitEvent");
                  }
                  at::Tensor out = y.narrow(1, r0, chunk_rows);
                  at::mm_out(out, x, buffers[b].t());
                  if (overlap) {
                    check_cuda(cudaEventRecord(multiplied[b], nullptr), "cudaEventRecord");
                  }
                }
              });
        }
      }
    }
  }
  for (int b = 0; b < 2; ++b) {
    cudaEventDestroy(dequantized[b]);
    cudaEventDestroy(multiplied[b]);
  }
  cudaEventDestroy(go);
  cudaStreamDestroy(side);
}

// Median microseconds of a plain read (bench/read_probe.h) of the first `bytes` of each of
// `buffers` in turn.
double plain_read_us(const std::vector<at::Tensor>& buffers, int64_t bytes, int sms, int reps,
                     uint32_t* sink) {
  return 1e3 * median_ms(reps, [&](int i) {
           vb::bench::launch_plain_read(buffers[i % buffers.size()].data_ptr(), bytes, sms, 8,
                                        sink);
         });
}

// How fast the GPU reads the 28672 x 8192 NVFP4 codes (28672 rows of 4096 bytes) in each warp
// load shape, against a plain read and a copy of the same bytes: the ceiling of each layout.
void sweep_read_shapes(int sms, int64_t rotate_bytes, int reps) {
  const int rows = 28672, row_bytes = 4096;
  const int64_t bytes = int64_t{rows} * row_bytes;
  const auto u8 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kUInt8);
  const int copies = static_cast<int>(std::max<int64_t>(2, rotate_bytes / bytes + 1));
  std::vector<at::Tensor> buffers;
  for (int i = 0; i < copies; ++i) buffers.push_back(torch::randint(0, 256, {bytes}, u8));
  at::Tensor dst = torch::empty({bytes}, u8);
  at::Tensor sink = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA).dtype(at::kInt));
  auto* sink_ptr = static_cast<uint32_t*>(sink.data_ptr());
  const double copy_us =
      1e3 * median_ms(reps, [&](int i) {
        check_cuda(cudaMemcpyAsync(dst.data_ptr(), buffers[i % copies].data_ptr(), bytes,
                                   cudaMemcpyDeviceToDevice, nullptr),
                   "cudaMemcpyAsync");
      });
  const double read_us = plain_read_us(buffers, bytes, sms, reps, sink_ptr);
  std::printf("\nreading %d rows x %d bytes (%.1f MB, the NVFP4 codes of 28672 x 8192)\n", rows,
              row_bytes, bytes / 1e6);
  std::printf("%-44s %9s %9s %8s\n", "shape", "us", "GB/s", "of read");
  std::printf("%-44s %9.1f %9.0f %8s\n", "cudaMemcpy device to device (bytes read)", copy_us,
              bytes / copy_us / 1e3, "");
  std::printf("%-44s %9.1f %9.0f %7.2fx\n", "plain read (grid-stride, 16-byte loads)", read_us,
              bytes / read_us / 1e3, 1.0);
  for (int rows_per_load : {1, 2, 4, 8, 16}) {
    for (int in_flight : {4, 8}) {
      const double us =
          1e3 * median_ms(reps, [&](int i) {
            if (!vb::bench::launch_rows_read(buffers[i % copies].data_ptr(), rows, row_bytes,
                                             rows_per_load, in_flight, sink_ptr)) {
              std::fprintf(stderr, "rows_read: shape not built\n");
              std::exit(1);
            }
          });
      const std::string shape = "warp load " + std::to_string(rows_per_load) + " rows x " +
                                std::to_string(512 / rows_per_load) + " B, " +
                                std::to_string(in_flight) + " in flight";
      std::printf("%-44s %9.1f %9.0f %7.2fx\n", shape.c_str(), us, bytes / us / 1e3, read_us / us);
    }
  }
  // As few warps as the 4-bit kernels keep resident (16 an SM: 2 blocks of 8), each with as
  // few loads in flight as theirs (2 to 4 steps of one 16-byte load a row half), against the
  // full grid above.
  for (int rows_per_load : {8, 4}) {
    for (int in_flight : {2, 4, 8}) {
      const double us = 1e3 * median_ms(reps, [&](int i) {
                          if (!vb::bench::launch_rows_read_resident(buffers[i % copies].data_ptr(),
                                                                    rows, row_bytes, rows_per_load,
                                                                    in_flight, sms, 2, sink_ptr)) {
                            std::fprintf(stderr, "rows_read_resident: shape not built\n");
                            std::exit(1);
                          }
                        });
      const std::string shape = std::to_string(rows_per_load) + " rows x " +
                                std::to_string(512 / rows_per_load) + " B, " +
                                std::to_string(in_flight) + " in flight, 16 warps an SM";
      std::printf("%-44s %9.1f %9.0f %7.2fx\n", shape.c_str(), us, bytes / us / 1e3, read_us / us);
    }
  }
  // With work on every word (~4 instructions a round; the kernels issue ~100-128 per 16-byte
  // load): loads into registers ahead of use, as the kernels do, against a producer warp
  // filling a shared-memory ring with bulk copies for 8 consumer warps (bench/read_probe.h).
  struct Work {
    bool bulk;
    int depth;  // loads in flight (registers) or stages (bulk)
    int rounds, blocks_per_sm;
  };
  for (const Work& w : std::vector<Work>{{false, 2, 0, 2},
                                         {false, 2, 25, 2},
                                         {false, 2, 32, 2},
                                         {false, 4, 25, 2},
                                         {true, 4, 0, 2},
                                         {true, 8, 0, 2},
                                         {true, 4, 25, 2},
                                         {true, 8, 25, 2},
                                         {true, 8, 32, 2},
                                         {true, 8, 25, 3}}) {
    auto launch = [&](int i) {
      const void* src = buffers[i % copies].data_ptr();
      return w.bulk ? vb::bench::launch_rows_work_bulk(src, rows, row_bytes, w.depth, w.rounds, sms,
                                                       w.blocks_per_sm, sink_ptr)
                    : vb::bench::launch_rows_work_registers(src, rows, row_bytes, w.depth, w.rounds,
                                                            sms, w.blocks_per_sm, sink_ptr);
    };
    if (!launch(0)) {
      std::fprintf(stderr, "rows_work: shape not built\n");
      std::exit(1);
    }
    check_cuda(cudaDeviceSynchronize(), "rows_work");
    const double us = 1e3 * median_ms(reps, [&](int i) { launch(i); });
    const std::string shape = std::string(w.bulk ? "bulk ring, " : "registers, ") +
                              std::to_string(w.depth) + (w.bulk ? " stages, " : " ahead, ") +
                              std::to_string(w.rounds) + " rounds, " +
                              std::to_string(w.blocks_per_sm) + " blocks an SM";
    std::printf("%-44s %9.1f %9.0f %7.2fx\n", shape.c_str(), us, bytes / us / 1e3, read_us / us);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = mode == "--quick";
  if (!(argc == 1 ||
        (argc == 2 && (quick || mode == "--variants" || mode == "--shapes" || mode == "--chunked" ||
                       mode == "--gemm")) ||
        (argc == 3 && (mode == "--variants" || mode == "--gemm")) ||
        (argc == 6 && mode == "--one"))) {
    std::fprintf(
        stderr,
        "usage: fp4_bench [--quick | --variants [BATCH,...] | --shapes | --chunked | "
        "--gemm [BATCH,...] | "
        "--one STAGES "
        "ROW_TILES WARPS BATCH]\n"
        "  (--one: STAGES 'direct1' or 'direct2' for the direct kernel, 'integer' for the "
        "integer kernel, 'ksplit2' or 'ksplit3' for the k-split kernel, 'gemm' for fp4_gemm "
        "with ROW_TILES its batch tile and WARPS its max_blocks)\n");
    return 2;
  }
  if (vb::backends::cuda::visible_devices() == 0) {
    std::printf("fp4_bench: no CUDA device visible\n");
    return 0;
  }
  torch::NoGradGuard no_grad;
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const double copy_gbps = copy_bandwidth_gbps();
  std::printf("GPU %s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbps);
  const int reps = quick ? 10 : 50;
  const int64_t rotate_bytes = std::max<int64_t>(int64_t{4} * prop.l2CacheSize, 256 << 20);
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  if (mode == "--one") {
    // One configuration, launched 5 times (for a profiler): --one STAGES ROW_TILES WARPS BATCH,
    // NVFP4 28672 x 8192.
    fp4::LinearOptions options;
    if (std::strncmp(argv[2], "direct", 6) == 0) {  // direct1, direct2: its k segments
      options.direct = std::atoi(argv[2] + 6);
    } else if (std::strcmp(argv[2], "integer") == 0) {  // the integer kernel (batch <= 4)
      options.integer = 1;
    } else if (std::strncmp(argv[2], "ksplit", 6) == 0) {  // ksplit2, ksplit3: its depth
      options.direct = 0;
      options.k_split = 1;
      options.pipeline_stages = std::atoi(argv[2] + 6);
    } else {
      options.pipeline_stages = std::atoi(argv[2]);
      options.direct = 0;
    }
    options.row_tiles = std::atoi(argv[3]);
    options.warps_per_block = std::atoi(argv[4]);
    const int64_t batch = std::atoi(argv[5]);
    const Fp4Copy w = make_weight(Format::kNvfp4, 28672, 8192);
    const at::Tensor x = torch::randn({batch, 8192}, bf16);
    at::Tensor y = torch::empty({batch, 28672}, bf16);
    const bool gemm = std::strcmp(argv[2], "gemm") == 0;
    fp4::GemmOptions gemm_options;  // fp4_gemm: --one gemm BATCH_TILE MAX_BLOCKS BATCH
    gemm_options.batch_tile = std::atoi(argv[3]);
    gemm_options.max_blocks = std::atoi(argv[4]);
    for (int i = 0; i < 5; ++i) {
      if (gemm) {
        check(fp4::fp4_gemm(w.view, x.data_ptr(), batch, fp4::Activation::kBf16, nullptr,
                            y.data_ptr(), nullptr, gemm_options),
              "fp4_gemm");
      } else {
        check(fp4::fp4_linear(w.view, x.data_ptr(), batch, fp4::Activation::kBf16, nullptr,
                              y.data_ptr(), nullptr, options),
              "fp4_linear");
      }
    }
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return 0;
  }
  // --variants / --gemm B1,B2,...: those batches only.
  const bool variants = mode == "--variants";
  std::vector<int64_t> batches = variants ? std::vector<int64_t>{1, 2, 4, 8, 16}
                                          : std::vector<int64_t>{17, 32, 64, 128, 256, 512, 1024};
  const int64_t lowest = 1;
  const int64_t highest = variants ? fp4::kFusedMaxBatch : 65535;
  if (argc == 3) {
    batches.clear();
    for (const absl::string_view b : absl::StrSplit(argv[2], ',')) {
      int64_t batch = 0;
      if (!absl::SimpleAtoi(b, &batch) || batch < lowest || batch > highest) {
        std::fprintf(stderr, "fp4_bench %s: batch '%s': expected %ld..%ld\n", mode.c_str(),
                     std::string(b).c_str(), static_cast<long>(lowest), static_cast<long>(highest));
        return 2;
      }
      batches.push_back(batch);
    }
  }
  if (variants) {
    // Without a list, the fp16 sweep too.
    sweep_variants(copy_gbps, rotate_bytes, reps, batches);
    if (argc == 2) sweep_fp16(copy_gbps, rotate_bytes, reps);
    return 0;
  }
  if (mode == "--shapes") {
    sweep_read_shapes(prop.multiProcessorCount, rotate_bytes, reps);
    return 0;
  }
  if (mode == "--chunked") {
    sweep_chunked(copy_gbps, rotate_bytes, reps);
    return 0;
  }
  if (mode == "--gemm") {
    sweep_gemm(copy_gbps, rotate_bytes, reps, batches);
    return 0;
  }

  // "read us": a plain read of as many bytes as the packed weight (bench/read_probe.h), the
  // least time any kernel streaming that weight can take; "of read" is it over "fp4 us".
  std::printf("\n%-7s %-12s %5s  %10s %10s %8s  %10s %8s  %8s %7s  %s\n", "format", "N x K",
              "batch", "fp4 us", "bf16 us", "speedup", "weight GB/s", "of copy", "read us",
              "of read", "path");
  at::Tensor sink = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA).dtype(at::kInt));
  const std::vector<Format> formats = {Format::kNvfp4, Format::kMxfp4, Format::kNf4,
                                       Format::kBnbFp4};
  for (auto [n, k] : {std::pair<int64_t, int64_t>{28672, 8192}, {8192, 8192}}) {
    const std::string shape = std::to_string(n) + "x" + std::to_string(k);
    const int64_t bf16_bytes = n * k * 2;
    const int bf16_copies = static_cast<int>(std::max<int64_t>(2, rotate_bytes / bf16_bytes + 1));
    std::vector<at::Tensor> w16;
    for (int i = 0; i < bf16_copies; ++i) w16.push_back(torch::randn({n, k}, bf16) * 0.02);
    at::Tensor scratch = torch::empty({n, k}, bf16);
    const int64_t read_bytes = n * k / 2 + n * k / 16;  // the largest packed weight
    const int read_copies = static_cast<int>(std::max<int64_t>(2, rotate_bytes / read_bytes + 1));
    std::vector<at::Tensor> read_buffers;
    for (int i = 0; i < read_copies; ++i) {
      read_buffers.push_back(torch::randint(
          0, 256, {read_bytes}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kUInt8)));
    }

    for (Format format : formats) {
      const int64_t blocks = n * (k / vb::backends::fp4::block_size(format));
      const int64_t packed_bytes = n * k / 2 + blocks * vb::backends::fp4::scale_bytes(format);
      const int copies = static_cast<int>(std::max<int64_t>(2, rotate_bytes / packed_bytes + 1));
      std::vector<Fp4Copy> w4;
      for (int i = 0; i < copies; ++i) w4.push_back(make_weight(format, n, k));
      const double read_us = plain_read_us(read_buffers, packed_bytes, prop.multiProcessorCount,
                                           reps, static_cast<uint32_t*>(sink.data_ptr()));

      for (int64_t batch : {1, 16, 256}) {
        const at::Tensor x = torch::randn({batch, k}, bf16);
        at::Tensor y = torch::empty({batch, n}, bf16);
        // The kernel a daemon would run at this batch (fp4_linear up to 16 rows, fp4_gemm
        // above where it applies), then the dequantize + at::linear path for comparison.
        std::vector<Path> paths;
        if (batch <= fp4::kFusedMaxBatch) {
          paths.push_back(Path::kFused);
        } else if (fp4::fp4_gemm_supported(w4[0].view, batch, fp4::Activation::kBf16).ok()) {
          paths.push_back(Path::kGemm);
        }
        paths.push_back(Path::kDequantGemm);
        auto run_fp4 = [&](int i, Path path) {
          run_path(path, w4[i % copies].view, x, batch, y, scratch);
        };
        // Check before timing: against at::linear on the same weights dequantized to bf16.
        for (Path path : paths) {
          y.fill_(std::numeric_limits<float>::quiet_NaN());
          run_fp4(0, path);
          check(fp4::dequantize_to_bf16(w4[0].view, static_cast<uint16_t*>(scratch.data_ptr()),
                                        nullptr),
                "dequantize_to_bf16");
          const at::Tensor ref = at::linear(x.to(at::kFloat), scratch.to(at::kFloat));
          const double err = relative_error(y, ref);
          if (!(err < 1e-2)) {
            std::fprintf(stderr, "CHECK FAILED %s %s batch %ld %s: relative error %.3e\n",
                         vb::backends::fp4::format_name(format), shape.c_str(),
                         static_cast<long>(batch), path_name(path), err);
            return 1;
          }
        }
        const double bf16_ms =
            median_ms(reps, [&](int i) { y = at::linear(x, w16[i % bf16_copies]); });
        for (Path path : paths) {
          const double ms = median_ms(reps, [&](int i) { run_fp4(i, path); });
          const double gbps = packed_bytes / (ms / 1e3) / 1e9;
          std::printf("%-7s %-12s %5ld  %10.1f %10.1f %7.2fx  %10.0f %7.0f%%  %8.1f %6.0f%%  %s\n",
                      vb::backends::fp4::format_name(format), shape.c_str(),
                      static_cast<long>(batch), ms * 1e3, bf16_ms * 1e3, bf16_ms / ms, gbps,
                      100.0 * gbps / copy_gbps, read_us, 100.0 * read_us / (ms * 1e3),
                      path_name(path));
        }
      }
      // The dequantization alone, as bytes read + written against the device-to-device copy
      // (which also reads and writes each byte once).
      const double dequant_ms = median_ms(reps, [&](int i) {
        check(fp4::dequantize_to_bf16(w4[i % copies].view,
                                      static_cast<uint16_t*>(scratch.data_ptr()), nullptr),
              "dequantize_to_bf16");
      });
      const double moved_gbps = (packed_bytes + n * k * 2) / (dequant_ms / 1e3) / 1e9;
      std::printf(
          "%-7s %-12s dequantize to bf16 alone: %.1f us, %.0f GB/s read + write, %.0f%% "
          "of copy\n",
          vb::backends::fp4::format_name(format), shape.c_str(), dequant_ms * 1e3, moved_gbps,
          100.0 * moved_gbps / copy_gbps);
    }
  }
  return 0;
}
