// The 4-bit weight kernels on a real GPU against the CPU reference (backends/fp4):
// dequantization bit for bit on quantized and adversarial weights (every scale byte, NaN
// scales, subnormal and overflowing products), and the fused Linear against float64 for
// batch 1..16, bf16 and fp16, shapes that do and do not fill the tiles, every split-K width.
// Outputs are poisoned with NaN before each run. Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backends/cuda/copy_engine.h"
#include "backends/cuda/fp4_kernels.h"
#include "backends/fp4/fp4.h"

namespace vb::backends::cuda::fp4 {
namespace {

namespace cpu = backends::fp4;

#define SKIP_WITHOUT_GPU() \
  if (visible_devices() == 0) GTEST_SKIP() << "no CUDA device visible: GPU test skipped"

constexpr Format kAllFormats[] = {Format::kNvfp4, Format::kMxfp4, Format::kNf4, Format::kBnbFp4};

// A device buffer that frees itself.
class Buffer {
 public:
  explicit Buffer(size_t bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)), cudaSuccess);
    bytes_ = bytes;
  }
  ~Buffer() { cudaFree(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  void upload(const std::vector<T>& v) {
    ASSERT_EQ(cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  template <typename T>
  std::vector<T> download(size_t count) const {
    std::vector<T> v(count);
    EXPECT_EQ(cudaMemcpy(v.data(), ptr_, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  void poison() { ASSERT_EQ(cudaMemset(ptr_, 0xFF, bytes_), cudaSuccess); }  // NaN in all types

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

std::vector<float> gaussian(size_t count, unsigned seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Random codes and scales, including every byte scale value and extreme float scales.
cpu::PackedWeight adversarial(Format format, int64_t n, int64_t k, unsigned seed) {
  std::mt19937 rng(seed);
  cpu::PackedWeight w;
  w.format = format;
  w.n = n;
  w.k = k;
  w.codes.resize(n * k / 2);
  for (auto& c : w.codes) c = static_cast<uint8_t>(rng());
  const int64_t blocks = n * (k / cpu::block_size(format));
  if (cpu::has_byte_scales(format)) {
    w.scales.resize(blocks);
    for (int64_t i = 0; i < blocks; ++i) w.scales[i] = static_cast<uint8_t>(i % 256);
    w.tensor_scale = 1.0f;
  } else {
    const float specials[] = {0.0f, 1.0f, 1e-40f, std::numeric_limits<float>::max(), 3e-39f, 0.02f};
    w.scales.resize(blocks * 4);
    for (int64_t i = 0; i < blocks; ++i) {
      const float s =
          i < 6 ? specials[i]
                : std::ldexp(1.0f + (rng() % 1000) / 1000.0f, static_cast<int>(rng() % 200) - 100);
      std::memcpy(&w.scales[i * 4], &s, 4);
    }
  }
  return w;
}

void expect_dequantize_bit_exact(const cpu::PackedWeight& w, const std::string& label) {
  std::vector<float> expected(w.n * w.k);
  ASSERT_TRUE(cpu::dequantize(w, expected.data()).ok());
  auto device = DeviceWeight::upload(w);
  ASSERT_TRUE(device.ok()) << device.status();
  Buffer out_f(expected.size() * 4), out_h(expected.size() * 2);
  out_f.poison();
  out_h.poison();
  ASSERT_TRUE(
      dequantize_to_float((*device)->view(), static_cast<float*>(out_f.get()), nullptr).ok());
  ASSERT_TRUE(
      dequantize_to_bf16((*device)->view(), static_cast<uint16_t*>(out_h.get()), nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = out_f.download<float>(expected.size());
  const std::vector<uint16_t> got_h = out_h.download<uint16_t>(expected.size());
  int64_t float_mismatches = 0, bf16_mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &expected[i], 4);
    if (a != b && float_mismatches++ < 5) {
      ADD_FAILURE() << label << " float element " << i << ": GPU " << got[i] << " (0x" << std::hex
                    << a << "), CPU " << expected[i] << " (0x" << b << ")" << std::dec;
    }
    const uint16_t want = cpu::float_to_bf16_bits(expected[i]);
    const bool both_nan = std::isnan(expected[i]) && std::isnan(cpu::bf16_bits_to_float(got_h[i]));
    if (got_h[i] != want && !both_nan && bf16_mismatches++ < 5) {
      ADD_FAILURE() << label << " bf16 element " << i << ": GPU 0x" << std::hex << got_h[i]
                    << ", CPU 0x" << want << std::dec;
    }
  }
  EXPECT_EQ(float_mismatches, 0) << label;
  EXPECT_EQ(bf16_mismatches, 0) << label;
}

TEST(Fp4GpuTest, DequantizeIsBitExactWithTheCpu) {
  SKIP_WITHOUT_GPU();
  for (Format f : kAllFormats) {
    const std::string name = cpu::format_name(f);
    const std::vector<float> w = gaussian(96 * 512, 1, 0.05f);
    auto q = cpu::quantize(w.data(), 96, 512, f);
    ASSERT_TRUE(q.ok()) << q.status();
    expect_dequantize_bit_exact(*q, name + " quantized");
    // 40 rows of 512 hold at least 320 blocks: every scale byte value (the i-th block has i % 256).
    expect_dequantize_bit_exact(adversarial(f, 40, 512, 2), name + " adversarial");
    if (f == Format::kNvfp4) {
      cpu::PackedWeight tiny = adversarial(f, 16, 256, 3);
      tiny.tensor_scale = 1e-30f;  // products land in float32 subnormals
      expect_dequantize_bit_exact(tiny, name + " subnormal products");
      cpu::PackedWeight huge = adversarial(f, 16, 256, 4);
      huge.tensor_scale = 3e35f;  // products overflow to infinity
      expect_dequantize_bit_exact(huge, name + " overflowing products");
    }
  }
}

// float64 reference of y = x W^T + bias on the 16-bit x and bias the kernel sees.
std::vector<double> reference(const std::vector<uint16_t>& x, int64_t batch,
                              const cpu::PackedWeight& w, const std::vector<uint16_t>& bias,
                              Activation type) {
  auto to_float = [type](uint16_t h) {
    return type == Activation::kBf16 ? cpu::bf16_bits_to_float(h) : cpu::fp16_bits_to_float(h);
  };
  std::vector<float> deq(w.n * w.k);
  EXPECT_TRUE(cpu::dequantize(w, deq.data()).ok());
  std::vector<double> y(batch * w.n);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < w.n; ++j) {
      double sum = bias.empty() ? 0.0 : to_float(bias[j]);
      for (int64_t i = 0; i < w.k; ++i) sum += double{to_float(x[b * w.k + i])} * deq[j * w.k + i];
      y[b * w.n + j] = sum;
    }
  }
  return y;
}

// Relative L2 error of the 16-bit outputs y against ref; NaN outputs (unwritten: the buffer is
// poisoned) fail the test.
double checked_error(const std::vector<uint16_t>& y, const std::vector<double>& ref,
                     Activation type, const std::string& label) {
  double num = 0, den = 0;
  int64_t nans = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double v =
        type == Activation::kBf16 ? cpu::bf16_bits_to_float(y[i]) : cpu::fp16_bits_to_float(y[i]);
    if (std::isnan(v)) ++nans;
    num += (v - ref[i]) * (v - ref[i]);
    den += ref[i] * ref[i];
  }
  EXPECT_EQ(nans, 0) << label << ": unwritten or NaN outputs";
  return std::sqrt(num / den);
}

struct LinearCase {
  Format format;
  int64_t n, k, batch;
  Activation type;
  bool bias;
  int warps;
  int stages = -1;  // LinearOptions::pipeline_stages
  int row_tiles = 0;
  int max_blocks = 0;
  bool bits = true;  // LinearOptions::bit_decode
  int direct = -1;   // LinearOptions::direct
  int integer = -1;  // LinearOptions::integer
  int k_split = -1;  // LinearOptions::k_split
  int chunk = 0;     // LinearOptions::k_split_chunk
  int sum = -1;      // LinearOptions::k_split_sum
};

void check_linear(const LinearCase& c, unsigned seed) {
  const std::string label =
      std::string(cpu::format_name(c.format)) + (c.type == Activation::kBf16 ? " bf16" : " fp16") +
      " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
      " batch=" + std::to_string(c.batch) + " warps=" + std::to_string(c.warps) +
      " stages=" + std::to_string(c.stages) + " row_tiles=" + std::to_string(c.row_tiles) +
      " max_blocks=" + std::to_string(c.max_blocks) + (c.bits ? "" : " table") +
      " direct=" + std::to_string(c.direct) + " chunk=" + std::to_string(c.chunk) +
      " integer=" + std::to_string(c.integer) + " k_split=" + std::to_string(c.k_split) +
      " k_split_sum=" + std::to_string(c.sum) + (c.bias ? " +bias" : "");
  const std::vector<float> wf = gaussian(c.n * c.k, seed, 0.02f);
  auto q = cpu::quantize(wf.data(), c.n, c.k, c.format);
  ASSERT_TRUE(q.ok()) << q.status();
  auto to_bits = [&c](float f) {
    return c.type == Activation::kBf16 ? cpu::float_to_bf16_bits(f) : cpu::float_to_fp16_bits(f);
  };
  std::vector<uint16_t> x, bias;
  for (float v : gaussian(c.batch * c.k, seed + 1, 1.0f)) x.push_back(to_bits(v));
  if (c.bias) {
    for (float v : gaussian(c.n, seed + 2, 0.1f)) bias.push_back(to_bits(v));
  }
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok()) << device.status();
  Buffer dx(x.size() * 2), dbias(c.n * 2), dy(c.batch * c.n * 2);
  dx.upload(x);
  if (c.bias) dbias.upload(bias);
  for (int run = 0; run < 2; ++run) {  // twice: a race would show as a moving error
    dy.poison();
    LinearOptions options;
    options.warps_per_block = c.warps;
    options.pipeline_stages = c.stages;
    options.row_tiles = c.row_tiles;
    options.max_blocks = c.max_blocks;
    options.bit_decode = c.bits;
    options.direct = c.direct;
    options.integer = c.integer;
    options.k_split = c.k_split;
    options.k_split_chunk = c.chunk;
    options.k_split_sum = c.sum;
    const absl::Status status =
        fp4_linear((*device)->view(), dx.get(), c.batch, c.type, c.bias ? dbias.get() : nullptr,
                   dy.get(), nullptr, options);
    ASSERT_TRUE(status.ok()) << label << ": " << status;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << label;
    const std::vector<uint16_t> y = dy.download<uint16_t>(c.batch * c.n);
    const double error = checked_error(y, reference(x, c.batch, *q, bias, c.type), c.type, label);
    EXPECT_LT(error, 1e-2) << label;
    if (run == 0 && c.n >= 256)
      std::printf("GPU fp4_linear %s: relative error %.2e\n", label.c_str(), error);
  }
}

TEST(Fp4GpuTest, FusedLinearMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  unsigned seed = 10;
  for (Format f : kAllFormats) {
    const int block = cpu::block_size(f);
    for (Activation type : {Activation::kBf16, Activation::kFp16}) {
      for (int64_t batch : {1, 4, 16}) {
        check_linear({f, 256, 2048, batch, type, true, 8}, seed++);
      }
      // Odd shapes: n not a multiple of the 32-row tile, k not a multiple of the 128-wide step
      // (and for NVFP4 not of 32: the 8-byte load path); batches that leave MMA columns idle.
      for (int64_t batch : {3, 9}) {
        check_linear({f, 37, int64_t{block} * 13, batch, type, batch == 3, 8}, seed++);
        check_linear({f, 1, int64_t{block}, batch, type, true, 8}, seed++);
      }
    }
    for (int warps : {1, 2, 4})
      check_linear({f, 70, 1024, 7, Activation::kBf16, true, warps, 0}, seed++);
    // Both kernels on a shape either takes (k a multiple of 128; n not of 64, so the staged
    // kernel's last block has rows past n), and every staged variant built, with a k whose
    // steps do not divide evenly among the warps.
    for (Activation type : {Activation::kBf16, Activation::kFp16}) {
      for (int64_t batch : {1, 8, 16}) {
        check_linear({f, 200, 1408, batch, type, true, 0, 0}, seed++);
        check_linear({f, 200, 1408, batch, type, true, 0, -1}, seed++);
      }
    }
    struct Variant {
      int64_t batch;
      int row_tiles, stages, warps, max_blocks;
    };
    // The staged variant built (2 row tiles, 2 stages), for both batch tiles and every warp
    // count; max_blocks makes each block walk several row groups.
    for (const Variant& v : std::vector<Variant>{{1, 2, 2, 16, 0},
                                                 {5, 2, 2, 2, 2},
                                                 {8, 2, 2, 4, 3},
                                                 {3, 2, 2, 1, 1},
                                                 {16, 2, 2, 8, 2},
                                                 {9, 2, 2, 16, 0},
                                                 {13, 2, 2, 4, 1},
                                                 {16, 2, 2, 1, 2}}) {
      check_linear({f, 200, 1920, v.batch, Activation::kBf16, v.batch % 2 == 1, v.warps, v.stages,
                    v.row_tiles, v.max_blocks},
                   seed++);
    }
  }
  // NVFP4 with bf16 activations through the table rather than bit operations.
  for (int64_t batch : {1, 12}) {
    check_linear({Format::kNvfp4, 200, 1920, batch, Activation::kBf16, true, 8, 2, 2, 3, false},
                 seed++);
  }
  // Steps that do not divide evenly among the warps (15 over 8, 4 and 16: warps with none).
  for (Format f : kAllFormats) {
    check_linear({f, 200, 1920, 3, Activation::kBf16, true, 8, 2, 2, 3}, seed++);
    check_linear({f, 200, 1920, 11, Activation::kBf16, true, 4, 2, 2, 0}, seed++);
    check_linear({f, 100, 1920, 1, Activation::kFp16, true, 16, 2, 2, 2}, seed++);
  }
  // More row groups than the GPU holds blocks, with the defaults.
  for (int64_t batch : {2, 11}) {
    check_linear({Format::kNvfp4, 9000, 256, batch, Activation::kBf16, true, 0}, seed++);
  }
  // The direct kernel (NVFP4, bf16), every variant built (k segments, row tiles), some with
  // fewer blocks than row groups so that each block walks several: batches up
  // to its limit, steps that do not divide among its 8 warps (1792 = 14 or 7 steps; 256 = 2 or
  // 1: warps with none), rows past n, many blocks, and the largest x it keeps in shared memory
  // (64 KiB).
  struct Direct {
    int segments, row_tiles, depth, max_blocks;
  };
  for (const Direct& d :
       std::vector<Direct>{{1, 1, 2, 0}, {1, 2, 2, 3}, {2, 1, 2, 2}, {2, 2, -1, 1}, {2, 2, 2, 0}}) {
    const int64_t max_batch = 8 / d.segments;
    auto direct_case = [&](int64_t n, int64_t k, int64_t batch, bool bias) {
      check_linear({Format::kNvfp4, n, k, batch, Activation::kBf16, bias, 0, d.depth, d.row_tiles,
                    d.max_blocks, true, d.segments},
                   seed++);
    };
    for (int64_t batch : {int64_t{1}, int64_t{3}, max_batch}) direct_case(200, 1792, batch, true);
    direct_case(37, 256, 2, true);
    direct_case(9000, 256, 1, false);
    direct_case(100, 32768 / max_batch, max_batch, true);
  }
  // The integer kernel (NVFP4, bf16 and fp16, batch 1..4), each variant built (row tiles 1;
  // 2 for one batch row), some with fewer blocks than row groups: steps that do not divide among
  // its 8 warps (1792 = 14 steps; 256 = 2: warps with none), batch 3 (run as 4, one row of zeros),
  // rows past n, many blocks, and the largest x it stages (4 rows of 8192).
  for (Activation type : {Activation::kBf16, Activation::kFp16}) {
    for (int64_t batch : {1, 2, 3, 4}) {
      check_linear({Format::kNvfp4, 200, 1792, batch, type, batch != 2, 0, -1, 1, 0, true, 0, 1},
                   seed++);
      check_linear({Format::kNvfp4, 37, 256, batch, type, true, 0, -1, 1, 2, true, 0, 1}, seed++);
    }
    check_linear({Format::kNvfp4, 200, 1792, 1, type, true, 0, -1, 2, 3, true, 0, 1}, seed++);
    check_linear({Format::kNvfp4, 9000, 256, 1, type, false, 0, 2, 2, 0, true, 0, 1}, seed++);
    check_linear({Format::kNvfp4, 9000, 256, 4, type, true, 0, -1, 0, 5, true, 0, 1}, seed++);
    check_linear({Format::kNvfp4, 100, 8192, 4, type, true, 0, -1, 1, 0, true, 0, 1}, seed++);
  }
  // The k-split kernel (NVFP4, bf16, batch <= 16), both depths, every chunk length (2048,
  // the default 1024, 512) and both ways of adding the chunks: 1792 = 14 steps makes one chunk,
  // 2 of 7, or 4 with a last of 2; 8192 makes 4, 8 or 16 even ones; 4224 = 33 steps makes 3 of
  // 11, 5 with a last of 5, or 9 with a last of 1. Also rows past n (200, 37 and 9000 are not
  // multiples of 16), batches that leave MMA columns idle, and few blocks (max_blocks), so that
  // each warp walks many tiles. The cluster sum takes up to 8 chunks and keeps all of a warp's
  // tiles in shared memory: 9000 rows on 7 blocks would take 36 or more a warp, which it
  // refuses (KSplitSumsAgreeBitForBit checks a refusal): the entries with sum 1 skip that case.
  struct KSplit {
    int depth, chunk, sum;
  };
  for (const KSplit& ks : std::vector<KSplit>{
           {2, 0, -1}, {2, 0, 0}, {2, 0, 1}, {3, 0, 1}, {2, 512, -1}, {2, 2048, 1}}) {
    auto k_split_case = [&](int64_t n, int64_t k, int64_t batch, bool bias, int max_blocks) {
      if (ks.sum == 1 && n * k > int64_t{1} << 24 && max_blocks > 0) return;
      check_linear({Format::kNvfp4, n, k, batch, Activation::kBf16, bias, 0, ks.depth, 0,
                    max_blocks, true, 0, 0, 1, ks.chunk, ks.sum},
                   seed++);
    };
    for (int64_t batch : {1, 9, 16}) k_split_case(200, 1792, batch, batch != 9, 0);
    k_split_case(200, 8192, 12, true, 0);
    k_split_case(37, 4224, 16, true, 3);
    k_split_case(9000, 512, 11, false, 0);
    k_split_case(9000, 4224, 5, true, 7);
  }
  // The defaults from 16384 rows: the integer kernel for one fp16 batch row, the direct kernel
  // with two segments up to 4 bf16 batch rows, the k-split kernel (cluster sum) from 7; from
  // 8192 rows, the k-split kernel from 9 (each measured faster there only).
  check_linear({Format::kNvfp4, 16384, 256, 3, Activation::kBf16, true, 0}, seed++);
  check_linear({Format::kNvfp4, 16384, 256, 1, Activation::kFp16, true, 0}, seed++);
  check_linear({Format::kNvfp4, 16384, 256, 7, Activation::kBf16, true, 0}, seed++);
  check_linear({Format::kNvfp4, 16384, 128, 13, Activation::kBf16, true, 0}, seed++);
}

// The integer kernel keeps x as 15-bit fixed point per 16-element block: x whose elements span
// 2^-24 .. 2^12 inside each block (and whole blocks of tiny or huge values) still matches
// float64, and Inf or NaN in a batch row makes that row's outputs NaN without touching the
// others.
TEST(Fp4GpuTest, IntegerKernelTakesWideAndNonFiniteX) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 300, k = 1024, batch = 4;
  const std::vector<float> wf = gaussian(n * k, 31, 0.02f);
  auto q = cpu::quantize(wf.data(), n, k, Format::kNvfp4);
  ASSERT_TRUE(q.ok()) << q.status();
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok()) << device.status();
  for (Activation type : {Activation::kBf16, Activation::kFp16}) {
    const bool bf16 = type == Activation::kBf16;
    auto to_bits = [bf16](float f) {
      return bf16 ? cpu::float_to_bf16_bits(f) : cpu::float_to_fp16_bits(f);
    };
    auto to_float = [bf16](uint16_t h) {
      return bf16 ? cpu::bf16_bits_to_float(h) : cpu::fp16_bits_to_float(h);
    };
    std::mt19937 rng(bf16 ? 41 : 42);
    std::uniform_real_distribution<float> exponent(bf16 ? -24.0f : -14.0f, bf16 ? 12.0f : 10.0f);
    std::vector<uint16_t> x(batch * k);
    for (int64_t i = 0; i < batch * k; ++i) {
      const float magnitude = std::exp2(exponent(rng));
      float v = (rng() & 1) ? magnitude : -magnitude;
      if ((i / 16) % 7 == 3) v *= bf16 ? 0x1p-100f : 0x1p-8f;  // blocks of only small values
      x[i] = to_bits(v);
    }
    Buffer dx(x.size() * 2), dy(batch * n * 2);
    dx.upload(x);
    LinearOptions options;
    options.integer = 1;
    dy.poison();
    ASSERT_TRUE(
        fp4_linear((*device)->view(), dx.get(), batch, type, nullptr, dy.get(), nullptr, options)
            .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> y = dy.download<uint16_t>(batch * n);
    const std::vector<double> ref = reference(x, batch, *q, {}, type);
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double v = to_float(y[i]);
      ASSERT_FALSE(std::isnan(v)) << "output " << i;
      num += (v - ref[i]) * (v - ref[i]);
      den += ref[i] * ref[i];
    }
    const double error = std::sqrt(num / den);
    EXPECT_LT(error, 1e-2) << (bf16 ? "bf16" : "fp16");
    std::printf("GPU integer kernel, x over 2^-24..2^12 in each block (%s): relative error %.2e\n",
                bf16 ? "bf16" : "fp16", error);

    // Batch row 1 gets an Inf, row 2 a NaN: their outputs are NaN, rows 0 and 3 unchanged.
    x[1 * k + 700] = to_bits(std::numeric_limits<float>::infinity());
    x[2 * k + 5] = to_bits(std::numeric_limits<float>::quiet_NaN());
    dx.upload(x);
    dy.poison();
    ASSERT_TRUE(
        fp4_linear((*device)->view(), dx.get(), batch, type, nullptr, dy.get(), nullptr, options)
            .ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<uint16_t> y2 = dy.download<uint16_t>(batch * n);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t j = 0; j < n; ++j) {
        const size_t i = b * n + j;
        if (b == 1 || b == 2) {
          ASSERT_TRUE(std::isnan(to_float(y2[i]))) << "batch row " << b << ", output " << j;
        } else {
          ASSERT_EQ(y2[i], y[i]) << "batch row " << b << ", output " << j;
        }
      }
    }
  }
}

// Every NVFP4 code under extreme block scales (zero, the smallest subnormal E4M3, 448, negative,
// NaN), read through the fused Linear one weight at a time: x is one-hot, so each output is
// a single dequantized weight and must equal the CPU's value rounded to the 16-bit type, bit
// for bit (NaN in a row with a NaN scale; +0 for -0). Every kernel and decoding path is checked.
TEST(Fp4GpuTest, FusedLinearReadsEveryCodeAndScaleExactly) {
  SKIP_WITHOUT_GPU();
  cpu::PackedWeight w;
  w.format = Format::kNvfp4;
  w.n = 48;  // a row group and a half: rows past n in the last group
  w.k = 256;
  w.tensor_scale = 0.375f;
  std::mt19937 rng(7);
  for (int64_t i = 0; i < w.n * w.k / 2; ++i) w.codes.push_back(static_cast<uint8_t>(rng()));
  const uint8_t special[] = {0x00, 0x01, 0x07, 0x08, 0x7E, 0xFE, 0x81, 0x38, 0x7F, 0x40};
  for (int64_t i = 0; i < w.n * (w.k / 16); ++i) {
    w.scales.push_back(i % 3 == 0 ? special[(i / 3) % 10] : static_cast<uint8_t>(rng() % 0x7F));
  }
  std::vector<float> deq(w.n * w.k);
  ASSERT_TRUE(cpu::dequantize(w, deq.data()).ok());
  // A NaN weight times a zero of x is NaN, so a row with a NaN block is NaN in every output.
  std::vector<bool> row_nan(w.n, false);
  for (int64_t i = 0; i < w.n * w.k; ++i) row_nan[i / w.k] = row_nan[i / w.k] || std::isnan(deq[i]);
  ASSERT_TRUE(std::count(row_nan.begin(), row_nan.end(), true) > 0);
  ASSERT_TRUE(std::count(row_nan.begin(), row_nan.end(), false) > 0);
  auto device = DeviceWeight::upload(w);
  ASSERT_TRUE(device.ok()) << device.status();
  struct Path {
    const char* name;
    int stages;
    bool bits;
    int direct;
    int rows_per_call;  // one-hot batch rows (the direct kernel takes at most 8)
    int integer = 0;
    int k_split = 0;
  };
  for (Activation type : {Activation::kBf16, Activation::kFp16}) {
    std::vector<Path> paths = {Path{"register kernel", 0, false, 0, 16},
                               Path{"staged, table", 2, false, 0, 16},
                               Path{"staged, bit decode", 2, true, 0, 16}};
    paths.push_back(Path{"integer, one row tile", -1, true, 0, 4, 1});
    paths.push_back(Path{"integer, two row tiles", -1, true, 0, 1, 1});
    if (type == Activation::kBf16) {
      paths.push_back(Path{"direct, one segment", -1, true, 1, 8});
      paths.push_back(Path{"direct, two segments", -1, true, 2, 4});
      paths.push_back(Path{"k split", -1, true, 0, 16, 0, 1});
    }
    for (const Path& path : paths) {
      LinearOptions options;
      options.pipeline_stages = path.stages;
      options.bit_decode = path.bits;
      options.direct = path.direct;
      options.integer = path.integer;
      options.k_split = path.k_split;
      if (path.integer == 1) options.row_tiles = path.rows_per_call == 1 ? 2 : 1;
      const int rows = path.rows_per_call;
      int64_t mismatches = 0;
      for (int64_t k0 = 0; k0 < w.k; k0 += rows) {  // `rows` one-hot rows a call
        std::vector<uint16_t> x(rows * w.k, 0);
        const uint16_t one = type == Activation::kBf16 ? cpu::float_to_bf16_bits(1.0f)
                                                       : cpu::float_to_fp16_bits(1.0f);
        for (int b = 0; b < rows; ++b) x[b * w.k + k0 + b] = one;
        Buffer dx(x.size() * 2), dy(rows * w.n * 2);
        dx.upload(x);
        dy.poison();
        const absl::Status status = fp4_linear((*device)->view(), dx.get(), rows, type, nullptr,
                                               dy.get(), nullptr, options);
        ASSERT_TRUE(status.ok()) << path.name << ": " << status;
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<uint16_t> y = dy.download<uint16_t>(rows * w.n);
        for (int b = 0; b < rows; ++b) {
          for (int64_t j = 0; j < w.n; ++j) {
            // A sum that starts from +0 cannot end at -0: a -0 weight reads as +0.
            const float weight = deq[j * w.k + k0 + b];
            const float expected = weight == 0.0f ? 0.0f : weight;
            const uint16_t got = y[b * w.n + j];
            const bool ok =
                row_nan[j] ? std::isnan(type == Activation::kBf16 ? cpu::bf16_bits_to_float(got)
                                                                  : cpu::fp16_bits_to_float(got))
                           : got == (type == Activation::kBf16 ? cpu::float_to_bf16_bits(expected)
                                                               : cpu::float_to_fp16_bits(expected));
            if (!ok && ++mismatches <= 5) {
              ADD_FAILURE() << path.name << (type == Activation::kBf16 ? " bf16" : " fp16")
                            << ": W[" << j << ", " << k0 + b << "] = " << expected
                            << " (scale byte 0x" << std::hex
                            << int{w.scales[j * (w.k / 16) + (k0 + b) / 16]} << std::dec
                            << "), kernel gave bits 0x" << std::hex << got << std::dec;
            }
          }
        }
      }
      EXPECT_EQ(mismatches, 0) << path.name;
    }
  }
}

// The option checks come before any CUDA call, so they run on machines without a GPU too (CI):
// every call here is refused by value, on a weight whose pointers are never dereferenced. With
// a GPU this test steps aside for FusedLinearRefusesBadArguments below, on real memory: a
// check that let a call through would otherwise launch a kernel on these placeholder pointers.
TEST(Fp4OptionsTest, RefusesBadOptionsWithoutAGpu) {
  if (visible_devices() > 0) GTEST_SKIP() << "a GPU is visible: FusedLinearRefusesBadArguments";
  const auto placeholder = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  DeviceWeightView nvfp4;
  nvfp4.format = Format::kNvfp4;
  nvfp4.n = 32;
  nvfp4.k = 256;
  nvfp4.codes = static_cast<const uint8_t*>(placeholder(0x10000));
  nvfp4.scales = placeholder(0x20000);
  DeviceWeightView nf4 = nvfp4;
  nf4.format = Format::kNf4;
  void* const x = placeholder(0x30000);
  void* const y = placeholder(0x40000);
  struct Case {
    const char* expected;  // in the message
    DeviceWeightView weight;
    int64_t batch;
    Activation type;
    LinearOptions options;
  };
  auto with = [](auto set) {
    LinearOptions options;
    set(options);
    return options;
  };
  const std::vector<Case> cases = {
      {"batch = 17", nvfp4, 17, Activation::kBf16, LinearOptions()},
      {"warps_per_block = 3", nvfp4, 1, Activation::kBf16,
       with([](LinearOptions& o) { o.warps_per_block = 3; })},
      {"direct = 3", nvfp4, 1, Activation::kBf16, with([](LinearOptions& o) { o.direct = 3; })},
      {"batch = 16", nvfp4, 16, Activation::kBf16, with([](LinearOptions& o) { o.direct = 1; })},
      {"pipeline_stages = 5", nvfp4, 1, Activation::kBf16, with([](LinearOptions& o) {
         o.direct = 1;
         o.pipeline_stages = 5;
       })},
      {"integer = 2", nvfp4, 1, Activation::kBf16, with([](LinearOptions& o) { o.integer = 2; })},
      {"choose one", nvfp4, 1, Activation::kBf16, with([](LinearOptions& o) {
         o.integer = 1;
         o.direct = 1;
       })},
      {"got nf4", nf4, 1, Activation::kBf16, with([](LinearOptions& o) { o.integer = 1; })},
      {"k_split = 2", nvfp4, 16, Activation::kBf16, with([](LinearOptions& o) { o.k_split = 2; })},
      {"k_split_chunk = 100", nvfp4, 16, Activation::kBf16,
       with([](LinearOptions& o) { o.k_split_chunk = 100; })},
      {"k_split_chunk = -128", nvfp4, 16, Activation::kBf16,
       with([](LinearOptions& o) { o.k_split_chunk = -128; })},
      {"k_split_chunk = 4096", nvfp4, 16, Activation::kBf16,
       with([](LinearOptions& o) { o.k_split_chunk = 4096; })},
      {"k_split_sum = 2", nvfp4, 16, Activation::kBf16,
       with([](LinearOptions& o) { o.k_split_sum = 2; })},
      {"got nf4 bf16", nf4, 16, Activation::kBf16, with([](LinearOptions& o) { o.k_split = 1; })},
      {"got nvfp4 fp16", nvfp4, 16, Activation::kFp16,
       with([](LinearOptions& o) { o.k_split = 1; })},
      {"choose one", nvfp4, 16, Activation::kBf16, with([](LinearOptions& o) {
         o.k_split = 1;
         o.integer = 1;
       })},
      {"row_tiles = 2", nvfp4, 16, Activation::kBf16, with([](LinearOptions& o) {
         o.k_split = 1;
         o.row_tiles = 2;
       })},
      {"pipeline_stages = 4", nvfp4, 16, Activation::kBf16, with([](LinearOptions& o) {
         o.k_split = 1;
         o.pipeline_stages = 4;
       })},
  };
  for (const Case& c : cases) {
    const absl::Status status =
        fp4_linear(c.weight, x, c.batch, c.type, nullptr, y, nullptr, c.options);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.expected << ": " << status;
    EXPECT_NE(status.message().find(c.expected), absl::string_view::npos)
        << c.expected << ": " << status;
  }
  // Misaligned x is refused by address.
  const absl::Status misaligned =
      fp4_linear(nvfp4, placeholder(0x30008), 1, Activation::kBf16, nullptr, y, nullptr);
  EXPECT_NE(misaligned.message().find("x at 0x30008"), absl::string_view::npos) << misaligned;
}

TEST(Fp4GpuTest, FusedLinearRefusesBadArguments) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> wf = gaussian(32 * 64, 5, 0.02f);
  auto q = cpu::quantize(wf.data(), 32, 64, Format::kNf4);
  ASSERT_TRUE(q.ok());
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok());
  Buffer x(17 * 64 * 2 + 16), y(17 * 32 * 2);
  const absl::Status big =
      fp4_linear((*device)->view(), x.get(), 17, Activation::kBf16, nullptr, y.get(), nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(big)) << big;
  EXPECT_NE(big.message().find("batch = 17"), absl::string_view::npos) << big;
  const absl::Status misaligned = fp4_linear((*device)->view(), static_cast<char*>(x.get()) + 2, 1,
                                             Activation::kBf16, nullptr, y.get(), nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(misaligned)) << misaligned;
  LinearOptions options;
  options.warps_per_block = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(fp4_linear((*device)->view(), x.get(), 1, Activation::kBf16,
                                                 nullptr, y.get(), nullptr, options)));
  // The staged kernel asked for where it cannot run (k = 64 is not a multiple of 128), and a
  // variant that is not built.
  options = LinearOptions();
  options.pipeline_stages = 4;
  const absl::Status short_k = fp4_linear((*device)->view(), x.get(), 1, Activation::kBf16, nullptr,
                                          y.get(), nullptr, options);
  EXPECT_TRUE(absl::IsInvalidArgument(short_k)) << short_k;
  EXPECT_NE(short_k.message().find("k = 64"), absl::string_view::npos) << short_k;
  const std::vector<float> wide = gaussian(32 * 128, 6, 0.02f);
  auto q128 = cpu::quantize(wide.data(), 32, 128, Format::kNvfp4);
  ASSERT_TRUE(q128.ok());
  auto device128 = DeviceWeight::upload(*q128);
  ASSERT_TRUE(device128.ok());
  Buffer x128(128 * 2), y128(32 * 2);
  options.pipeline_stages = 5;
  const absl::Status unbuilt = fp4_linear((*device128)->view(), x128.get(), 1, Activation::kBf16,
                                          nullptr, y128.get(), nullptr, options);
  EXPECT_TRUE(absl::IsInvalidArgument(unbuilt)) << unbuilt;
  EXPECT_NE(unbuilt.message().find("pipeline_stages = 5"), absl::string_view::npos) << unbuilt;
  // A variant whose stages do not fit a block's shared memory.
  Buffer x16(16 * 128 * 2), y16(16 * 32 * 2);
  options.pipeline_stages = 2;
  options.row_tiles = 2;
  options.warps_per_block = 16;
  const absl::Status too_big = fp4_linear((*device128)->view(), x16.get(), 16, Activation::kBf16,
                                          nullptr, y16.get(), nullptr, options);
  EXPECT_TRUE(absl::IsInvalidArgument(too_big)) << too_big;
  EXPECT_NE(too_big.message().find("bytes of shared memory"), absl::string_view::npos) << too_big;
  // The direct kernel where it cannot run (NF4; fp16; 16 rows), asked for with a copy ring or
  // another warp count, an unbuilt row tile, and a bad value of the option.
  auto direct_call = [&](const DeviceWeight& weight, const void* x_ptr, int64_t batch,
                         Activation type, void* y_ptr, const LinearOptions& o) {
    return fp4_linear(weight.view(), x_ptr, batch, type, nullptr, y_ptr, nullptr, o);
  };
  LinearOptions direct;
  direct.direct = 1;
  const absl::Status nf4 = direct_call(**device, x.get(), 1, Activation::kBf16, y.get(), direct);
  EXPECT_TRUE(absl::IsInvalidArgument(nf4)) << nf4;
  EXPECT_NE(nf4.message().find("got nf4 bf16"), absl::string_view::npos) << nf4;
  const absl::Status fp16 =
      direct_call(**device128, x128.get(), 1, Activation::kFp16, y128.get(), direct);
  EXPECT_NE(fp16.message().find("got nvfp4 fp16"), absl::string_view::npos) << fp16;
  const absl::Status sixteen =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), direct);
  EXPECT_NE(sixteen.message().find("batch = 16"), absl::string_view::npos) << sixteen;
  direct.pipeline_stages = 5;
  const absl::Status deep =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), direct);
  EXPECT_NE(deep.message().find("pipeline_stages = 5"), absl::string_view::npos) << deep;
  direct.pipeline_stages = -1;
  direct.warps_per_block = 4;
  const absl::Status warps =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), direct);
  EXPECT_NE(warps.message().find("warps_per_block = 4"), absl::string_view::npos) << warps;
  direct.warps_per_block = 0;
  direct.row_tiles = 3;
  const absl::Status tiles =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), direct);
  EXPECT_NE(tiles.message().find("row_tiles = 3"), absl::string_view::npos) << tiles;
  direct.row_tiles = 0;
  direct.direct = 3;
  const absl::Status bad =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), direct);
  EXPECT_NE(bad.message().find("direct = 3"), absl::string_view::npos) << bad;
  // Two segments need k a multiple of 256 and at most 4 batch rows.
  direct.direct = 2;
  const absl::Status narrow =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), direct);
  EXPECT_NE(narrow.message().find("k a multiple of 256"), absl::string_view::npos) << narrow;
  EXPECT_NE(narrow.message().find("k = 128"), absl::string_view::npos) << narrow;
  // The integer kernel where it cannot run (NF4; 16 rows), with another kernel asked for too, an
  // unbuilt row tile, and a bad value of the option.
  LinearOptions integer;
  integer.integer = 1;
  const absl::Status int_nf4 =
      direct_call(**device, x.get(), 1, Activation::kBf16, y.get(), integer);
  EXPECT_NE(int_nf4.message().find("got nf4"), absl::string_view::npos) << int_nf4;
  const absl::Status int_sixteen =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), integer);
  EXPECT_NE(int_sixteen.message().find("batch = 16"), absl::string_view::npos) << int_sixteen;
  integer.direct = 1;
  const absl::Status int_both =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), integer);
  EXPECT_NE(int_both.message().find("choose one"), absl::string_view::npos) << int_both;
  integer.direct = -1;
  integer.row_tiles = 2;
  const absl::Status int_tiles =
      direct_call(**device128, x16.get(), 2, Activation::kBf16, y16.get(), integer);
  EXPECT_NE(int_tiles.message().find("row_tiles = 2"), absl::string_view::npos) << int_tiles;
  integer.row_tiles = 0;
  integer.integer = 2;
  const absl::Status int_bad =
      direct_call(**device128, x128.get(), 1, Activation::kBf16, y128.get(), integer);
  EXPECT_NE(int_bad.message().find("integer = 2"), absl::string_view::npos) << int_bad;
  // The k-split kernel where it cannot run (NF4; fp16), with another kernel asked for too, an
  // unbuilt depth or row tile, and a bad value of the option.
  LinearOptions k_split;
  k_split.k_split = 1;
  const absl::Status ks_nf4 =
      direct_call(**device, x.get(), 16, Activation::kBf16, y.get(), k_split);
  EXPECT_NE(ks_nf4.message().find("got nf4 bf16"), absl::string_view::npos) << ks_nf4;
  const absl::Status ks_fp16 =
      direct_call(**device128, x16.get(), 16, Activation::kFp16, y16.get(), k_split);
  EXPECT_NE(ks_fp16.message().find("got nvfp4 fp16"), absl::string_view::npos) << ks_fp16;
  k_split.integer = 1;
  const absl::Status ks_both =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
  EXPECT_NE(ks_both.message().find("choose one"), absl::string_view::npos) << ks_both;
  k_split.integer = -1;
  k_split.pipeline_stages = 4;
  const absl::Status ks_deep =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
  EXPECT_NE(ks_deep.message().find("pipeline_stages = 4"), absl::string_view::npos) << ks_deep;
  k_split.pipeline_stages = -1;
  k_split.row_tiles = 2;
  const absl::Status ks_tiles =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
  EXPECT_NE(ks_tiles.message().find("row_tiles = 2"), absl::string_view::npos) << ks_tiles;
  k_split.row_tiles = 0;
  k_split.k_split = 2;
  const absl::Status ks_bad =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
  EXPECT_NE(ks_bad.message().find("k_split = 2"), absl::string_view::npos) << ks_bad;
  k_split.k_split = 1;
  for (int chunk : {-128, 100, 4096}) {
    k_split.k_split_chunk = chunk;
    const absl::Status ks_chunk =
        direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
    EXPECT_NE(ks_chunk.message().find("k_split_chunk = " + std::to_string(chunk)),
              absl::string_view::npos)
        << ks_chunk;
  }
  k_split.k_split_chunk = 0;
  k_split.k_split_sum = 2;
  const absl::Status ks_sum =
      direct_call(**device128, x16.get(), 16, Activation::kBf16, y16.get(), k_split);
  EXPECT_NE(ks_sum.message().find("k_split_sum = 2"), absl::string_view::npos) << ks_sum;
}

