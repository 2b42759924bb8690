#include "backends/left_spin_op.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <exception>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"
#include "common/tensor_spec.h"

namespace vb::backends {
namespace {

std::string shape_of(const at::Tensor& tensor) {
  return shape_string(std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()));
}

absl::Status check_like(const at::Tensor& tensor, absl::string_view field, const at::Tensor& like,
                        absl::string_view like_field) {
  VB_RETURN_IF_ERROR(spec_of(tensor, field).status());
  if (tensor.sizes() != like.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape = ", shape_of(tensor),
                                                   ": expected ", like_field,
                                                   ".shape = ", shape_of(like)));
  }
  if (tensor.scalar_type() != like.scalar_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".dtype = ", c10::toString(tensor.scalar_type()), ": expected ",
                     like_field, ".dtype = ", c10::toString(like.scalar_type())));
  }
  if (tensor.device() != like.device()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".device = ", tensor.device().str(),
                                                   ": expected ", like_field,
                                                   ".device = ", like.device().str()));
  }
  return absl::OkStatus();
}

absl::Status check_args(const at::Tensor& u, const at::Tensor& du, const at::Tensor& du_prev,
                        const LeftSpinParams& p) {
  VB_RETURN_IF_ERROR(check_left_spin_params(p));
  VB_RETURN_IF_ERROR(spec_of(u, "u").status());
  VB_RETURN_IF_ERROR(check_like(du, "du", u, "u"));
  if (du_prev.defined()) VB_RETURN_IF_ERROR(check_like(du_prev, "du_prev", u, "u"));
  return absl::OkStatus();
}

at::ScalarType compute_type(const at::Tensor& tensor) {
  return tensor.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// One L2 norm per sample, shaped [N, 1, ...] to broadcast against the sample.
at::Tensor sample_norm(const at::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return x.reshape({x.size(0), -1}).norm(2, {1}, /*keepdim=*/true).reshape(shape);
}

// The forward on checked tensors, differentiable in u and du.
at::Tensor left_spin(const at::Tensor& u, const at::Tensor& du, const at::Tensor& du_prev,
                     const LeftSpinParams& p) {
  const at::ScalarType compute = compute_type(u);
  const at::Tensor uc = u.to(compute);
  const at::Tensor duc = du.to(compute);
  const at::Tensor du_norm = sample_norm(duc);
  at::Tensor s = p.w1 * (du_norm / (p.eps + sample_norm(uc)));
  if (du_prev.defined()) {
    const at::Tensor prev = du_prev.detach().to(compute);
    s = s + p.w2 * (sample_norm(duc - prev) / (p.eps + du_norm + sample_norm(prev)));
  }
  const at::Tensor phi = p.alpha * at::softplus(s - p.tau);
  const at::Tensor g = at::rsqrt(1.0 + phi * phi);
  return (uc + g * duc).to(u.scalar_type());
}

at::Tensor usable_in_autograd(const at::Tensor& tensor) {
  if (!tensor.defined()) return tensor;
  // Autograd refuses to save inference tensors; a clone made outside inference mode is not one.
  return tensor.is_inference() ? tensor.clone() : tensor.detach();
}

absl::Status check_param(double value, absl::string_view field, bool ok, const char* expected) {
  if (std::isfinite(value) && ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("params.", field, " = ", value, ": expected finite", expected));
}

}  // namespace

absl::Status check_left_spin_params(const LeftSpinParams& p) {
  VB_RETURN_IF_ERROR(check_param(p.alpha, "alpha", p.alpha >= 0, " and >= 0"));
  VB_RETURN_IF_ERROR(check_param(p.tau, "tau", true, ""));
  VB_RETURN_IF_ERROR(check_param(p.beta, "beta", p.beta >= 0 && p.beta < 1, " and in [0, 1)"));
  VB_RETURN_IF_ERROR(check_param(p.w1, "w1", true, ""));
  VB_RETURN_IF_ERROR(check_param(p.w2, "w2", true, ""));
  VB_RETURN_IF_ERROR(check_param(p.eps, "eps", p.eps > 0, " and > 0"));
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> left_spin_forward(const at::Tensor& u, const at::Tensor& du,
                                             const at::Tensor& du_prev, const LeftSpinParams& p) {
  VB_RETURN_IF_ERROR(check_args(u, du, du_prev, p));
  try {
    c10::NoGradGuard no_grad;
    return left_spin(u, du, du_prev, p);
  } catch (...) {
    return status_from_exception("left_spin_forward", std::current_exception());
  }
}

absl::StatusOr<LeftSpinGrads> left_spin_backward(const at::Tensor& u, const at::Tensor& du,
                                                 const at::Tensor& du_prev, const LeftSpinParams& p,
                                                 const at::Tensor& grad_output) {
  VB_RETURN_IF_ERROR(check_args(u, du, du_prev, p));
  VB_RETURN_IF_ERROR(check_like(grad_output, "grad_output", u, "u"));
  try {
    // The caller may be in no-grad or inference mode; the recompute needs a graph.
    c10::InferenceMode not_inference(false);
    c10::AutoGradMode grad_on(true);
    const at::Tensor u_leaf = usable_in_autograd(u).requires_grad_(true);
    const at::Tensor du_leaf = usable_in_autograd(du).requires_grad_(true);
    const at::Tensor out = left_spin(u_leaf, du_leaf, usable_in_autograd(du_prev), p);
    std::vector<at::Tensor> grads =
        torch::autograd::grad({out}, {u_leaf, du_leaf}, {usable_in_autograd(grad_output)},
                              /*retain_graph=*/false, /*create_graph=*/false,
                              /*allow_unused=*/true);
    if (!grads[0].defined()) grads[0] = at::zeros_like(u_leaf);
    if (!grads[1].defined()) grads[1] = at::zeros_like(du_leaf);
    return LeftSpinGrads{grads[0], grads[1]};
  } catch (...) {
    return status_from_exception("left_spin_backward", std::current_exception());
  }
}

at::Tensor left_spin_next_prev(const at::Tensor& du_prev, const at::Tensor& du,
                               const LeftSpinParams& p) {
  if (!du.defined()) return {};
  try {
    c10::NoGradGuard no_grad;
    // A copy, not a view: the caller may reuse du's storage before the next step.
    if (!du_prev.defined()) return du.detach().clone();
    if (du_prev.sizes() != du.sizes() || du_prev.scalar_type() != du.scalar_type() ||
        du_prev.device() != du.device()) {
      return {};
    }
    const at::ScalarType compute = compute_type(du);
    return (p.beta * du_prev.detach().to(compute) + (1.0 - p.beta) * du.detach().to(compute))
        .to(du.scalar_type());
  } catch (...) {
    // Only out-of-memory gets here; an undefined result restarts the inertia.
    return {};
  }
}

}  // namespace vb::backends
