// The cloud path end to end, on loopback: CloudLinear -> ModelArtsClient (HTTPS, signed) ->
// apig_gateway.py (a stand-in for Huawei's API gateway, with a test CA made per run) -> a
// real vbd's HTTP face. Also the HTTP face on its own, and a mixed local/daemon/cloud run.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/nn/modules/linear.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "client/cloud_linear.h"
#include "client/cloud_target.h"
#include "client/daemon_target.h"
#include "client/weight_digest.h"
#include "cloud/signer.h"
#include "tests/support/daemon_process.h"
#include "wire/http_tensors.h"

extern char** environ;

namespace vb {
namespace {

using testing::DaemonProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kServiceId[] = "5f6e8b4c-test-service";
constexpr char kAk[] = "TESTAKLOOPBACK0001";
constexpr char kSk[] = "sk-for-loopback-tests-only-0123456789";

// A directory with the test PKI (tests/integration/make_test_certs.sh), made once per run.
const std::string& cert_dir() {
  static const std::string dir = [] {
    char pattern[] = "/tmp/vb-cloud-certs-XXXXXX";
    const std::string made = mkdtemp(pattern);
    const std::string command =
        std::string(VB_TEST_SOURCE_DIR) + "/../integration/make_test_certs.sh " + made;
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    return made;
  }();
  return dir;
}

// apig_gateway.py in its own process, forwarding to `backend_port`; killed when destroyed.
class Gateway {
 public:
  Gateway(int backend_port, std::vector<std::string> extra, const std::string& cert = "server")
      : verifiable_(cert == "server") {
    std::vector<std::string> args = {"/usr/bin/python3",
                                     std::string(VB_TEST_SOURCE_DIR) + "/apig_gateway.py",
                                     "--cert",
                                     cert_dir() + "/" + cert + ".pem",
                                     "--key",
                                     cert_dir() + "/" + cert + ".key",
                                     "--backend",
                                     "127.0.0.1:" + std::to_string(backend_port),
                                     "--service-id",
                                     kServiceId};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
      throw std::runtime_error("cannot start apig_gateway.py");
    }
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    std::string output;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (output.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd fd{out[0], POLLIN, 0};
      if (poll(&fd, 1, 200) <= 0) continue;
      char buffer[256];
      const ssize_t n = read(out[0], buffer, sizeof(buffer));
      if (n <= 0) break;
      output.append(buffer, static_cast<size_t>(n));
    }
    close(out[0]);
    const size_t colon = output.rfind(':');
    if (output.rfind("gateway listening on ", 0) != 0 || colon == std::string::npos) {
      throw std::runtime_error("apig_gateway.py did not start: " + output);
    }
    port_ = std::stoi(output.substr(colon + 1));
  }
  ~Gateway() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }

  int port() const { return port_; }
  std::string endpoint() const { return "https://127.0.0.1:" + std::to_string(port_); }

  std::unique_ptr<httplib::Client> admin() const {
    auto client = std::make_unique<httplib::Client>(endpoint());
    client->set_ca_cert_path(cert_dir() + "/ca.pem");
    // The test's own control channel; the client under test always verifies.
    client->enable_server_certificate_verification(verifiable_);
    return client;
  }
  void control(const nlohmann::json& command) const {
    auto reply = admin()->Post("/__control", command.dump(), "application/json");
    ASSERT_TRUE(reply && reply->status == 200);
  }
  nlohmann::json stats() const {
    auto reply = admin()->Get("/__stats");
    EXPECT_TRUE(reply && reply->status == 200);
    return reply ? nlohmann::json::parse(reply->body) : nlohmann::json();
  }

 private:
  bool verifiable_ = true;
  pid_t pid_ = -1;
  int port_ = 0;
};

cloud::ModelArtsOptions aksk_options(const Gateway& gateway) {
  cloud::ModelArtsOptions options;
  options.endpoint = gateway.endpoint();
  options.service_id = kServiceId;
  options.auth = cloud::AuthMode::kAkSk;
  options.aksk = {kAk, kSk};
  options.ca_file = cert_dir() + "/ca.pem";
  options.call_timeout = std::chrono::seconds(20);
  options.initial_backoff = std::chrono::milliseconds(10);
  return options;
}

