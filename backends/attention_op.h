// Scaled dot-product attention, forward and backward, on whatever device the tensors live on.
// LibTorch 2.x runs at::scaled_dot_product_attention (it picks flash, memory-efficient, cuDNN
// or math); LibTorch 1.13 has none, so a plain implementation stands in for it there. Both
// give the same answers, fully masked rows included (see attention_forward).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "absl/status/statusor.h"

namespace vb::backends {

struct AttentionArgs {
  at::Tensor query;  // [..., L, E]  (e.g. [B, H, L, E])
  at::Tensor key;    // [..., S, E]
  at::Tensor value;  // [..., S, Ev]
  // Undefined, or bool broadcastable to [..., L, S] (true = may attend), or additive of the
  // query's dtype and the same shapes.
  at::Tensor mask;
  // Row i attends keys 0..i (aligned top-left, as PyTorch's is_causal). Not with a mask.
  bool is_causal = false;
  std::optional<double> scale;  // 1/sqrt(E) when unset
};

// softmax(query key^T * scale + mask) value: [..., L, Ev] in the query's dtype. fp16 and
// bf16 inputs accumulate in float32.
//
// A query row whose mask allows no key (bool mask all false, or additive mask all -inf)
// yields zeros, and its gradients are zero: PyTorch >= 2.5 does the same, whereas 1.13 and
// 2.0-2.4 give NaN, so this is enforced here rather than left to the LibTorch version or
// the kernel it picks. An additive mask with large finite negatives masks nothing exactly:
// such a row is a softmax over the scores as usual.
absl::StatusOr<at::Tensor> attention_forward(const AttentionArgs& args);

struct AttentionGrads {
  at::Tensor grad_query, grad_key, grad_value;
};

// The gradients of sum(attention_forward(args) * grad_output) with respect to query, key and
// value. Recomputes the forward under autograd rather than keeping its activations.
absl::StatusOr<AttentionGrads> attention_backward(const AttentionArgs& args,
                                                  const at::Tensor& grad_output);

// "sdpa" (at::scaled_dot_product_attention, LibTorch >= 2.0) or "math" (LibTorch 1.13).
const char* attention_implementation();

}  // namespace vb::backends
