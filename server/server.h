// vbd as a library: Create / Start / Shutdown, so tests can run the daemon in-process and
// `vbd` itself stays a thin main().
#pragma once

#include <grpcpp/server.h>

#include <chrono>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "server/compute_service.h"
#include "server/grpc_service.h"
#include "server/http_service.h"
#include "server/options.h"

namespace vb::server {

class Server {
 public:
  // Builds the service and binds the port; serving starts before this returns.
  static absl::StatusOr<std::unique_ptr<Server>> start(const ServerOptions& options);
  ~Server();

  // The port actually bound (the chosen one when options.port was 0).
  int port() const { return port_; }
  // The /metrics port, or -1 when metrics are off (or not built in).
  int metrics_port() const;
  // The HTTP face's port, or -1 when it is off.
  int http_port() const { return http_ == nullptr ? -1 : http_->port(); }
  ComputeService& service() { return *service_; }

  // Marks the daemon NOT_SERVING, refuses new calls, waits up to `drain` for calls in
  // flight, then cancels what is left and stops the workers. Idempotent.
  void shutdown(std::chrono::milliseconds drain);

 private:
  Server() = default;

  std::unique_ptr<ComputeService> service_;
  std::unique_ptr<GrpcComputeService> grpc_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<CallObserver> metrics_;
  TokenCheck http_tokens_;
  std::unique_ptr<HttpFace> http_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace vb::server
