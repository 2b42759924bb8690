// Sends each call to the first healthy target in order and falls back down the list when a
// target fails with anything but a caller's error. INVALID_ARGUMENT (and OUT_OF_RANGE) are the
// caller's to fix and are raised as they are; any other failure counts against the target's
// circuit breaker and moves the call on.
//
//   auto router = vb::Router::create({"127.0.0.1:50551", "local"});
//   auto layer = vb::nn::RemoteLinear(vb::nn::RemoteLinearOptions(768, 768), *router);
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/circuit_breaker.h"
#include "client/options.h"
#include "client/stats.h"
#include "client/target.h"

namespace vb {

class Router {
 public:
  Router(std::vector<std::shared_ptr<Target>> targets, BreakerOptions breaker = {});

  // Targets from names: "local", "cloud" (a ModelArts service set up by HUAWEI_CLOUD_*
  // variables), or a daemon as "host:port" / "vbd://host:port".
  static absl::StatusOr<std::shared_ptr<Router>> create(const std::vector<std::string>& targets,
                                                        ClientOptions client = {},
                                                        BreakerOptions breaker = {});
  // The router layers use when given none: $VB_TARGETS (comma-separated names), or
  // "127.0.0.1:50551,local". Created once per process.
  static std::shared_ptr<Router> default_router();

  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardCall& call, CallStats* stats);
  absl::StatusOr<backends::LinearGrads> linear_backward(const LinearBackwardCall& call,
                                                        CallStats* stats);

  absl::StatusOr<backends::NamedTensors> run_op(const OpCall& call, CallStats* stats);

  const std::vector<std::shared_ptr<Target>>& targets() const { return targets_; }
  CircuitBreaker::State breaker_state(size_t target) const { return breakers_[target]->state(); }
  // Every call through this router, whichever layer made it.
  StatsSnapshot stats() const { return stats_.snapshot(); }

 private:
  template <typename T>
  absl::StatusOr<T> route(CallStats* stats,
                          const std::function<absl::StatusOr<T>(Target&, TransferCount*)>& run);

  std::vector<std::shared_ptr<Target>> targets_;
  std::vector<std::unique_ptr<CircuitBreaker>> breakers_;
  CallStats stats_;
};

// Whether a failure should move a call to the next target (anything but the caller's error).
bool is_fallback_status(const absl::Status& status);

}  // namespace vb
