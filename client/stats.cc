#include "client/stats.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vb {

const char* target_kind_name(TargetKind kind) {
  switch (kind) {
    case TargetKind::kLocal:
      return "local";
    case TargetKind::kRemote:
      return "remote";
    case TargetKind::kCloud:
      return "cloud";
  }
  return "unknown";
}

void TargetStats::merge(const TargetStats& other) {
  calls += other.calls;
  successes += other.successes;
  failures += other.failures;
  fallbacks += other.fallbacks;
  skipped += other.skipped;
  bytes_sent += other.bytes_sent;
  bytes_received += other.bytes_received;
  uploads += other.uploads;
  latency.merge(other.latency);
  if (!other.last_error.empty()) last_error = other.last_error;
}

uint64_t StatsSnapshot::fallbacks() const {
  uint64_t total = 0;
  for (const auto& [name, t] : targets) total += t.fallbacks;
  return total;
}

uint64_t StatsSnapshot::calls_of(TargetKind kind) const {
  uint64_t total = 0;
  for (const auto& [name, t] : targets) {
    if (t.kind == kind) total += t.successes;
  }
  return total;
}

double StatsSnapshot::ratio_of(TargetKind kind) const {
  uint64_t answered = 0;
  for (const auto& [name, t] : targets) answered += t.successes;
  return answered == 0 ? 0.0 : static_cast<double>(calls_of(kind)) / answered;
}

void StatsSnapshot::merge(const StatsSnapshot& other) {
  calls += other.calls;
  failed_calls += other.failed_calls;
  for (const auto& [name, t] : other.targets) {
    TargetStats& mine = targets[name];
    mine.kind = t.kind;
    mine.merge(t);
  }
}

std::string StatsSnapshot::to_table() const {
  std::string out = absl::StrFormat("%-28s %-6s %8s %8s %8s %9s %12s %12s %7s %9s %9s\n", "target",
                                    "kind", "calls", "ok", "failed", "fallback", "sent", "received",
                                    "uploads", "p50 ms", "p99 ms");
  for (const auto& [name, t] : targets) {
    absl::StrAppendFormat(&out, "%-28s %-6s %8d %8d %8d %9d %12d %12d %7d %9.3f %9.3f\n", name,
                          target_kind_name(t.kind), t.calls, t.successes, t.failures, t.fallbacks,
                          t.bytes_sent, t.bytes_received, t.uploads, t.latency.quantile_ms(0.5),
                          t.latency.quantile_ms(0.99));
  }
  for (const auto& [name, t] : targets) {
    if (!t.last_error.empty())
      absl::StrAppend(&out, "last error of ", name, ": ", t.last_error, "\n");
  }
  absl::StrAppendFormat(&out,
                        "calls %d, failed %d, fallbacks %d; remote_ratio %.3f, local_ratio %.3f, "
                        "cloud_ratio %.3f\n",
                        calls, failed_calls, fallbacks(), remote_ratio(), local_ratio(),
                        cloud_ratio());
  return out;
}

std::string StatsSnapshot::to_json() const {
  nlohmann::json json;
  json["calls"] = calls;
  json["failed_calls"] = failed_calls;
  json["fallbacks"] = fallbacks();
  json["local_calls"] = local_calls();
  json["remote_calls"] = remote_calls();
  json["cloud_calls"] = cloud_calls();
  json["local_ratio"] = local_ratio();
  json["remote_ratio"] = remote_ratio();
  json["cloud_ratio"] = cloud_ratio();
  nlohmann::json& by_target = json["targets"] = nlohmann::json::object();
  for (const auto& [name, t] : targets) {
    by_target[name] = {{"kind", target_kind_name(t.kind)},
                       {"calls", t.calls},
                       {"successes", t.successes},
                       {"failures", t.failures},
                       {"fallbacks", t.fallbacks},
                       {"skipped", t.skipped},
                       {"bytes_sent", t.bytes_sent},
                       {"bytes_received", t.bytes_received},
                       {"uploads", t.uploads},
                       {"latency_p50_ms", t.latency.quantile_ms(0.5)},
                       {"latency_p99_ms", t.latency.quantile_ms(0.99)},
                       {"last_error", t.last_error}};
  }
  return json.dump(2);
}

void CallStats::record_attempt(const std::string& target, TargetKind kind, const std::string& error,
                               double latency_us, uint64_t bytes_sent, uint64_t bytes_received,
                               uint64_t uploads, bool fallback) {
  const bool ok = error.empty();
  std::lock_guard<std::mutex> lock(mutex_);
  TargetStats& t = stats_.targets[target];
  t.kind = kind;
  ++t.calls;
  t.bytes_sent += bytes_sent;
  t.bytes_received += bytes_received;
  t.uploads += uploads;
  if (ok) {
    ++t.successes;
    t.latency.record_us(latency_us);
    if (fallback) ++t.fallbacks;
  } else {
    ++t.failures;
    t.last_error = error;
  }
}

void CallStats::record_skip(const std::string& target, TargetKind kind) {
  std::lock_guard<std::mutex> lock(mutex_);
  TargetStats& t = stats_.targets[target];
  t.kind = kind;
  ++t.skipped;
}

void CallStats::record_call(bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.calls;
  if (!ok) ++stats_.failed_calls;
}

StatsSnapshot CallStats::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CallStats::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = StatsSnapshot();
}

}  // namespace vb
