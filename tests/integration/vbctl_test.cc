// vbctl against a live daemon, as an operator or a script uses it: exit codes, tables, and
// --json parsed back.
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "client/daemon_client.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

using ::testing::HasSubstr;

struct VbctlRun {
  int exit_code;
  std::string output;
};

// Standard output, and standard error too unless the caller parses the output as JSON
// (libraries may warn on stderr).
VbctlRun vbctl(const std::string& arguments, bool with_stderr = true) {
  const std::string command =
      std::string(VB_VBCTL_PATH) + " " + arguments + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(VbctlTest, VerbsAgainstALiveDaemon) {
  DaemonProcess daemon;
  const std::string at = "--address " + daemon.address();

  const VbctlRun info = vbctl(at + " --json info", false);
  ASSERT_EQ(info.exit_code, 0) << info.output;
  const nlohmann::json info_json = nlohmann::json::parse(info.output);
  EXPECT_FALSE(info_json["devices"][0]["kind"].get<std::string>().empty());
  EXPECT_THAT(info_json["config_toml"].get<std::string>(), HasSubstr("[server]"));
  EXPECT_FALSE(info_json["version"].get<std::string>().empty());

  const VbctlRun info_text = vbctl(at + " info");
  EXPECT_EQ(info_text.exit_code, 0);
  EXPECT_THAT(info_text.output, HasSubstr("config in force:"));
  EXPECT_THAT(info_text.output, HasSubstr("max_queue = 64"));

  const VbctlRun stats = vbctl(at + " --json stats", false);
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  const nlohmann::json stats_json = nlohmann::json::parse(stats.output);
  bool saw_get_info = false;
  for (const auto& op : stats_json["ops"]) {
    // proto3 JSON writes 64-bit integers as strings.
    if (op["op"] == "GetInfo") saw_get_info = std::stoull(op["calls"].get<std::string>()) == 2;
  }
  EXPECT_TRUE(saw_get_info) << "both info calls counted: " << stats.output;
  EXPECT_EQ(stats_json["devices"].size(), info_json["devices"].size()) << "per-device view";

  const VbctlRun watch = vbctl(at + " stats --watch 0.2 --iterations 3");
  EXPECT_EQ(watch.exit_code, 0);
  size_t draws = 0;
  for (size_t pos = 0; (pos = watch.output.find("queue:", pos)) != std::string::npos; ++pos) {
    ++draws;
  }
  EXPECT_EQ(draws, 3u) << watch.output;

  EXPECT_EQ(vbctl(at + " health").exit_code, 0);
  // Doctor passes the daemon; without a GPU it warns about the rest; it exits 1 only when a
  // check failed.
  const VbctlRun doctor = vbctl(at + " --json doctor", false);
  const nlohmann::json checks = nlohmann::json::parse(doctor.output);
  ASSERT_FALSE(checks.empty());
  EXPECT_EQ(checks[0]["check"], "daemon");
  EXPECT_EQ(checks[0]["verdict"], "pass");
  bool any_fail = false;
  for (const auto& check : checks) any_fail |= check["verdict"] == "fail";
  EXPECT_EQ(doctor.exit_code, any_fail ? 1 : 0) << doctor.output;
  EXPECT_EQ(vbctl(at + " frobnicate").exit_code, 2);
  EXPECT_EQ(vbctl(at + " info extra").exit_code, 2) << "info takes no argument";
}

TEST(VbctlTest, ReleaseDropsWeightsAndSaysWhichWereHeld) {
  DaemonProcess daemon;
  const std::string at = "--address " + daemon.address();
  DaemonClient client(daemon.address());
  const at::Tensor weight = torch::randn({4, 3});
  const std::string digest = sha256_hex(std::string(static_cast<const char*>(weight.data_ptr()),
                                                    weight.numel() * weight.element_size()));
  TransferCount transfer;
  ASSERT_TRUE(client.upload_weight({digest, weight}, &transfer).ok());
  const std::string unknown = sha256_hex("never uploaded");

  const VbctlRun released = vbctl(at + " release " + digest + " " + unknown);
  EXPECT_EQ(released.exit_code, 0) << released.output;
  EXPECT_THAT(released.output, HasSubstr("released  " + digest));
  EXPECT_THAT(released.output, HasSubstr("not held  " + unknown));
  absl::StatusOr<std::vector<bool>> held = client.query_weights({digest});
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, std::vector<bool>{false});

  const VbctlRun again = vbctl(at + " --json release " + digest, false);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(nlohmann::json::parse(again.output)[digest], false) << again.output;

  const VbctlRun malformed = vbctl(at + " release XYZ");
  EXPECT_EQ(malformed.exit_code, 1) << malformed.output;
  EXPECT_THAT(malformed.output, HasSubstr("digests[0] = \"XYZ\""));
  const VbctlRun bare = vbctl(at + " release");
  EXPECT_EQ(bare.exit_code, 2) << bare.output;
  EXPECT_THAT(bare.output, HasSubstr("release needs at least 1 argument"));
}

TEST(VbctlTest, HealthFailsForADaemonThatIsNotThere) {
  int port;
  {
    DaemonProcess gone;
    port = gone.port();
  }
  const VbctlRun health =
      vbctl("--address 127.0.0.1:" + std::to_string(port) + " --timeout 2 health");
  EXPECT_EQ(health.exit_code, 1) << health.output;
  EXPECT_THAT(health.output, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace vb::testing
