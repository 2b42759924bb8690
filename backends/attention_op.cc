#include "backends/attention_op.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/version.h>

#include <cmath>
#include <exception>
#include <limits>
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

std::string batch_of(const at::Tensor& tensor) {
  return shape_string(std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end() - 2));
}

absl::Status check_like_query(const at::Tensor& tensor, absl::string_view field,
                              const at::Tensor& query) {
  VB_RETURN_IF_ERROR(spec_of(tensor, field).status());
  if (tensor.dim() != query.dim()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape = ", shape_of(tensor),
                                                   ": expected rank ", query.dim(),
                                                   " like query.shape = ", shape_of(query)));
  }
  if (tensor.scalar_type() != query.scalar_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".dtype = ", c10::toString(tensor.scalar_type()),
                     ": expected query.dtype = ", c10::toString(query.scalar_type())));
  }
  if (tensor.device() != query.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".device = ", tensor.device().str(),
                     ": expected query.device = ", query.device().str()));
  }
  if (tensor.sizes().slice(0, tensor.dim() - 2) != query.sizes().slice(0, query.dim() - 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape = ", shape_of(tensor), ": batch dims ", batch_of(tensor),
                     " expected equal to query's ", batch_of(query), " (no broadcasting)"));
  }
  return absl::OkStatus();
}

absl::Status check_mask(const AttentionArgs& args) {
  const at::Tensor& mask = args.mask;
  const at::Tensor& query = args.query;
  if (args.is_causal) {
    return absl::InvalidArgumentError(
        "mask is defined and is_causal = true: expected one or the other, not both");
  }
  if (mask.scalar_type() != at::kBool && mask.scalar_type() != query.scalar_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("mask.dtype = ", c10::toString(mask.scalar_type()),
                     ": expected Bool or query.dtype = ", c10::toString(query.scalar_type())));
  }
  if (mask.device() != query.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask.device = ", mask.device().str(), ": expected query.device = ", query.device().str()));
  }
  // The target [..., L, S]; the mask must broadcast to it, aligned from the right.
  std::vector<int64_t> target(query.sizes().begin(), query.sizes().end());
  target.back() = args.key.size(-2);
  const std::string expected =
      absl::StrCat(": expected rank 1..", target.size(),
                   " and broadcastable to [..., L, S] = ", shape_string(target));
  if (mask.dim() < 1 || mask.dim() > static_cast<int64_t>(target.size())) {
    return absl::InvalidArgumentError(absl::StrCat("mask.shape = ", shape_of(mask), expected));
  }
  const int64_t offset = static_cast<int64_t>(target.size()) - mask.dim();
  for (int64_t i = 0; i < mask.dim(); ++i) {
    if (mask.size(i) != 1 && mask.size(i) != target[offset + i]) {
      return absl::InvalidArgumentError(absl::StrCat("mask.shape = ", shape_of(mask), expected));
    }
  }
  return absl::OkStatus();
}

absl::Status check_args(const AttentionArgs& args) {
  VB_RETURN_IF_ERROR(spec_of(args.query, "query").status());
  if (args.query.dim() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("query.shape = ", shape_of(args.query), ": expected rank >= 2, [..., L, E]"));
  }
  VB_RETURN_IF_ERROR(check_like_query(args.key, "key", args.query));
  VB_RETURN_IF_ERROR(check_like_query(args.value, "value", args.query));
  if (args.key.size(-1) != args.query.size(-1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("key.shape = ", shape_of(args.key), ": expected E = ", args.query.size(-1),
                     " (the last dim of query.shape = ", shape_of(args.query), ")"));
  }
  if (args.value.size(-2) != args.key.size(-2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("value.shape = ", shape_of(args.value), ": expected S = ", args.key.size(-2),
                     " (dim -2 of key.shape = ", shape_of(args.key), ")"));
  }
  if (args.mask.defined()) VB_RETURN_IF_ERROR(check_mask(args));
  if (args.scale && !(std::isfinite(*args.scale) && *args.scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale = ", *args.scale, ": expected finite and > 0"));
  }
  return absl::OkStatus();
}

// Autograd refuses to save inference tensors for backward; a clone made outside inference
// mode is a normal one.
at::Tensor usable_in_autograd(const at::Tensor& tensor) {
  if (!tensor.defined()) return tensor;
  return tensor.is_inference() ? tensor.clone() : tensor.detach();
}

#if TORCH_VERSION_MAJOR < 2
// LibTorch 1.13 has no scaled_dot_product_attention; this is its documented reference.
at::Tensor attention_math(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& mask, bool is_causal, double scale) {
  const at::ScalarType compute = query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor q = query.to(compute);
  const at::Tensor k = key.to(compute);
  const at::Tensor v = value.to(compute);
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  const double minus_inf = -std::numeric_limits<double>::infinity();
  if (is_causal) {
    const at::Tensor future =
        at::ones({q.size(-2), k.size(-2)}, q.options().dtype(at::kBool)).triu(1);
    scores = scores.masked_fill(future, minus_inf);
  }
  if (mask.defined()) {
    scores = mask.scalar_type() == at::kBool ? scores.masked_fill(mask.logical_not(), minus_inf)
                                             : scores + mask.to(compute);
  }
  return at::matmul(at::softmax(scores, -1), v).to(query.scalar_type());
}
#endif

