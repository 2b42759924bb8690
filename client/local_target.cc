#include "backends/cpu_backend.h"
#include "client/target.h"

namespace vb {
namespace {

backends::CpuBackend& cpu() {
  static backends::CpuBackend backend;
  return backend;
}

}  // namespace

absl::StatusOr<at::Tensor> LocalTarget::linear_forward(const LinearForwardCall& call,
                                                       TransferCount*) {
  backends::LinearForwardArgs args;
  args.input = call.input;
  args.weight = call.weight.tensor;
  args.bias = call.bias;
  return cpu().linear_forward(args);
}

absl::StatusOr<backends::LinearGrads> LocalTarget::linear_backward(const LinearBackwardCall& call,
                                                                   TransferCount*) {
  backends::LinearBackwardArgs args;
  args.grad_output = call.grad_output;
  args.input = call.input;
  args.weight = call.weight.tensor;
  args.need_grad_input = call.need_grad_input;
  args.need_grad_weight = call.need_grad_weight;
  args.need_grad_bias = call.need_grad_bias;
  return cpu().linear_backward(args);
}

absl::StatusOr<backends::NamedTensors> LocalTarget::run_op(const OpCall& call, TransferCount*) {
  backends::OpArgs args = call.args;
  for (const WeightRef& weight : call.weights) args.weights.push_back(weight.tensor);
  return cpu().run_op(args);
}

}  // namespace vb
