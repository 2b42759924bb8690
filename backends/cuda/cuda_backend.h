// Linear on the node's CUDA GPUs through LibTorch (built with VB_WITH_CUDA, on a CUDA build
// of LibTorch). Every local GPU is used: a call runs on the device it names or on the least
// loaded one. Inputs arrive in pinned host memory and reach the device through the copy
// engine on their own stream; compute runs on the calling worker's stream for that device; outputs
// come back into pinned memory. Weights arrive resident on the first GPU, placed there by the
// daemon's tier store, so a weight crosses PCIe once, not once per call.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "backends/backend.h"
#include "backends/device_manager.h"

namespace vb::backends::cuda {

struct CudaBackendOptions {
  // TF32 tensor cores for float32 matmuls. Off by default: results then compare tightly with
  // the CPU (float32 to 1e-5 relative).
  bool allow_tf32 = false;
};

class CudaBackend;
absl::StatusOr<std::unique_ptr<Backend>> create_cuda_backend(const CudaBackendOptions& options);

// LibTorch's runtime view, with CUDA's memory statistics, cache and synchronisation.
std::shared_ptr<AcceleratorRuntime> cuda_runtime();

}  // namespace vb::backends::cuda
