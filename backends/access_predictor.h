// Learns the order in which compute calls touch tensors, so the tier store can evict the
// tensor needed furthest in the future and prefetch the ones needed next.
//
// Layer-by-layer training and inference repeat one sequence every step (forward 1..L, then
// backward L..1). The predictor records accesses until the sequence starts over: the
// period of the history, found online with the prefix function (Knuth-Morris-Pratt), is
// adopted once the repeat has been confirmed for a few accesses. From then on it follows
// the cycle; an access that differs from the expected one drops the record and recording
// starts again from that access. A client may also hint the order outright.
//
// Keys are the store's lineage ids, not digests: a trained weight gets a new digest every
// step, but the new version takes over its predecessor's lineage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace vb::backends {

class AccessPredictor {
 public:
  struct Stats {
    uint64_t cycle_length = 0;  // 0 while recording
    uint64_t cycles_adopted = 0;
    uint64_t divergences = 0;  // accesses that broke an adopted cycle
    bool hinted = false;       // the cycle in force came from a client
  };

  // Repeats must match for this many accesses before a period is adopted (fewer when the
  // period itself is shorter).
  static constexpr size_t kConfirmAccesses = 4;

  explicit AccessPredictor(size_t max_history = size_t{1} << 16) : max_history_(max_history) {}

  void observe(uint64_t key);
  // The client's word that accesses follow `order`, repeating, starting with order[0].
  void hint(const std::vector<uint64_t>& order);

  bool following() const { return !cycle_.empty(); }
  // Accesses from now until `key` is used next (1: the very next access), or nullopt when
  // there is no cycle or the cycle never uses it.
  std::optional<uint64_t> distance_to_next_use(uint64_t key) const;
  // The next `count` distinct keys the cycle expects, nearest first.
  std::vector<uint64_t> upcoming(size_t count) const;

  Stats stats() const;

 private:
  void record(uint64_t key);
  void adopt(std::vector<uint64_t> cycle, size_t phase, bool hinted);

  const size_t max_history_;
  std::vector<uint64_t> history_;
  std::vector<size_t> prefix_;  // prefix function of history_
  std::vector<uint64_t> cycle_;
  std::unordered_map<uint64_t, std::vector<size_t>> positions_;  // key -> sorted positions
  size_t phase_ = 0;  // index in cycle_ of the next expected access
  Stats stats_;
};

}  // namespace vb::backends
