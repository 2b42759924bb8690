// The left-spin residual: a residual update u + du whose step is damped when the update is
// large relative to u, or swings away from the previous step's update.
//
//   u' = u + g(phi) * du,  g(phi) = 1 / sqrt(1 + phi^2),  phi = alpha * softplus(s - tau),
//   s  = w1 * d + w2 * a,  d = |du| / (eps + |u|),
//   a  = |du - du_prev| / (eps + |du| + |du_prev|)
//
// |.| is the L2 norm per sample: a tensor [N, ...] holds N samples, each normed over all its
// other dims, so g is one number per sample. du_prev is the previous step's update as kept by
// the layer (left_spin_next_prev); it is a constant: no gradient flows into it.
#pragma once

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vb::backends {

struct LeftSpinParams {
  double alpha = 0.5, tau = 0.3, beta = 0.7, w1 = 1.0, w2 = 1.0, eps = 1e-6;
};

// OK when every field is finite, alpha >= 0, eps > 0 and 0 <= beta < 1; otherwise
// INVALID_ARGUMENT naming the field.
absl::Status check_left_spin_params(const LeftSpinParams& p);

// u' as above, in u's dtype (fp16 and bf16 compute in float32). u, du and a defined du_prev
// share shape [N, ...] (rank >= 1), floating dtype and device. An undefined du_prev means the
// first step: a = 0.
absl::StatusOr<at::Tensor> left_spin_forward(const at::Tensor& u, const at::Tensor& du,
                                             const at::Tensor& du_prev, const LeftSpinParams& p);

struct LeftSpinGrads {
  at::Tensor grad_u, grad_du;
};

// The gradients of sum(left_spin_forward(u, du, du_prev, p) * grad_output) with respect to u
// and du (grad_output shaped like u), by recomputing the forward under autograd.
absl::StatusOr<LeftSpinGrads> left_spin_backward(const at::Tensor& u, const at::Tensor& du,
                                                 const at::Tensor& du_prev, const LeftSpinParams& p,
                                                 const at::Tensor& grad_output);

// The inertia the layer keeps after each training forward: beta * du_prev + (1 - beta) * du,
// or a copy of du when du_prev is undefined; detached, in du's dtype. Undefined when du is
// undefined or du_prev differs from du in shape, dtype or device (say, a smaller last batch),
// which the next forward then takes as a first step.
at::Tensor left_spin_next_prev(const at::Tensor& du_prev, const at::Tensor& du,
                               const LeftSpinParams& p);

}  // namespace vb::backends