// The two ways of adding the k-split kernel's chunks give the same bits: both add the chunks'
// float sums in chunk order. And the cluster sum refuses more chunks than a cluster takes.
TEST(Fp4GpuTest, KSplitSumsAgreeBitForBit) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t n, k, batch;
    int max_blocks;
  };
  unsigned seed = 900;
  for (const Shape& s :
       std::vector<Shape>{{4099, 8192, 16, 0}, {200, 4224, 9, 0}, {1000, 1024, 13, 5}}) {
    const std::vector<float> wf = gaussian(s.n * s.k, seed++, 0.02f);
    auto q = cpu::quantize(wf.data(), s.n, s.k, Format::kNvfp4);
    ASSERT_TRUE(q.ok()) << q.status();
    auto device = DeviceWeight::upload(*q);
    ASSERT_TRUE(device.ok()) << device.status();
    std::vector<uint16_t> x, bias;
    for (float v : gaussian(s.batch * s.k, seed++, 1.0f)) x.push_back(cpu::float_to_bf16_bits(v));
    for (float v : gaussian(s.n, seed++, 0.1f)) bias.push_back(cpu::float_to_bf16_bits(v));
    Buffer dx(x.size() * 2), dbias(s.n * 2), dy(s.batch * s.n * 2);
    dx.upload(x);
    dbias.upload(bias);
    std::vector<std::vector<uint16_t>> outputs;
    for (int sum : {0, 1}) {
      LinearOptions options;
      options.k_split = 1;
      options.k_split_sum = sum;
      options.max_blocks = s.max_blocks;
      dy.poison();
      const absl::Status status =
          fp4_linear((*device)->view(), dx.get(), s.batch, Activation::kBf16, dbias.get(), dy.get(),
                     nullptr, options);
      ASSERT_TRUE(status.ok()) << "k_split_sum = " << sum << ": " << status;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      outputs.push_back(dy.download<uint16_t>(s.batch * s.n));
    }
    int64_t differ = 0;
    for (size_t i = 0; i < outputs[0].size(); ++i) differ += outputs[0][i] != outputs[1][i];
    EXPECT_EQ(differ, 0) << "n=" << s.n << " k=" << s.k << " batch=" << s.batch;
  }
  // k = 8192 in chunks of 512 is 16 chunks: the cluster sum refuses, the default falls back.
  const std::vector<float> wf = gaussian(64 * 8192, seed++, 0.02f);
  auto q = cpu::quantize(wf.data(), 64, 8192, Format::kNvfp4);
  ASSERT_TRUE(q.ok()) << q.status();
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok()) << device.status();
  Buffer dx(16 * 8192 * 2), dy(16 * 64 * 2);
  dx.upload(std::vector<uint16_t>(16 * 8192, cpu::float_to_bf16_bits(0.5f)));
  LinearOptions options;
  options.k_split = 1;
  options.k_split_chunk = 512;
  options.k_split_sum = 1;
  const absl::Status refused = fp4_linear((*device)->view(), dx.get(), 16, Activation::kBf16,
                                          nullptr, dy.get(), nullptr, options);
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  EXPECT_NE(refused.message().find("at most 8 chunks"), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("got 16"), absl::string_view::npos) << refused;
  options.k_split_sum = -1;
  EXPECT_TRUE(fp4_linear((*device)->view(), dx.get(), 16, Activation::kBf16, nullptr, dy.get(),
                         nullptr, options)
                  .ok());
}

