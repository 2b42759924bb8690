// Bridges between at::Tensor and the project's specs and statuses.
#pragma once

#include <ATen/core/Tensor.h>

#include <exception>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor_spec.h"

namespace vb::backends {

// The spec of a defined tensor, or INVALID_ARGUMENT naming `field` (undefined tensor,
// unsupported dtype, bad shape).
absl::StatusOr<TensorSpec> spec_of(const at::Tensor& tensor, absl::string_view field);

struct LinearForwardArgs;
struct LinearBackwardArgs;
// The checks of check_linear_forward / check_linear_backward applied to the tensors of a
// call, as every backend does first.
absl::Status check_args(const LinearForwardArgs& args);
absl::Status check_args(const LinearBackwardArgs& args);

// Turns an exception escaping LibTorch into a status: out-of-memory into RESOURCE_EXHAUSTED,
// anything else into INTERNAL, with `what` saying which op failed.
absl::Status status_from_exception(absl::string_view what, std::exception_ptr error);

}  // namespace vb::backends