// A CloudLinear and a plain Linear with the same parameters.
struct LayerPair {
  nn::CloudLinear cloud;
  torch::nn::Linear local;
};

LayerPair make_layers(int64_t in, int64_t out, cloud::ModelArtsOptions options, bool fallback) {
  torch::manual_seed(7);
  torch::nn::Linear local(torch::nn::LinearOptions(in, out));
  nn::CloudLinear cloud(
      nn::CloudLinearOptions(in, out).cloud(std::move(options)).fallback_local(fallback));
  torch::NoGradGuard no_grad;
  cloud->weight.copy_(local->weight);
  cloud->bias.copy_(local->bias);
  return {cloud, local};
}

void expect_close(const at::Tensor& actual, const at::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(at::allclose(actual, expected, 1e-5, 1e-6))
      << "max abs diff " << (actual - expected).abs().max().item<double>();
}

class CloudTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new DaemonProcess({"--http-port", "0", "--metrics-port", "-1"});
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  static DaemonProcess* daemon_;
};
DaemonProcess* CloudTest::daemon_ = nullptr;

TEST_F(CloudTest, HttpFaceAnswersHealthAndRefusesBadInput) {
  ASSERT_GT(daemon_->http_port(), 0);
  httplib::Client http("127.0.0.1", daemon_->http_port());
  auto health = http.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(nlohmann::json::parse(health->body), nlohmann::json({{"health", "true"}}));

  auto garbage = http.Post("/v1/linear/forward", "not a tensor message", wire::kTensorsContentType);
  ASSERT_TRUE(garbage);
  EXPECT_EQ(garbage->status, 400);
  EXPECT_EQ(nlohmann::json::parse(garbage->body)["error_code"], "VB.INVALID_ARGUMENT");

  // Well-formed, but the weight was never uploaded.
  const std::string digest(64, 'a');
  const std::string body = wire::encode_tensor_message(
      {{"weight", {{"digest", digest}, {"dtype", "float32"}, {"shape", {3, 4}}}}},
      {{"input", at::ones({2, 4})}});
  auto unknown = http.Post("/v1/linear/forward", body, wire::kTensorsContentType);
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(nlohmann::json::parse(unknown->body)["error_code"], "VB.NOT_FOUND");

  // Shapes that do not fit each other: named in the message.
  const std::string mismatched = wire::encode_tensor_message(
      {{"weight", {{"digest", digest}, {"dtype", "float32"}, {"shape", {3, 5}}}}},
      {{"input", at::ones({2, 4})}});
  auto wrong = http.Post("/v1/linear/forward", mismatched, wire::kTensorsContentType);
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 400);
  EXPECT_THAT(wrong->body, HasSubstr("in_features"));

  // A tensor announced longer than the bytes that follow.
  std::string truncated = body.substr(0, body.size() - 4);
  auto short_body = http.Post("/v1/linear/forward", truncated, wire::kTensorsContentType);
  ASSERT_TRUE(short_body);
  EXPECT_EQ(short_body->status, 400);
  EXPECT_THAT(short_body->body, HasSubstr("needs 32 bytes"));

  auto route = http.Get("/v1/nothing-here");
  ASSERT_TRUE(route);
  EXPECT_EQ(route->status, 404);
  EXPECT_THAT(route->body, HasSubstr("no route"));

  // A weight whose bytes do not hash to the digest it is uploaded under is refused.
  auto forged =
      http.Post("/v1/weights/" + digest, std::string(48, 'x'), "application/octet-stream");
  ASSERT_TRUE(forged);
  EXPECT_EQ(forged->status, 400);
  auto still_unknown = http.Get("/v1/weights/" + digest);
  ASSERT_TRUE(still_unknown);
  EXPECT_EQ(still_unknown->status, 404);
}

