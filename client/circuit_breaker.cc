#include "client/circuit_breaker.h"

#include <algorithm>

namespace vb {

CircuitBreaker::CircuitBreaker(BreakerOptions options, std::function<Clock::time_point()> now)
    : options_(options), now_(std::move(now)), open_for_(options.open_duration) {}

bool CircuitBreaker::allow() {
  std::lock_guard<std::mutex> lock(mutex_);
  switch (state_) {
    case State::kClosed:
      return true;
    case State::kHalfOpen:
      return false;  // a probe is out; everyone else keeps away until it reports
    case State::kOpen:
      if (now_() < reopen_at_) return false;
      state_ = State::kHalfOpen;
      return true;
  }
  return false;
}

void CircuitBreaker::record_success() {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = State::kClosed;
  consecutive_failures_ = 0;
  open_for_ = options_.open_duration;
}

void CircuitBreaker::record_failure() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == State::kHalfOpen) {
    open_for_ = std::min(open_for_ * 2, options_.max_open_duration);
  } else if (state_ == State::kClosed && ++consecutive_failures_ < options_.failure_threshold) {
    return;
  } else if (state_ == State::kOpen) {
    return;  // a call that started before the breaker opened; nothing new to learn
  }
  state_ = State::kOpen;
  reopen_at_ = now_() + open_for_;
}

CircuitBreaker::State CircuitBreaker::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

}  // namespace vb
