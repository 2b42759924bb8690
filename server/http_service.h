// vbd's HTTP face: the compute ops of the gRPC service over plain HTTP/1.1 (or HTTPS with the
// daemon's certificate), so that the same daemon can run as a ModelArts custom image behind
// Huawei's API gateway. Bodies use wire/http_tensors.h; errors are Huawei-style JSON,
// {"error_code": "VB.NOT_FOUND", "error_msg": "..."}. Routes (README "HTTP face"):
//
//   GET  /health                  200 {"health": "true"}; 503 {"health": "false"} draining
//   GET  /v1/info                 versions, devices, limits (JSON)
//   GET  /v1/weights/{digest}     200 when held, 404 VB.NOT_FOUND otherwise
//   POST /v1/weights/{digest}?offset=O&total=T   a weight's bytes, whole or in ordered parts
//   POST /v1/linear/forward       tensors input[, bias]; JSON "weight": {digest, dtype, shape}
//   POST /v1/linear/backward      tensors grad_output[, input]; "weight", "need_grad_*"
#pragma once

#include <chrono>
#include <memory>

#include "absl/status/statusor.h"
#include "server/compute_service.h"
#include "server/security.h"

namespace vb::server {

class HttpFace {
 public:
  // Binds options.http_host:http_port (0 picks a free port) and serves from threads of its
  // own. `tokens` must outlive the face.
  static absl::StatusOr<std::unique_ptr<HttpFace>> start(ComputeService* service,
                                                         const TokenCheck* tokens);
  ~HttpFace();

  int port() const;
  // /health turns 503 and new compute calls are refused with 503, so a gateway moves on.
  void begin_drain();
  bool wait_idle(std::chrono::steady_clock::time_point deadline) const;
  // Closes the listening socket and joins the threads.
  void stop();

 private:
  struct Impl;
  explicit HttpFace(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vb::server
