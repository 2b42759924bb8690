#include "backends/cpu_backend.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "backends/linear_op.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"

namespace vb::backends {
namespace {

// float16 and bfloat16 are computed in float32 and rounded once at the end: LibTorch 1.13
// has no float16 matmul on CPU, and float32 accumulation is what the GPU path does too.
at::ScalarType compute_type(at::ScalarType storage) {
  return (storage == at::kHalf || storage == at::kBFloat16) ? at::kFloat : storage;
}

at::Tensor as_compute(const at::Tensor& t) {
  return t.to(compute_type(t.scalar_type())).contiguous();
}

std::string cpu_model_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "cpu";
}

uint64_t mem_available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

}  // namespace

absl::Status Backend::check_placement(const Placement& placement) const {
  const int count = static_cast<int>(devices().size());
  if (placement.device_index >= -1 && placement.device_index < count) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("device_index = ", placement.device_index,
                                                 ": this daemon has ", count, " device(s), 0 to ",
                                                 count - 1, " (or leave it unset)"));
}

std::vector<DeviceDescription> CpuBackend::devices() const {
  DeviceDescription cpu;
  cpu.kind = "cpu";
  cpu.index = 0;
  cpu.name = cpu_model_name();
  cpu.total_memory_bytes = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                           static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  cpu.free_memory_bytes = mem_available_bytes();
  cpu.platform = "CPU";
  return {cpu};
}

absl::StatusOr<at::Tensor> CpuBackend::linear_forward(const LinearForwardArgs& args) {
  VB_RETURN_IF_ERROR(check_args(args));
  try {
    const at::Tensor bias = args.bias.defined() ? as_compute(args.bias) : at::Tensor();
    at::Tensor out = at::linear(as_compute(args.input), as_compute(args.weight), bias);
    return out.to(args.input.scalar_type()).contiguous();
  } catch (...) {
    return status_from_exception("linear_forward on cpu", std::current_exception());
  }
}

absl::StatusOr<LinearGrads> CpuBackend::linear_backward(const LinearBackwardArgs& args) {
  VB_RETURN_IF_ERROR(check_args(args));
  try {
    const at::ScalarType storage = args.grad_output.scalar_type();
    const int64_t out_features = args.weight.size(0);
    const int64_t in_features = args.weight.size(1);
    // The same products autograd forms for at::linear, on the flattened leading dims.
    const at::Tensor grad_2d = as_compute(args.grad_output).reshape({-1, out_features});
    LinearGrads grads;
    if (args.need_grad_input) {
      std::vector<int64_t> shape(args.grad_output.sizes().begin(), args.grad_output.sizes().end());
      shape.back() = in_features;
      grads.grad_input =
          grad_2d.mm(as_compute(args.weight)).reshape(shape).to(storage).contiguous();
    }
    if (args.need_grad_weight) {
      const at::Tensor input_2d = as_compute(args.input).reshape({-1, in_features});
      grads.grad_weight = grad_2d.t().mm(input_2d).to(storage).contiguous();
    }
    if (args.need_grad_bias) {
      grads.grad_bias = grad_2d.sum(0).to(storage).contiguous();
    }
    return grads;
  } catch (...) {
    return status_from_exception("linear_backward on cpu", std::current_exception());
  }
}

}  // namespace vb::backends
