// What the daemon has done, per op: counts by status, bytes each way, and latency split into
// time waiting in the queue, computing, and the whole call (which adds the transfers).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/latency_histogram.h"

namespace vb::server {

struct CallRecord {
  absl::StatusCode code = absl::StatusCode::kOk;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  double total_us = 0;
  double queue_us = -1;  // < 0: the call never reached the queue
  double compute_us = -1;
};

struct OpSnapshot {
  std::string op;
  uint64_t calls = 0;
  uint64_t failures = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  LatencyHistogram total;
  LatencyHistogram queue;
  LatencyHistogram compute;
  std::map<absl::StatusCode, uint64_t> statuses;
};

// Told about every finished call (the metrics endpoint is one).
class CallObserver {
 public:
  virtual ~CallObserver() = default;
  virtual void on_call(const std::string& op, const CallRecord& call) = 0;
};

class OpStats {
 public:
  void record(const std::string& op, const CallRecord& call);
  // Set once, before serving starts.
  void set_observer(CallObserver* observer) { observer_ = observer; }
  std::vector<OpSnapshot> snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, OpSnapshot> ops_;
  CallObserver* observer_ = nullptr;
};

}  // namespace vb::server