TEST_F(CloudTest, ForwardAndBackwardThroughTheGatewayEqualTheLocalLayer) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  LayerPair layers = make_layers(48, 24, aksk_options(gateway), /*fallback=*/false);
  const at::Tensor input = torch::randn({5, 3, 48});
  const at::Tensor x_cloud = input.clone().requires_grad_(true);
  const at::Tensor x_local = input.clone().requires_grad_(true);
  const at::Tensor y_cloud = layers.cloud(x_cloud);
  const at::Tensor y_local = layers.local(x_local);
  expect_close(y_cloud, y_local);
  const at::Tensor upstream = torch::randn_like(y_local);
  (y_cloud * upstream).sum().backward();
  (y_local * upstream).sum().backward();
  expect_close(x_cloud.grad(), x_local.grad());
  expect_close(layers.cloud->weight.grad(), layers.local->weight.grad());
  expect_close(layers.cloud->bias.grad(), layers.local->bias.grad());

  const StatsSnapshot stats = layers.cloud->get_stats();
  EXPECT_EQ(stats.cloud_calls(), 2u);
  EXPECT_EQ(stats.local_calls(), 0u);
  EXPECT_EQ(stats.fallbacks(), 0u);
  EXPECT_DOUBLE_EQ(stats.cloud_ratio(), 1.0);
  // Every request passed the gateway's own signature check: upload, forward, backward.
  const nlohmann::json seen = gateway.stats();
  EXPECT_EQ(seen["forwarded"], 3);
  EXPECT_TRUE(seen["rejected"].empty()) << seen.dump();
}

TEST_F(CloudTest, ThrottlingIsRetriedAndThenSucceeds) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  auto target = *CloudTarget::create(aksk_options(gateway));
  Router router({target, std::make_shared<LocalTarget>()});
  const at::Tensor weight = torch::randn({8, 16});
  WeightDigestCache digests;
  LinearForwardCall call{torch::randn({4, 16}), digests.ref(weight), at::Tensor()};
  ASSERT_TRUE(router.linear_forward(call, nullptr).ok());  // uploads the weight

  gateway.control({{"fail_next",
                    {{{"status", 429}, {"error_code", "APIG.0308"}},
                     {{"status", 503}, {"error_code", "ModelArts.4302"}}}}});
  CallStats stats;
  absl::StatusOr<at::Tensor> output = router.linear_forward(call, &stats);
  ASSERT_TRUE(output.ok()) << output.status();
  expect_close(*output, at::matmul(call.input, weight.t()));
  EXPECT_EQ(target->client().stats().retries, 2u);
  EXPECT_EQ(stats.snapshot().cloud_calls(), 1u);
  EXPECT_EQ(stats.snapshot().fallbacks(), 0u);
  const nlohmann::json seen = gateway.stats();
  EXPECT_EQ(seen["rejected"]["APIG.0308"], 1);
  EXPECT_EQ(seen["rejected"]["ModelArts.4302"], 1);
}

TEST_F(CloudTest, UnauthorizedIsNotRetriedAndFallsBackToLocal) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  cloud::ModelArtsOptions options = aksk_options(gateway);
  options.aksk.secret_key = "sk-that-the-gateway-does-not-know";
  LayerPair layers = make_layers(16, 8, options, /*fallback=*/true);
  const at::Tensor input = torch::randn({4, 16});
  expect_close(layers.cloud(input), layers.local(input));
  const StatsSnapshot stats = layers.cloud->get_stats();
  EXPECT_EQ(stats.local_calls(), 1u);
  EXPECT_EQ(stats.cloud_calls(), 0u);
  EXPECT_EQ(stats.fallbacks(), 1u);
  const TargetStats& cloud = stats.targets.at(layers.cloud->router()->targets()[0]->name());
  EXPECT_THAT(cloud.last_error, HasSubstr("APIG.0303"));
  EXPECT_THAT(cloud.last_error, Not(HasSubstr("sk-that-the-gateway")));
  EXPECT_THAT(stats.to_json(), Not(HasSubstr("sk-that-the-gateway")));
  // One request reached the gateway: a 401 is not retried.
  EXPECT_EQ(gateway.stats()["requests"], 1);
}

