#include "server/server.h"

#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "backends/cpu_backend.h"
#include "backends/device_manager.h"
#include "common/status_macros.h"
#ifdef VB_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#ifdef VB_WITH_METRICS
#include "server/metrics.h"
#endif
#include "common/log.h"
#include "wire/codec.h"

namespace vb::server {
namespace {

// Bytes this host has sent from `port` that the peer has not yet acknowledged (tx_queue of
// every socket whose local port is `port`), from /proc/net/tcp and tcp6. 0 where /proc is
// not mounted.
uint64_t unacknowledged_bytes(int port) {
  uint64_t total = 0;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream file(table);
    std::string line;
    std::getline(file, line);  // header
    while (std::getline(file, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues;
      fields >> slot >> local >> remote >> state >> queues;  // queues: "tx:rx" in hex
      const size_t colon = local.rfind(':');
      if (colon == std::string::npos || state == "0A") continue;
      if (std::stoi(local.substr(colon + 1), nullptr, 16) != port) continue;
      total += std::stoull(queues.substr(0, queues.find(':')), nullptr, 16);
    }
  }
  return total;
}

// gRPC closes a connection as soon as its last stream ends after GOAWAY. If a client's final
// window updates are still unread then, the kernel resets the connection, and the client
// loses the answer bytes it had not read yet. So before shutting gRPC down: let every
// answer reach the clients' kernels, then give them a moment to read it.
void let_answers_land(int port) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (unacknowledged_bytes(port) > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

// The backend for the accelerators this host has, in the configured order of preference.
absl::StatusOr<std::unique_ptr<backends::Backend>> make_backend(const ServerOptions& options) {
  backends::DeviceManagerOptions devices;
  VB_ASSIGN_OR_RETURN(devices.order, backends::parse_device_order(options.device_order));
  devices.npu_library = options.npu_library;
#ifdef VB_WITH_CUDA
  std::shared_ptr<backends::AcceleratorRuntime> runtime = backends::cuda::cuda_runtime();
#else
  std::shared_ptr<backends::AcceleratorRuntime> runtime = backends::libtorch_runtime();
#endif
  VB_ASSIGN_OR_RETURN(backends::DeviceManager manager,
                      backends::DeviceManager::detect(devices, runtime));
  VB_LOG_INFO("devices: ", manager.platform(), " x", manager.device_count(), " (",
              absl::StrJoin(manager.device_names(), ", "), ")");
  switch (manager.kind()) {
    case backends::AcceleratorKind::kCpu:
      return std::make_unique<backends::CpuBackend>();
    case backends::AcceleratorKind::kCuda: {
#ifdef VB_WITH_CUDA
      backends::cuda::CudaBackendOptions cuda;
      cuda.allow_tf32 = options.allow_tf32;
      return backends::cuda::create_cuda_backend(cuda);
#else
      break;
#endif
    }
    default:
      break;
  }
  VB_LOG_WARNING(manager.platform(), " detected, but this vbd has no compute backend for it ",
                 "(built without it, or detection-only); computing on the CPU");
  return std::make_unique<backends::CpuBackend>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::start(const ServerOptions& options) {
  LogLevel level;
  if (parse_log_level(options.log_level, &level)) set_log_level(level);
  if (options.compute_threads > 0) at::set_num_threads(options.compute_threads);

  std::unique_ptr<Server> server(new Server());
  VB_RETURN_IF_ERROR(check_exposure(options));
  VB_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                      server_credentials(options));
  VB_ASSIGN_OR_RETURN(TokenCheck tokens, TokenCheck::load(options.token_file));
  VB_ASSIGN_OR_RETURN(std::unique_ptr<backends::Backend> backend, make_backend(options));
  VB_ASSIGN_OR_RETURN(server->service_, ComputeService::create(options, std::move(backend)));
  server->http_tokens_ = tokens;
  server->grpc_service_ =
      std::make_unique<GrpcComputeService>(server->service_.get(), std::move(tokens));

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
  builder.AddListeningPort(address, credentials, &server->port_);
  builder.RegisterService(server->grpc_service_.get());
  // Chunks are at most wire::kMaxChunkBytes; a little headroom for the envelope, and no more:
  // nothing in the contract needs large messages.
  builder.SetMaxReceiveMessageSize(static_cast<int>(wire::kMaxChunkBytes + (64 << 10)));
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address, " (address in use, or not an address of this host)"));
  }
#ifdef VB_WITH_METRICS
  if (options.metrics_port >= 0) {
    ComputeService* service = server->service_.get();
    GrpcComputeService* grpc_service = server->grpc_service_.get();
    VB_ASSIGN_OR_RETURN(server->metrics_,
                        MetricsEndpoint::start(options.metrics_host, options.metrics_port, [=] {
                          GaugeSnapshot g;
                          g.queue = service->queue_stats();
                          g.inflight_calls = grpc_service->inflight_calls();
                          g.store = service->store_stats();
                          g.devices = service->info().devices;
                          return g;
                        }));
    server->service_->op_stats().set_observer(server->metrics_.get());
  }
#endif
  if (options.http_port >= 0) {
    VB_ASSIGN_OR_RETURN(server->http_,
                        HttpFace::start(server->service_.get(), &server->http_tokens_));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  server->grpc_server_->GetHealthCheckService()->SetServingStatus("vb.v1.Compute", true);
  return server;
}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

int Server::metrics_port() const {
#ifdef VB_WITH_METRICS
  if (metrics_ != nullptr) return static_cast<MetricsEndpoint*>(metrics_.get())->port();
#endif
  return -1;
}

void Server::shutdown(std::chrono::milliseconds drain) {
  if (grpc_server_ == nullptr) return;  // never started: nothing to stop
  std::call_once(shutdown_once_, [&] {
    grpc_server_->GetHealthCheckService()->Shutdown();
    // Refuse new calls ourselves first and let the running ones finish while gRPC still
    // serves the connections; only then shut gRPC down (see let_answers_land).
    grpc_service_->begin_drain();
    if (http_ != nullptr) http_->begin_drain();
    const auto deadline = std::chrono::steady_clock::now() + drain;
    const bool idle =
        grpc_service_->wait_idle(deadline) && (http_ == nullptr || http_->wait_idle(deadline));
    if (idle) {
      let_answers_land(port_);
    } else {
      VB_LOG_WARNING("drain timeout of ", drain.count(),
                     " ms passed with calls still running; "
                     "cancelling them");
    }
    // Nothing runs any more (or the drain time is spent): close the connections now rather
    // than wait for idle clients to hang up.
    grpc_server_->Shutdown(std::chrono::system_clock::now());
    if (http_ != nullptr) http_->stop();
    service_->shutdown();
  });
}

}  // namespace vb::server
