// The interface every compute device implements. LibTorch's exceptions stop here: every
// method answers with a status, never throws.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vb::backends {

struct DeviceDescription {
  std::string kind;  // "cpu", "cuda", ...
  int index = 0;
  std::string name;
  uint64_t total_memory_bytes = 0;
  uint64_t free_memory_bytes = 0;
};

struct LinearForwardArgs {
  at::Tensor input;   // [..., in_features]
  at::Tensor weight;  // [out_features, in_features]
  at::Tensor bias;    // [out_features], or undefined
};

struct LinearBackwardArgs {
  at::Tensor grad_output;  // [..., out_features]
  at::Tensor input;        // [..., in_features]; may be undefined unless need_grad_weight
  at::Tensor weight;       // [out_features, in_features]
  bool need_grad_input = true;
  bool need_grad_weight = true;
  bool need_grad_bias = true;
};

struct LinearGrads {
  at::Tensor grad_input;  // undefined unless asked for
  at::Tensor grad_weight;
  at::Tensor grad_bias;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::vector<DeviceDescription> devices() const = 0;

  // Outputs are contiguous host tensors of the inputs' dtype. Every check of
  // check_linear_forward / check_linear_backward is applied to the tensors first.
  virtual absl::StatusOr<at::Tensor> linear_forward(const LinearForwardArgs& args) = 0;
  virtual absl::StatusOr<LinearGrads> linear_backward(const LinearBackwardArgs& args) = 0;
};

}  // namespace vb::backends
