// RemoteLinear through a real vbd against torch::nn::Linear on the same weights and inputs.
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include "client/daemon_client.h"
#include "client/remote_linear.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

class RemoteLinearTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { daemon_ = new DaemonProcess(); }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  // Only the daemon: a call that did not run there fails the test instead of falling back.
  std::shared_ptr<Router> remote_only() { return make_router({daemon_->address()}); }

  static DaemonProcess* daemon_;
};
DaemonProcess* RemoteLinearTest::daemon_ = nullptr;

struct Case {
  std::vector<int64_t> input_shape;
  int64_t out_features;
  bool bias;
  at::ScalarType dtype;
  // Forward and backward are computed in float32 and rounded once to the dtype; the
  // reference is float32 nn::Linear on the same (rounded) values, so the error is the
  // output's rounding: 2^-8 relative for bfloat16, 2^-11 for float16, 1e-5 allows float32's
  // summation-order differences.
  double tolerance;
};

void check_against_linear(const Case& c, std::shared_ptr<Router> router) {
  const int64_t in_features = c.input_shape.back();
  // The half types are checked against float32 (LibTorch 1.13 has no float16 Linear on CPU).
  const at::ScalarType reference_type =
      (c.dtype == at::kHalf || c.dtype == at::kBFloat16) ? at::kFloat : c.dtype;
  torch::nn::Linear reference(torch::nn::LinearOptions(in_features, c.out_features).bias(c.bias));
  reference->to(reference_type);
  nn::RemoteLinear remote(nn::RemoteLinearOptions(in_features, c.out_features).bias(c.bias),
                          router);
  remote->to(c.dtype);
  {
    torch::NoGradGuard no_grad;
    // Both layers get the same values, representable in the dtype under test.
    reference->weight.copy_(reference->weight.to(c.dtype));
    remote->weight.copy_(reference->weight);
    if (c.bias) {
      reference->bias.copy_(reference->bias.to(c.dtype));
      remote->bias.copy_(reference->bias);
    }
  }

  const at::Tensor x_ref =
      torch::randn(c.input_shape).to(c.dtype).to(reference_type).requires_grad_(true);
  const at::Tensor x_remote = x_ref.detach().to(c.dtype).requires_grad_(true);
  const at::Tensor y_ref = reference->forward(x_ref);
  const at::Tensor y_remote = remote->forward(x_remote);
  ASSERT_EQ(y_remote.scalar_type(), c.dtype);
  ASSERT_EQ(y_remote.sizes(), y_ref.sizes());
  EXPECT_LT(relative_error(y_remote, y_ref), c.tolerance) << "forward";

  const at::Tensor grad = torch::randn(y_ref.sizes()).to(c.dtype);
  y_ref.backward(grad.to(reference_type));
  y_remote.backward(grad);
  EXPECT_LT(relative_error(x_remote.grad(), x_ref.grad()), c.tolerance) << "grad_input";
  EXPECT_LT(relative_error(remote->weight.grad(), reference->weight.grad()), c.tolerance)
      << "grad_weight";
  if (c.bias) {
    EXPECT_LT(relative_error(remote->bias.grad(), reference->bias.grad()), c.tolerance)
        << "grad_bias";
  }
  const StatsSnapshot stats = remote->get_stats();
  EXPECT_EQ(stats.calls, 2u);
  EXPECT_EQ(stats.remote_calls(), 2u);
  EXPECT_DOUBLE_EQ(stats.remote_ratio(), 1.0);
  EXPECT_EQ(stats.failed_calls, 0u);
}

TEST_F(RemoteLinearTest, Float32MatchesLinear) {
  check_against_linear({{8, 32}, 16, true, at::kFloat, 1e-5}, remote_only());
}

TEST_F(RemoteLinearTest, Float32WithoutBiasAndLeadingDims) {
  check_against_linear({{2, 3, 5, 24}, 7, false, at::kFloat, 1e-5}, remote_only());
}

TEST_F(RemoteLinearTest, Float32ChunkedTensors) {
  // 600 x 700 float32 = 1.6 MiB per tensor: input, weight and outputs all span chunks.
  check_against_linear({{600, 700}, 650, true, at::kFloat, 1e-5}, remote_only());
}

