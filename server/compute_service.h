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
#include "backends/weight_store.h"
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
// of what arrived match what the header promised.
class WeightUpload {
 public:
  absl::Status append(const void* data, size_t size);
  absl::Status commit();
  uint64_t bytes_received() const { return received_; }

 private:
  friend class ComputeService;
  WeightUpload(ComputeService* service, std::string digest, uint64_t byte_size);

  ComputeService* service_;
  std::string digest_;
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
    backends::WeightStore::Stats store;
  };

  ComputeService(const ServerOptions& options, std::unique_ptr<backends::Backend> backend);
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
  absl::StatusOr<std::unique_ptr<WeightUpload>> begin_upload(const std::string& digest,
                                                             uint64_t byte_size);
  bool has_weight(const std::string& digest) const;
  // The stored weight viewed as `spec`: NOT_FOUND for an unknown digest, INVALID_ARGUMENT
  // when the stored byte count differs from the spec's.
  absl::StatusOr<at::Tensor> resolve_weight(const std::string& digest, const TensorSpec& spec,
                                            absl::string_view field);

  absl::StatusOr<at::Tensor> linear_forward(const backends::LinearForwardArgs& args,
                                            ComputeTiming* timing);
  absl::StatusOr<backends::LinearGrads> linear_backward(const backends::LinearBackwardArgs& args,
                                                        ComputeTiming* timing);

  OpStats& op_stats() { return op_stats_; }
  WorkQueue::Stats queue_stats() const { return queue_.stats(); }
  backends::WeightStore::Stats store_stats() const { return store_.stats(); }
  double uptime_s() const;

  // Lets accepted compute calls finish and stops the workers.
  void shutdown() { queue_.shutdown(); }

 private:
  friend class WeightUpload;
  template <typename T, typename Fn>
  absl::StatusOr<T> run_queued(Fn&& fn, ComputeTiming* timing);

  const ServerOptions options_;
  std::unique_ptr<backends::Backend> backend_;
  backends::WeightStore store_;
  WorkQueue queue_;
  OpStats op_stats_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace vb::server
