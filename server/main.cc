// vbd: the Virtual Blackwell daemon. Parses options, starts the server, prints the port it
// bound, and drains on SIGTERM / SIGINT.
#include <grpc/grpc.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/options.h"
#include "server/server.h"
#include "server/systemd_notify.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(vb::server::options_usage().c_str(), stdout);
      return 0;
    }
  }
  absl::StatusOr<vb::server::ServerOptions> options = vb::server::parse_server_options(args);
  if (!options.ok()) {
    std::fprintf(stderr, "vbd: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  // Block the stop signals in every thread (the gRPC and worker threads inherit this mask)
  // so that sigwait below is the one place they are handled.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Held for the life of the process; see the exit path below.
  grpc_init();
  absl::StatusOr<std::unique_ptr<vb::server::Server>> server = vb::server::Server::start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "vbd: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  vb::server::Server& running = **server;
  const uint32_t workers = options->workers;
  vb::server::SystemdNotifier systemd(
      [&running, workers] { return running.service().queue_stats().workers == workers; });
  systemd.ready(absl::StrCat("serving on ", options->host, ":", running.port()));
  if (running.metrics_port() > 0) {
    std::printf("vbd metrics on %s:%d\n", options->metrics_host.c_str(), running.metrics_port());
  }
  if (running.http_port() > 0) {
    std::printf("vbd http on %s:%d\n", options->http_host.c_str(), running.http_port());
  }
  // Tests and scripts read this line to learn the port when --port 0 was given.
  std::printf("vbd listening on %s:%d\n", options->host.c_str(), (*server)->port());
  std::fflush(stdout);
  VB_LOG_INFO("vbd serving on ", options->host, ":", (*server)->port(), " with ", options->workers,
              " worker(s), queue ", options->max_queue,
              options->config_path.empty() ? "" : ", config ", options->config_path);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  systemd.stopping();
  VB_LOG_INFO("received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
              ": draining calls in flight (up to ", options->drain_timeout_s, " s)");
  const auto drain =
      std::chrono::milliseconds(static_cast<int64_t>(options->drain_timeout_s * 1000));
  (*server)->shutdown(drain);
  // Destroying the server closes its connections in order, so clients read every byte of
  // the last answers (an abrupt exit can reset a connection with unread data in flight).
  server->reset();
  VB_LOG_INFO("vbd stopped");
  // Skip the library teardown that would follow: the grpc_init above keeps gRPC from
  // running grpc_shutdown, which joins an executor thread that can sit out a 10 s poll
  // timeout first; a service manager waiting for the exit should not pay for it.
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(0);
}
