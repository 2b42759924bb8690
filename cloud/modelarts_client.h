// A client of a Huawei Cloud ModelArts real-time service (or any endpoint behind Huawei's API
// gateway): HTTPS with certificate verification, the gateway's four ways to authenticate,
// its 12 MB body limit, retries with backoff where the gateway says "try again", and a
// deadline per call. Errors come back as absl::Status with the gateway's error code.
//
//   vb::cloud::ModelArtsOptions options = *vb::cloud::ModelArtsOptions::from_env();
//   auto client = *vb::cloud::ModelArtsClient::create(options);
//   absl::StatusOr<vb::cloud::HttpReply> reply = client->post("/v1/linear/forward", body, type);
//
// The secrets in the options (API key, SK, password, AppCode, tokens) never appear in a log,
// an error message or a statistic.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cloud/signer.h"

namespace vb::cloud {

enum class AuthMode {
  kNone,      // no credentials (a gateway that lets the call through, or a local test)
  kApiKey,    // MaaS: "Authorization: Bearer <api key>"
  kIamToken,  // "X-Auth-Token" from IAM POST /v3/auth/tokens, cached, refreshed on APIG.0307
  kAppCode,   // "X-Apig-AppCode"
  kAkSk,      // SDK-HMAC-SHA256 signature of every request
};
const char* auth_mode_name(AuthMode mode);

struct ModelArtsOptions {
  // "https://host[:port]" of the gateway (HUAWEI_CLOUD_ENDPOINT).
  std::string endpoint;
  // The real-time service: calls go to /v1/infers/{service_id}{route}
  // (HUAWEI_CLOUD_SERVICE_ID). Empty: routes are used as they are (a MaaS endpoint).
  std::string service_id;
  // The model name, for MaaS endpoints and for the statistics (HUAWEI_CLOUD_MODEL).
  std::string model;

  AuthMode auth = AuthMode::kNone;
  std::string api_key;   // HUAWEI_CLOUD_API_KEY
  std::string app_code;  // HUAWEI_CLOUD_APP_CODE
  AkSk aksk;             // HUAWEI_CLOUD_AK, HUAWEI_CLOUD_SK
  // IAM token: a ready token (HUAWEI_CLOUD_TOKEN), or one obtained with a password from
  // HUAWEI_CLOUD_IAM_ENDPOINT as HUAWEI_CLOUD_USER of HUAWEI_CLOUD_DOMAIN, scoped to the
  // project HUAWEI_CLOUD_PROJECT.
  std::string token;
  std::string iam_endpoint;
  std::string user_name;
  std::string password;
  std::string domain_name;
  std::string project_name;

  // TLS: the system's CAs unless ca_file is set (HUAWEI_CLOUD_CA_FILE). Turning
  // verification off (HUAWEI_CLOUD_INSECURE_SKIP_VERIFY=1) logs a warning at creation.
  std::string ca_file;
  bool verify_tls = true;

  // The gateway refuses bodies over 12 MB and calls over about 40 s.
  uint64_t max_body_bytes = 12ull * 1000 * 1000;
  std::chrono::milliseconds call_timeout{40000};
  std::chrono::milliseconds connect_timeout{5000};
  // Attempts per call on 429, 502, 503, 504 and ModelArts.4302, with exponential backoff
  // (initial_backoff doubling up to max_backoff) and full jitter; a Retry-After header
  // raises the wait up to max_backoff.
  int max_attempts = 4;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};

  // From HUAWEI_CLOUD_* variables. The auth mode is HUAWEI_CLOUD_AUTH (api_key, token,
  // app_code, aksk, none) or, when unset, the first mode whose variables are present in that
  // order. INVALID_ARGUMENT naming the variable for a value that does not parse.
  static absl::StatusOr<ModelArtsOptions> from_env();
  // INVALID_ARGUMENT naming the field when the mode's credentials or the endpoint are missing.
  absl::Status validate() const;
};

struct HttpReply {
  int status = 0;
  std::string body;
  std::string content_type;
};

class ModelArtsClient {
 public:
  struct Stats {
    uint64_t requests = 0;         // HTTP requests sent, retries included
    uint64_t retries = 0;          // requests repeated after a retryable answer
    uint64_t token_refreshes = 0;  // IAM tokens obtained
    uint64_t bytes_sent = 0;
    uint64_t bytes_received = 0;
  };

  static absl::StatusOr<std::unique_ptr<ModelArtsClient>> create(ModelArtsOptions options);
  ~ModelArtsClient();

  // POST / GET to the service's `route` ("/v1/linear/forward"). A 2xx reply is returned;
  // anything else becomes a status: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
  // PERMISSION_DENIED, 404 NOT_FOUND when the service says so (error code "VB.NOT_FOUND")
  // and FAILED_PRECONDITION otherwise, 413 and 429 RESOURCE_EXHAUSTED, 5xx UNAVAILABLE, a
  // call past call_timeout DEADLINE_EXCEEDED, a certificate that does not verify UNAVAILABLE.
  // RESOURCE_EXHAUSTED at once, sending nothing, when `body` exceeds max_body_bytes.
  absl::StatusOr<HttpReply> post(absl::string_view route, const std::string& body,
                                 absl::string_view content_type);
  absl::StatusOr<HttpReply> get(absl::string_view route);

  const ModelArtsOptions& options() const { return options_; }
  // "modelarts://host/service_id": names the target in statistics; holds no secret.
  const std::string& name() const { return name_; }
  Stats stats() const;

 private:
  struct Impl;
  ModelArtsClient(ModelArtsOptions options, std::unique_ptr<Impl> impl);

  absl::StatusOr<HttpReply> call(const std::string& method, absl::string_view route,
                                 const std::string& body, absl::string_view content_type);
  absl::StatusOr<std::string> current_token(bool force_refresh);

  const ModelArtsOptions options_;
  std::string name_;
  std::unique_ptr<Impl> impl_;
};

// Huawei's error body {"error_code": "...", "error_msg": "...", "request_id": "..."} as a
// status for an HTTP `status`; used by the client and by anything reading gateway replies.
absl::Status status_from_reply(int http_status, absl::string_view body);

}  // namespace vb::cloud
