// The memory the tier store moves tensors between: one region of device memory and one of
// host memory, each allocated once when the daemon starts and reused for every tensor after
// (pinning host memory costs about 0.4 s per GiB on the GPU machine: never per transfer).
//
// A backend provides it: on CUDA the host region is pinned and copies go through the copy
// engines; on a CPU-only daemon both regions are ordinary memory and the "device" is the
// compute tier. Free of LibTorch, so the store and its tests compile without it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vb::backends {

// Regions are aligned to this many bytes, and so is every slot the store hands out, which
// is what direct I/O (O_DIRECT) needs of a buffer.
inline constexpr size_t kTierAlignment = 4096;

class TierMemory {
 public:
  virtual ~TierMemory() = default;

  // "cuda:0", "cpu": where device-tier tensors live.
  virtual std::string device_name() const = 0;
  // Whether host regions are page-locked (copies from them skip any staging).
  virtual bool host_is_pinned() const = 0;

  // `bytes` of kTierAlignment-aligned memory, or RESOURCE_EXHAUSTED naming the size.
  virtual absl::StatusOr<void*> allocate_host(size_t bytes) = 0;
  virtual void free_host(void* region) = 0;
  virtual absl::StatusOr<void*> allocate_device(size_t bytes) = 0;
  virtual void free_device(void* region) = 0;

  // Copies that are complete when they return. `host_src` may be any host memory (the copy
  // is staged when it is not pinned).
  virtual absl::Status to_device(void* device_dst, const void* host_src, size_t bytes) = 0;
  virtual absl::Status to_host(void* host_dst, const void* device_src, size_t bytes) = 0;
};

// Ordinary memory on both sides, copies by memcpy: the CPU daemon, and tests.
std::unique_ptr<TierMemory> make_host_tier_memory();

}  // namespace vb::backends
