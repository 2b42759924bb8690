// Compute on the host's CPU through LibTorch. Also what libvb runs for its local target, so
// a call gives the same answer wherever the router sends it.
#pragma once

#include "backends/backend.h"

namespace vb::backends {

class CpuBackend final : public Backend {
 public:
  std::vector<DeviceDescription> devices() const override;
  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardArgs& args) override;
  absl::StatusOr<LinearGrads> linear_backward(const LinearBackwardArgs& args) override;
  absl::StatusOr<NamedTensors> run_op(const OpArgs& args) override {
    return backends::run_op(args);
  }
};

}  // namespace vb::backends
