#include "backends/access_predictor.h"

#include <algorithm>
#include <unordered_set>

namespace vb::backends {

void AccessPredictor::observe(uint64_t key) {
  if (following()) {
    if (cycle_[phase_] == key) {
      phase_ = (phase_ + 1) % cycle_.size();
      return;
    }
    // The pattern changed (another model, a different batch of layers): forget it.
    ++stats_.divergences;
    cycle_.clear();
    positions_.clear();
    stats_.hinted = false;
  }
  record(key);
}

void AccessPredictor::record(uint64_t key) {
  if (history_.size() >= max_history_) {
    history_.clear();
    prefix_.clear();
  }
  history_.push_back(key);
  const size_t i = history_.size() - 1;
  size_t k = i == 0 ? 0 : prefix_[i - 1];
  while (k > 0 && history_[i] != history_[k]) k = prefix_[k - 1];
  if (i > 0 && history_[i] == history_[k]) ++k;
  prefix_.push_back(k);
  // history_[0..i] has period p = i + 1 - k; the last k accesses repeat the first k.
  const size_t period = i + 1 - k;
  // Two accesses at least, so that one key used twice in a row is not taken for a cycle.
  if (k >= std::max<size_t>(2, std::min(period, kConfirmAccesses))) {
    std::vector<uint64_t> cycle(history_.begin(), history_.begin() + static_cast<long>(period));
    adopt(std::move(cycle), (i + 1) % period, false);
  }
}

void AccessPredictor::hint(const std::vector<uint64_t>& order) {
  if (order.empty()) return;
  adopt(order, 0, true);
}

void AccessPredictor::adopt(std::vector<uint64_t> cycle, size_t phase, bool hinted) {
  cycle_ = std::move(cycle);
  phase_ = phase;
  positions_.clear();
  for (size_t p = 0; p < cycle_.size(); ++p) positions_[cycle_[p]].push_back(p);
  history_.clear();
  prefix_.clear();
  ++stats_.cycles_adopted;
  stats_.hinted = hinted;
}

std::optional<uint64_t> AccessPredictor::distance_to_next_use(uint64_t key) const {
  auto it = positions_.find(key);
  if (it == positions_.end()) return std::nullopt;
  const std::vector<size_t>& at = it->second;
  auto next = std::lower_bound(at.begin(), at.end(), phase_);
  if (next != at.end()) return *next - phase_ + 1;
  return at.front() + cycle_.size() - phase_ + 1;
}

std::vector<uint64_t> AccessPredictor::upcoming(size_t count) const {
  std::vector<uint64_t> keys;
  std::unordered_set<uint64_t> seen;
  for (size_t step = 0; step < cycle_.size() && keys.size() < count; ++step) {
    const uint64_t key = cycle_[(phase_ + step) % cycle_.size()];
    if (seen.insert(key).second) keys.push_back(key);
  }
  return keys;
}

AccessPredictor::Stats AccessPredictor::stats() const {
  Stats stats = stats_;
  stats.cycle_length = cycle_.size();
  return stats;
}

}  // namespace vb::backends
