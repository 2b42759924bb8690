// Unit tests that need LibTorch's modules: the CPU backend against autograd, the router's
// fallback over real targets, and patch_model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <unistd.h>

#include "backends/cpu_backend.h"
#include "client/patch_model.h"
#include "client/remote_linear.h"
#include "client/router.h"

namespace vb {
namespace {

using ::testing::HasSubstr;

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).norm().item<double>() /
         expected.to(at::kDouble).norm().item<double>();
}

// A loopback port with nothing listening: bound, then closed.
int closed_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

TEST(CpuBackendTest, BackwardEqualsAutogradOfLinear) {
  backends::CpuBackend cpu;
  const at::Tensor x = torch::randn({3, 4, 10}, torch::requires_grad());
  const at::Tensor w = torch::randn({6, 10}, torch::requires_grad());
  const at::Tensor b = torch::randn({6}, torch::requires_grad());
  const at::Tensor y = torch::nn::functional::linear(x, w, b);
  const at::Tensor g = torch::randn(y.sizes());
  y.backward(g);
  absl::StatusOr<at::Tensor> forward = cpu.linear_forward({x.detach(), w.detach(), b.detach()});
  ASSERT_TRUE(forward.ok());
  EXPECT_TRUE(forward->equal(y.detach())) << "the same at::linear call";
  backends::LinearBackwardArgs args{g, x.detach(), w.detach()};
  absl::StatusOr<backends::LinearGrads> grads = cpu.linear_backward(args);
  ASSERT_TRUE(grads.ok()) << grads.status();
  EXPECT_LT(relative_error(grads->grad_input, x.grad()), 1e-6);
  EXPECT_LT(relative_error(grads->grad_weight, w.grad()), 1e-6);
  EXPECT_LT(relative_error(grads->grad_bias, b.grad()), 1e-6);
}

TEST(CpuBackendTest, HalfTypesAccumulateInFloat32) {
  backends::CpuBackend cpu;
  const at::Tensor x = torch::randn({8, 512}).to(at::kHalf);
  const at::Tensor w = torch::randn({4, 512}).to(at::kHalf);
  absl::StatusOr<at::Tensor> y = cpu.linear_forward({x, w, {}});
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->scalar_type(), at::kHalf);
  const at::Tensor reference = x.to(at::kDouble).mm(w.to(at::kDouble).t());
  EXPECT_LT(relative_error(*y, reference), 1e-3) << "one rounding, not one per product";
}

TEST(CpuBackendTest, RefusesBadTensorsWithStatus) {
  backends::CpuBackend cpu;
  absl::StatusOr<at::Tensor> wrong =
      cpu.linear_forward({torch::randn({2, 3}), torch::randn({4, 5}), {}});
  EXPECT_TRUE(absl::IsInvalidArgument(wrong.status()));
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("shape mismatch"));
  absl::StatusOr<at::Tensor> ints =
      cpu.linear_forward({torch::ones({2, 3}, at::kInt), torch::randn({4, 3}), {}});
  EXPECT_THAT(std::string(ints.status().message()), HasSubstr("input.dtype = Int"));
  backends::LinearBackwardArgs no_input{torch::randn({2, 4}), at::Tensor(), torch::randn({4, 3})};
  EXPECT_THAT(std::string(cpu.linear_backward(no_input).status().message()),
              HasSubstr("input is missing"));
}

