#include "backends/tier_memory.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vb::backends {
namespace {

absl::StatusOr<void*> aligned_region(size_t bytes, const char* which) {
  // Large regions come from mmap inside the allocator: pages are committed as the store
  // first writes them, so a generous budget costs nothing until it is used.
  const size_t rounded = (bytes + kTierAlignment - 1) / kTierAlignment * kTierAlignment;
  void* region = std::aligned_alloc(kTierAlignment, rounded == 0 ? kTierAlignment : rounded);
  if (region == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate the ", which, " tier's ", bytes, " bytes"));
  }
  return region;
}

class HostTierMemory final : public TierMemory {
 public:
  std::string device_name() const override { return "cpu"; }
  bool host_is_pinned() const override { return false; }
  absl::StatusOr<void*> allocate_host(size_t bytes) override {
    return aligned_region(bytes, "host");
  }
  void free_host(void* region) override { std::free(region); }
  absl::StatusOr<void*> allocate_device(size_t bytes) override {
    return aligned_region(bytes, "device");
  }
  void free_device(void* region) override { std::free(region); }
  absl::Status to_device(void* device_dst, const void* host_src, size_t bytes) override {
    std::memcpy(device_dst, host_src, bytes);
    return absl::OkStatus();
  }
  absl::Status to_host(void* host_dst, const void* device_src, size_t bytes) override {
    std::memcpy(host_dst, device_src, bytes);
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<TierMemory> make_host_tier_memory() { return std::make_unique<HostTierMemory>(); }

}  // namespace vb::backends
