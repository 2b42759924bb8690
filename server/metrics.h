// /metrics in Prometheus's text format, on its own port (loopback by default), through
// prometheus-cpp's registry and cpp-httplib. Names are prefixed vbd_. Counters and
// histograms move as calls finish; gauges (queue, tiers, device memory) and the tier store's
// counters are read at scrape.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/backend.h"
#include "backends/tier_store.h"
#include "server/op_stats.h"
#include "server/work_queue.h"

namespace vb::server {

// What the gauges show, read when Prometheus scrapes.
struct GaugeSnapshot {
  WorkQueue::Stats queue;
  uint32_t inflight_calls = 0;
  backends::TierStoreStats store;
  std::vector<backends::DeviceDescription> devices;
};

class MetricsEndpoint : public CallObserver {
 public:
  // Binds host:port (0 picks a free port) and serves GET /metrics from a thread of its own.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> start(
      const std::string& host, int port, std::function<GaugeSnapshot()> gauges);
  ~MetricsEndpoint() override;

  int port() const;
  void on_call(const std::string& op, const CallRecord& call) override;
  // The exposition text, as /metrics serves it.
  std::string render();

 private:
  struct Impl;
  explicit MetricsEndpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vb::server
