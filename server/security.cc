#include "server/security.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::server {
namespace {

absl::StatusOr<std::string> read_file(const std::string& path, const char* key) {
  std::ifstream file(path);
  if (!file) {
    return absl::FailedPreconditionError(absl::StrCat(key, " = \"", path, "\": cannot read it"));
  }
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

absl::Status check_exposure(const ServerOptions& options) {
  VB_RETURN_IF_ERROR(check_exposure(options, options.host));
  if (options.http_port >= 0) VB_RETURN_IF_ERROR(check_exposure(options, options.http_host));
  return absl::OkStatus();
}

absl::Status check_exposure(const ServerOptions& options, const std::string& host) {
  if (is_loopback_host(host) || options.insecure) return absl::OkStatus();
  const bool tls = !options.tls_cert_file.empty();
  const bool client_auth = !options.token_file.empty() || !options.tls_client_ca_file.empty();
  if (tls && client_auth) return absl::OkStatus();
  std::string missing;
  if (!tls) missing = "TLS (tls.cert_file and tls.key_file / --tls-cert, --tls-key)";
  if (!client_auth) {
    absl::StrAppend(&missing, missing.empty() ? "" : " and ",
                    "client authentication (auth.token_file / --token-file, or "
                    "tls.client_ca_file / --tls-client-ca)");
  }
  return absl::FailedPreconditionError(
      absl::StrCat("refusing to serve on ", host, " without ", missing,
                   ". Add them, listen on 127.0.0.1, or pass --insecure true on a network "
                   "you trust."));
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server_credentials(
    const ServerOptions& options) {
  if (options.tls_cert_file.empty()) {
    if (!options.tls_key_file.empty() || !options.tls_client_ca_file.empty()) {
      return absl::FailedPreconditionError(
          "tls.key_file / tls.client_ca_file are set but tls.cert_file is not");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_key_file.empty()) {
    return absl::FailedPreconditionError("tls.cert_file is set but tls.key_file is not");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  VB_ASSIGN_OR_RETURN(pair.cert_chain, read_file(options.tls_cert_file, "tls.cert_file"));
  VB_ASSIGN_OR_RETURN(pair.private_key, read_file(options.tls_key_file, "tls.key_file"));
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!options.tls_client_ca_file.empty()) {
    VB_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                        read_file(options.tls_client_ca_file, "tls.client_ca_file"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<TokenCheck> TokenCheck::load(const std::string& token_file) {
  TokenCheck check;
  if (token_file.empty()) return check;
  VB_ASSIGN_OR_RETURN(std::string text, read_file(token_file, "auth.token_file"));
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const std::string token(absl::StripAsciiWhitespace(line));
    if (!token.empty() && token[0] != '#') check.tokens_.push_back(token);
  }
  if (check.tokens_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("auth.token_file = \"", token_file, "\" holds no token"));
  }
  return check;
}

absl::Status TokenCheck::check(const grpc::ServerContext& context) const {
  if (tokens_.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return check_authorization(nullptr);
  const std::string value(it->second.data(), it->second.size());
  return check_authorization(&value);
}

absl::Status TokenCheck::check_authorization(const std::string* header) const {
  if (tokens_.empty()) return absl::OkStatus();
  if (header == nullptr) {
    return absl::UnauthenticatedError("this daemon needs \"authorization: Bearer <token>\"");
  }
  const std::string& value = *header;
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(value, kBearer)) {
    return absl::UnauthenticatedError("the authorization header is not \"Bearer <token>\"");
  }
  const std::string presented = value.substr(kBearer.size());
  for (const std::string& token : tokens_) {
    // Constant time, so the comparison leaks nothing about how much of a guess was right.
    if (token.size() == presented.size() &&
        CRYPTO_memcmp(token.data(), presented.data(), token.size()) == 0) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError("the bearer token is not one this daemon accepts");
}

}  // namespace vb::server
