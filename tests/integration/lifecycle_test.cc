// The daemon under load and at shutdown: a full queue refuses at once, SIGTERM lets every
// accepted call finish and exits 0, health reports SERVING.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <atomic>
#include <thread>

#include "client/daemon_client.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"

namespace vb::testing {
namespace {

// A call big enough to take a noticeable time on two cores (2 x 1024 x 1536 x 1536 flops).
struct HeavyCall {
  at::Tensor input = torch::randn({1024, 1536});
  at::Tensor weight = torch::randn({1536, 1536});
  WeightRef ref() const {
    return {sha256_hex(weight.data_ptr(), weight.numel() * weight.element_size()), weight};
  }
  at::Tensor expected() const { return input.mm(weight.t()); }
};

// Starts `count` threads, each with its own connection, each running `call` once and
// checking its result; the statuses land in `results` as the threads finish, and each
// finished thread adds one to `finished` (if given).
std::vector<std::thread> start_callers(const DaemonProcess& daemon, const HeavyCall& call,
                                       std::vector<absl::Status>* results,
                                       std::atomic<int>* finished = nullptr) {
  std::vector<std::thread> callers;
  for (size_t i = 0; i < results->size(); ++i) {
    callers.emplace_back([&daemon, &call, results, i, finished] {
      DaemonClient own(daemon.address());
      TransferCount transfer;
      absl::StatusOr<at::Tensor> y =
          own.linear_forward(call.input, call.ref(), at::Tensor(), &transfer);
      (*results)[i] = y.ok() && relative_error(*y, call.expected()) > 1e-5
                          ? absl::InternalError("wrong result")
                          : y.status();
      if (finished != nullptr) ++*finished;
    });
  }
  return callers;
}

uint32_t inflight_calls(DaemonClient& client) {
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  return stats.ok() ? stats->queue().inflight_calls() : 0;
}

TEST(LifecycleTest, HealthIsServing) {
  DaemonProcess daemon;
  DaemonClient client(daemon.address());
  EXPECT_TRUE(client.check_health().ok());
}

TEST(LifecycleTest, FullQueueAnswersResourceExhaustedAtOnce) {
  DaemonProcess daemon({"--workers", "1", "--max-queue", "1"});
  const HeavyCall call;
  DaemonClient client(daemon.address());
  TransferCount transfer;
  ASSERT_TRUE(client.upload_weight(call.ref(), &transfer).ok());

  // Six callers at once; on a busy machine they can arrive so far apart that each finds room,
  // so a round with no refusal is followed by another (at most three).
  int ok = 0;
  int refused = 0;
  for (int round = 0; round < 3 && refused == 0; ++round) {
    std::vector<absl::Status> results(6);
    std::vector<std::thread> callers = start_callers(daemon, call, &results);
    for (std::thread& t : callers) t.join();
    for (const absl::Status& status : results) {
      if (status.ok()) {
        ++ok;
      } else {
        ASSERT_TRUE(absl::IsResourceExhausted(status)) << status;
        EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("limits.max_queue = 1"));
        ++refused;
      }
    }
  }
  // One running and one waiting are accepted at any moment; six at once cannot all be.
  EXPECT_GE(ok, 2);
  EXPECT_GE(refused, 1);
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->queue().rejected(), static_cast<uint64_t>(refused));
  // And it goes on serving.
  absl::StatusOr<at::Tensor> after = client.linear_forward(call.input, call.ref(), {}, &transfer);
  ASSERT_TRUE(after.ok()) << after.status();
}

