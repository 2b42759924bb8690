#include "client/remote_attention.h"

#include <torch/csrc/autograd/custom_function.h>

#include <limits>

#include "client/layer_util.h"

namespace vb::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using State = OpLayerState;

backends::NamedTensors inputs(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask) {
  backends::NamedTensors in = {
      {"query", q.contiguous()}, {"key", k.contiguous()}, {"value", v.contiguous()}};
  if (mask.defined()) in.push_back({"mask", mask.contiguous()});
  return in;
}

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const c10::optional<torch::Tensor>& mask,
                               std::shared_ptr<State> state) {
    const torch::Tensor m = mask.value_or(torch::Tensor());
    OpCall call;
    call.args.op = "attention.forward";
    call.args.inputs = inputs(q, k, v, m);
    call.args.attributes = state->attributes;
    absl::StatusOr<backends::NamedTensors> out = state->router->run_op(call, &state->stats);
    raise_if_error(out.status(), "RemoteAttention forward");
    ctx->save_for_backward({q, k, v});
    if (m.defined()) ctx->saved_data["mask"] = m;
    ctx->saved_data["state"] = capsule(state);
    return out->at(0).tensor;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const auto state = from_capsule<State>(ctx->saved_data["state"]);
    const torch::Tensor mask =
        ctx->saved_data.count("mask") > 0 ? ctx->saved_data["mask"].toTensor() : torch::Tensor();
    OpCall call;
    call.args.op = "attention.backward";
    call.args.inputs = inputs(saved[0].detach(), saved[1].detach(), saved[2].detach(), mask);
    call.args.inputs.push_back({"grad_output", grad_outputs[0].contiguous()});
    call.args.attributes = state->attributes;
    absl::StatusOr<backends::NamedTensors> grads = state->router->run_op(call, &state->stats);
    raise_if_error(grads.status(), "RemoteAttention backward");
    return {grads->at(0).tensor, grads->at(1).tensor, grads->at(2).tensor, torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

RemoteAttentionImpl::RemoteAttentionImpl(RemoteAttentionOptions options_,
                                         std::shared_ptr<Router> router)
    : options(options_), state_(std::make_shared<OpLayerState>()) {
  TORCH_CHECK_VALUE(router != nullptr, "RemoteAttention: router is null");
  state_->router = std::move(router);
  state_->attributes["is_causal"] = options.is_causal() ? 1 : 0;
  if (options.scale()) state_->attributes["scale"] = *options.scale();
}

torch::Tensor RemoteAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                           const torch::Tensor& value, const torch::Tensor& mask) {
  torch::Tensor additive = mask;
  if (mask.defined() && mask.scalar_type() == torch::kBool) {
    // The wire carries floating tensors only: true -> 0, false -> -inf.
    additive = torch::zeros(mask.sizes(), query.options().requires_grad(false))
                   .masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  }
  return AttentionFunction::apply(
      query, key, value,
      additive.defined() ? c10::optional<torch::Tensor>(additive.detach()) : c10::nullopt, state_);
}

StatsSnapshot RemoteAttentionImpl::get_stats() const { return state_->stats.snapshot(); }

void RemoteAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "vb::nn::RemoteAttention(is_causal=" << std::boolalpha << options.is_causal();
  if (options.scale()) stream << ", scale=" << *options.scale();
  stream << ")";
}

}  // namespace vb::nn