// fp4_gemm runs only on compute capability 9.0 (it is built for sm_90a).
bool hopper_visible() {
  int major = 0, minor = 0;
  return visible_devices() > 0 &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess &&
         major == 9 && minor == 0;
}

// fp4_gemm on weights of `format` quantized from Gaussians whose rows span `decades` powers
// of ten (the small rows' NVFP4 block scales reach E4M3's subnormals), against float64;
// run twice, the two results must agree bit for bit (blocks sharing a tile add their sums in a
// fixed order).
void check_gemm(int64_t n, int64_t k, int64_t batch, bool with_bias, int decades, unsigned seed,
                GemmOptions options = {}, int64_t y_offset = 0, Format format = Format::kNvfp4) {
  const std::string label =
      "fp4_gemm " + std::string(cpu::format_name(format)) + " n=" + std::to_string(n) +
      " k=" + std::to_string(k) + " batch=" + std::to_string(batch) + (with_bias ? " +bias" : "") +
      " rows over " + std::to_string(decades) + " decades, batch_tile " +
      std::to_string(options.batch_tile) + ", blocks_per_sm " +
      std::to_string(options.blocks_per_sm) + ", max_blocks " + std::to_string(options.max_blocks) +
      (options.l2_hints ? "" : ", no L2 hints") +
      (options.word_stores ? "" : ", one bf16 a store") +
      (y_offset == 0 ? "" : ", y " + std::to_string(2 * y_offset) + " bytes into its buffer");
  std::vector<float> wf = gaussian(n * k, seed, 0.02f);
  for (int64_t j = 0; j < n; ++j) {
    const float row_scale = std::pow(10.0f, -static_cast<float>(j % decades));
    for (int64_t i = 0; i < k; ++i) wf[j * k + i] *= row_scale;
  }
  auto q = cpu::quantize(wf.data(), n, k, format);
  ASSERT_TRUE(q.ok()) << q.status();
  std::vector<uint16_t> x, bias;
  for (float v : gaussian(batch * k, seed + 1, 1.0f)) x.push_back(cpu::float_to_bf16_bits(v));
  if (with_bias) {
    for (float v : gaussian(n, seed + 2, 0.1f)) bias.push_back(cpu::float_to_bf16_bits(v));
  }
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok()) << device.status();
  ASSERT_TRUE(fp4_gemm_supported((*device)->view(), batch, Activation::kBf16).ok()) << label;
  Buffer dx(x.size() * 2), dbias(n * 2), dy((y_offset + batch * n) * 2);
  dx.upload(x);
  if (with_bias) dbias.upload(bias);
  const std::vector<double> ref = reference(x, batch, *q, bias, Activation::kBf16);
  std::vector<uint16_t> first;
  for (int run = 0; run < 2; ++run) {
    dy.poison();
    const absl::Status status = fp4_gemm(
        (*device)->view(), dx.get(), batch, Activation::kBf16, with_bias ? dbias.get() : nullptr,
        static_cast<uint16_t*>(dy.get()) + y_offset, nullptr, options);
    ASSERT_TRUE(status.ok()) << label << ": " << status;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << label;
    std::vector<uint16_t> y = dy.download<uint16_t>(y_offset + batch * n);
    for (int64_t i = 0; i < y_offset; ++i) {
      ASSERT_EQ(y[i], 0xFFFF) << label << ": written before y";
    }
    y.erase(y.begin(), y.begin() + y_offset);
    const double error = checked_error(y, ref, Activation::kBf16, label);
    EXPECT_LT(error, 1e-2) << label;
    if (run == 0) {
      std::printf("GPU %s: relative error %.2e\n", label.c_str(), error);
      first = y;
    } else {
      EXPECT_TRUE(y == first) << label << ": two runs differ";
    }
  }
}

