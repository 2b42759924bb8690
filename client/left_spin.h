// The left-spin residual: u' = u + g(phi) * du, a residual update damped when the update is
// large next to the state or turns away from the previous step's (docs/ops.md has the
// formula). The layer keeps the previous update, smoothed with inertia beta, and runs each
// call where its router sends it (a vbd, or this process). Differentiable in u and du.
//
//   vb::nn::LeftSpinResidual spin(vb::nn::LeftSpinOptions().alpha(0.5), router);
//   torch::Tensor next = spin(u, du);   // u, du: [batch, ...]
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>

#include "client/layer_util.h"
#include "client/router.h"
#include "client/stats.h"

namespace vb::nn {

struct LeftSpinOptions {
  TORCH_ARG(double, alpha) = 0.5;
  TORCH_ARG(double, tau) = 0.3;
  TORCH_ARG(double, beta) = 0.7;  // inertia of the kept update
  TORCH_ARG(double, w1) = 1.0;
  TORCH_ARG(double, w2) = 1.0;
  TORCH_ARG(double, eps) = 1e-6;
};

class LeftSpinResidualImpl : public torch::nn::Module, public StatsSource {
 public:
  explicit LeftSpinResidualImpl(LeftSpinOptions options = {},
                                std::shared_ptr<Router> router = Router::default_router());

  // In training mode the kept update moves to beta * kept + (1 - beta) * du afterwards. A
  // du of another shape than the kept one (a last, smaller batch) starts afresh.
  torch::Tensor forward(const torch::Tensor& u, const torch::Tensor& du);

  StatsSnapshot get_stats() const override;
  // The kept update (undefined before the first training step); registered as the buffer
  // "du_prev" at that step, in the dtype of its du, so it is saved and moved with the module.
  const torch::Tensor& previous_update() const { return du_prev_; }
  void pretty_print(std::ostream& stream) const override;

  LeftSpinOptions options;

 private:
  std::shared_ptr<OpLayerState> state_;
  torch::Tensor du_prev_;
};

TORCH_MODULE(LeftSpinResidual);

}  // namespace vb::nn
