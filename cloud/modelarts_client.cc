#include "cloud/modelarts_client.h"

#include <httplib.h>

#include <cstdlib>
#include <random>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace vb::cloud {
namespace {

// IAM tokens are valid for 24 hours; refresh an hour early so that no call carries one
// that expires in flight.
constexpr std::chrono::hours kTokenLifetime{23};

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

struct Endpoint {
  std::string scheme;
  std::string host;
  int port = 443;
  std::string host_header;  // what Host carries (and what the signature covers)
};

absl::StatusOr<Endpoint> parse_endpoint(const std::string& url) {
  static const std::regex kPattern(R"(^(https?)://([^/:\[\]]+|\[[0-9a-fA-F:.]+\])(?::(\d+))?/?$)");
  std::smatch match;
  if (!std::regex_match(url, match, kPattern)) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", url,
                     "\": expected https://host[:port] (no path; the service id and "
                     "route are added per call)"));
  }
  Endpoint endpoint;
  endpoint.scheme = match[1];
  endpoint.host = match[2];
  const bool tls = endpoint.scheme == "https";
  endpoint.port = tls ? 443 : 80;
  if (match[3].matched && !absl::SimpleAtoi(std::string(match[3]), &endpoint.port)) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", url, "\": bad port"));
  }
  if (endpoint.port < 1 || endpoint.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", url, "\": port ", endpoint.port, " is outside 1..65535"));
  }
  endpoint.host_header = endpoint.port == (tls ? 443 : 80)
                             ? endpoint.host
                             : absl::StrCat(endpoint.host, ":", endpoint.port);
  return endpoint;
}

// Retryable answers of the gateway: throttling, a backend that is busy or restarting.
bool is_retryable(int http_status, absl::string_view error_code) {
  return http_status == 429 || http_status == 502 || http_status == 503 || http_status == 504 ||
         error_code == "ModelArts.4302";
}

std::string error_code_of(absl::string_view body) {
  const nlohmann::json parsed = nlohmann::json::parse(body, nullptr, false);
  if (parsed.is_object()) {
    auto it = parsed.find("error_code");
    if (it != parsed.end() && it->is_string()) return it->get<std::string>();
  }
  return {};
}

void split_route(absl::string_view route, std::string* path,
                 std::vector<std::pair<std::string, std::string>>* query) {
  const size_t question = route.find('?');
  *path = std::string(route.substr(0, question));
  if (question == absl::string_view::npos) return;
  for (absl::string_view part :
       absl::StrSplit(route.substr(question + 1), '&', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    query->push_back(std::move(kv));
  }
}

}  // namespace

const char* auth_mode_name(AuthMode mode) {
  switch (mode) {
    case AuthMode::kNone:
      return "none";
    case AuthMode::kApiKey:
      return "api_key";
    case AuthMode::kIamToken:
      return "token";
    case AuthMode::kAppCode:
      return "app_code";
    case AuthMode::kAkSk:
      return "aksk";
  }
  return "?";
}

