// Scaled dot-product attention run where the router sends it: a vbd (LibTorch's
// scaled_dot_product_attention on LibTorch 2.x: flash, memory-efficient or cuDNN kernels on
// a GPU; a plain implementation on 1.13), or this process. Differentiable in query, key and
// value. docs/ops.md has the semantics.
//
//   vb::nn::RemoteAttention attention(vb::nn::RemoteAttentionOptions().is_causal(true), router);
//   torch::Tensor out = attention(q, k, v);   // [B, H, L, E], [B, H, S, E], [B, H, S, Ev]
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "client/layer_util.h"
#include "client/router.h"
#include "client/stats.h"

namespace vb::nn {

struct RemoteAttentionOptions {
  TORCH_ARG(bool, is_causal) = false;
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;  // default 1/sqrt(E)
};

class RemoteAttentionImpl : public torch::nn::Module, public StatsSource {
 public:
  explicit RemoteAttentionImpl(RemoteAttentionOptions options = {},
                               std::shared_ptr<Router> router = Router::default_router());

  // `mask`: undefined, bool (true = may attend; sent as an additive 0 / -inf mask of the
  // query's dtype) or additive floating, broadcastable to [..., L, S].
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key,
                        const torch::Tensor& value, const torch::Tensor& mask = {});

  StatsSnapshot get_stats() const override;
  void pretty_print(std::ostream& stream) const override;

  RemoteAttentionOptions options;

 private:
  std::shared_ptr<OpLayerState> state_;
};

TORCH_MODULE(RemoteAttention);

}  // namespace vb::nn
