#include "backends/linear_op.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::backends {
namespace {

absl::Status check_same_dtype(const TensorSpec& spec, absl::string_view field,
                              const TensorSpec& weight) {
  if (spec.dtype == weight.dtype) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("dtype mismatch: ", field,
                                                 ".dtype = ", dtype_name(spec.dtype),
                                                 " but weight.dtype = ", dtype_name(weight.dtype)));
}

// A valid [out_features, in_features] weight.
absl::Status check_weight(const TensorSpec& weight) {
  VB_RETURN_IF_ERROR(validate_spec(weight, "weight", 2));
  if (weight.shape.size() == 2) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("weight.shape = ", shape_string(weight.shape),
                                                 ": expected rank 2, [out_features, in_features]"));
}

}  // namespace

absl::StatusOr<TensorSpec> check_linear_forward(const LinearForwardSpecs& specs) {
  VB_RETURN_IF_ERROR(validate_spec(specs.input, "input"));
  VB_RETURN_IF_ERROR(check_weight(specs.weight));
  VB_RETURN_IF_ERROR(check_same_dtype(specs.input, "input", specs.weight));
  const int64_t out_features = specs.weight.shape[0];
  const int64_t in_features = specs.weight.shape[1];
  if (specs.input.shape.back() != in_features) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape mismatch: input.shape = ", shape_string(specs.input.shape), " ends in ",
        specs.input.shape.back(), " but weight.shape = ", shape_string(specs.weight.shape),
        " has in_features = ", in_features));
  }
  if (specs.bias) {
    VB_RETURN_IF_ERROR(validate_spec(*specs.bias, "bias"));
    VB_RETURN_IF_ERROR(check_same_dtype(*specs.bias, "bias", specs.weight));
    if (specs.bias->shape != std::vector<int64_t>{out_features}) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shape mismatch: bias.shape = ", shape_string(specs.bias->shape),
          " but weight.shape = ", shape_string(specs.weight.shape), " needs [", out_features, "]"));
    }
  }
  TensorSpec output{specs.input.dtype, specs.input.shape};
  output.shape.back() = out_features;
  VB_RETURN_IF_ERROR(validate_spec(output, "output"));
  return output;
}

absl::StatusOr<LinearGradSpecs> check_linear_backward(const LinearBackwardSpecs& specs) {
  VB_RETURN_IF_ERROR(validate_spec(specs.grad_output, "grad_output"));
  VB_RETURN_IF_ERROR(check_weight(specs.weight));
  VB_RETURN_IF_ERROR(check_same_dtype(specs.grad_output, "grad_output", specs.weight));
  const int64_t out_features = specs.weight.shape[0];
  const int64_t in_features = specs.weight.shape[1];
  if (specs.grad_output.shape.back() != out_features) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape mismatch: grad_output.shape = ", shape_string(specs.grad_output.shape), " ends in ",
        specs.grad_output.shape.back(), " but weight.shape = ", shape_string(specs.weight.shape),
        " has out_features = ", out_features));
  }
  if (specs.need_grad_weight && !specs.input) {
    return absl::InvalidArgumentError(
        "input is missing: need_grad_weight = true requires the forward input");
  }
  if (specs.input) {
    VB_RETURN_IF_ERROR(validate_spec(*specs.input, "input"));
    VB_RETURN_IF_ERROR(check_same_dtype(*specs.input, "input", specs.weight));
    std::vector<int64_t> expected = specs.grad_output.shape;
    expected.back() = in_features;
    if (specs.input->shape != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape mismatch: input.shape = ", shape_string(specs.input->shape),
                       " but grad_output.shape = ", shape_string(specs.grad_output.shape),
                       " and weight.shape = ", shape_string(specs.weight.shape), " need ",
                       shape_string(expected)));
    }
  }
  LinearGradSpecs grads;
  if (specs.need_grad_input) {
    TensorSpec grad_input{specs.grad_output.dtype, specs.grad_output.shape};
    grad_input.shape.back() = in_features;
    VB_RETURN_IF_ERROR(validate_spec(grad_input, "grad_input"));
    grads.grad_input = grad_input;
  }
  if (specs.need_grad_weight) grads.grad_weight = specs.weight;
  if (specs.need_grad_bias) grads.grad_bias = TensorSpec{specs.weight.dtype, {out_features}};
  return grads;
}

}  // namespace vb::backends
