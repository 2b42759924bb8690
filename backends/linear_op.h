// The Linear op's contract, checked on specs alone so that the daemon can refuse a request
// from its header, before any tensor bytes arrive, and every target applies the same rules.
#pragma once

#include <optional>

#include "absl/status/statusor.h"
#include "common/tensor_spec.h"

namespace vb::backends {

struct LinearForwardSpecs {
  TensorSpec input;                // [..., in_features]
  TensorSpec weight;               // [out_features, in_features]
  std::optional<TensorSpec> bias;  // [out_features]
};

struct LinearBackwardSpecs {
  TensorSpec grad_output;           // [..., out_features]
  std::optional<TensorSpec> input;  // [..., in_features]; needed for grad_weight only
  TensorSpec weight;                // [out_features, in_features]
  bool need_grad_input = true;
  bool need_grad_weight = true;
  bool need_grad_bias = true;
};

// The spec of y = input @ weight^T + bias, or INVALID_ARGUMENT naming the field that is off.
absl::StatusOr<TensorSpec> check_linear_forward(const LinearForwardSpecs& specs);

struct LinearGradSpecs {
  std::optional<TensorSpec> grad_input;
  std::optional<TensorSpec> grad_weight;
  std::optional<TensorSpec> grad_bias;
};

absl::StatusOr<LinearGradSpecs> check_linear_backward(const LinearBackwardSpecs& specs);

}  // namespace vb::backends
