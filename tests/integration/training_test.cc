// Training through a real vbd: the same loss curve as local training, and a daemon killed
// mid-training that the router survives, counts, and returns to once it is back.
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>

#include <torch/nn/functional/linear.h>

#include "client/daemon_client.h"
#include "client/patch_model.h"
#include "client/remote_linear.h"
#include "examples/mlp_task.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

// Float32 tolerance per step: the daemon forms the same products as LibTorch's own autograd,
// so curves agree to rounding; 1e-4 relative leaves room for summation order over 200 steps.
constexpr double kLossTolerance = 1e-4;

std::vector<double> train_locally(const examples::MlpTask& task) {
  torch::nn::Sequential model = examples::make_mlp(task);
  return examples::train_mlp(model, task);
}

void expect_same_curve(const std::vector<double>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    worst = std::max(worst, std::abs(actual[i] - expected[i]) / std::abs(expected[i]));
  }
  EXPECT_LT(worst, kLossTolerance) << "largest relative loss difference over the curve";
}

uint64_t op_calls(DaemonClient& client, const std::string& op) {
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (!stats.ok()) return 0;
  for (const v1::OpStats& s : stats->ops()) {
    if (s.op() == op) return s.calls();
  }
  return 0;
}

TEST(TrainingTest, LossCurveThroughDaemonEqualsLocal) {
  DaemonProcess daemon;
  examples::MlpTask task;
  task.steps = 200;
  const std::vector<double> local = train_locally(task);
  const auto mean = [](auto begin, auto end) {
    return std::accumulate(begin, end, 0.0) / std::distance(begin, end);
  };
  ASSERT_LT(mean(local.end() - 20, local.end()), 0.5 * mean(local.begin(), local.begin() + 20))
      << "the task must be learnable";

  torch::nn::Sequential model = examples::make_mlp(task);
  const PatchReport report = patch_model(*model, make_router({daemon.address()}));
  EXPECT_EQ(report.replaced, (std::vector<std::string>{"0", "2", "4"}));
  const std::vector<double> remote = examples::train_mlp(model, task);
  expect_same_curve(remote, local);

  const StatsSnapshot stats = nn::collect_stats(*model);
  // Three layers, each a forward and a backward per step.
  EXPECT_EQ(stats.calls, 6u * task.steps);
  EXPECT_DOUBLE_EQ(stats.remote_ratio(), 1.0);
  EXPECT_EQ(stats.failed_calls, 0u);
  DaemonClient client(daemon.address());
  EXPECT_EQ(op_calls(client, "LinearForward"), 3u * task.steps);
  EXPECT_EQ(op_calls(client, "LinearBackward"), 3u * task.steps);
}