// The forward on tensors already checked. A fully masked row would give NaN on some LibTorch
// versions and kernels and 0 on others: it is given a mask that allows everything (so the
// softmax and its gradient stay finite) and its output is then zeroed, which also zeroes the
// gradients it sends back.
at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const at::Tensor& raw_mask, bool is_causal, std::optional<double> scale) {
  at::Tensor mask;
  at::Tensor dead_rows;
  if (raw_mask.defined()) {
    if (raw_mask.scalar_type() == at::kBool) {
      dead_rows = raw_mask.logical_not().all(-1, /*keepdim=*/true);
      mask = raw_mask.logical_or(dead_rows);
    } else {
      dead_rows = raw_mask.isneginf().all(-1, /*keepdim=*/true);
      mask = raw_mask.masked_fill(dead_rows, 0.0);
    }
  }
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(query.size(-1)));
  at::Tensor out;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  // A plain double converts to the scale parameter whether it is c10:: or std::optional.
  const double s = scale.value_or(default_scale);
  out = mask.defined() ? at::scaled_dot_product_attention(query, key, value, mask, 0.0, false, s)
                       : at::scaled_dot_product_attention(query, key, value, {}, 0.0, is_causal, s);
#elif TORCH_VERSION_MAJOR == 2
  // 2.0's SDPA always scales by 1/sqrt(E); another scale is folded into the query.
  const at::Tensor q = scale ? query * (*scale / default_scale) : query;
  out = mask.defined() ? at::scaled_dot_product_attention(q, key, value, mask, 0.0, false)
                       : at::scaled_dot_product_attention(q, key, value, {}, 0.0, is_causal);
#else
  out = attention_math(query, key, value, mask, is_causal, scale.value_or(default_scale));
#endif
  if (dead_rows.defined()) out = out.masked_fill(dead_rows, 0.0);
  return out;
}

}  // namespace

absl::StatusOr<at::Tensor> attention_forward(const AttentionArgs& args) {
  VB_RETURN_IF_ERROR(check_args(args));
  try {
    c10::NoGradGuard no_grad;
    return attention(args.query, args.key, args.value, args.mask, args.is_causal, args.scale);
  } catch (...) {
    return status_from_exception("attention_forward", std::current_exception());
  }
}

absl::StatusOr<AttentionGrads> attention_backward(const AttentionArgs& args,
                                                  const at::Tensor& grad_output) {
  VB_RETURN_IF_ERROR(check_args(args));
  VB_RETURN_IF_ERROR(spec_of(grad_output, "grad_output").status());
  std::vector<int64_t> out_shape(args.query.sizes().begin(), args.query.sizes().end());
  out_shape.back() = args.value.size(-1);
  if (grad_output.sizes() != at::IntArrayRef(out_shape)) {
    return absl::InvalidArgumentError(absl::StrCat("grad_output.shape = ", shape_of(grad_output),
                                                   ": expected the output's shape ",
                                                   shape_string(out_shape)));
  }
  if (grad_output.scalar_type() != args.query.scalar_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_output.dtype = ", c10::toString(grad_output.scalar_type()),
                     ": expected query.dtype = ", c10::toString(args.query.scalar_type())));
  }
  if (grad_output.device() != args.query.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_output.device = ", grad_output.device().str(),
                     ": expected query.device = ", args.query.device().str()));
  }
  try {
    // The caller may be in no-grad or inference mode; the recompute needs a graph.
    c10::InferenceMode not_inference(false);
    c10::AutoGradMode grad_on(true);
    const at::Tensor q = usable_in_autograd(args.query).requires_grad_(true);
    const at::Tensor k = usable_in_autograd(args.key).requires_grad_(true);
    const at::Tensor v = usable_in_autograd(args.value).requires_grad_(true);
    const at::Tensor out =
        attention(q, k, v, usable_in_autograd(args.mask), args.is_causal, args.scale);
    std::vector<at::Tensor> grads =
        torch::autograd::grad({out}, {q, k, v}, {usable_in_autograd(grad_output)},
                              /*retain_graph=*/false, /*create_graph=*/false,
                              /*allow_unused=*/true);
    const at::Tensor* inputs[] = {&q, &k, &v};
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) grads[i] = at::zeros_like(*inputs[i]);
    }
    return AttentionGrads{grads[0], grads[1], grads[2]};
  } catch (...) {
    return status_from_exception("attention_backward", std::current_exception());
  }
}

const char* attention_implementation() {
#if TORCH_VERSION_MAJOR >= 2
  return "sdpa";
#else
  return "math";
#endif
}

}  // namespace vb::backends
