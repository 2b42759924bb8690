// A vbd built with CUDA, in its own process on loopback, against CPU references: the three
// sizes of the first benchmark in float32 (TF32 off) and bfloat16, sixteen concurrent
// clients, and an allocation far past the card's memory. Skipped without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>

#include "backends/cuda/copy_engine.h"
#include "client/daemon_client.h"
#include "client/fp4_linear.h"
#include "client/remote_linear.h"
#include "common/digest.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

#define SKIP_WITHOUT_GPU()                    \
  if (backends::cuda::visible_devices() == 0) \
  GTEST_SKIP() << "no CUDA device visible: GPU test skipped"

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

class CudaDaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (backends::cuda::visible_devices() > 0) daemon_ = new DaemonProcess();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  std::shared_ptr<Router> remote_only() {
    ClientOptions options;
    options.call_timeout = std::chrono::minutes(5);
    return *Router::create({daemon_->address()}, options);
  }
  static DaemonProcess* daemon_;
};
DaemonProcess* CudaDaemonTest::daemon_ = nullptr;

TEST_F(CudaDaemonTest, GetInfoListsEachGpu) {
  SKIP_WITHOUT_GPU();
  DaemonClient client(daemon_->address());
  absl::StatusOr<v1::GetInfoResponse> info = client.get_info();
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->devices_size(), backends::cuda::visible_devices());
  for (const v1::DeviceInfo& device : info->devices()) {
    EXPECT_EQ(device.kind(), "cuda");
    EXPECT_EQ(device.platform(), "CUDA");
    EXPECT_FALSE(device.name().empty());
    EXPECT_FALSE(device.compute_capability().empty());
    EXPECT_GT(device.total_memory_bytes(), 0u);
    EXPECT_GT(device.free_memory_bytes(), 0u);
    EXPECT_FALSE(device.driver_version().empty());
    EXPECT_FALSE(device.runtime_version().empty());
    std::printf("GPU %d: %s, sm %s, %.1f GiB, driver %s, runtime %s\n", device.index(),
                device.name().c_str(), device.compute_capability().c_str(),
                device.total_memory_bytes() / 1073741824.0, device.driver_version().c_str(),
                device.runtime_version().c_str());
  }
}

struct Size {
  int64_t batch, in, out;
};

// Forward and backward through the daemon against float64 on the CPU, on fresh inputs.
void check_size(const std::shared_ptr<Router>& router, const Size& s, at::ScalarType dtype,
                double tolerance) {
  nn::RemoteLinear layer(nn::RemoteLinearOptions(s.in, s.out), router);
  layer->to(dtype);
  const at::Tensor x = torch::randn({s.batch, s.in}).to(dtype).requires_grad_(true);
  const at::Tensor y = layer->forward(x);
  const at::Tensor grad = torch::randn({s.batch, s.out}).to(dtype);
  y.backward(grad);

  const at::Tensor x64 = x.detach().to(at::kDouble);
  const at::Tensor w64 = layer->weight.detach().to(at::kDouble);
  const at::Tensor b64 = layer->bias.detach().to(at::kDouble);
  const at::Tensor g64 = grad.to(at::kDouble);
  const std::string label = std::to_string(s.batch) + "x" + std::to_string(s.in) + " by " +
                            std::to_string(s.out) + "x" + std::to_string(s.in) + " " +
                            std::string(c10::toString(dtype));
  const double e_out = relative_error(y, x64.mm(w64.t()) + b64);
  const double e_gin = relative_error(x.grad(), g64.mm(w64));
  const double e_gw = relative_error(layer->weight.grad(), g64.t().mm(x64));
  const double e_gb = relative_error(layer->bias.grad(), g64.sum(0));
  std::printf("%-32s output %.2e grad_input %.2e grad_weight %.2e grad_bias %.2e\n", label.c_str(),
              e_out, e_gin, e_gw, e_gb);
  EXPECT_LT(e_out, tolerance) << label;
  EXPECT_LT(e_gin, tolerance) << label;
  EXPECT_LT(e_gw, tolerance) << label;
  EXPECT_LT(e_gb, tolerance) << label;
  EXPECT_EQ(layer->get_stats().remote_calls(), 2u);
}

TEST_F(CudaDaemonTest, Float32MatchesCpuWithTf32Off) {
  SKIP_WITHOUT_GPU();
  auto router = remote_only();
  for (const Size& s : {Size{1, 768, 768}, Size{64, 4096, 4096}, Size{4096, 4096, 4096}}) {
    check_size(router, s, at::kFloat, 1e-5);
  }
}

TEST_F(CudaDaemonTest, BFloat16WithinOnePercent) {
  SKIP_WITHOUT_GPU();
  auto router = remote_only();
  for (const Size& s : {Size{1, 768, 768}, Size{64, 4096, 4096}, Size{4096, 4096, 4096}}) {
    check_size(router, s, at::kBFloat16, 1e-2);
  }
}

