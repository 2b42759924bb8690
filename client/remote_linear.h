// A torch::nn::Linear whose forward and backward run wherever its router sends them: a vbd,
// or this process when the daemon fails. Autograd works through it as through nn::Linear.
//
//   auto router = *vb::Router::create({"127.0.0.1:50551", "local"});
//   vb::nn::RemoteLinear layer(vb::nn::RemoteLinearOptions(768, 768), router);
//   torch::Tensor y = layer(torch::randn({64, 768}));
//   y.sum().backward();
//   std::cout << layer->get_stats().to_table();
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <memory>

#include "client/router.h"
#include "client/stats.h"
#include "client/weight_digest.h"

namespace vb::nn {

struct RemoteLinearOptions {
  RemoteLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
};

namespace detail {
// What a layer's autograd function needs after the layer call returns.
struct RemoteLinearState {
  std::shared_ptr<Router> router;
  CallStats stats;
  WeightDigestCache weight_digest;
};
}  // namespace detail

class RemoteLinearImpl : public torch::nn::Module, public StatsSource {
 public:
  explicit RemoteLinearImpl(RemoteLinearOptions options,
                            std::shared_ptr<Router> router = Router::default_router());
  // Takes over `linear`'s parameters: the same tensors, so an optimizer built on the Linear
  // keeps updating this layer.
  RemoteLinearImpl(const torch::nn::LinearImpl& linear, std::shared_ptr<Router> router);

  torch::Tensor forward(const torch::Tensor& input);

  StatsSnapshot get_stats() const override { return state_->stats.snapshot(); }
  void reset_stats() { state_->stats.reset(); }
  const std::shared_ptr<Router>& router() const { return state_->router; }
  uint64_t weight_digests_computed() const { return state_->weight_digest.digests_computed(); }

  void pretty_print(std::ostream& stream) const override;

  RemoteLinearOptions options;
  torch::Tensor weight;
  torch::Tensor bias;

 private:
  std::shared_ptr<detail::RemoteLinearState> state_;
};

TORCH_MODULE(RemoteLinear);

// The statistics of every libvb layer in `module`'s tree (itself included), summed.
StatsSnapshot collect_stats(const torch::nn::Module& module);

}  // namespace vb::nn
