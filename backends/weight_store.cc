#include "backends/weight_store.h"

#include "absl/strings/str_cat.h"

namespace vb::backends {

std::shared_ptr<const at::Tensor> WeightStore::get(const std::string& digest) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(digest);
  if (it == entries_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru_position);
  return it->second.bytes;
}

bool WeightStore::contains(const std::string& digest) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.count(digest) > 0;
}

absl::Status WeightStore::check_fits(uint64_t byte_size) const {
  if (byte_size <= capacity_bytes_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("weight of ", byte_size, " bytes exceeds the weight store's capacity of ",
                   capacity_bytes_, " bytes (store.capacity_bytes)"));
}

absl::Status WeightStore::put(const std::string& digest, at::Tensor bytes) {
  const uint64_t size = static_cast<uint64_t>(bytes.numel());
  if (absl::Status fits = check_fits(size); !fits.ok()) return fits;
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = entries_.find(digest); it != entries_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru_position);
    return absl::OkStatus();
  }
  while (used_bytes_ + size > capacity_bytes_ && !lru_.empty()) {
    auto victim = entries_.find(lru_.back());
    used_bytes_ -= static_cast<uint64_t>(victim->second.bytes->numel());
    entries_.erase(victim);
    lru_.pop_back();
    ++evictions_;
  }
  lru_.push_front(digest);
  entries_.emplace(digest,
                   Entry{std::make_shared<const at::Tensor>(std::move(bytes)), lru_.begin()});
  used_bytes_ += size;
  return absl::OkStatus();
}

WeightStore::Stats WeightStore::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return Stats{capacity_bytes_, used_bytes_, entries_.size(), evictions_};
}

}  // namespace vb::backends
