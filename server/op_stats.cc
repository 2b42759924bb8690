#include "server/op_stats.h"

namespace vb::server {

void OpStats::record(const std::string& op, const CallRecord& call) {
  if (observer_ != nullptr) observer_->on_call(op, call);
  std::lock_guard<std::mutex> lock(mutex_);
  OpSnapshot& s = ops_[op];
  s.op = op;
  ++s.calls;
  if (call.code != absl::StatusCode::kOk) ++s.failures;
  ++s.statuses[call.code];
  s.bytes_in += call.bytes_in;
  s.bytes_out += call.bytes_out;
  s.total.record_us(call.total_us);
  if (call.queue_us >= 0) s.queue.record_us(call.queue_us);
  if (call.compute_us >= 0) s.compute.record_us(call.compute_us);
}

std::vector<OpSnapshot> OpStats::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<OpSnapshot> out;
  out.reserve(ops_.size());
  for (const auto& [name, s] : ops_) out.push_back(s);
  return out;
}

}  // namespace vb::server
