// Skips a target that keeps failing, and lets one call probe it again after a while.
// closed --(failure_threshold consecutive failures)--> open --(open_duration)--> half-open:
// one probe call; success closes, failure reopens for twice as long (up to the maximum).
#pragma once

#include <chrono>
#include <functional>
#include <mutex>

#include "client/options.h"

namespace vb {

class CircuitBreaker {
 public:
  using Clock = std::chrono::steady_clock;
  enum class State { kClosed, kOpen, kHalfOpen };

  explicit CircuitBreaker(BreakerOptions options = {},
                          std::function<Clock::time_point()> now = &Clock::now);

  // Whether a call may go to the target now. In the open state, the first caller after the
  // open period becomes the probe (and only it, until it reports back).
  bool allow();
  void record_success();
  void record_failure();
  State state() const;

 private:
  const BreakerOptions options_;
  const std::function<Clock::time_point()> now_;
  mutable std::mutex mutex_;
  State state_ = State::kClosed;
  int consecutive_failures_ = 0;
  std::chrono::milliseconds open_for_;
  Clock::time_point reopen_at_{};
};

}  // namespace vb
