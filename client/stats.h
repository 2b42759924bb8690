// Call statistics of libvb, per layer and per target: how many calls each target took, how
// many failed or were fallbacks, bytes each way, latency percentiles, and the share of calls
// per kind of target. Snapshots merge, so a model's total is the sum of its layers.
//
//   vb::StatsSnapshot s = layer->get_stats();
//   std::cout << s.to_table() << "remote share " << s.remote_ratio() << "\n";
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "common/latency_histogram.h"

namespace vb {

enum class TargetKind { kLocal, kRemote, kCloud };
const char* target_kind_name(TargetKind kind);

struct TargetStats {
  TargetKind kind = TargetKind::kLocal;
  uint64_t calls = 0;      // attempts sent to this target
  uint64_t successes = 0;  // calls this target answered
  uint64_t failures = 0;   // attempts that failed (and moved on, or raised)
  uint64_t fallbacks = 0;  // calls it answered after an earlier target failed or was skipped
  uint64_t skipped = 0;    // calls that passed it by while its breaker was open
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t uploads = 0;      // weights streamed to it
  LatencyHistogram latency;  // answered calls only
  std::string last_error;    // the most recent failure, for diagnosis

  void merge(const TargetStats& other);
};

struct StatsSnapshot {
  uint64_t calls = 0;                          // layer calls (a forward or a backward each)
  uint64_t failed_calls = 0;                   // calls that raised an error to the caller
  std::map<std::string, TargetStats> targets;  // by target name

  uint64_t fallbacks() const;
  uint64_t calls_of(TargetKind kind) const;  // answered by targets of this kind
  double ratio_of(TargetKind kind) const;    // share of answered calls
  double local_ratio() const { return ratio_of(TargetKind::kLocal); }
  double remote_ratio() const { return ratio_of(TargetKind::kRemote); }
  double cloud_ratio() const { return ratio_of(TargetKind::kCloud); }
  uint64_t local_calls() const { return calls_of(TargetKind::kLocal); }
  uint64_t remote_calls() const { return calls_of(TargetKind::kRemote); }
  uint64_t cloud_calls() const { return calls_of(TargetKind::kCloud); }

  void merge(const StatsSnapshot& other);
  std::string to_table() const;
  std::string to_json() const;
};

// A layer that keeps call statistics (every libvb layer); nn::collect_stats sums them.
class StatsSource {
 public:
  virtual ~StatsSource() = default;
  virtual StatsSnapshot get_stats() const = 0;
};

// The live counters behind a snapshot; safe to update from several threads.
class CallStats {
 public:
  // `error` is the failure's status text, empty when the attempt succeeded.
  void record_attempt(const std::string& target, TargetKind kind, const std::string& error,
                      double latency_us, uint64_t bytes_sent, uint64_t bytes_received,
                      uint64_t uploads, bool fallback);
  void record_skip(const std::string& target, TargetKind kind);
  void record_call(bool ok);
  StatsSnapshot snapshot() const;
  void reset();

 private:
  mutable std::mutex mutex_;
  StatsSnapshot stats_;
};

}  // namespace vb
