// Places variable-sized slots inside one fixed region (a tier's budget, allocated once):
// first fit by address, neighbours merged on free. Offsets and sizes are multiples of the
// alignment. Not thread-safe; the tier store calls it under its lock.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>

namespace vb::backends {

class Arena {
 public:
  Arena(uint64_t capacity, uint64_t alignment);

  static uint64_t round_up(uint64_t bytes, uint64_t alignment) {
    return (bytes + alignment - 1) / alignment * alignment;
  }

  // The offset of a free slot of at least `bytes` (rounded up to the alignment), or nullopt
  // when no free run is long enough.
  std::optional<uint64_t> allocate(uint64_t bytes);
  // `offset` must be one allocate() returned and not yet freed.
  void free(uint64_t offset);

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }
  uint64_t largest_free() const;
  uint64_t slot_bytes(uint64_t bytes) const { return round_up(bytes, alignment_); }

 private:
  const uint64_t capacity_;
  const uint64_t alignment_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_;                 // offset -> length, by address
  std::unordered_map<uint64_t, uint64_t> allocated_;  // offset -> length
};

}  // namespace vb::backends
