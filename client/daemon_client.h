// A typed client of one vbd: every vb.v1 call with a deadline, tensors chunked both ways,
// answers as absl::StatusOr. Used by the router's daemon targets and by vbctl.
//
//   vb::DaemonClient client("127.0.0.1:50551");
//   absl::StatusOr<vb::v1::GetInfoResponse> info = client.get_info();
#pragma once

#include <ATen/core/Tensor.h>
#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>

#include <memory>
#include <mutex>
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
  at::Tensor tensor;          // contiguous CPU tensor whose bytes hash to `digest`
  std::string replaces = {};  // the previous version's digest, released by the daemon on upload
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
  // Asks the daemon to drop these weights from its store; [i] is whether digests[i] was held.
  // A later call naming one gets NOT_FOUND; the layers upload it again.
  absl::StatusOr<std::vector<bool>> release_weights(const std::vector<std::string>& digests);
  // Tells the daemon the order the next calls will name these weights in (repeating), so it
  // brings them up to the device ahead of use. Returns how many it holds.
  absl::StatusOr<uint32_t> prefetch_weights(const std::vector<std::string>& digests);

  // A named op (backends/ops.h) with `args.inputs` inline and `weights` held by the daemon.
  absl::StatusOr<backends::NamedTensors> run_op(const backends::OpArgs& args,
                                                const std::vector<WeightRef>& weights,
                                                TransferCount* transfer);

  absl::StatusOr<at::Tensor> linear_forward(const at::Tensor& input, const WeightRef& weight,
                                            const at::Tensor& bias, TransferCount* transfer);
  absl::StatusOr<backends::LinearGrads> linear_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const WeightRef& weight,
      bool need_grad_input, bool need_grad_weight, bool need_grad_bias, TransferCount* transfer);

  // Replaces the channel with a new one. gRPC keeps a failed connection in backoff (the
  // attempts after a refused connect come seconds apart, grpc/grpc#11411) and a call made
  // meanwhile fails at once; a fresh channel, with its own subchannel, connects right away.
  // Calls already running keep the old channel until they finish.
  void reconnect();

  // The raw stub, for tests that must send what this class never would.
  v1::Compute::Stub& stub() { return *connection()->stub; }
  std::shared_ptr<grpc::Channel> channel() const { return connection()->channel; }
  // A context carrying the configured deadline.
  std::unique_ptr<grpc::ClientContext> new_context() const;

 private:
  struct Connection {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Compute::Stub> stub;
  };
  std::shared_ptr<Connection> connect() const;
  std::shared_ptr<Connection> connection() const;

  std::string address_;
  ClientOptions options_;
  mutable std::mutex mutex_;
  std::shared_ptr<Connection> connection_;
};

// The gRPC target of a daemon address: "host:port" and "vbd://host:port" name one daemon;
// "vbd://10.0.0.1:50551|10.0.0.2:50551" several (IPv4 literals); gRPC URIs such as
// "dns:///vbd.vb-system.svc.cluster.local:50551" pass through.
std::string grpc_target_of(const std::string& address);
// TLS credentials when options.tls_ca_file is set, plaintext otherwise. Unreadable files give
// empty PEM, which fails the handshake with gRPC's own message.
std::shared_ptr<grpc::ChannelCredentials> channel_credentials(const ClientOptions& options);
// How many daemons the address may stand for (the list's length; 8 for a DNS name).
int backend_count_of(const std::string& address);

}  // namespace vb