absl::StatusOr<ModelArtsOptions> ModelArtsOptions::from_env() {
  ModelArtsOptions options;
  options.endpoint = env("HUAWEI_CLOUD_ENDPOINT");
  options.service_id = env("HUAWEI_CLOUD_SERVICE_ID");
  options.model = env("HUAWEI_CLOUD_MODEL");
  options.api_key = env("HUAWEI_CLOUD_API_KEY");
  options.app_code = env("HUAWEI_CLOUD_APP_CODE");
  options.aksk.access_key = env("HUAWEI_CLOUD_AK");
  options.aksk.secret_key = env("HUAWEI_CLOUD_SK");
  options.token = env("HUAWEI_CLOUD_TOKEN");
  options.iam_endpoint = env("HUAWEI_CLOUD_IAM_ENDPOINT");
  options.user_name = env("HUAWEI_CLOUD_USER");
  options.password = env("HUAWEI_CLOUD_PASSWORD");
  options.domain_name = env("HUAWEI_CLOUD_DOMAIN");
  options.project_name = env("HUAWEI_CLOUD_PROJECT");
  options.ca_file = env("HUAWEI_CLOUD_CA_FILE");
  const std::string skip_verify = env("HUAWEI_CLOUD_INSECURE_SKIP_VERIFY");
  if (!skip_verify.empty()) {
    bool skip = false;
    if (!absl::SimpleAtob(skip_verify, &skip)) {
      return absl::InvalidArgumentError(absl::StrCat("HUAWEI_CLOUD_INSECURE_SKIP_VERIFY is \"",
                                                     skip_verify,
                                                     "\": expected 1/0 or true/false"));
    }
    options.verify_tls = !skip;
  }
  const std::string timeout = env("HUAWEI_CLOUD_TIMEOUT_MS");
  if (!timeout.empty()) {
    int64_t ms = 0;
    if (!absl::SimpleAtoi(timeout, &ms) || ms <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("HUAWEI_CLOUD_TIMEOUT_MS is \"", timeout,
                                                     "\": expected a positive number of ms"));
    }
    options.call_timeout = std::chrono::milliseconds(ms);
  }
  const std::string mode = absl::AsciiStrToLower(env("HUAWEI_CLOUD_AUTH"));
  if (mode.empty()) {
    if (!options.api_key.empty()) {
      options.auth = AuthMode::kApiKey;
    } else if (!options.aksk.access_key.empty()) {
      options.auth = AuthMode::kAkSk;
    } else if (!options.app_code.empty()) {
      options.auth = AuthMode::kAppCode;
    } else if (!options.token.empty() || !options.password.empty()) {
      options.auth = AuthMode::kIamToken;
    }
  } else {
    bool known = false;
    for (AuthMode m : {AuthMode::kNone, AuthMode::kApiKey, AuthMode::kIamToken, AuthMode::kAppCode,
                       AuthMode::kAkSk}) {
      if (mode == auth_mode_name(m)) {
        options.auth = m;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HUAWEI_CLOUD_AUTH is \"", mode, "\": expected api_key, token, app_code, aksk or none"));
    }
  }
  return options;
}

absl::Status ModelArtsOptions::validate() const {
  VB_RETURN_IF_ERROR(parse_endpoint(endpoint).status());
  auto missing = [](absl::string_view field, absl::string_view variable, absl::string_view mode) {
    return absl::InvalidArgumentError(
        absl::StrCat("cloud auth \"", mode, "\" needs ", field, " (", variable, ")"));
  };
  switch (auth) {
    case AuthMode::kNone:
      break;
    case AuthMode::kApiKey:
      if (api_key.empty()) return missing("api_key", "HUAWEI_CLOUD_API_KEY", "api_key");
      break;
    case AuthMode::kAppCode:
      if (app_code.empty()) return missing("app_code", "HUAWEI_CLOUD_APP_CODE", "app_code");
      break;
    case AuthMode::kAkSk:
      if (aksk.access_key.empty()) return missing("aksk.access_key", "HUAWEI_CLOUD_AK", "aksk");
      if (aksk.secret_key.empty()) return missing("aksk.secret_key", "HUAWEI_CLOUD_SK", "aksk");
      break;
    case AuthMode::kIamToken:
      if (token.empty()) {
        if (iam_endpoint.empty()) {
          return missing("token or iam_endpoint", "HUAWEI_CLOUD_TOKEN / _IAM_ENDPOINT", "token");
        }
        VB_RETURN_IF_ERROR(parse_endpoint(iam_endpoint).status());
        if (user_name.empty()) return missing("user_name", "HUAWEI_CLOUD_USER", "token");
        if (password.empty()) return missing("password", "HUAWEI_CLOUD_PASSWORD", "token");
        if (domain_name.empty()) return missing("domain_name", "HUAWEI_CLOUD_DOMAIN", "token");
        if (project_name.empty()) return missing("project_name", "HUAWEI_CLOUD_PROJECT", "token");
      }
      break;
  }
  if (max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts is ", max_attempts, ": expected at least 1"));
  }
  if (call_timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("call_timeout is ", call_timeout.count(), " ms: expected more than 0"));
  }
  return absl::OkStatus();
}

