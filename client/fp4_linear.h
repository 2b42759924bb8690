// A Linear layer for inference whose weight is held in 4 bits (NVFP4, MXFP4, NF4 or
// bitsandbytes fp4; docs/fp4.md), quantized once when the layer is made. Calls go through
// the router: a vbd runs them on the GPU with the fused 4-bit kernel (the packed weight is
// uploaded once and kept in the daemon's tier store), the local target through the CPU
// reference (dequantize, then a float32 product).
//
//   auto layer = vb::nn::FP4Linear(vb::nn::FP4LinearOptions(4096, 4096).format("nvfp4"), router);
//   torch::NoGradGuard no_grad;
//   torch::Tensor y = layer(torch::randn({8, 4096}).to(torch::kBFloat16));
//
// No backward: forward refuses inputs that require grad. vb::patch_model_fp4 converts a
// trained model's Linear layers.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>

#include "backends/fp4/fp4.h"
#include "client/router.h"
#include "client/stats.h"

namespace vb::nn {

struct FP4LinearOptions {
  FP4LinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(std::string, format) = "nvfp4";  // nvfp4, mxfp4, nf4, bnb_fp4
};

class FP4LinearImpl : public torch::nn::Module, public StatsSource {
 public:
  // Initialised as torch::nn::Linear is, then quantized.
  explicit FP4LinearImpl(FP4LinearOptions options,
                         std::shared_ptr<Router> router = Router::default_router());
  // `linear`'s weight quantized to `format`, and a copy of its bias.
  FP4LinearImpl(const torch::nn::LinearImpl& linear, backends::fp4::Format format,
                std::shared_ptr<Router> router);
  // Throws c10::ValueError naming `path` when `format` cannot hold `linear`'s weight.
  static void check_quantizable(const torch::nn::LinearImpl& linear, backends::fp4::Format format,
                                const std::string& path);

  // input [..., in_features] in float32, bfloat16 or float16 -> [..., out_features].
  torch::Tensor forward(const torch::Tensor& input);

  StatsSnapshot get_stats() const override { return stats_->snapshot(); }
  // The weight as the daemon and the local target see it, float32 [out, in].
  torch::Tensor dequantized_weight() const;
  const std::string& weight_digest() const { return digest_; }
  void pretty_print(std::ostream& stream) const override;

  FP4LinearOptions options;
  torch::Tensor packed;  // uint8: the blob of backends/fp4 (header, codes, scales)
  torch::Tensor bias;    // float32, a buffer: this layer does not train

 private:
  void pack(const torch::Tensor& weight, backends::fp4::Format format);

  std::shared_ptr<Router> router_;
  std::shared_ptr<CallStats> stats_;
  std::string digest_;
};

TORCH_MODULE(FP4Linear);

}  // namespace vb::nn