TEST_F(CloudTest, SlowBackendTimesOutAndFallsBack) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  cloud::ModelArtsOptions options = aksk_options(gateway);
  options.call_timeout = std::chrono::milliseconds(1000);
  LayerPair layers = make_layers(16, 8, options, /*fallback=*/true);
  const at::Tensor input = torch::randn({2, 16});
  expect_close(layers.cloud(input), layers.local(input));  // uploads; fast
  gateway.control({{"delay_ms", 4000}});
  const auto started = std::chrono::steady_clock::now();
  expect_close(layers.cloud(input), layers.local(input));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(3500));
  const StatsSnapshot stats = layers.cloud->get_stats();
  EXPECT_EQ(stats.cloud_calls(), 1u);
  EXPECT_EQ(stats.local_calls(), 1u);
  const TargetStats& cloud = stats.targets.at(layers.cloud->router()->targets()[0]->name());
  EXPECT_THAT(cloud.last_error, HasSubstr("DEADLINE_EXCEEDED"));
}

TEST_F(CloudTest, CertificateForAnotherHostIsRefused) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk}, "wronghost");
  LayerPair layers = make_layers(16, 8, aksk_options(gateway), /*fallback=*/true);
  const at::Tensor input = torch::randn({2, 16});
  expect_close(layers.cloud(input), layers.local(input));
  const StatsSnapshot stats = layers.cloud->get_stats();
  EXPECT_EQ(stats.local_calls(), 1u);
  const TargetStats& cloud = stats.targets.at(layers.cloud->router()->targets()[0]->name());
  EXPECT_THAT(cloud.last_error, HasSubstr("did not verify"));
  // A connection the client refused carried no request.
  EXPECT_EQ(gateway.stats()["requests"], 0);
}

TEST_F(CloudTest, BatchesAreSplitUnderTheBodyLimit) {
  constexpr int kLimit = 200000;
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk, "--max-body",
                                         std::to_string(kLimit)});
  cloud::ModelArtsOptions options = aksk_options(gateway);
  options.max_body_bytes = kLimit;
  // 256 x 256 float32 weight (262 KB) goes up in two parts; 600 rows of 1 KB in 3+ calls.
  LayerPair layers = make_layers(256, 256, options, /*fallback=*/false);
  const at::Tensor x_cloud = torch::randn({600, 256}).requires_grad_(true);
  const at::Tensor x_local = x_cloud.detach().clone().requires_grad_(true);
  const at::Tensor y_cloud = layers.cloud(x_cloud);
  const at::Tensor y_local = layers.local(x_local);
  expect_close(y_cloud, y_local);
  y_cloud.sum().backward();
  y_local.sum().backward();
  expect_close(x_cloud.grad(), x_local.grad());
  EXPECT_TRUE(at::allclose(layers.cloud->weight.grad(), layers.local->weight.grad(), 1e-4, 1e-4));
  const nlohmann::json seen = gateway.stats();
  EXPECT_LE(seen["max_body_seen"].get<int>(), kLimit);
  EXPECT_GE(seen["forwarded"].get<int>(), 2 + 3 + 4);  // parts, forward calls, backward calls
  EXPECT_TRUE(seen["rejected"].empty()) << seen.dump();
}

TEST_F(CloudTest, RowTooLargeOrGatewayLimitFallsBack) {
  Gateway gateway(daemon_->http_port(),
                  {"--auth", "aksk", "--ak", kAk, "--sk", kSk, "--max-body", "100000"});
  {
    // One row alone (30000 float32 = 120 KB) cannot fit: refused before sending anything.
    cloud::ModelArtsOptions options = aksk_options(gateway);
    options.max_body_bytes = 100000;
    LayerPair layers = make_layers(30000, 2, options, /*fallback=*/true);
    const at::Tensor input = torch::randn({1, 30000});
    expect_close(layers.cloud(input), layers.local(input));
    const StatsSnapshot stats = layers.cloud->get_stats();
    const TargetStats& cloud = stats.targets.at(layers.cloud->router()->targets()[0]->name());
    EXPECT_THAT(cloud.last_error, HasSubstr("over the body limit"));
    EXPECT_EQ(stats.local_calls(), 1u);
  }
  EXPECT_EQ(gateway.stats()["requests"], 0);
  {
    // A client that believes the limit is larger: the gateway's 413 is not retried.
    LayerPair layers = make_layers(256, 128, aksk_options(gateway), /*fallback=*/true);
    const at::Tensor input = torch::randn({2, 256});
    expect_close(layers.cloud(input), layers.local(input));
    const StatsSnapshot stats = layers.cloud->get_stats();
    const TargetStats& cloud = stats.targets.at(layers.cloud->router()->targets()[0]->name());
    EXPECT_THAT(cloud.last_error, HasSubstr("APIG.0201"));
    EXPECT_EQ(gateway.stats()["rejected"]["APIG.0201"], 1);
  }
}