TEST(TrainingTest, SurvivesDaemonKillAndReturnsAfterRestart) {
  examples::MlpTask task;
  task.steps = 200;
  const std::vector<double> local = train_locally(task);

  auto daemon = std::make_unique<DaemonProcess>();
  const int port = daemon->port();
  BreakerOptions breaker;
  breaker.failure_threshold = 2;
  breaker.open_duration = std::chrono::milliseconds(100);
  breaker.max_open_duration = std::chrono::milliseconds(400);
  auto router = make_router({daemon->address(), "local"}, breaker);
  const std::string remote_name = router->targets()[0]->name();

  torch::nn::Sequential model = examples::make_mlp(task);
  patch_model(*model, router);
  constexpr int kKillAt = 60;
  constexpr int kRestartAt = 120;
  StatsSnapshot at_kill;
  StatsSnapshot at_restart;
  uint64_t remote_after_restart = 0;
  const auto remote_successes = [&] { return router->stats().targets[remote_name].successes; };
  auto waited = std::chrono::milliseconds(0);

  const std::vector<double> losses = examples::train_mlp(model, task, [&](int step) {
    if (step == kKillAt) {
      at_kill = router->stats();
      daemon->send_signal(SIGKILL);
      ASSERT_EQ(daemon->wait_exit(std::chrono::seconds(10)), 128 + SIGKILL);
      daemon.reset();
    }
    if (step == kRestartAt) {
      at_restart = router->stats();
      daemon = std::make_unique<DaemonProcess>(std::vector<std::string>{}, port);
      remote_after_restart = remote_successes();
    }
    // Give the breaker's probe and the channel's reconnect time to find the new daemon: a
    // pause between steps changes no arithmetic. Bounded: 20 s at most in all.
    if (step > kRestartAt && remote_successes() == remote_after_restart) {
      if (waited < std::chrono::seconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        waited += std::chrono::milliseconds(50);
      }
    }
  });

  // No exception reached the training loop, and the result is the all-local one.
  expect_same_curve(losses, local);
  const StatsSnapshot end = router->stats();
  EXPECT_EQ(end.failed_calls, 0u);
  EXPECT_EQ(at_kill.fallbacks(), 0u) << "all remote before the kill";
  EXPECT_EQ(at_kill.remote_calls(), 6u * kKillAt);
  // While the daemon was down every call was answered locally, as a fallback.
  const uint64_t down_calls = at_restart.calls - at_kill.calls;
  EXPECT_EQ(down_calls, 6u * (kRestartAt - kKillAt));
  EXPECT_EQ(at_restart.local_calls() - at_kill.local_calls(), down_calls);
  EXPECT_EQ(at_restart.fallbacks() - at_kill.fallbacks(), down_calls);
  EXPECT_GE(at_restart.targets[remote_name].failures, 2u) << "the failures that opened it";
  EXPECT_GT(at_restart.targets[remote_name].skipped, 0u) << "calls that the open breaker skipped";
  // After the restart, calls went back to the daemon, which had to be sent the weights again.
  EXPECT_GT(end.remote_calls(), at_restart.remote_calls()) << end.to_table() << daemon->log();
  DaemonClient client(daemon->address());
  EXPECT_GE(op_calls(client, "UploadWeight"), 3u);
  EXPECT_GT(op_calls(client, "LinearForward"), 0u);
  EXPECT_EQ(router->breaker_state(0), CircuitBreaker::State::kClosed);
}

TEST(TrainingTest, UnchangedWeightIsUploadedAgainToARestartedDaemon) {
  auto daemon = std::make_unique<DaemonProcess>();
  const int port = daemon->port();
  BreakerOptions breaker;
  breaker.open_duration = std::chrono::milliseconds(50);
  auto router = make_router({daemon->address(), "local"}, breaker);
  nn::RemoteLinear layer(nn::RemoteLinearOptions(32, 8), router);
  const at::Tensor x = torch::randn({4, 32});
  const at::Tensor expected = torch::nn::functional::linear(x, layer->weight, layer->bias);

  torch::NoGradGuard no_grad;  // inference: the weight never changes
  EXPECT_LT(relative_error(layer->forward(x), expected), 1e-6);
  daemon->send_signal(SIGKILL);
  daemon->wait_exit(std::chrono::seconds(10));
  daemon = std::make_unique<DaemonProcess>(std::vector<std::string>{}, port);
  const std::string remote_name = router->targets()[0]->name();
  // Bounded: until the daemon answers again, at most 10 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const uint64_t remote_before = layer->get_stats().targets[remote_name].successes;
  while (layer->get_stats().targets[remote_name].successes == remote_before &&
         std::chrono::steady_clock::now() < deadline) {
    EXPECT_LT(relative_error(layer->forward(x), expected), 1e-6);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const TargetStats remote = layer->get_stats().targets[remote_name];
  EXPECT_GT(remote.successes, remote_before) << "the restarted daemon answers again";
  EXPECT_EQ(remote.uploads, 2u) << "once to each daemon";
  EXPECT_EQ(layer->get_stats().failed_calls, 0u);
}

}  // namespace
}  // namespace vb::testing
