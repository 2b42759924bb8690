#include "client/daemon_target.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb {
namespace {

// Old versions of trained weights accumulate in the set; past this many it starts afresh,
// which costs at most one early-answered upload per weight.
constexpr size_t kMaxRememberedDigests = 16384;

}  // namespace

DaemonTarget::DaemonTarget(const std::string& address, ClientOptions options)
    : name_(address.rfind("vbd://", 0) == 0 ? address : "vbd://" + grpc_target_of(address)),
      client_(address, options),
      backends_(backend_count_of(address)) {}

absl::Status DaemonTarget::ensure_uploaded(const WeightRef& weight, TransferCount* transfer) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (held_.count(weight.digest)) return absl::OkStatus();
  }
  VB_RETURN_IF_ERROR(client_.upload_weight(weight, transfer).status());
  remember(weight.digest);
  return absl::OkStatus();
}

void DaemonTarget::remember(const std::string& digest) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (held_.size() >= kMaxRememberedDigests) held_.clear();
  held_.insert(digest);
}

void DaemonTarget::forget(const std::string& digest) {
  std::lock_guard<std::mutex> lock(mutex_);
  held_.erase(digest);
}

void DaemonTarget::forget_all() {
  std::lock_guard<std::mutex> lock(mutex_);
  held_.clear();
  reconnect_ = true;
}

template <typename T, typename Fn>
absl::StatusOr<T> DaemonTarget::with_weight(const WeightRef& weight, TransferCount* transfer,
                                            Fn&& call) {
  bool reconnect = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::swap(reconnect, reconnect_);
  }
  // This call is the breaker's probe of a daemon that went away: try a fresh connection.
  if (reconnect) client_.reconnect();
  absl::Status uploaded = ensure_uploaded(weight, transfer);
  absl::StatusOr<T> result = uploaded.ok() ? call() : absl::StatusOr<T>(uploaded);
  // Behind a balanced address the upload and the call may reach different daemons, and
  // round-robin cannot be aimed: so after a NOT_FOUND the weight goes to every daemon (one
  // upload per daemon walks the rotation; those that hold it answer from the header alone).
  // And when one of several daemons goes away mid-call, the balancer has already moved on:
  // ask once more.
  bool retried_unavailable = false;
  for (int attempt = 0; attempt < 2 * backends_; ++attempt) {
    if (absl::IsNotFound(result.status())) {
      forget(weight.digest);
      for (int i = 0; i < backends_; ++i) {
        VB_RETURN_IF_ERROR(client_.upload_weight(weight, transfer).status());
      }
      remember(weight.digest);
    } else if (!(absl::IsUnavailable(result.status()) && backends_ > 1 && !retried_unavailable)) {
      break;
    } else {
      retried_unavailable = true;
    }
    result = call();
  }
  // A daemon that went away may come back empty: ask again rather than trust the set.
  if (absl::IsUnavailable(result.status())) forget_all();
  return result;
}

absl::StatusOr<at::Tensor> DaemonTarget::linear_forward(const LinearForwardCall& call,
                                                        TransferCount* transfer) {
  return with_weight<at::Tensor>(call.weight, transfer, [&] {
    return client_.linear_forward(call.input, call.weight, call.bias, transfer);
  });
}

absl::StatusOr<backends::LinearGrads> DaemonTarget::linear_backward(const LinearBackwardCall& call,
                                                                    TransferCount* transfer) {
  return with_weight<backends::LinearGrads>(call.weight, transfer, [&] {
    return client_.linear_backward(call.grad_output, call.input, call.weight, call.need_grad_input,
                                   call.need_grad_weight, call.need_grad_bias, transfer);
  });
}

absl::StatusOr<backends::NamedTensors> DaemonTarget::run_op(const OpCall& call,
                                                            TransferCount* transfer) {
  if (call.weights.empty()) return client_.run_op(call.args, {}, transfer);
  if (call.weights.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(call.args.op, ": ", call.weights.size(), " weights; ops take at most one"));
  }
  return with_weight<backends::NamedTensors>(
      call.weights[0], transfer, [&] { return client_.run_op(call.args, call.weights, transfer); });
}

}  // namespace vb
