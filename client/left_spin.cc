#include "client/left_spin.h"

#include <torch/csrc/autograd/custom_function.h>

#include "backends/left_spin_op.h"
#include "client/layer_util.h"

namespace vb::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using State = OpLayerState;

// The call's inputs; du_prev travels only once there is one.
backends::NamedTensors inputs(const torch::Tensor& u, const torch::Tensor& du,
                              const torch::Tensor& du_prev) {
  backends::NamedTensors in = {{"u", u.contiguous()}, {"du", du.contiguous()}};
  if (du_prev.defined()) in.push_back({"du_prev", du_prev.contiguous()});
  return in;
}

class LeftSpinFunction : public torch::autograd::Function<LeftSpinFunction> {
 public:
  // du_prev is an optional: an undefined tensor cannot be an autograd input.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& u,
                               const torch::Tensor& du, const c10::optional<torch::Tensor>& du_prev,
                               std::shared_ptr<State> state) {
    const torch::Tensor previous = du_prev.value_or(torch::Tensor());
    OpCall call;
    call.args.op = "left_spin.forward";
    call.args.inputs = inputs(u, du, previous);
    call.args.attributes = state->attributes;
    absl::StatusOr<backends::NamedTensors> out = state->router->run_op(call, &state->stats);
    raise_if_error(out.status(), "LeftSpinResidual forward");
    ctx->save_for_backward({u, du});
    if (previous.defined()) ctx->saved_data["du_prev"] = previous;
    ctx->saved_data["state"] = capsule(state);
    return out->at(0).tensor;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const auto state = from_capsule<State>(ctx->saved_data["state"]);
    OpCall call;
    call.args.op = "left_spin.backward";
    const torch::Tensor previous = ctx->saved_data.count("du_prev") > 0
                                       ? ctx->saved_data["du_prev"].toTensor()
                                       : torch::Tensor();
    call.args.inputs = inputs(saved[0].detach(), saved[1].detach(), previous);
    call.args.inputs.push_back({"grad_output", grad_outputs[0].contiguous()});
    call.args.attributes = state->attributes;
    absl::StatusOr<backends::NamedTensors> grads = state->router->run_op(call, &state->stats);
    raise_if_error(grads.status(), "LeftSpinResidual backward");
    return {grads->at(0).tensor, grads->at(1).tensor, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

LeftSpinResidualImpl::LeftSpinResidualImpl(LeftSpinOptions options_, std::shared_ptr<Router> router)
    : options(options_), state_(std::make_shared<OpLayerState>()) {
  TORCH_CHECK_VALUE(router != nullptr, "LeftSpinResidual: router is null");
  backends::LeftSpinParams params;
  params.alpha = options.alpha();
  params.tau = options.tau();
  params.beta = options.beta();
  params.w1 = options.w1();
  params.w2 = options.w2();
  params.eps = options.eps();
  raise_if_error(backends::check_left_spin_params(params), "LeftSpinResidual options");
  state_->router = std::move(router);
  state_->attributes = {{"alpha", params.alpha}, {"tau", params.tau}, {"beta", params.beta},
                        {"w1", params.w1},       {"w2", params.w2},   {"eps", params.eps}};
}

torch::Tensor LeftSpinResidualImpl::forward(const torch::Tensor& u, const torch::Tensor& du) {
  const bool fits = du_prev_.defined() && du_prev_.sizes() == du.sizes();
  const torch::Tensor previous = fits ? du_prev_.to(du.scalar_type()) : torch::Tensor();
  torch::Tensor out = LeftSpinFunction::apply(
      u, du, previous.defined() ? c10::optional<torch::Tensor>(previous) : c10::nullopt, state_);
  if (is_training()) {
    torch::NoGradGuard no_grad;
    backends::LeftSpinParams params;
    params.beta = options.beta();
    const torch::Tensor next = backends::left_spin_next_prev(previous, du.detach(), params);
    if (!du_prev_.defined()) {
      du_prev_ = register_buffer("du_prev", next.clone());
    } else {
      // The registered buffer is the same tensor object: change it in place.
      du_prev_.set_(next.to(du_prev_.scalar_type()).clone());
    }
  }
  return out;
}

StatsSnapshot LeftSpinResidualImpl::get_stats() const { return state_->stats.snapshot(); }

void LeftSpinResidualImpl::pretty_print(std::ostream& stream) const {
  stream << "vb::nn::LeftSpinResidual(alpha=" << options.alpha() << ", tau=" << options.tau()
         << ", beta=" << options.beta() << ", w1=" << options.w1() << ", w2=" << options.w2()
         << ", eps=" << options.eps() << ")";
}

}  // namespace vb::nn