TEST(Fp4GpuTest, GemmMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  if (!hopper_visible()) GTEST_SKIP() << "fp4_gemm needs a compute capability 9.0 GPU";
  unsigned seed = 300;
  check_gemm(256, 256, 17, true, 1, seed++);     // the smallest k, batch just past fp4_linear
  check_gemm(300, 512, 40, false, 8, seed++);    // n not a multiple of 128: rows read as zero
  check_gemm(301, 256, 33, true, 2, seed++);     // odd n: outputs stored one bf16 at a time
  check_gemm(1000, 1024, 300, true, 4, seed++);  // two 256-row batch tiles, the last partial
  // 132 row blocks x 2 batch tiles: a whole number of tiles for each block of an H200.
  check_gemm(128 * 132, 256, 257, true, 2, seed++);
  // Every batch tile on one shape, and copies without L2 hints.
  for (int tile : {64, 128, 256}) {
    GemmOptions options;
    options.batch_tile = tile;
    options.blocks_per_sm = 1;
    check_gemm(384, 1024, 100, true, 3, seed++, options);
  }
  // The tiles built for two blocks an SM, with batches that fill a tile, part of one, and
  // more than one; odd n takes the one-bf16 stores.
  for (const auto& [tile, batch] : std::vector<std::pair<int, int>>{
           {16, 1}, {16, 5}, {16, 16}, {16, 40}, {32, 17}, {32, 32}, {64, 33}, {64, 100}}) {
    GemmOptions options;
    options.batch_tile = tile;
    options.blocks_per_sm = 2;
    check_gemm(384, 1024, batch, true, 3, seed++, options);
    check_gemm(301, 512, batch, false, 2, seed++, options);
  }
  GemmOptions no_hints;
  no_hints.l2_hints = false;
  check_gemm(1000, 1024, 300, true, 4, seed++, no_hints);
  // y one bf16 at a time where it could take 8-byte words (odd n above takes it anyway).
  GemmOptions bf16_stores;
  bf16_stores.word_stores = false;
  check_gemm(1000, 1024, 300, true, 4, seed++, bf16_stores);
  // y 2 bytes past an 8-byte boundary: no 8-byte stores, whatever n.
  check_gemm(1000, 1024, 300, true, 4, seed++, GemmOptions{}, 1);
}

