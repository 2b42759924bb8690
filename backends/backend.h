// The interface every compute device implements. LibTorch's exceptions stop here: every
// method answers with a status, never throws.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/ops.h"
#include "backends/tier_memory.h"

namespace vb::backends {

struct DeviceDescription {
  std::string kind;  // "cpu", "cuda", ...
  int index = 0;
  std::string name;
  uint64_t total_memory_bytes = 0;
  uint64_t free_memory_bytes = 0;
  std::string platform;            // "CPU", "CUDA", "ROCm", ...
  std::string compute_capability;  // "9.0" on an H100; empty where it does not apply
  std::string driver_version;
  std::string runtime_version;
};

// Where a call runs: a device index of the backend, or -1 to let the backend choose (the
// least loaded). `weight_key` is the weight's digest in the daemon's tier store.
struct Placement {
  int device_index = -1;
  std::string weight_key;
};

struct LinearForwardArgs {
  at::Tensor input;   // [..., in_features]
  at::Tensor weight;  // [out_features, in_features]
  at::Tensor bias;    // [out_features], or undefined
  Placement placement{};
};

struct LinearBackwardArgs {
  at::Tensor grad_output;  // [..., out_features]
  at::Tensor input;        // [..., in_features]; may be undefined unless need_grad_weight
  at::Tensor weight;       // [out_features, in_features]
  bool need_grad_input = true;
  bool need_grad_weight = true;
  bool need_grad_bias = true;
  Placement placement{};
};

struct LinearGrads {
  at::Tensor grad_input;  // undefined unless asked for
  at::Tensor grad_weight;
  at::Tensor grad_bias;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::vector<DeviceDescription> devices() const = 0;

  // How to allocate the host tensors that feed this backend (received inputs): pinned
  // memory for a GPU backend, so that no pageable copy sits on the path to the device.
  virtual at::TensorOptions host_tensor_options() const { return at::TensorOptions(); }
  // The memory the daemon's tier store keeps weights in for this backend, and the device
  // that its device tier's tensors are on (weights arrive there already resident). A
  // backend with several devices gives its first; calls placed elsewhere copy the weight.
  virtual absl::StatusOr<std::unique_ptr<TierMemory>> make_tier_memory() const {
    return make_host_tier_memory();
  }
  virtual c10::Device tier_device() const { return c10::Device(c10::kCPU); }
  // INVALID_ARGUMENT when `device_index` is neither -1 nor one of this backend's devices.
  virtual absl::Status check_placement(const Placement& placement) const;

  // `weight` is on tier_device(). Outputs are contiguous host tensors of the inputs' dtype. Every
  // check of check_linear_forward / check_linear_backward is applied to the tensors first.
  virtual absl::StatusOr<at::Tensor> linear_forward(const LinearForwardArgs& args) = 0;
  virtual absl::StatusOr<LinearGrads> linear_backward(const LinearBackwardArgs& args) = 0;
  // A named op (backends/ops.h): host tensors in, contiguous host tensors out; weight blobs
  // arrive on tier_device().
  virtual absl::StatusOr<NamedTensors> run_op(const OpArgs& args) = 0;
};

}  // namespace vb::backends
