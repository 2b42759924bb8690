// A real vbd in its own process on a loopback port, for integration tests and benchmarks.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace vb::testing {

// Path of the vbd binary this build produced.
std::string vbd_path();

class DaemonProcess {
 public:
  // Starts `vbd --host 127.0.0.1 --port <port> <extra_args>`, with `environment` ("NAME=value")
  // added to its environment, and waits until it prints the port it serves on. Throws
  // std::runtime_error (with the daemon's stderr) if it does not.
  explicit DaemonProcess(std::vector<std::string> extra_args = {}, int port = 0,
                         std::vector<std::string> environment = {});
  // SIGKILLs the daemon if it still runs.
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  int port() const { return port_; }
  // Where /metrics is served (each test daemon picks a free port), or -1.
  int metrics_port() const { return metrics_port_; }
  // Where the HTTP face is served (when started with --http-port 0), or -1.
  int http_port() const { return http_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

  void send_signal(int signal_number);
  // The exit code, 128 + signal if killed, or -1 if it has not exited within `timeout`.
  int wait_exit(std::chrono::milliseconds timeout);
  // What the daemon wrote to stderr so far.
  std::string log() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = -1;
  int http_port_ = -1;
  std::string log_path_;
  bool exited_ = false;
};

}  // namespace vb::testing
