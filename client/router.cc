#include "client/router.h"

#include <chrono>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/cloud_target.h"
#include "client/daemon_target.h"

namespace vb {

bool is_fallback_status(const absl::Status& status) {
  return !status.ok() && !absl::IsInvalidArgument(status) && !absl::IsOutOfRange(status);
}

Router::Router(std::vector<std::shared_ptr<Target>> targets, BreakerOptions breaker)
    : targets_(std::move(targets)) {
  for (size_t i = 0; i < targets_.size(); ++i) {
    breakers_.push_back(std::make_unique<CircuitBreaker>(breaker));
  }
}

absl::StatusOr<std::shared_ptr<Router>> Router::create(const std::vector<std::string>& names,
                                                       ClientOptions client,
                                                       BreakerOptions breaker) {
  if (names.empty()) return absl::InvalidArgumentError("a router needs at least one target");
  std::vector<std::shared_ptr<Target>> targets;
  for (const std::string& raw : names) {
    const std::string name(absl::StripAsciiWhitespace(raw));
    if (name == "local") {
      targets.push_back(std::make_shared<LocalTarget>());
    } else if (name == "cloud") {
      // A ModelArts service configured by HUAWEI_CLOUD_* variables.
      absl::StatusOr<cloud::ModelArtsOptions> options = cloud::ModelArtsOptions::from_env();
      if (!options.ok()) return options.status();
      absl::StatusOr<std::shared_ptr<CloudTarget>> cloud = CloudTarget::create(*options);
      if (!cloud.ok()) return cloud.status();
      targets.push_back(*std::move(cloud));
    } else if (grpc_target_of(name).find(':') != std::string::npos) {
      // host:port, vbd://..., or a gRPC URI (dns:///, ipv4:, ipv6:).
      targets.push_back(std::make_shared<DaemonTarget>(name, client));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("target \"", name,
                       "\": expected \"local\", \"cloud\", \"host:port\" or \"vbd://host:port\""));
    }
  }
  return std::make_shared<Router>(std::move(targets), breaker);
}

std::shared_ptr<Router> Router::default_router() {
  static const std::shared_ptr<Router> router = [] {
    const char* env = std::getenv("VB_TARGETS");
    const std::string spec = env != nullptr && *env != '\0' ? env : "127.0.0.1:50551,local";
    absl::StatusOr<std::shared_ptr<Router>> created =
        create(absl::StrSplit(spec, ',', absl::SkipWhitespace()));
    if (!created.ok()) {
      throw std::invalid_argument(
          absl::StrCat("VB_TARGETS=", spec, ": ", created.status().message()));
    }
    return *created;
  }();
  return router;
}

template <typename T>
absl::StatusOr<T> Router::route(
    CallStats* stats, const std::function<absl::StatusOr<T>(Target&, TransferCount*)>& run) {
  std::vector<std::string> failures;
  bool earlier_target_missed = false;
  absl::StatusOr<T> result = absl::UnavailableError("no target");
  for (size_t i = 0; i < targets_.size(); ++i) {
    Target& target = *targets_[i];
    if (!breakers_[i]->allow()) {
      for (CallStats* s : {stats, &stats_}) {
        if (s != nullptr) s->record_skip(target.name(), target.kind());
      }
      failures.push_back(absl::StrCat(target.name(), ": skipped, circuit breaker open"));
      earlier_target_missed = true;
      continue;
    }
    TransferCount transfer;
    const auto started = std::chrono::steady_clock::now();
    result = run(target, &transfer);
    if (absl::IsUnimplemented(result.status())) {
      // Not this target's kind of call (an op a cloud service has no route for): no failure.
      failures.push_back(absl::StrCat(target.name(), ": ", result.status().message()));
      earlier_target_missed = true;
      continue;
    }
    const double latency_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started)
            .count();
    for (CallStats* s : {stats, &stats_}) {
      if (s == nullptr) continue;
      s->record_attempt(target.name(), target.kind(),
                        result.ok() ? std::string() : result.status().ToString(), latency_us,
                        transfer.bytes_sent, transfer.bytes_received, transfer.uploads,
                        earlier_target_missed);
    }
    if (result.ok()) {
      breakers_[i]->record_success();
      break;
    }
    if (!is_fallback_status(result.status())) break;  // the caller's error: same anywhere
    breakers_[i]->record_failure();
    failures.push_back(absl::StrCat(target.name(), ": ", result.status().ToString()));
    earlier_target_missed = true;
  }
  if (!result.ok() &&
      (is_fallback_status(result.status()) || absl::IsUnimplemented(result.status()))) {
    result = absl::UnavailableError(
        absl::StrCat("every target failed: ", absl::StrJoin(failures, "; ")));
  }
  for (CallStats* s : {stats, &stats_}) {
    if (s != nullptr) s->record_call(result.ok());
  }
  return result;
}

absl::StatusOr<at::Tensor> Router::linear_forward(const LinearForwardCall& call, CallStats* stats) {
  return route<at::Tensor>(stats, [&](Target& target, TransferCount* transfer) {
    return target.linear_forward(call, transfer);
  });
}

absl::StatusOr<backends::LinearGrads> Router::linear_backward(const LinearBackwardCall& call,
                                                              CallStats* stats) {
  return route<backends::LinearGrads>(stats, [&](Target& target, TransferCount* transfer) {
    return target.linear_backward(call, transfer);
  });
}

absl::StatusOr<backends::NamedTensors> Router::run_op(const OpCall& call, CallStats* stats) {
  return route<backends::NamedTensors>(stats, [&](Target& target, TransferCount* transfer) {
    return target.run_op(call, transfer);
  });
}

}  // namespace vb