absl::Status status_from_reply(int http_status, absl::string_view body) {
  std::string code, message, request_id;
  const nlohmann::json parsed = nlohmann::json::parse(body, nullptr, false);
  if (parsed.is_object()) {
    auto text = [&](const char* key) {
      auto it = parsed.find(key);
      return it != parsed.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    code = text("error_code");
    message = text("error_msg");
    request_id = text("request_id");
  }
  if (message.empty()) message = std::string(body.substr(0, 200));
  std::string text =
      absl::StrCat("HTTP ", http_status, code.empty() ? "" : " ", code, ": ", message);
  if (!request_id.empty()) absl::StrAppend(&text, " (request_id ", request_id, ")");
  switch (http_status) {
    case 400:
      return absl::InvalidArgumentError(text);
    case 401:
      return absl::UnauthenticatedError(text);
    case 403:
      return absl::PermissionDeniedError(text);
    case 404:
      return code == "VB.NOT_FOUND" ? absl::NotFoundError(text)
                                    : absl::FailedPreconditionError(text);
    case 408:
      return absl::DeadlineExceededError(text);
    case 413:
    case 429:
      return absl::ResourceExhaustedError(text);
    case 504:
      return absl::DeadlineExceededError(text);
    default:
      break;
  }
  if (http_status >= 500) return absl::UnavailableError(text);
  return absl::UnknownError(text);
}

struct ModelArtsClient::Impl {
  Endpoint endpoint;
  std::mutex mutex;  // one request at a time on the kept-alive connection
  std::unique_ptr<httplib::Client> http;

  std::mutex token_mutex;
  std::string token;
  std::chrono::steady_clock::time_point token_expires;

  std::mutex stats_mutex;
  Stats stats;
  std::mt19937_64 random{std::random_device{}()};

  void configure(httplib::Client& client, const ModelArtsOptions& options) {
    auto set = [](auto&& setter, std::chrono::milliseconds ms) {
      setter(static_cast<time_t>(ms.count() / 1000),
             static_cast<time_t>((ms.count() % 1000) * 1000));
    };
    set([&](time_t s, time_t us) { client.set_connection_timeout(s, us); },
        options.connect_timeout);
    set([&](time_t s, time_t us) { client.set_read_timeout(s, us); }, options.call_timeout);
    set([&](time_t s, time_t us) { client.set_write_timeout(s, us); }, options.call_timeout);
    client.set_keep_alive(true);
    // Headers and body go out in separate writes; without this, Nagle's algorithm holds the
    // body until the peer's delayed ACK (40 ms a call).
    client.set_tcp_nodelay(true);
    client.enable_server_certificate_verification(options.verify_tls);
    if (!options.ca_file.empty()) client.set_ca_cert_path(options.ca_file);
  }
};

ModelArtsClient::ModelArtsClient(ModelArtsOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {
  name_ = absl::StrCat("modelarts://", impl_->endpoint.host_header,
                       options_.service_id.empty() ? "" : "/", options_.service_id);
}

ModelArtsClient::~ModelArtsClient() = default;

absl::StatusOr<std::unique_ptr<ModelArtsClient>> ModelArtsClient::create(ModelArtsOptions options) {
  VB_RETURN_IF_ERROR(options.validate());
  auto impl = std::make_unique<Impl>();
  VB_ASSIGN_OR_RETURN(impl->endpoint, parse_endpoint(options.endpoint));
  if (impl->endpoint.scheme != "https") {
    VB_LOG_WARNING("cloud endpoint ", options.endpoint, " is plain HTTP: requests and ",
                   auth_mode_name(options.auth), " credentials travel unencrypted");
  }
  if (!options.verify_tls) {
    VB_LOG_WARNING("cloud endpoint ", options.endpoint,
                   ": TLS certificate verification is OFF; anyone on the path can impersonate it");
  }
  impl->http = std::make_unique<httplib::Client>(
      absl::StrCat(impl->endpoint.scheme, "://", impl->endpoint.host, ":", impl->endpoint.port));
  impl->configure(*impl->http, options);
  impl->token = options.token;
  if (!impl->token.empty()) impl->token_expires = std::chrono::steady_clock::now() + kTokenLifetime;
  return std::unique_ptr<ModelArtsClient>(new ModelArtsClient(std::move(options), std::move(impl)));
}

ModelArtsClient::Stats ModelArtsClient::stats() const {
  std::lock_guard<std::mutex> lock(impl_->stats_mutex);
  return impl_->stats;
}

absl::StatusOr<std::string> ModelArtsClient::current_token(bool force_refresh) {
  std::lock_guard<std::mutex> lock(impl_->token_mutex);
  const auto now = std::chrono::steady_clock::now();
  if (!force_refresh && !impl_->token.empty() && now < impl_->token_expires) return impl_->token;
  if (options_.iam_endpoint.empty()) {
    if (impl_->token.empty()) return absl::UnauthenticatedError("no IAM token configured");
    // A fixed token cannot be refreshed: hand it out and let the gateway judge it.
    return impl_->token;
  }
  VB_ASSIGN_OR_RETURN(Endpoint iam, parse_endpoint(options_.iam_endpoint));
  httplib::Client client(absl::StrCat(iam.scheme, "://", iam.host, ":", iam.port));
  impl_->configure(client, options_);
  const nlohmann::json request = {{"auth",
                                   {{"identity",
                                     {{"methods", {"password"}},
                                      {"password",
                                       {{"user",
                                         {{"name", options_.user_name},
                                          {"password", options_.password},
                                          {"domain", {{"name", options_.domain_name}}}}}}}}},
                                    {"scope", {{"project", {{"name", options_.project_name}}}}}}}};
  httplib::Headers headers = {{"Host", iam.host_header}};
  httplib::Result result =
      client.Post("/v3/auth/tokens", headers, request.dump(), "application/json;charset=utf8");
  if (!result) {
    return absl::UnavailableError(absl::StrCat(
        "IAM ", iam.host_header, ": token request failed: ", httplib::to_string(result.error())));
  }
  if (result->status != 201 && result->status != 200) {
    absl::Status status = status_from_reply(result->status, result->body);
    return absl::Status(status.code(), absl::StrCat("IAM token request: ", status.message()));
  }
  std::string token = result->get_header_value("X-Subject-Token");
  if (token.empty()) {
    return absl::UnavailableError("IAM answered without an X-Subject-Token header");
  }
  impl_->token = std::move(token);
  impl_->token_expires = now + kTokenLifetime;
  {
    std::lock_guard<std::mutex> stats_lock(impl_->stats_mutex);
    ++impl_->stats.token_refreshes;
  }
  return impl_->token;
}

absl::StatusOr<HttpReply> ModelArtsClient::post(absl::string_view route, const std::string& body,
                                                absl::string_view content_type) {
  if (body.size() > options_.max_body_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("a request of ", body.size(),
                                                     " bytes exceeds the gateway's body limit of ",
                                                     options_.max_body_bytes, " bytes"));
  }
  return call("POST", route, body, content_type);
}

absl::StatusOr<HttpReply> ModelArtsClient::get(absl::string_view route) {
  return call("GET", route, std::string(), "");
}

absl::StatusOr<HttpReply> ModelArtsClient::call(const std::string& method, absl::string_view route,
                                                const std::string& body,
                                                absl::string_view content_type) {
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;
  split_route(route, &path, &query);
  if (!options_.service_id.empty()) path = absl::StrCat("/v1/infers/", options_.service_id, path);
  const std::string target = route.find('?') == absl::string_view::npos
                                 ? path
                                 : absl::StrCat(path, route.substr(route.find('?')));
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + options_.call_timeout;
  std::chrono::milliseconds backoff = options_.initial_backoff;
  bool refreshed = false;
  for (int attempt = 1;; ++attempt) {
    httplib::Headers headers = {{"Host", impl_->endpoint.host_header}};
    if (!content_type.empty()) headers.emplace("Content-Type", std::string(content_type));
    switch (options_.auth) {
      case AuthMode::kNone:
        break;
      case AuthMode::kApiKey:
        headers.emplace("Authorization", absl::StrCat("Bearer ", options_.api_key));
        break;
      case AuthMode::kAppCode:
        headers.emplace("X-Apig-AppCode", options_.app_code);
        break;
      case AuthMode::kIamToken: {
        VB_ASSIGN_OR_RETURN(std::string token, current_token(false));
        headers.emplace("X-Auth-Token", std::move(token));
        break;
      }
      case AuthMode::kAkSk: {
        SignableRequest request;
        request.method = method;
        request.path = path;
        request.query = query;
        request.body = body;
        const std::string date = sdk_date(std::chrono::system_clock::now());
        headers.emplace("X-Sdk-Date", date);
        for (const auto& [name, value] : headers) request.headers.emplace_back(name, value);
        headers.emplace("Authorization", sign(request, options_.aksk).authorization);
        break;
      }
    }

    httplib::Result result = [&] {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      return method == "GET" ? impl_->http->Get(target.c_str(), headers)
                             : impl_->http->Post(target.c_str(), headers, body,
                                                 std::string(content_type).c_str());
    }();
    {
      std::lock_guard<std::mutex> lock(impl_->stats_mutex);
      ++impl_->stats.requests;
      impl_->stats.bytes_sent += body.size();
      if (result) impl_->stats.bytes_received += result->body.size();
    }
    if (!result) {
      const httplib::Error error = result.error();
      const auto elapsed = std::chrono::steady_clock::now() - started;
      if (error == httplib::Error::SSLServerVerification) {
        return absl::UnavailableError(
            absl::StrCat(name_, ": the server's TLS certificate did not verify for host \"",
                         impl_->endpoint.host, "\" (wrong host name, or not signed by ",
                         options_.ca_file.empty() ? "a system CA" : options_.ca_file, ")"));
      }
      if ((error == httplib::Error::Read || error == httplib::Error::ConnectionTimeout) &&
          elapsed >= options_.call_timeout - std::chrono::milliseconds(50)) {
        return absl::DeadlineExceededError(absl::StrCat(name_, ": no answer within ",
                                                        options_.call_timeout.count(), " ms (",
                                                        method, " ", path, ")"));
      }
      return absl::UnavailableError(
          absl::StrCat(name_, ": ", method, " ", path, " failed: ", httplib::to_string(error)));
    }
    if (result->status >= 200 && result->status < 300) {
      return HttpReply{result->status, std::move(result->body),
                       result->get_header_value("Content-Type")};
    }
    const std::string code = error_code_of(result->body);
    if (result->status == 401 && code == "APIG.0307" && options_.auth == AuthMode::kIamToken &&
        !refreshed) {
      // The token must be refreshed: once, then the answer stands.
      refreshed = true;
      VB_RETURN_IF_ERROR(current_token(true).status());
      continue;
    }
    if (is_retryable(result->status, code) && attempt < options_.max_attempts) {
      std::chrono::milliseconds wait{0};
      {
        std::lock_guard<std::mutex> lock(impl_->stats_mutex);
        std::uniform_int_distribution<int64_t> jitter(0, backoff.count());
        wait = std::chrono::milliseconds(jitter(impl_->random));
        ++impl_->stats.retries;
      }
      int64_t retry_after_s = 0;
      if (absl::SimpleAtoi(result->get_header_value("Retry-After"), &retry_after_s) &&
          retry_after_s > 0) {
        wait = std::max(wait, std::chrono::milliseconds(retry_after_s * 1000));
      }
      wait = std::min(wait, options_.max_backoff);
      if (std::chrono::steady_clock::now() + wait < deadline) {
        std::this_thread::sleep_for(wait);
        backoff = std::min(backoff * 2, options_.max_backoff);
        continue;
      }
    }
    absl::Status status = status_from_reply(result->status, result->body);
    return absl::Status(status.code(), absl::StrCat(name_, ": ", status.message()));
  }
}

}  // namespace vb::cloud
