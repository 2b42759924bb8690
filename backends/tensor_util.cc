#include "backends/tensor_util.h"

#include <ATen/Functions.h>
#include <c10/util/Exception.h>

#include <new>

#include "absl/strings/str_cat.h"
#include "backends/backend.h"
#include "backends/linear_op.h"
#include "common/status_macros.h"

namespace vb::backends {

absl::StatusOr<TensorSpec> spec_of(const at::Tensor& tensor, absl::string_view field) {
  if (!tensor.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is undefined"));
  }
  TensorSpec spec;
  VB_ASSIGN_OR_RETURN(spec.dtype, dtype_from_scalar_type(tensor.scalar_type(), field));
  spec.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  VB_RETURN_IF_ERROR(validate_spec(spec, field));
  return spec;
}

absl::Status check_args(const LinearForwardArgs& args) {
  LinearForwardSpecs specs;
  VB_ASSIGN_OR_RETURN(specs.input, spec_of(args.input, "input"));
  VB_ASSIGN_OR_RETURN(specs.weight, spec_of(args.weight, "weight"));
  if (args.bias.defined()) {
    VB_ASSIGN_OR_RETURN(specs.bias, spec_of(args.bias, "bias"));
  }
  return check_linear_forward(specs).status();
}

absl::Status check_args(const LinearBackwardArgs& args) {
  LinearBackwardSpecs specs;
  VB_ASSIGN_OR_RETURN(specs.grad_output, spec_of(args.grad_output, "grad_output"));
  VB_ASSIGN_OR_RETURN(specs.weight, spec_of(args.weight, "weight"));
  if (args.input.defined()) {
    VB_ASSIGN_OR_RETURN(specs.input, spec_of(args.input, "input"));
  }
  specs.need_grad_input = args.need_grad_input;
  specs.need_grad_weight = args.need_grad_weight;
  specs.need_grad_bias = args.need_grad_bias;
  return check_linear_backward(specs).status();
}

absl::Status status_from_exception(absl::string_view what, std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of host memory"));
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (message.find("out of memory") != std::string::npos ||
        message.find("DefaultCPUAllocator: can't allocate") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": ", message));
    }
    return absl::InternalError(absl::StrCat(what, ": ", message));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(what, ": unknown exception"));
  }
}

}  // namespace vb::backends