// MXFP4 (its scales: one E8M0 byte for a lane's 32 k, a box of 4 steps), NF4 and bnb_fp4
// (a float32 absmax for 64 k, values from a table) through every batch tile, the smallest k
// each takes, odd n, and tiles shared between blocks.
TEST(Fp4GpuTest, GemmOtherFormatsMatchFloat64) {
  SKIP_WITHOUT_GPU();
  if (!hopper_visible()) GTEST_SKIP() << "fp4_gemm needs a compute capability 9.0 GPU";
  unsigned seed = 500;
  for (Format format : {Format::kMxfp4, Format::kNf4, Format::kBnbFp4}) {
    for (const auto& [tile, per_sm, batch] : std::vector<std::tuple<int, int, int>>{
             {16, 2, 5}, {32, 2, 20}, {64, 2, 50}, {64, 1, 100}, {128, 1, 130}, {256, 1, 300}}) {
      GemmOptions options;
      options.batch_tile = tile;
      options.blocks_per_sm = per_sm;
      check_gemm(384, 1024, batch, true, 3, seed++, options, 0, format);
    }
    const int64_t smallest_k = format == Format::kMxfp4 ? 512 : 256;
    check_gemm(256, smallest_k, 17, true, 2, seed++, GemmOptions{}, 0, format);
    check_gemm(301, 3 * smallest_k, 33, false, 4, seed++, GemmOptions{}, 0, format);
    for (int blocks : {7, 13}) {
      GemmOptions options;
      options.batch_tile = 64;
      options.max_blocks = blocks;
      check_gemm(300, 1024, 70, true, 2, seed++, options, 0, format);
    }
  }
}

