#include "server/work_queue.h"

#include "absl/strings/str_cat.h"

namespace vb::server {

WorkQueue::WorkQueue(uint32_t workers, uint32_t max_queue) : max_queue_(max_queue) {
  threads_.reserve(workers);
  for (uint32_t i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

WorkQueue::~WorkQueue() { shutdown(); }

absl::Status WorkQueue::submit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return absl::UnavailableError("vbd is draining and accepts no new work");
  // Tasks that an idle worker will pick up at once do not count as waiting.
  const size_t waiting_after = queue_.size() + 1 > idle_ ? queue_.size() + 1 - idle_ : 0;
  if (waiting_after > max_queue_) {
    ++rejected_;
    return absl::ResourceExhaustedError(absl::StrCat(
        "work queue full: ", running_, " call(s) running on ", threads_.size(), " worker(s) and ",
        queue_.size(), " waiting (limits.max_queue = ", max_queue_, ")"));
  }
  queue_.push_back(std::move(task));
  wake_.notify_one();
  return absl::OkStatus();
}

void WorkQueue::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  threads_.clear();
}

WorkQueue::Stats WorkQueue::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return Stats{static_cast<uint32_t>(threads_.size()), max_queue_,
               static_cast<uint32_t>(queue_.size()), running_, rejected_};
}

void WorkQueue::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    ++idle_;
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stopping, and nothing accepted is left
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    lock.unlock();
    task();
    lock.lock();
    --running_;
  }
}

}  // namespace vb::server
