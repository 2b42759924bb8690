#include "client/remote_linear.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "client/layer_util.h"

namespace vb::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RemoteLinearFunction : public torch::autograd::Function<RemoteLinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& bias,
                               std::shared_ptr<detail::RemoteLinearState> state) {
    LinearForwardCall call;
    call.input = input;
    call.weight = state->weight_digest.ref(weight);
    call.bias = bias.value_or(torch::Tensor());
    absl::StatusOr<at::Tensor> output = state->router->linear_forward(call, &state->stats);
    raise_if_error(output.status(), "RemoteLinear forward");
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = call.bias.defined();
    // The weight cannot change before backward (autograd checks its version), so the digest
    // taken here is reused there.
    ctx->saved_data["weight_digest"] = call.weight.digest;
    ctx->saved_data["state"] = capsule(state);
    return *output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const auto state = from_capsule<detail::RemoteLinearState>(ctx->saved_data["state"]);
    LinearBackwardCall call;
    call.grad_output = grad_outputs[0].contiguous();
    call.input = saved[0];
    call.weight.tensor = saved[1].detach().contiguous();
    call.weight.digest = ctx->saved_data["weight_digest"].toStringRef();
    call.need_grad_input = ctx->needs_input_grad(0);
    call.need_grad_weight = ctx->needs_input_grad(1);
    call.need_grad_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    if (!call.need_grad_input && !call.need_grad_weight && !call.need_grad_bias) {
      return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    absl::StatusOr<backends::LinearGrads> grads =
        state->router->linear_backward(call, &state->stats);
    raise_if_error(grads.status(), "RemoteLinear backward");
    return {grads->grad_input, grads->grad_weight, grads->grad_bias, torch::Tensor()};
  }
};

}  // namespace

RemoteLinearImpl::RemoteLinearImpl(RemoteLinearOptions options_, std::shared_ptr<Router> router)
    : options(options_), state_(std::make_shared<detail::RemoteLinearState>()) {
  TORCH_CHECK_VALUE(router != nullptr, "RemoteLinear: router is null");
  state_->router = std::move(router);
  // The same initialisation as torch::nn::Linear.
  weight =
      register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty({options.out_features()}));
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

RemoteLinearImpl::RemoteLinearImpl(const torch::nn::LinearImpl& linear,
                                   std::shared_ptr<Router> router)
    : options(linear.options.in_features(), linear.options.out_features()),
      state_(std::make_shared<detail::RemoteLinearState>()) {
  TORCH_CHECK_VALUE(router != nullptr, "RemoteLinear: router is null");
  state_->router = std::move(router);
  options.bias(linear.options.bias());
  weight = register_parameter("weight", linear.weight);
  if (options.bias()) bias = register_parameter("bias", linear.bias);
}

torch::Tensor RemoteLinearImpl::forward(const torch::Tensor& input) {
  // An undefined tensor cannot be an autograd input; an empty optional can.
  return RemoteLinearFunction::apply(
      input, weight, bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt, state_);
}

void RemoteLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "vb::nn::RemoteLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha
         << options.bias() << ")";
}

StatsSnapshot collect_stats(const torch::nn::Module& module) {
  StatsSnapshot total;
  if (auto* self = dynamic_cast<const StatsSource*>(&module)) total.merge(self->get_stats());
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (auto* layer = dynamic_cast<const StatsSource*>(child.get())) {
      total.merge(layer->get_stats());
    }
  }
  return total;
}

}  // namespace vb::nn