TEST_F(CloudTest, GatewayRejectsStaleOrForgedSignatures) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  auto client = gateway.admin();
  const std::string path = std::string("/v1/infers/") + kServiceId + "/health";
  auto signed_get = [&](std::chrono::system_clock::time_point when, const std::string& sk) {
    cloud::SignableRequest request;
    request.method = "GET";
    request.path = path;
    const std::string host = "127.0.0.1:" + std::to_string(gateway.port());
    request.headers = {{"Host", host}, {"X-Sdk-Date", cloud::sdk_date(when)}};
    httplib::Headers headers = {{"Host", host},
                                {"X-Sdk-Date", cloud::sdk_date(when)},
                                {"Authorization", cloud::sign(request, {kAk, sk}).authorization}};
    return client->Get(path.c_str(), headers);
  };
  const auto now = std::chrono::system_clock::now();
  auto fresh = signed_get(now, kSk);
  ASSERT_TRUE(fresh);
  EXPECT_EQ(fresh->status, 200) << fresh->body;  // vbd's /health behind the gateway
  auto stale = signed_get(now - std::chrono::minutes(20), kSk);
  ASSERT_TRUE(stale);
  EXPECT_EQ(stale->status, 401);
  EXPECT_THAT(stale->body, HasSubstr("signature expired"));
  auto forged = signed_get(now, "not-the-secret-key");
  ASSERT_TRUE(forged);
  EXPECT_EQ(forged->status, 401);
  EXPECT_THAT(forged->body, HasSubstr("APIG.0303"));
}

TEST_F(CloudTest, AppCodeApiKeyAndIamTokenModes) {
  const at::Tensor input = torch::randn({3, 16});
  {
    Gateway gateway(daemon_->http_port(), {"--auth", "app_code", "--app-code", "code-123"});
    cloud::ModelArtsOptions options = aksk_options(gateway);
    options.auth = cloud::AuthMode::kAppCode;
    options.app_code = "code-123";
    LayerPair good = make_layers(16, 8, options, /*fallback=*/true);
    expect_close(good.cloud(input), good.local(input));
    EXPECT_EQ(good.cloud->get_stats().cloud_calls(), 1u);
    options.app_code = "code-999";
    LayerPair wrong = make_layers(16, 8, options, /*fallback=*/true);
    expect_close(wrong.cloud(input), wrong.local(input));
    EXPECT_EQ(wrong.cloud->get_stats().local_calls(), 1u);
    EXPECT_EQ(gateway.stats()["rejected"]["APIG.0301"], 1);
  }
  {
    Gateway gateway(daemon_->http_port(), {"--auth", "api_key", "--api-key", "maas-key"});
    cloud::ModelArtsOptions options = aksk_options(gateway);
    options.auth = cloud::AuthMode::kApiKey;
    options.api_key = "maas-key";
    LayerPair layers = make_layers(16, 8, options, /*fallback=*/false);
    expect_close(layers.cloud(input), layers.local(input));
  }
  {
    Gateway gateway(daemon_->http_port(),
                    {"--auth", "token", "--user", "trainer", "--password", "pw-123", "--domain",
                     "vb-domain", "--project", "cn-north-4"});
    cloud::ModelArtsOptions options = aksk_options(gateway);
    options.auth = cloud::AuthMode::kIamToken;
    options.iam_endpoint = gateway.endpoint();
    options.user_name = "trainer";
    options.password = "pw-123";
    options.domain_name = "vb-domain";
    options.project_name = "cn-north-4";
    auto target = *CloudTarget::create(options);
    Router router({target});
    WeightDigestCache digests;
    const at::Tensor weight = torch::randn({8, 16});
    LinearForwardCall call{input, digests.ref(weight), at::Tensor()};
    ASSERT_TRUE(router.linear_forward(call, nullptr).ok());
    EXPECT_EQ(target->client().stats().token_refreshes, 1u);  // cached after the first
    ASSERT_TRUE(router.linear_forward(call, nullptr).ok());
    EXPECT_EQ(target->client().stats().token_refreshes, 1u);
    // The gateway declares the token stale (APIG.0307): refreshed once, and the call succeeds.
    gateway.control({{"expire_tokens", true}});
    absl::StatusOr<at::Tensor> output = router.linear_forward(call, nullptr);
    ASSERT_TRUE(output.ok()) << output.status();
    EXPECT_EQ(target->client().stats().token_refreshes, 2u);
    EXPECT_EQ(gateway.stats()["rejected"]["APIG.0307"], 1);
    EXPECT_EQ(gateway.stats()["tokens_issued"], 2);
  }
}

