// Content-addressed weights held in host memory, least recently used evicted first when a
// new weight needs room. An evicted weight is only forgotten, never wrong: a call naming it
// gets NOT_FOUND and the client uploads it again. Calls in flight keep their blob alive.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"

namespace vb::backends {

class WeightStore {
 public:
  struct Stats {
    uint64_t capacity_bytes = 0;
    uint64_t used_bytes = 0;
    uint64_t entries = 0;
    uint64_t evictions = 0;
  };

  explicit WeightStore(uint64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  // The bytes (a 1-D uint8 tensor) stored under `digest`, or nullptr. Marks it recently used.
  std::shared_ptr<const at::Tensor> get(const std::string& digest);
  bool contains(const std::string& digest) const;

  // RESOURCE_EXHAUSTED when `byte_size` alone exceeds the capacity.
  absl::Status check_fits(uint64_t byte_size) const;
  // Stores `bytes` (1-D uint8, digest already verified) under `digest`, evicting as needed.
  absl::Status put(const std::string& digest, at::Tensor bytes);

  Stats stats() const;

 private:
  struct Entry {
    std::shared_ptr<const at::Tensor> bytes;
    std::list<std::string>::iterator lru_position;
  };

  const uint64_t capacity_bytes_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // front = most recently used
  uint64_t used_bytes_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace vb::backends
