#include "examples/mlp_task.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

namespace vb::examples {

torch::nn::Sequential make_mlp(const MlpTask& task) {
  torch::manual_seed(task.seed);
  return torch::nn::Sequential(torch::nn::Linear(task.in_features, task.hidden), torch::nn::ReLU(),
                               torch::nn::Linear(task.hidden, task.hidden), torch::nn::ReLU(),
                               torch::nn::Linear(task.hidden, 1));
}

std::vector<double> train_mlp(torch::nn::Sequential& model, const MlpTask& task,
                              const std::function<void(int)>& before_step,
                              const std::function<void(int, double)>& after_step) {
  // The data has its own generator, so nothing the model does can change it.
  at::Generator data = at::detail::createCPUGenerator(task.seed + 1);
  const at::Tensor a = torch::randn({task.in_features, 1}, data) / std::sqrt(task.in_features);
  const at::Tensor b = torch::randn({task.in_features, 1}, data) / std::sqrt(task.in_features);
  torch::optim::SGD optimizer(model->parameters(),
                              torch::optim::SGDOptions(task.learning_rate).momentum(0.9));
  std::vector<double> losses;
  losses.reserve(task.steps);
  for (int step = 0; step < task.steps; ++step) {
    if (before_step) before_step(step);
    const at::Tensor x = torch::randn({task.batch, task.in_features}, data);
    const at::Tensor y = torch::sin(2 * x.mm(a)) + 0.5 * x.mm(b).pow(2);
    optimizer.zero_grad();
    const at::Tensor loss = torch::nn::functional::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer.step();
    losses.push_back(loss.item<double>());
    if (after_step) after_step(step, losses.back());
  }
  return losses;
}

}  // namespace vb::examples