TEST_F(CloudTest, MixedRunCountsEveryKindOfTarget) {
  Gateway gateway(daemon_->http_port(), {"--auth", "aksk", "--ak", kAk, "--sk", kSk});
  auto other_daemon =
      std::make_unique<DaemonProcess>(std::vector<std::string>{"--metrics-port", "-1"});
  cloud::ModelArtsOptions options = aksk_options(gateway);
  options.max_attempts = 1;  // so one injected failure fails the cloud attempt
  ClientOptions grpc;
  grpc.call_timeout = std::chrono::seconds(5);
  BreakerOptions breaker;
  breaker.failure_threshold = 100;  // every call tries every target in order
  Router router(
      {*CloudTarget::create(options), std::make_shared<DaemonTarget>(other_daemon->address(), grpc),
       std::make_shared<LocalTarget>()},
      breaker);
  WeightDigestCache digests;
  const at::Tensor weight = torch::randn({8, 16});
  LinearForwardCall call{torch::randn({2, 16}), digests.ref(weight), at::Tensor()};
  const at::Tensor expected = at::matmul(call.input, weight.t());
  CallStats stats;
  auto run = [&] {
    absl::StatusOr<at::Tensor> output = router.linear_forward(call, &stats);
    ASSERT_TRUE(output.ok()) << output.status();
    expect_close(*output, expected);
  };
  run();  // cloud
  gateway.control({{"fail_next", {{{"status", 503}, {"error_code", "APIG.0201"}}}}});
  run();                 // cloud fails -> daemon
  run();                 // cloud
  other_daemon.reset();  // the daemon goes away
  gateway.control({{"fail_next", {{{"status", 503}, {"error_code", "APIG.0201"}}}}});
  run();  // cloud fails, daemon gone -> local
  const StatsSnapshot snapshot = stats.snapshot();
  EXPECT_EQ(snapshot.calls, 4u);
  EXPECT_EQ(snapshot.cloud_calls(), 2u);
  EXPECT_EQ(snapshot.remote_calls(), 1u);
  EXPECT_EQ(snapshot.local_calls(), 1u);
  EXPECT_EQ(snapshot.fallbacks(), 2u);
  EXPECT_DOUBLE_EQ(snapshot.cloud_ratio(), 0.5);
  EXPECT_DOUBLE_EQ(snapshot.remote_ratio(), 0.25);
  EXPECT_DOUBLE_EQ(snapshot.local_ratio(), 0.25);
  const nlohmann::json json = nlohmann::json::parse(snapshot.to_json());
  EXPECT_EQ(json["cloud_calls"], 2);
  EXPECT_EQ(json["remote_calls"], 1);
  EXPECT_EQ(json["local_calls"], 1);
  std::cout << snapshot.to_table();
}

}  // namespace
}  // namespace vb