// A 4-bit Linear of every format on the daemon's GPU in bf16 at batches on both sides of 16
// (the fused kernels; above 16 fp4_gemm on Hopper, else dequantize + GEMM), with the rows in a
// 3-D input, against float64 on the layer's own dequantized weight.
TEST_F(CudaDaemonTest, Fp4LinearMatchesFloat64AtEveryBatch) {
  SKIP_WITHOUT_GPU();
  torch::NoGradGuard no_grad;
  for (const char* format : {"nvfp4", "mxfp4", "nf4", "bnb_fp4"}) {
    nn::FP4Linear layer(nn::FP4LinearOptions(1024, 384).format(format), remote_only());
    const at::Tensor w64 = layer->dequantized_weight().to(at::kDouble);
    const at::Tensor b64 = layer->bias.to(at::kDouble);
    uint64_t calls = 0;
    for (int64_t rows : {5, 40, 300}) {
      const at::Tensor x = torch::randn({2, rows / 2 + rows % 2, 1024}).to(at::kBFloat16);
      const at::Tensor y = layer(x);
      ASSERT_EQ(y.scalar_type(), at::kBFloat16);
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, rows / 2 + rows % 2, 384}));
      const at::Tensor ref = at::linear(x.to(at::kDouble), w64, b64);
      const double error = relative_error(y, ref);
      std::printf("fp4 %s bf16 %ld rows on vbd: relative error %.2e\n", format,
                  static_cast<long>(x.numel() / 1024), error);
      EXPECT_LT(error, 1e-2) << format << ", " << rows << " rows";
      EXPECT_EQ(layer->get_stats().remote_calls(), ++calls)
          << format << ": not served by the daemon";
    }
  }
}

TEST_F(CudaDaemonTest, SixteenConcurrentClientsEachGetTheirOwnAnswer) {
  SKIP_WITHOUT_GPU();
  constexpr int kClients = 16;
  std::vector<std::string> failures(kClients);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      DaemonClient client(daemon_->address());
      at::Generator gen = at::detail::createCPUGenerator(1000 + c);
      for (int round = 0; round < 5; ++round) {
        const at::Tensor w = at::randn({512 + 16 * c, 1024}, gen);
        const at::Tensor x = at::randn({64, 1024}, gen);
        const WeightRef ref{sha256_hex(w.data_ptr(), w.numel() * 4), w};
        TransferCount transfer;
        absl::StatusOr<v1::UploadWeightResponse> up = client.upload_weight(ref, &transfer);
        absl::StatusOr<at::Tensor> y = client.linear_forward(x, ref, {}, &transfer);
        if (!up.ok() || !y.ok()) {
          failures[c] = (up.ok() ? y.status() : up.status()).ToString();
          return;
        }
        const double error = relative_error(*y, x.to(at::kDouble).mm(w.to(at::kDouble).t()));
        if (!(error < 1e-5)) failures[c] = "wrong answer, relative error " + std::to_string(error);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(failures[c], "") << "client " << c;
}

TEST_F(CudaDaemonTest, AllocationFarPastTheCardIsResourceExhaustedAndTheNextCallWorks) {
  SKIP_WITHOUT_GPU();
  DaemonClient client(daemon_->address());
  // Output [2^18, 2^19] bfloat16 = 512 GiB, far past any card; the inputs are small.
  const at::Tensor w = torch::randn({int64_t{1} << 19, 1}).to(at::kBFloat16);
  const at::Tensor x = torch::randn({int64_t{1} << 18, 1}).to(at::kBFloat16);
  const WeightRef ref{sha256_hex(w.data_ptr(), w.numel() * 2), w};
  TransferCount transfer;
  ASSERT_TRUE(client.upload_weight(ref, &transfer).ok());
  absl::StatusOr<at::Tensor> huge = client.linear_forward(x, ref, {}, &transfer);
  ASSERT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  EXPECT_THAT(std::string(huge.status().message()), ::testing::HasSubstr("GiB"));
  std::printf("out-of-memory answer: %s\n", huge.status().ToString().c_str());

  const at::Tensor small_w = torch::randn({256, 128});
  const at::Tensor small_x = torch::randn({8, 128});
  const WeightRef small{sha256_hex(small_w.data_ptr(), small_w.numel() * 4), small_w};
  ASSERT_TRUE(client.upload_weight(small, &transfer).ok());
  absl::StatusOr<at::Tensor> y = client.linear_forward(small_x, small, {}, &transfer);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_LT(relative_error(*y, small_x.to(at::kDouble).mm(small_w.to(at::kDouble).t())), 1e-5);
}

}  // namespace
}  // namespace vb::testing
