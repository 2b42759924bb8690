// Named ops on tensors, run where the tensors are (the CPU, or a GPU): what the daemon's
// RunOp call and libvb's local target execute. docs/ops.md lists each op's inputs,
// attributes and outputs.
//
//   attention.forward   query, key, value [, mask]             -> output
//   attention.backward  query, key, value [, mask], grad_output -> grad_query, grad_key, grad_value
//   left_spin.forward   u, du [, du_prev]                       -> output
//   left_spin.backward  u, du [, du_prev], grad_output          -> grad_u, grad_du
//   fp4_linear.forward  input [, bias]; weights[0] = 4-bit blob -> output
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/fp4/fp4.h"

namespace vb::backends {

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};
using NamedTensors = std::vector<NamedTensor>;

struct OpArgs {
  std::string op;
  NamedTensors inputs;
  std::vector<at::Tensor> weights;  // 1-D uint8 blobs held by the daemon
  std::map<std::string, double> attributes;
  int device_index = -1;  // as Placement::device_index
};

// What can be refused from a call's header alone: an unknown op, inputs it does not take or
// lacks, a wrong number of weights, attributes it does not know. Messages name them.
absl::Status check_op_header(const std::string& op, const std::vector<std::string>& input_names,
                             size_t weights, const std::map<std::string, double>& attributes);

// The names of the op's outputs, in order (empty for an unknown op).
std::vector<std::string> op_output_names(const std::string& op);

// Runs the op on the tensors as they are (all on one device). Outputs are in the inputs'
// dtype, named as listed above.
absl::StatusOr<NamedTensors> run_op(const OpArgs& args);

// The 4-bit Linear's input checks and output shape, shared with the CUDA kernels' path.
absl::Status check_fp4_linear(const fp4::BlobHeader& weight, const at::Tensor& input,
                              const at::Tensor& bias);

// The input named `name`, or an undefined tensor.
at::Tensor find_input(const NamedTensors& inputs, absl::string_view name);

}  // namespace vb::backends
