#include "server/metrics.h"

#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace vb::server {
namespace {

// Seconds, from 100 us to about 100 s: loopback calls of a few hundred microseconds up to
// large GPU batches.
prometheus::Histogram::BucketBoundaries latency_buckets() {
  return {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
          0.1,  0.25,   0.5,  1,    2.5,    5,    10,   30,     100};
}

}  // namespace

struct MetricsEndpoint::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests =
      prometheus::BuildCounter()
          .Name("vbd_requests_total")
          .Help("Calls answered, by op and gRPC status code")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& latency =
      prometheus::BuildHistogram()
          .Name("vbd_request_duration_seconds")
          .Help(
              "Call latency by op and phase: queue (waiting for a worker), compute, "
              "transfer (receiving and sending tensors), total")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& bytes_in =
      prometheus::BuildCounter()
          .Name("vbd_received_bytes_total")
          .Help("Tensor and weight bytes received, by op")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& bytes_out = prometheus::BuildCounter()
                                                           .Name("vbd_sent_bytes_total")
                                                           .Help("Tensor bytes sent, by op")
                                                           .Register(*registry);
  prometheus::Family<prometheus::Gauge>& queue =
      prometheus::BuildGauge()
          .Name("vbd_queue_calls")
          .Help("Compute calls by state: waiting, running, and the configured limits")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& rejected =
      prometheus::BuildCounter()
          .Name("vbd_queue_rejected_total")
          .Help("Calls refused with RESOURCE_EXHAUSTED because the queue was full")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& inflight =
      prometheus::BuildGauge()
          .Name("vbd_inflight_calls")
          .Help("Calls being handled, including those still receiving bytes")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& store =
      prometheus::BuildGauge()
          .Name("vbd_weight_store_bytes")
          .Help(
              "The tier store as a whole: its lowest tier's budget and what the weights take of it")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& tier_bytes =
      prometheus::BuildGauge()
          .Name("vbd_tier_bytes")
          .Help("Each tier of the VGPU stack: bytes held and its budget")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& tier_accesses =
      prometheus::BuildCounter()
          .Name("vbd_tier_accesses_total")
          .Help("Compute calls served from a tier (hit) or looking further down (miss)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& tier_moved =
      prometheus::BuildCounter()
          .Name("vbd_tier_moved_bytes_total")
          .Help("Bytes copied into and out of each tier")
          .Register(*registry);
  // Counters advance by what the store counted since the last scrape.
  std::map<std::string, double> counted;
  void advance(prometheus::Family<prometheus::Counter>& family,
               const std::map<std::string, std::string>& labels, double total) {
    std::string key = family.GetName();
    for (const auto& [name, value] : labels) key += "," + name + "=" + value;
    double& seen = counted[key];
    family.Add(labels).Increment(total - seen);
    seen = total;
  }
  prometheus::Family<prometheus::Gauge>& device_memory =
      prometheus::BuildGauge()
          .Name("vbd_device_memory_bytes")
          .Help("Memory of each compute device, total and free")
          .Register(*registry);

  std::function<GaugeSnapshot()> gauges;
  std::mutex render_mutex;
  uint64_t rejected_seen = 0;
  httplib::Server http;
  int port = 0;
  std::thread thread;

  void observe(const std::string& op, const char* phase, double microseconds) {
    latency.Add({{"op", op}, {"phase", phase}}, latency_buckets()).Observe(microseconds / 1e6);
  }
};

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::start(
    const std::string& host, int port, std::function<GaugeSnapshot()> gauges) {
  auto impl = std::make_unique<Impl>();
  impl->gauges = std::move(gauges);
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint(std::move(impl)));
  Impl* raw = endpoint->impl_.get();
  MetricsEndpoint* self = endpoint.get();
  raw->http.Get("/metrics", [self](const httplib::Request&, httplib::Response& response) {
    response.set_content(self->render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  raw->port = port == 0 ? raw->http.bind_to_any_port(host)
                        : (raw->http.bind_to_port(host, port) ? port : -1);
  if (raw->port <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", host, ":", port,
                                               " (metrics.host / metrics.port)"));
  }
  raw->thread = std::thread([raw] { raw->http.listen_after_bind(); });
  return endpoint;
}

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsEndpoint::~MetricsEndpoint() {
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsEndpoint::port() const { return impl_->port; }

void MetricsEndpoint::on_call(const std::string& op, const CallRecord& call) {
  impl_->requests.Add({{"op", op}, {"code", absl::StatusCodeToString(call.code)}}).Increment();
  impl_->bytes_in.Add({{"op", op}}).Increment(static_cast<double>(call.bytes_in));
  impl_->bytes_out.Add({{"op", op}}).Increment(static_cast<double>(call.bytes_out));
  impl_->observe(op, "total", call.total_us);
  double transfer_us = call.total_us;
  if (call.queue_us >= 0) {
    impl_->observe(op, "queue", call.queue_us);
    transfer_us -= call.queue_us;
  }
  if (call.compute_us >= 0) {
    impl_->observe(op, "compute", call.compute_us);
    transfer_us -= call.compute_us;
  }
  if (call.queue_us >= 0 || call.compute_us >= 0) {
    impl_->observe(op, "transfer", std::max(0.0, transfer_us));
  }
}

std::string MetricsEndpoint::render() {
  std::lock_guard<std::mutex> lock(impl_->render_mutex);
  const GaugeSnapshot g = impl_->gauges();
  impl_->queue.Add({{"state", "waiting"}}).Set(g.queue.queued);
  impl_->queue.Add({{"state", "running"}}).Set(g.queue.running);
  impl_->queue.Add({{"state", "max_waiting"}}).Set(g.queue.max_queue);
  impl_->queue.Add({{"state", "workers"}}).Set(g.queue.workers);
  impl_->rejected.Add({}).Increment(static_cast<double>(g.queue.rejected - impl_->rejected_seen));
  impl_->rejected_seen = g.queue.rejected;
  impl_->inflight.Add({}).Set(g.inflight_calls);
  for (int i = 0; i < backends::kTierCount; ++i) {
    const backends::TierCounters& c = g.store.tiers[i];
    const std::string tier = backends::tier_name(static_cast<backends::Tier>(i));
    impl_->tier_bytes.Add({{"tier", tier}, {"kind", "held"}})
        .Set(static_cast<double>(c.held_bytes));
    impl_->tier_bytes.Add({{"tier", tier}, {"kind", "budget"}})
        .Set(static_cast<double>(c.budget_bytes));
    impl_->advance(impl_->tier_accesses, {{"tier", tier}, {"result", "hit"}},
                   static_cast<double>(c.hits));
    impl_->advance(impl_->tier_accesses, {{"tier", tier}, {"result", "miss"}},
                   static_cast<double>(c.misses));
    impl_->advance(impl_->tier_moved, {{"tier", tier}, {"direction", "in"}},
                   static_cast<double>(c.bytes_in));
    impl_->advance(impl_->tier_moved, {{"tier", tier}, {"direction", "out"}},
                   static_cast<double>(c.bytes_out));
  }
  impl_->store.Add({{"kind", "used"}}).Set(static_cast<double>(g.store.committed_bytes));
  impl_->store.Add({{"kind", "capacity"}}).Set(static_cast<double>(g.store.capacity_bytes));
  for (const backends::DeviceDescription& d : g.devices) {
    const std::string device = absl::StrCat(d.kind, ":", d.index);
    impl_->device_memory.Add({{"device", device}, {"kind", "total"}})
        .Set(static_cast<double>(d.total_memory_bytes));
    impl_->device_memory.Add({{"device", device}, {"kind", "free"}})
        .Set(static_cast<double>(d.free_memory_bytes));
  }
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

}  // namespace vb::server
