// SDK-HMAC-SHA256 signing against Huawei's published example and our own vectors (their
// expected values come from the independent Python signer in apig_gateway.py, which
// reproduces Huawei's example too), plus the cloud options and error mapping.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include "cloud/modelarts_client.h"
#include "cloud/signer.h"

namespace vb::cloud {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const AkSk kHuaweiExampleKeys{"QTWAOYTTINDUT2QVKYUC", "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"};

TEST(SignerTest, ReproducesHuaweisPublishedExample) {
  SignableRequest request;
  request.method = "GET";
  request.path = "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs";
  request.query = {{"limit", "2"}, {"marker", "13551d6b-755d-4757-b956-536f674975c0"}};
  request.headers = {{"Content-Type", "application/json"},
                     {"Host", "service.region.example.com"},
                     {"X-Sdk-Date", "20191115T033655Z"}};
  const Signature signature = sign(request, kHuaweiExampleKeys);
  EXPECT_EQ(signature.canonical_request_hash,
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a");
  EXPECT_EQ(signature.signature,
            "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe");
  EXPECT_EQ(signature.authorization,
            "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, "
            "SignedHeaders=content-type;host;x-sdk-date, "
            "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe");
}

TEST(SignerTest, PostWithBodyHashesTheBody) {
  SignableRequest request;
  request.method = "post";  // the method is upper-cased
  request.path = "/v1/infers/5f6e8b4c/v1/linear/forward";
  request.headers = {{"Content-Type", "application/json"},
                     {"Host", "infer.cn-north-4.example.com"},
                     {"X-Sdk-Date", "20261122T040000Z"}};
  const std::string body = R"({"inputs":[1.5,-2]})";
  request.body = body;
  const Signature signature = sign(request, kHuaweiExampleKeys);
  EXPECT_THAT(
      signature.canonical_request,
      ::testing::EndsWith("7c60fc87b4e87540f7d18a8cb4da51a7512406afb52c70aca6cb95896639672d"));
  EXPECT_EQ(signature.canonical_request_hash,
            "ab3569f2056b797c2e07dab145465d2a750e033826249a3f088ead2de8018a19");
  EXPECT_EQ(signature.signature,
            "5a2089fcacb81725800d5bab9ad0b260d27c48710752f6fa042eb128c6596b8e");
  // Any change to the body changes the signature.
  const std::string tampered = R"({"inputs":[1.5,-3]})";
  request.body = tampered;
  EXPECT_NE(sign(request, kHuaweiExampleKeys).signature, signature.signature);
}

TEST(SignerTest, PathSegmentsArePercentEncoded) {
  SignableRequest request;
  request.method = "GET";
  request.path = "/v1/objects/my file+\xC3\xBC/x~y";
  request.headers = {{"Host", "obs.example.com"}, {"X-Sdk-Date", "20261122T040000Z"}};
  const Signature signature = sign(request, kHuaweiExampleKeys);
  EXPECT_EQ(canonical_uri(request.path), "/v1/objects/my%20file%2B%C3%BC/x~y/");
  EXPECT_EQ(signature.canonical_request_hash,
            "f98d8ba515b8dc56a3ed7e0b1df32045c66c0c4ab423c957df507dd6e2d4aea6");
  EXPECT_EQ(signature.signature,
            "9ec54ae89dba88c38b61d0a8e95ddda5b7ca97da5dcc18f7be514133d4bdb17d");
}

TEST(SignerTest, QueryWithRepeatedAndEmptyParameters) {
  SignableRequest request;
  request.method = "GET";
  request.path = "/v1/items";
  request.query = {{"b", "2"}, {"a", ""}, {"b", "1"}, {"c", ""}};
  request.headers = {{"Host", "api.example.com"},
                     {"X-Sdk-Date", "20261122T040000Z"},
                     {"X-Project-Id", "  p1  "}};  // values are trimmed
  EXPECT_EQ(canonical_query(request.query), "a=&b=1&b=2&c=");
  const Signature signature = sign(request, kHuaweiExampleKeys);
  EXPECT_EQ(signature.signed_headers, "host;x-project-id;x-sdk-date");
  EXPECT_EQ(signature.canonical_request_hash,
            "9e0c9020620353fe7f05368ed522183539a91b29e0a94c9dc94d7fac96913c0d");
  EXPECT_EQ(signature.signature,
            "e5b75e87609900310eb928729d1039beb6a5591d18c5eb639beb9e9f2bc97855");
}

TEST(SignerTest, SdkDateIsUtcBasicFormat) {
  // 2019-11-15 03:36:55 UTC, the published example's date.
  const auto time = std::chrono::system_clock::from_time_t(1573789015);
  EXPECT_EQ(sdk_date(time), "20191115T033655Z");
}

using EnvVars = std::vector<std::pair<std::string, std::string>>;

class EnvGuard {
 public:
  explicit EnvGuard(std::vector<std::pair<std::string, std::string>> vars)
      : vars_(std::move(vars)) {
    for (const auto& [name, value] : vars_) setenv(name.c_str(), value.c_str(), 1);
  }
  ~EnvGuard() {
    for (const auto& [name, value] : vars_) unsetenv(name.c_str());
  }

 private:
  std::vector<std::pair<std::string, std::string>> vars_;
};

TEST(ModelArtsOptionsTest, FromEnvironment) {
  {
    EnvGuard env({{"HUAWEI_CLOUD_ENDPOINT", "https://infer.example.com"},
                  {"HUAWEI_CLOUD_API_KEY", "key-123"},
                  {"HUAWEI_CLOUD_MODEL", "vbd-linear"}});
    absl::StatusOr<ModelArtsOptions> options = ModelArtsOptions::from_env();
    ASSERT_TRUE(options.ok()) << options.status();
    EXPECT_EQ(options->auth, AuthMode::kApiKey);
    EXPECT_EQ(options->model, "vbd-linear");
    EXPECT_TRUE(options->validate().ok());
  }
  {
    EnvGuard env({{"HUAWEI_CLOUD_ENDPOINT", "https://infer.example.com:8443"},
                  {"HUAWEI_CLOUD_AK", "AKAKAK"}});
    absl::StatusOr<ModelArtsOptions> options = ModelArtsOptions::from_env();
    ASSERT_TRUE(options.ok());
    EXPECT_EQ(options->auth, AuthMode::kAkSk);
    const absl::Status missing = options->validate();
    EXPECT_TRUE(absl::IsInvalidArgument(missing));
    EXPECT_THAT(missing.message(), HasSubstr("HUAWEI_CLOUD_SK"));
  }
  {
    EnvGuard env(EnvVars{{"HUAWEI_CLOUD_AUTH", "kerberos"}});
    absl::StatusOr<ModelArtsOptions> options = ModelArtsOptions::from_env();
    EXPECT_TRUE(absl::IsInvalidArgument(options.status()));
    EXPECT_THAT(options.status().message(), HasSubstr("HUAWEI_CLOUD_AUTH is \"kerberos\""));
  }
  {
    EnvGuard env(EnvVars{{"HUAWEI_CLOUD_INSECURE_SKIP_VERIFY", "maybe"}});
    EXPECT_THAT(ModelArtsOptions::from_env().status().message(),
                HasSubstr("HUAWEI_CLOUD_INSECURE_SKIP_VERIFY"));
  }
  ModelArtsOptions bad;
  bad.endpoint = "infer.example.com/v1";
  EXPECT_THAT(bad.validate().message(), HasSubstr("expected https://host[:port]"));
}

TEST(ModelArtsOptionsTest, SecretsStayOutOfErrors) {
  ModelArtsOptions options;
  options.endpoint = "https://127.0.0.1:1";  // nothing listens on port 1
  options.auth = AuthMode::kAkSk;
  options.aksk = {"AK-visible", "SK-very-secret"};
  options.connect_timeout = std::chrono::milliseconds(500);
  absl::StatusOr<std::unique_ptr<ModelArtsClient>> client = ModelArtsClient::create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::StatusOr<HttpReply> reply = (*client)->post("/v1/linear/forward", "{}", "x");
  EXPECT_TRUE(absl::IsUnavailable(reply.status())) << reply.status();
  EXPECT_THAT(std::string(reply.status().message()), Not(HasSubstr("SK-very-secret")));
  EXPECT_THAT((*client)->name(), Not(HasSubstr("SK-very-secret")));
}

TEST(StatusFromReplyTest, MapsGatewayErrors) {
  const std::string throttled =
      R"({"error_code":"APIG.0308","error_msg":"The request is throttled.","request_id":"r1"})";
  const absl::Status status = status_from_reply(429, throttled);
  EXPECT_TRUE(absl::IsResourceExhausted(status));
  EXPECT_THAT(status.message(), HasSubstr("APIG.0308"));
  EXPECT_THAT(status.message(), HasSubstr("request_id r1"));
  EXPECT_TRUE(absl::IsUnauthenticated(status_from_reply(401, R"({"error_code":"APIG.0303"})")));
  EXPECT_TRUE(absl::IsInvalidArgument(status_from_reply(400, "{}")));
  EXPECT_TRUE(absl::IsResourceExhausted(status_from_reply(413, R"({"error_code":"APIG.0201"})")));
  EXPECT_TRUE(absl::IsNotFound(status_from_reply(404, R"({"error_code":"VB.NOT_FOUND"})")));
  EXPECT_TRUE(absl::IsFailedPrecondition(status_from_reply(404, R"({"error_code":"APIG.0101"})")));
  EXPECT_TRUE(absl::IsUnavailable(status_from_reply(502, "bad gateway")));
  EXPECT_TRUE(absl::IsDeadlineExceeded(status_from_reply(504, "{}")));
}

}  // namespace
}  // namespace vb::cloud
