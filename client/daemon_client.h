// A typed client of one vbd: every vb.v1 call with a deadline, tensors chunked both ways,
// answers as absl::StatusOr. Used by the router's daemon targets and by vbctl.
//
//   vb::DaemonClient client("127.0.0.1:50551");
//   absl::StatusOr<vb::v1::GetInfoResponse> info = client.get_info();
#pragma once

#include <ATen/core/Tensor.h>
#include <grpcpp/channel.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/backend.h"
#include "client/options.h"
#include "vb/v1/compute.grpc.pb.h"

namespace vb {

// Bytes a call moved, for statistics.
struct TransferCount {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t uploads = 0;  // weights actually streamed (not already present)
};

// A weight as the daemon knows it: the digest of its bytes plus how to read them.
struct WeightRef {
  std::string digest;
  at::Tensor tensor;  // contiguous CPU tensor whose bytes hash to `digest`
};

class DaemonClient {
 public:
  explicit DaemonClient(const std::string& address, ClientOptions options = {});

  const std::string& address() const { return address_; }

  absl::StatusOr<v1::GetInfoResponse> get_info();
  absl::StatusOr<v1::GetStatsResponse> get_stats();
  // grpc.health.v1 Check of the whole server: OK when SERVING.
  absl::Status check_health();

  // Streams the bytes unless the daemon already holds the digest (it then answers at once).
  absl::StatusOr<v1::UploadWeightResponse> upload_weight(const WeightRef& weight,
                                                         TransferCount* transfer);
  absl::StatusOr<std::vector<bool>> query_weights(const std::vector<std::string>& digests);

  absl::StatusOr<at::Tensor> linear_forward(const at::Tensor& input, const WeightRef& weight,
                                            const at::Tensor& bias, TransferCount* transfer);
  absl::StatusOr<backends::LinearGrads> linear_backward(const at::Tensor& grad_output,
                                                        const at::Tensor& input,
                                                        const WeightRef& weight,
                                                        bool need_grad_input,
                                                        bool need_grad_weight,
                                                        bool need_grad_bias,
                                                        TransferCount* transfer);

  // The raw stub, for tests that must send what this class never would.
  v1::Compute::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  // A context carrying the configured deadline.
  std::unique_ptr<grpc::ClientContext> new_context() const;

 private:
  std::string address_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Compute::Stub> stub_;
};

// "host:port" with any "vbd://" prefix removed, as gRPC wants it.
std::string grpc_target_of(const std::string& address);

}  // namespace vb
