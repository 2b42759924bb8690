// A vbd as a router target. Remembers which weights the daemon already holds so each
// version of a weight is uploaded once; a NOT_FOUND (the daemon restarted or evicted it)
// uploads again and retries the call once.
#pragma once

#include <mutex>
#include <unordered_set>

#include "client/daemon_client.h"
#include "client/target.h"

namespace vb {

class DaemonTarget final : public Target {
 public:
  explicit DaemonTarget(const std::string& address, ClientOptions options = {});

  const std::string& name() const override { return name_; }
  TargetKind kind() const override { return TargetKind::kRemote; }
  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardCall& call,
                                            TransferCount* transfer) override;
  absl::StatusOr<backends::LinearGrads> linear_backward(const LinearBackwardCall& call,
                                                        TransferCount* transfer) override;
  absl::StatusOr<backends::NamedTensors> run_op(const OpCall& call,
                                                TransferCount* transfer) override;

  DaemonClient& client() { return client_; }

 private:
  template <typename T, typename Fn>
  absl::StatusOr<T> with_weight(const WeightRef& weight, TransferCount* transfer, Fn&& call);
  absl::Status ensure_uploaded(const WeightRef& weight, TransferCount* transfer);
  void remember(const std::string& digest);
  void forget(const std::string& digest);
  void forget_all();

  std::string name_;
  DaemonClient client_;
  // Daemons behind the address: a weight held by one is unknown to the others, and a call
  // that found one gone can be answered by another.
  int backends_;
  std::mutex mutex_;
  std::unordered_set<std::string> held_;  // digests the daemon is known to hold
  bool reconnect_ = false;                // the last call found the daemon unreachable
};

}  // namespace vb