// MXFP4's E8M0 scales span 2^-127 .. 2^127, beyond what one bf16 multiplier can carry: rows
// 2^-100 .. 2^100 in size, each checked on its own against float64. A NaN scale (0xFF) makes
// its row NaN and leaves the other rows as they were.
TEST(Fp4GpuTest, GemmMxfp4ScalesOverTheirWholeRange) {
  SKIP_WITHOUT_GPU();
  if (!hopper_visible()) GTEST_SKIP() << "fp4_gemm needs a compute capability 9.0 GPU";
  const int64_t n = 300, k = 1024, batch = 40, nan_row = 7;
  const int exponents[] = {-100, -50, 0, 50, 100};
  std::vector<float> wf = gaussian(n * k, 600, 0.02f);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < k; ++i) wf[j * k + i] = std::ldexp(wf[j * k + i], exponents[j % 5]);
  }
  auto q = cpu::quantize(wf.data(), n, k, Format::kMxfp4);
  ASSERT_TRUE(q.ok()) << q.status();
  q->scales[nan_row * (k / 32) + 3] = 0xFF;
  std::vector<uint16_t> x;
  for (float v : gaussian(batch * k, 601, 1.0f)) x.push_back(cpu::float_to_bf16_bits(v));
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok()) << device.status();
  Buffer dx(x.size() * 2), dy(batch * n * 2);
  dx.upload(x);
  dy.upload(std::vector<uint16_t>(batch * n, 0));  // not NaN: a NaN output was written
  const std::vector<double> ref = reference(x, batch, *q, {}, Activation::kBf16);
  ASSERT_TRUE(
      fp4_gemm((*device)->view(), dx.get(), batch, Activation::kBf16, nullptr, dy.get(), nullptr)
          .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> y = dy.download<uint16_t>(batch * n);
  for (int64_t j = 0; j < n; ++j) {
    double num = 0, den = 0;
    int64_t nans = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const double v = cpu::bf16_bits_to_float(y[b * n + j]), r = ref[b * n + j];
      if (std::isnan(v)) {
        ++nans;
        continue;
      }
      num += (v - r) * (v - r);
      den += r * r;
    }
    if (j == nan_row) {
      EXPECT_EQ(nans, batch) << "row " << j << " has a NaN block scale";
      continue;
    }
    ASSERT_EQ(nans, 0) << "row " << j;
    ASSERT_GT(den, 0.0) << "row " << j;
    EXPECT_LT(std::sqrt(num / den), 1e-2)
        << "row " << j << " (weights of size 2^" << exponents[j % 5] << ")";
  }
}

