// One router target standing for several daemons: gRPC's round-robin spreads the calls, and
// when one daemon dies the others carry on without a failed call.
#include <signal.h>
#include <torch/nn/functional/linear.h>

#include "absl/strings/str_join.h"
#include "client/remote_linear.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

uint64_t forward_calls(const DaemonProcess& daemon) {
  DaemonClient client(daemon.address());
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (!stats.ok()) return 0;
  for (const v1::OpStats& op : stats->ops()) {
    if (op.op() == "LinearForward" && !op.statuses().empty()) {
      for (const v1::StatusCount& s : op.statuses()) {
        if (s.code() == "OK") return s.count();
      }
    }
  }
  return 0;
}

TEST(BalancingTest, SpreadsOverThreeDaemonsAndCarriesOnWhenOneDies) {
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  std::vector<std::string> addresses;
  for (int i = 0; i < 3; ++i) {
    daemons.push_back(std::make_unique<DaemonProcess>());
    addresses.push_back(daemons.back()->address());
  }
  // No local target: every call must be answered by one of the daemons.
  auto router = make_router({"vbd://" + absl::StrJoin(addresses, "|")});
  nn::RemoteLinear layer(nn::RemoteLinearOptions(64, 16), router);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({8, 64});
  const at::Tensor expected = torch::nn::functional::linear(x, layer->weight, layer->bias);

  for (int i = 0; i < 30; ++i) ASSERT_LT(relative_error(layer->forward(x), expected), 1e-6);
  std::vector<uint64_t> before;
  for (const auto& daemon : daemons) {
    before.push_back(forward_calls(*daemon));
    EXPECT_GT(before.back(), 0u) << daemon->address() << " took none of the calls";
  }

  daemons[1]->send_signal(SIGKILL);
  ASSERT_EQ(daemons[1]->wait_exit(std::chrono::seconds(10)), 128 + SIGKILL);
  for (int i = 0; i < 60; ++i) ASSERT_LT(relative_error(layer->forward(x), expected), 1e-6);

  const StatsSnapshot stats = layer->get_stats();
  EXPECT_EQ(stats.failed_calls, 0u) << stats.to_table();
  EXPECT_EQ(stats.remote_calls(), 90u);
  EXPECT_GT(forward_calls(*daemons[0]), before[0]);
  EXPECT_GT(forward_calls(*daemons[2]), before[2]);
}

}  // namespace
}  // namespace vb::testing
