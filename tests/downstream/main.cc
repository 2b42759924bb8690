// Runs a RemoteLinear through the router given on the command line (a vbd address, then
// "local") and checks it against torch::nn::functional::linear.
#include <torch/nn/functional/linear.h>

#include <cstdio>

#include "client/remote_linear.h"

int main(int argc, char** argv) {
  std::vector<std::string> targets(argv + 1, argv + argc);
  if (targets.empty()) targets = {"local"};
  absl::StatusOr<std::shared_ptr<vb::Router>> router = vb::Router::create(targets);
  if (!router.ok()) {
    std::fprintf(stderr, "%s\n", router.status().ToString().c_str());
    return 2;
  }
  vb::nn::RemoteLinear layer(vb::nn::RemoteLinearOptions(32, 8), *router);
  const torch::Tensor x = torch::randn({4, 32});
  const torch::Tensor y = layer->forward(x);
  const torch::Tensor expected = torch::nn::functional::linear(x, layer->weight, layer->bias);
  const double error = (y - expected).norm().item<double>() / expected.norm().item<double>();
  const vb::StatsSnapshot stats = layer->get_stats();
  std::printf("downstream: relative error %.2e, remote_ratio %.2f\n", error, stats.remote_ratio());
  return error < 1e-6 && stats.remote_ratio() == 1.0 ? 0 : 1;
}