// Grids that share tiles between blocks (stream-K) on 3 x 2 tiles of 8 steps: every tile
// whole (1 block; 2: three waves), whole waves then tiles shared (4, 5), every tile shared and
// runs that start and end inside one tile (7, 13, 47); then tiles of 2 steps.
TEST(Fp4GpuTest, GemmBlocksShareTilesExactly) {
  SKIP_WITHOUT_GPU();
  if (!hopper_visible()) GTEST_SKIP() << "fp4_gemm needs a compute capability 9.0 GPU";
  unsigned seed = 400;
  for (int blocks : {1, 2, 4, 5, 7, 13, 47}) {
    GemmOptions options;
    options.batch_tile = 64;
    options.max_blocks = blocks;
    check_gemm(300, 1024, 70, true, 2, seed++, options);
    // The same at two blocks an SM, tiles of 16 rows: 3 x 5 tiles.
    options.batch_tile = 16;
    options.blocks_per_sm = 2;
    check_gemm(300, 1024, 70, true, 2, seed++, options);
  }
  // k = 256: 6 tiles of 2 steps. 5 blocks would leave 2 shared steps for 5 blocks, so fewer
  // blocks run; 4 blocks share 4 steps, one each.
  for (int blocks : {4, 5}) {
    GemmOptions options;
    options.batch_tile = 64;
    options.max_blocks = blocks;
    check_gemm(300, 256, 70, false, 2, seed++, options);
  }
}

