// The daemon's service, free of gRPC: weights in, compute out, every answer a status. The
// gRPC layer (grpc_service.h) only converts messages to these calls and back.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "backends/backend.h"
#include "backends/tier_store.h"
#include "common/digest.h"
#include "common/tensor_spec.h"
#include "server/op_stats.h"
#include "server/options.h"
#include "server/work_queue.h"

namespace vb::server {

struct ComputeTiming {
  double queue_us = -1;
  double compute_us = -1;
};

class ComputeService;

// One weight arriving in pieces. commit() stores it only if the byte count and the SHA-256
// of what arrived match what the header promised; then the version it replaces, if named,
// is released.
class WeightUpload {
 public:
  absl::Status append(const void* data, size_t size);
  absl::Status commit();
  uint64_t bytes_received() const { return received_; }

 private:
  friend class ComputeService;
  WeightUpload(ComputeService* service, std::string digest, uint64_t byte_size,
               std::string replaces);

  ComputeService* service_;
  std::string digest_;
  std::string replaces_;
  uint64_t byte_size_;
  uint64_t received_ = 0;
  at::Tensor bytes_;
  Sha256 hash_;
};

class ComputeService {
 public:
  struct Info {
    std::string version;
    std::string torch_version;
    std::vector<backends::DeviceDescription> devices;
    std::vector<DType> dtypes;
    backends::TierStoreStats store;
  };

  // The tier store's budgets come from `options` (and the backend's device memory).
  static absl::StatusOr<std::unique_ptr<ComputeService>> create(
      const ServerOptions& options, std::unique_ptr<backends::Backend> backend);
  ~ComputeService();

  const ServerOptions& options() const { return options_; }
  Info info() const;

  absl::Status check_placement(const backends::Placement& placement) const {
    return backend_->check_placement(placement);
  }
  at::TensorOptions host_tensor_options() const { return backend_->host_tensor_options(); }

  // RESOURCE_EXHAUSTED when a call would carry more than limits.max_request_bytes.
  absl::Status check_request_bytes(uint64_t bytes, absl::string_view what) const;

  // nullptr with OK status: the daemon already holds `digest`, nothing needs to be sent.
  // `replaces` (may be empty) is the weight's previous version, released on commit.
  absl::StatusOr<std::unique_ptr<WeightUpload>> begin_upload(const std::string& digest,
                                                             uint64_t byte_size,
                                                             const std::string& replaces = "");
  bool has_weight(const std::string& digest) const;
  // Drops the weight from the store; false when it was not held.
  bool release_weight(const std::string& digest);
  // NOT_FOUND for an unknown digest, INVALID_ARGUMENT when the stored byte count differs
  // from the spec's: what can be refused before any input bytes arrive.
  absl::Status check_weight(const std::string& digest, const TensorSpec& spec,
                            absl::string_view field) const;
  // The order the next calls will name weights in (a client's hint); returns how many of
  // them are held.
  size_t prefetch(const std::vector<std::string>& digests);

  // `args.placement.weight_key` names the weight and `weight_spec` says how to view it; the
  // weight is made resident on the device by the worker that runs the call, so queued calls
  // hold no device memory.
  absl::StatusOr<at::Tensor> linear_forward(backends::LinearForwardArgs args,
                                            const TensorSpec& weight_spec, ComputeTiming* timing);
  absl::StatusOr<backends::LinearGrads> linear_backward(backends::LinearBackwardArgs args,
                                                        const TensorSpec& weight_spec,
                                                        ComputeTiming* timing);

  // A named op (backends/ops.h); `weights` name blobs the daemon holds, made resident on
  // the device by the worker that runs the call.
  absl::StatusOr<backends::NamedTensors> run_op(backends::OpArgs args,
                                                const std::vector<std::string>& weights,
                                                ComputeTiming* timing);
  // NOT_FOUND for an unknown digest, INVALID_ARGUMENT when it holds another byte count.
  absl::Status check_blob(const std::string& digest, uint64_t byte_size,
                          absl::string_view field) const;

  OpStats& op_stats() { return op_stats_; }
  WorkQueue::Stats queue_stats() const { return queue_.stats(); }
  backends::TierStoreStats store_stats() const { return store_->stats(); }
  // Where the SSD tier keeps its files ("" without one).
  const std::string& ssd_directory() const { return ssd_directory_; }
  double uptime_s() const;

  // Lets accepted compute calls finish and stops the workers.
  void shutdown() { queue_.shutdown(); }

 private:
  friend class WeightUpload;
  ComputeService(const ServerOptions& options, std::unique_ptr<backends::Backend> backend,
                 std::unique_ptr<backends::TierStore> store);
  template <typename T, typename Fn>
  absl::StatusOr<T> run_queued(Fn&& fn, ComputeTiming* timing);
  // The weight resident on the device, viewed as `spec`; the view keeps it pinned there.
  absl::StatusOr<at::Tensor> acquire_weight(const std::string& digest, const TensorSpec& spec);

  const ServerOptions options_;
  std::unique_ptr<backends::Backend> backend_;
  std::unique_ptr<backends::TierStore> store_;
  std::string ssd_directory_;
  WorkQueue queue_;
  OpStats op_stats_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace vb::server
