// TLS, mutual TLS and bearer tokens against a real vbd, with a PKI made at test time; and the
// refusal to serve a non-loopback address without them.
#include <cstdlib>

#include "client/daemon_client.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

using ::testing::HasSubstr;

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir[] = "/tmp/vbd-pki-XXXXXX";
    pki_ = new std::string(mkdtemp(dir));
    const std::string command = std::string(VB_TEST_SOURCE_DIR) + "/make_test_certs.sh " + *pki_;
    ASSERT_EQ(std::system(command.c_str()), 0) << "openssl failed";
  }
  static void TearDownTestSuite() {
    std::system(("rm -rf " + *pki_).c_str());
    delete pki_;
  }
  static std::string file(const std::string& name) { return *pki_ + "/" + name; }

  static ClientOptions tls_client(const std::string& ca = "ca.pem") {
    ClientOptions options;
    options.call_timeout = std::chrono::seconds(10);
    options.tls_ca_file = file(ca);
    return options;
  }
  static std::vector<std::string> tls_server_args() {
    return {"--tls-cert", file("server.pem"), "--tls-key", file("server.key")};
  }

  static std::string* pki_;
};
std::string* SecurityTest::pki_ = nullptr;

TEST_F(SecurityTest, TlsWithTokensAcceptsTheRightCredentialsAndNothingElse) {
  std::vector<std::string> args = tls_server_args();
  args.insert(args.end(), {"--token-file", file("tokens")});
  DaemonProcess daemon(args);

  ClientOptions good = tls_client();
  good.token = "secret-token-for-tests";
  DaemonClient client(daemon.address(), good);
  ASSERT_TRUE(client.get_info().ok()) << client.get_info().status();
  const at::Tensor w = torch::randn({4, 3});
  const WeightRef ref{sha256_hex(w.data_ptr(), w.numel() * 4), w};
  TransferCount transfer;
  ASSERT_TRUE(client.upload_weight(ref, &transfer).ok());
  const at::Tensor x = torch::randn({2, 3});
  absl::StatusOr<at::Tensor> y = client.linear_forward(x, ref, {}, &transfer);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_LT(relative_error(*y, x.mm(w.t())), 1e-6);

  const absl::Status no_token = DaemonClient(daemon.address(), tls_client()).get_info().status();
  EXPECT_TRUE(absl::IsUnauthenticated(no_token)) << no_token;
  ClientOptions wrong = tls_client();
  wrong.token = "guess";
  const absl::Status bad_token = DaemonClient(daemon.address(), wrong).get_info().status();
  EXPECT_TRUE(absl::IsPermissionDenied(bad_token)) << bad_token;
  EXPECT_THAT(std::string(bad_token.message()), ::testing::Not(HasSubstr("guess")))
      << "a token never appears in a message";

  ClientOptions untrusted = tls_client("other-ca.pem");
  untrusted.token = good.token;
  const absl::Status cert = DaemonClient(daemon.address(), untrusted).get_info().status();
  EXPECT_TRUE(absl::IsUnavailable(cert)) << "a certificate we do not trust: " << cert;

  ClientOptions plaintext;
  plaintext.call_timeout = std::chrono::seconds(10);
  plaintext.token = good.token;
  const absl::Status plain = DaemonClient(daemon.address(), plaintext).get_info().status();
  EXPECT_TRUE(absl::IsUnavailable(plain)) << "plaintext to a TLS port: " << plain;
  EXPECT_THAT(daemon.log(), ::testing::Not(HasSubstr("secret-token-for-tests")));
}

TEST_F(SecurityTest, MutualTlsNeedsAClientCertificateFromTheConfiguredCa) {
  std::vector<std::string> args = tls_server_args();
  args.insert(args.end(), {"--tls-client-ca", file("ca.pem")});
  DaemonProcess daemon(args);
  ClientOptions with_cert = tls_client();
  with_cert.tls_cert_file = file("client.pem");
  with_cert.tls_key_file = file("client.key");
  EXPECT_TRUE(DaemonClient(daemon.address(), with_cert).get_info().ok());
  const absl::Status without = DaemonClient(daemon.address(), tls_client()).get_info().status();
  EXPECT_TRUE(absl::IsUnavailable(without)) << "no client certificate: " << without;
}

TEST(ExposureTest, RefusesAnOpenAddressWithoutTlsAndClientAuthentication) {
  try {
    DaemonProcess daemon({"--host", "0.0.0.0"});
    FAIL() << "vbd served 0.0.0.0 in plaintext";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_THAT(message, HasSubstr("refusing to serve on 0.0.0.0 without TLS"));
    EXPECT_THAT(message, HasSubstr("--tls-cert"));
    EXPECT_THAT(message, HasSubstr("--token-file"));
    EXPECT_THAT(message, HasSubstr("--insecure"));
  }
}

}  // namespace
}  // namespace vb::testing