TEST(LifecycleTest, SigtermFinishesEveryAcceptedCallAndExitsZero) {
  DaemonProcess daemon({"--workers", "1"});
  const HeavyCall call;
  DaemonClient client(daemon.address());
  TransferCount transfer;
  ASSERT_TRUE(client.upload_weight(call.ref(), &transfer).ok());

  constexpr uint32_t kCallers = 4;
  std::vector<absl::Status> results(kCallers);
  std::vector<std::thread> callers;
  // Wait (bounded) until the daemon has all of them in hand, then ask it to stop. On a busy
  // machine the first call can finish before the last caller has connected, so all four are
  // never in flight at once: then that round of calls runs out and another starts (at most 3).
  bool all_in_flight = false;
  std::atomic<int> finished{0};  // outlives the callers of the round that goes on
  for (int round = 0; round < 3 && !all_in_flight; ++round) {
    finished = 0;  // the callers of an earlier round have been joined
    callers = start_callers(daemon, call, &results, &finished);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!(all_in_flight = inflight_calls(client) == kCallers) && finished == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!all_in_flight) {
      for (std::thread& t : callers) t.join();
      callers.clear();
      std::printf("round %d: %d of %u calls finished before all were in flight\n", round + 1,
                  finished.load(), kCallers);
    }
  }
  ASSERT_TRUE(all_in_flight) << "never saw all " << kCallers << " calls in flight at once";
  daemon.send_signal(SIGTERM);
  // While it drains, new calls are refused at once so that clients move to another target.
  absl::Status during_drain = absl::OkStatus();
  const auto drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (during_drain.ok() && std::chrono::steady_clock::now() < drain_deadline) {
    during_drain = client.get_info().status();
  }
  EXPECT_TRUE(absl::IsUnavailable(during_drain)) << during_drain;
  EXPECT_THAT(std::string(during_drain.message()), ::testing::HasSubstr("draining"));
  for (std::thread& t : callers) t.join();
  for (const absl::Status& status : results) EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(daemon.wait_exit(std::chrono::seconds(30)), 0) << daemon.log();
  EXPECT_THAT(daemon.log(), ::testing::HasSubstr("draining"));
}

// Datagrams arriving on a unix socket that plays systemd's NOTIFY_SOCKET.
class NotifySocket {
 public:
  NotifySocket() {
    char dir[] = "/tmp/vbd-notify-XXXXXX";
    path_ = std::string(mkdtemp(dir)) + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path_.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }
  ~NotifySocket() {
    close(fd_);
    unlink(path_.c_str());
    rmdir(path_.substr(0, path_.rfind('/')).c_str());
  }
  const std::string& path() const { return path_; }

  // The next message, or "" if none came within `timeout`.
  std::string receive(std::chrono::milliseconds timeout) {
    pollfd fd{fd_, POLLIN, 0};
    if (poll(&fd, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buffer[4096];
    const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
    return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
  }

 private:
  std::string path_;
  int fd_ = -1;
};

TEST(LifecycleTest, TellsSystemdReadyThenWatchdogThenStopping) {
#ifndef VB_TEST_SYSTEMD
  GTEST_SKIP() << "vbd was built without libsystemd: it does not notify";
#endif
  NotifySocket systemd;
  // WATCHDOG_USEC = 200 ms: vbd must ping every 100 ms.
  DaemonProcess daemon({}, 0, {"NOTIFY_SOCKET=" + systemd.path(), "WATCHDOG_USEC=200000"});
  const std::string first = systemd.receive(std::chrono::seconds(10));
  EXPECT_THAT(first, ::testing::HasSubstr("READY=1"));
  EXPECT_THAT(first, ::testing::HasSubstr("STATUS=serving on 127.0.0.1:"));
  int pings = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pings < 3 && std::chrono::steady_clock::now() < deadline) {
    const std::string message = systemd.receive(std::chrono::seconds(1));
    EXPECT_EQ(message, "WATCHDOG=1");
    pings += message == "WATCHDOG=1";
  }
  EXPECT_EQ(pings, 3);
  daemon.send_signal(SIGTERM);
  // Pings already in flight may arrive first; STOPPING comes after them and nothing after it.
  std::string message;
  do {
    message = systemd.receive(std::chrono::seconds(10));
  } while (message == "WATCHDOG=1");
  EXPECT_THAT(message, ::testing::HasSubstr("STOPPING=1"));
  EXPECT_EQ(daemon.wait_exit(std::chrono::seconds(30)), 0);
  EXPECT_EQ(systemd.receive(std::chrono::milliseconds(200)), "") << "nothing after STOPPING";
}

}  // namespace
}  // namespace vb::testing