TEST(RouterTest, FallsBackFromADeadDaemonAndOpensTheBreaker) {
  BreakerOptions breaker;
  breaker.failure_threshold = 2;
  breaker.open_duration = std::chrono::hours(1);
  ClientOptions client;
  client.call_timeout = std::chrono::seconds(5);
  const std::string dead = "127.0.0.1:" + std::to_string(closed_port());
  absl::StatusOr<std::shared_ptr<Router>> router = Router::create({dead, "local"}, client, breaker);
  ASSERT_TRUE(router.ok());
  nn::RemoteLinear layer(nn::RemoteLinearOptions(5, 3), *router);
  const at::Tensor x = torch::randn({2, 5});
  for (int i = 0; i < 5; ++i) {
    EXPECT_LT(relative_error(layer->forward(x).detach(),
                             torch::nn::functional::linear(x, layer->weight, layer->bias)),
              1e-6);
  }
  const StatsSnapshot stats = layer->get_stats();
  const TargetStats& remote = stats.targets.at("vbd://" + dead);
  EXPECT_EQ(remote.failures, 2u) << "two failures opened the breaker";
  EXPECT_EQ(remote.skipped, 3u) << "then it was passed by";
  EXPECT_EQ(stats.local_calls(), 5u);
  EXPECT_EQ(stats.fallbacks(), 5u);
  EXPECT_DOUBLE_EQ(stats.local_ratio(), 1.0);
  EXPECT_EQ((*router)->breaker_state(0), CircuitBreaker::State::kOpen);
}

TEST(RouterTest, CallerErrorsAreRaisedNotRetried) {
  absl::StatusOr<std::shared_ptr<Router>> router = Router::create({"local", "local"});
  ASSERT_TRUE(router.ok());
  CallStats stats;
  LinearForwardCall call{torch::randn({2, 5}), {"", torch::randn({3, 4})}, {}};
  absl::StatusOr<at::Tensor> result = (*router)->linear_forward(call, &stats);
  EXPECT_TRUE(absl::IsInvalidArgument(result.status()));
  EXPECT_EQ(stats.snapshot().targets.at("local").calls, 1u) << "tried once, not twice";
  EXPECT_EQ(stats.snapshot().failed_calls, 1u);
}

TEST(RouterTest, RejectsMalformedTargets) {
  EXPECT_THAT(std::string(Router::create({"nonsense"}).status().message()),
              HasSubstr("target \"nonsense\""));
  EXPECT_FALSE(Router::create({}).ok());
}

std::shared_ptr<Router> local_router() { return *Router::create({"local"}); }

TEST(PatchModelTest, SwapsLinearsInSequentialAndModuleListKeepingParameters) {
  torch::nn::Sequential model(torch::nn::Linear(4, 8), torch::nn::ReLU(), torch::nn::Linear(8, 2));
  const std::vector<at::Tensor> before = model->parameters();
  const at::Tensor x = torch::randn({3, 4});
  const at::Tensor expected = model->forward(x);

  const PatchReport report = patch_model(*model, local_router());
  EXPECT_EQ(report.replaced, (std::vector<std::string>{"0", "2"}));
  const std::vector<at::Tensor> after = model->parameters();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(after[i].is_same(before[i])) << "parameter " << i << " is the same tensor";
  }
  EXPECT_TRUE(model->forward(x).equal(expected));
  EXPECT_EQ(nn::collect_stats(*model).calls, 2u) << "every layer ran through the router";

  torch::nn::ModuleList list(torch::nn::Linear(2, 2),
                             torch::nn::Sequential(torch::nn::ReLU(), torch::nn::Linear(2, 2)));
  EXPECT_EQ(patch_model(*list, local_router()).replaced, (std::vector<std::string>{"0", "1.1"}));
  EXPECT_NE(list->ptr<nn::RemoteLinearImpl>(0), nullptr);
  EXPECT_NE(list->ptr<torch::nn::SequentialImpl>(1)->ptr<nn::RemoteLinearImpl>(1), nullptr);
}

struct MemberNet : torch::nn::Module {
  MemberNet() { fc = register_module("fc", torch::nn::Linear(3, 3)); }
  torch::nn::Linear fc{nullptr};
};

TEST(PatchModelTest, RefusesLinearsHeldAsMembersAndChangesNothing) {
  auto net = std::make_shared<MemberNet>();
  auto body = net->register_module("body", torch::nn::Sequential(torch::nn::Linear(3, 3)));
  try {
    patch_model(*net, local_router());
    FAIL() << "expected c10::ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot swap Linear layer(s) fc"));
  }
  EXPECT_NE(std::dynamic_pointer_cast<torch::nn::LinearImpl>(body->ptr(0)), nullptr)
      << "the patchable one was left alone too";
}

}  // namespace
}  // namespace vb
