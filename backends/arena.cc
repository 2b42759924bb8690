#include "backends/arena.h"

#include <algorithm>
#include <cassert>

namespace vb::backends {

Arena::Arena(uint64_t capacity, uint64_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<uint64_t> Arena::allocate(uint64_t bytes) {
  const uint64_t length = round_up(std::max<uint64_t>(bytes, 1), alignment_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < length) continue;
    const uint64_t offset = it->first;
    const uint64_t rest = it->second - length;
    free_.erase(it);
    if (rest > 0) free_.emplace(offset + length, rest);
    allocated_.emplace(offset, length);
    used_ += length;
    return offset;
  }
  return std::nullopt;
}

void Arena::free(uint64_t offset) {
  auto slot = allocated_.find(offset);
  assert(slot != allocated_.end());
  uint64_t start = offset;
  uint64_t length = slot->second;
  used_ -= length;
  allocated_.erase(slot);
  auto next = free_.lower_bound(start);
  if (next != free_.end() && start + length == next->first) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto previous = std::prev(next);
    if (previous->first + previous->second == start) {
      start = previous->first;
      length += previous->second;
      free_.erase(previous);
    }
  }
  free_.emplace(start, length);
}

uint64_t Arena::largest_free() const {
  uint64_t largest = 0;
  for (const auto& [offset, length] : free_) largest = std::max(largest, length);
  return largest;
}

}  // namespace vb::backends
