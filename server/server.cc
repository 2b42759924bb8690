#include "server/server.h"

#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "backends/cpu_backend.h"
#include "common/log.h"
#include "wire/codec.h"

namespace vb::server {

absl::StatusOr<std::unique_ptr<Server>> Server::start(const ServerOptions& options) {
  LogLevel level;
  if (parse_log_level(options.log_level, &level)) set_log_level(level);
  if (options.compute_threads > 0) at::set_num_threads(options.compute_threads);

  std::unique_ptr<Server> server(new Server());
  server->service_ =
      std::make_unique<ComputeService>(options, std::make_unique<backends::CpuBackend>());
  server->grpc_service_ = std::make_unique<GrpcComputeService>(server->service_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Brackets keep IPv6 literals unambiguous next to the port.
  const bool ipv6_literal = options.host.find(':') != std::string::npos;
  const std::string address = ipv6_literal ? absl::StrCat("[", options.host, "]:", options.port)
                                           : absl::StrCat(options.host, ":", options.port);
  // gRPC sets SO_REUSEPORT by default, which would let a second vbd share the port and
  // receive half the connections; one port, one daemon.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->grpc_service_.get());
  // Chunks are at most wire::kMaxChunkBytes; a little headroom for the envelope, and no more:
  // nothing in the contract needs large messages.
  builder.SetMaxReceiveMessageSize(static_cast<int>(wire::kMaxChunkBytes + (64 << 10)));
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address,
                                               " (address in use, or not an address of this host)"));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  server->grpc_server_->GetHealthCheckService()->SetServingStatus("vb.v1.Compute", true);
  return server;
}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

void Server::shutdown(std::chrono::milliseconds drain) {
  if (grpc_server_ == nullptr) return;  // never started: nothing to stop
  std::call_once(shutdown_once_, [&] {
    grpc_server_->GetHealthCheckService()->Shutdown();
    // gRPC refuses new calls from here on and waits for running handlers until the deadline.
    grpc_server_->Shutdown(std::chrono::system_clock::now() + drain);
    service_->shutdown();
  });
}

void Server::wait() {
  if (grpc_server_ != nullptr) grpc_server_->Wait();
}

}  // namespace vb::server
