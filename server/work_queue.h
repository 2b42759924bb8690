// A fixed set of worker threads fed by a bounded queue. A full queue refuses new work at once
// (RESOURCE_EXHAUSTED) instead of letting latency and memory grow without bound.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace vb::server {

class WorkQueue {
 public:
  struct Stats {
    uint32_t workers = 0;
    uint32_t max_queue = 0;
    uint32_t queued = 0;
    uint32_t running = 0;
    uint64_t rejected = 0;
  };

  WorkQueue(uint32_t workers, uint32_t max_queue);
  // Runs what was accepted, then joins the workers.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Accepts `task` when a worker is idle or fewer than max_queue tasks wait. Otherwise
  // RESOURCE_EXHAUSTED at once; UNAVAILABLE once shutdown() has begun.
  absl::Status submit(std::function<void()> task);

  // Stops accepting, lets accepted tasks finish, joins the workers. Idempotent.
  void shutdown();

  Stats stats() const;

 private:
  void worker_loop();

  const uint32_t max_queue_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
  uint32_t idle_ = 0;
  uint32_t running_ = 0;
  uint64_t rejected_ = 0;
  bool stopping_ = false;
};

}  // namespace vb::server
