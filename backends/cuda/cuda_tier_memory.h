// The tier store's memory on a CUDA GPU: the host tier is one pinned region and the device
// tier one cudaMalloc region, both allocated when the daemon starts; copies go through a copy
// engine of their own (dedicated host-to-device and device-to-host streams, chunks of 8 MiB),
// so promotions and prefetches overlap with the compute of other calls.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "backends/tier_memory.h"

namespace vb::backends::cuda {

absl::StatusOr<std::unique_ptr<TierMemory>> make_cuda_tier_memory(int device);

}  // namespace vb::backends::cuda
