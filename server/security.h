// Who may talk to vbd: TLS (optionally mutual) and bearer tokens, and the rule that a daemon
// on a non-loopback address has both unless an operator says --insecure.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/options.h"

namespace vb::server {

bool is_loopback_host(const std::string& host);

// FAILED_PRECONDITION, saying what to add, for a non-loopback host without TLS and client
// authentication (tokens or mutual TLS) unless options.insecure.
// Applies to the gRPC address and, when it is on, the HTTP face's.
absl::Status check_exposure(const ServerOptions& options);
absl::Status check_exposure(const ServerOptions& options, const std::string& host);

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server_credentials(
    const ServerOptions& options);

// Bearer tokens from auth.token_file. Empty set: no token is asked for.
class TokenCheck {
 public:
  static absl::StatusOr<TokenCheck> load(const std::string& token_file);
  bool enabled() const { return !tokens_.empty(); }
  // UNAUTHENTICATED without an "authorization: Bearer ..." header, PERMISSION_DENIED for a
  // token not in the file. The token itself never appears in a message or a log.
  absl::Status check(const grpc::ServerContext& context) const;
  // The same for an HTTP request: `header` is its Authorization value, nullptr when absent.
  absl::Status check_authorization(const std::string* header) const;

 private:
  std::vector<std::string> tokens_;
};

}  // namespace vb::server
