// Swaps every torch::nn::Linear in a module tree for a RemoteLinear that keeps its weights.
//
//   auto model = torch::nn::Sequential(torch::nn::Linear(16, 64), torch::nn::ReLU(),
//                                      torch::nn::Linear(64, 1));
//   vb::patch_model(*model, router);  // both Linears now run through the router
//
// C++ has no attribute lookup to intercept: a parent calls its children through its own
// members. So a Linear is swapped where the container calling it holds it: inside
// torch::nn::Sequential and torch::nn::ModuleList (the container's own slot is replaced too).
// A Linear held elsewhere, e.g. as a `torch::nn::Linear fc1` member of a custom module,
// cannot be rebound from outside; patch_model then changes nothing at all and throws
// c10::ValueError naming each such layer, rather than leave it silently local.
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "backends/fp4/fp4.h"
#include "client/router.h"

namespace vb {

struct PatchReport {
  std::vector<std::string> replaced;  // dotted paths, e.g. "encoder.0"
};

PatchReport patch_model(torch::nn::Module& module,
                        std::shared_ptr<Router> router = Router::default_router());

// For inference: every Linear becomes a vb::nn::FP4Linear holding its weight quantized to
// `format` (and its bias). Same rules as patch_model; a weight the format cannot take (its
// in_features not a multiple of the block) is refused, naming the layer, before any change.
//
//   vb::patch_model_fp4(*model, vb::backends::fp4::Format::kNvfp4, router);
PatchReport patch_model_fp4(torch::nn::Module& module, backends::fp4::Format format,
                            std::shared_ptr<Router> router = Router::default_router());

}  // namespace vb