// fp4_gemm's value checks come before any CUDA call: they run without a GPU too (CI), on a
// weight whose placeholder pointers are never dereferenced.
TEST(Fp4OptionsTest, GemmRefusesWhatItCannotRun) {
  const auto placeholder = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  DeviceWeightView nvfp4;
  nvfp4.format = Format::kNvfp4;
  nvfp4.n = 64;
  nvfp4.k = 512;
  nvfp4.codes = static_cast<const uint8_t*>(placeholder(0x10000));
  nvfp4.scales = placeholder(0x20000);
  struct Case {
    const char* expected;  // in the message
    DeviceWeightView weight;
    int64_t batch;
    Activation type;
  };
  DeviceWeightView mxfp4_k = nvfp4, short_k = nvfp4, odd_k = nvfp4, loose_codes = nvfp4,
                   loose_scales = nvfp4;
  mxfp4_k.format = Format::kMxfp4;
  mxfp4_k.k = 768;
  short_k.k = 128;
  odd_k.k = 768 + 128;
  loose_codes.codes += 8;
  loose_scales.scales = placeholder(0x20004);
  const std::vector<Case> cases = {
      {"k = 768: expected a positive multiple of 512 for mxfp4", mxfp4_k, 32, Activation::kBf16},
      {"fp16 activations: expected bf16", nvfp4, 32, Activation::kFp16},
      {"k = 128: expected a positive multiple of 256", short_k, 32, Activation::kBf16},
      {"k = 896: expected a positive multiple of 256", odd_k, 32, Activation::kBf16},
      {"batch 0: expected 1..", nvfp4, 0, Activation::kBf16},
      {"weight codes at 0x10008: expected 16-byte alignment", loose_codes, 32, Activation::kBf16},
      {"weight scales at 0x20004: expected 16-byte alignment", loose_scales, 32, Activation::kBf16},
  };
  for (const Case& c : cases) {
    const absl::Status supported = fp4_gemm_supported(c.weight, c.batch, c.type);
    EXPECT_TRUE(absl::IsInvalidArgument(supported)) << c.expected << ": " << supported;
    EXPECT_NE(supported.message().find(c.expected), absl::string_view::npos)
        << c.expected << ": " << supported;
    // fp4_gemm refuses the same way, before touching x or y.
    const absl::Status run = fp4_gemm(c.weight, placeholder(0x30000), c.batch, c.type, nullptr,
                                      placeholder(0x40000), nullptr);
    EXPECT_EQ(run, supported);
  }
  // Bad options, on a weight fp4_gemm takes.
  const auto with = [](int batch_tile, int blocks_per_sm, int max_blocks) {
    GemmOptions options;
    options.batch_tile = batch_tile;
    options.blocks_per_sm = blocks_per_sm;
    options.max_blocks = max_blocks;
    return options;
  };
  for (const auto& [options, expected] : std::vector<std::pair<GemmOptions, const char*>>{
           {with(96, 0, 0), "batch_tile = 96: expected 0 (chosen), 16, 32, 64, 128 or 256"},
           {with(0, 0, -1), "max_blocks = -1: expected 0 (chosen) or more"},
           {with(0, 3, 0), "blocks_per_sm = 3: expected 0 (chosen), 1 or 2"},
           {with(128, 2, 0), "batch_tile = 128 with blocks_per_sm = 2: expected tiles of 16"},
           {with(16, 1, 0), "batch_tile = 16 with blocks_per_sm = 1: expected"}}) {
    if (!hopper_visible()) break;  // the weight is refused first (no GPU, or not Hopper)
    const absl::Status run = fp4_gemm(nvfp4, placeholder(0x30000), 32, Activation::kBf16, nullptr,
                                      placeholder(0x40000), nullptr, options);
    EXPECT_TRUE(absl::IsInvalidArgument(run)) << expected << ": " << run;
    EXPECT_NE(run.message().find(expected), absl::string_view::npos) << expected << ": " << run;
  }
  if (!hopper_visible()) {  // the device check: no GPU, or not Hopper
    EXPECT_FALSE(fp4_gemm_supported(nvfp4, 32, Activation::kBf16).ok());
  }
}

TEST(Fp4GpuTest, GemmRefusesMisalignedX) {
  SKIP_WITHOUT_GPU();
  if (!hopper_visible()) GTEST_SKIP() << "fp4_gemm needs a compute capability 9.0 GPU";
  const std::vector<float> wf = gaussian(128 * 256, 7, 0.02f);
  auto q = cpu::quantize(wf.data(), 128, 256, Format::kNvfp4);
  ASSERT_TRUE(q.ok());
  auto device = DeviceWeight::upload(*q);
  ASSERT_TRUE(device.ok());
  Buffer x(32 * 256 * 2 + 16), y(32 * 128 * 2);
  char* const shifted = static_cast<char*>(x.get()) + 8;
  const absl::Status misaligned =
      fp4_gemm((*device)->view(), shifted, 32, Activation::kBf16, nullptr, y.get(), nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(misaligned)) << misaligned;
  EXPECT_NE(misaligned.message().find("x at 0x"), absl::string_view::npos) << misaligned;
  EXPECT_NE(misaligned.message().find("expected 16-byte alignment"), absl::string_view::npos)
      << misaligned;
}

}  // namespace
}  // namespace vb::backends::cuda::fp4