TEST_F(RemoteLinearTest, BFloat16WithinRounding) {
  check_against_linear({{16, 64}, 48, true, at::kBFloat16, 1e-2}, remote_only());
}

TEST_F(RemoteLinearTest, Float16WithinRounding) {
  check_against_linear({{16, 64}, 48, true, at::kHalf, 2e-3}, remote_only());
}

TEST_F(RemoteLinearTest, Float64MatchesLinearTightly) {
  check_against_linear({{4, 10}, 3, true, at::kDouble, 1e-12}, remote_only());
}

TEST_F(RemoteLinearTest, ChangedWeightIsUploadedOnceAfterEachOptimizerStep) {
  auto router = remote_only();
  nn::RemoteLinear layer(nn::RemoteLinearOptions(12, 6), router);
  // SGD in LibTorch 1.13 updates through .data() (no version bump), Adam in place: the digest
  // must follow the bytes either way.
  torch::optim::SGD sgd(layer->parameters(), torch::optim::SGDOptions(0.1));
  torch::optim::Adam adam(layer->parameters(), torch::optim::AdamOptions(0.01));
  const at::Tensor x = torch::randn({4, 12});
  auto uploads = [&] { return layer->get_stats().targets.begin()->second.uploads; };

  layer->forward(x).sum().backward();
  EXPECT_EQ(uploads(), 1u) << "first forward uploads the weight; backward reuses it";
  for (int step = 0; step < 3; ++step) {
    sgd.step();
    const uint64_t before = uploads();
    layer->forward(x).sum().backward();
    layer->forward(x).sum().backward();
    EXPECT_EQ(uploads(), before + 1) << "SGD step " << step;
  }
  adam.step();
  const uint64_t before = uploads();
  layer->forward(x).sum().backward();
  EXPECT_EQ(uploads(), before + 1) << "Adam step";
  // Unchanged weights are not hashed again: one SHA-256 per distinct version.
  EXPECT_EQ(layer->weight_digests_computed(), 5u);
}

// A weight the daemon was told to release is uploaded again by the next call, which still
// runs there and gives the right answer.
TEST_F(RemoteLinearTest, ReleasedWeightIsUploadedAgainByTheNextCall) {
  nn::RemoteLinear layer(nn::RemoteLinearOptions(12, 6), remote_only());
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({4, 12});
  const at::Tensor expected = torch::nn::functional::linear(x, layer->weight, layer->bias);
  EXPECT_LT(relative_error(layer->forward(x), expected), 1e-6);
  auto uploads = [&] { return layer->get_stats().targets.begin()->second.uploads; };
  ASSERT_EQ(uploads(), 1u);

  const at::Tensor weight = layer->weight.detach().contiguous();
  const std::string digest = sha256_hex(
      std::string(static_cast<const char*>(weight.data_ptr()), weight.numel() * sizeof(float)));
  DaemonClient operator_client(daemon_->address());
  absl::StatusOr<std::vector<bool>> released = operator_client.release_weights({digest});
  ASSERT_TRUE(released.ok()) << released.status();
  ASSERT_EQ(*released, std::vector<bool>{true}) << "the layer's weight was held";

  EXPECT_LT(relative_error(layer->forward(x), expected), 1e-6);
  EXPECT_EQ(uploads(), 2u) << "sent again after the daemon answered NOT_FOUND";
  const StatsSnapshot stats = layer->get_stats();
  EXPECT_EQ(stats.remote_calls(), 2u);
  EXPECT_EQ(stats.failed_calls, 0u);
}

TEST_F(RemoteLinearTest, InvalidInputRaisesValueErrorWithoutFallingBack) {
  auto router = make_router({daemon_->address(), "local"});
  nn::RemoteLinear layer(nn::RemoteLinearOptions(8, 4), router);
  try {
    layer->forward(torch::randn({3, 9}));
    FAIL() << "expected c10::ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("shape mismatch"), std::string::npos) << e.what();
  }
  const StatsSnapshot stats = layer->get_stats();
  EXPECT_EQ(stats.failed_calls, 1u);
  EXPECT_EQ(stats.fallbacks(), 0u);
  EXPECT_EQ(stats.local_calls(), 0u);
}

}  // namespace
}  // namespace vb::testing
