// A small, learnable regression task and the MLP that learns it: what the demo trains and
// what the tests compare across targets. Deterministic for a given seed.
#pragma once

#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace vb::examples {

struct MlpTask {
  int64_t in_features = 16;
  int64_t hidden = 64;
  int64_t batch = 64;
  int steps = 300;
  double learning_rate = 0.02;
  uint64_t seed = 7;
};

// Linear(in, hidden) - ReLU - Linear(hidden, hidden) - ReLU - Linear(hidden, 1), initialised
// from `task.seed`.
torch::nn::Sequential make_mlp(const MlpTask& task);

// Trains with SGD with momentum on fresh batches of y = sin(2 x.a) + 0.5 (x.b)^2 (fixed a, b; x ~
// N(0, 1)), calling `before_step(step)` first and `after_step(step, loss)` after each step. Returns
// the loss of every step. The data depends only on the seed, never on where layers run.
std::vector<double> train_mlp(torch::nn::Sequential& model, const MlpTask& task,
                              const std::function<void(int)>& before_step = {},
                              const std::function<void(int, double)>& after_step = {});

}  // namespace vb::examples
