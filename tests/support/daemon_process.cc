#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace vb::testing {

std::string vbd_path() {
  if (const char* env = std::getenv("VB_VBD_PATH"); env != nullptr && *env != '\0') return env;
  return VB_VBD_PATH;
}

DaemonProcess::DaemonProcess(std::vector<std::string> extra_args, int port,
                             std::vector<std::string> environment) {
  char log_template[] = "/tmp/vbd-test-log-XXXXXX";
  const int log_fd = mkstemp(log_template);
  if (log_fd < 0) throw std::runtime_error("mkstemp failed");
  log_path_ = log_template;
  int out_pipe[2];
  if (pipe(out_pipe) != 0) throw std::runtime_error("pipe failed");

  // A free metrics port too, so that daemons of parallel tests never collide on 9551.
  std::vector<std::string> args = {vbd_path(),           "--host",         "127.0.0.1", "--port",
                                   std::to_string(port), "--metrics-port", "0"};
  // Tier budgets fit for many test daemons on one machine (a GPU's device tier would
  // otherwise take half its memory per daemon), unless the test sets its own.
  const bool sets_store = std::any_of(extra_args.begin(), extra_args.end(), [](const auto& a) {
    return a.rfind("--store-", 0) == 0 || a.rfind("--config", 0) == 0;
  });
  if (!sets_store) {
    args.insert(args.end(), {"--store-device-bytes", "2GiB", "--store-host-bytes", "4GiB"});
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    close(out_pipe[0]);
    close(out_pipe[1]);
    close(log_fd);
    for (std::string& variable : environment) putenv(variable.data());
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(log_fd);

  // Read up to the "vbd listening on HOST:PORT" line, bounded in time; a "vbd metrics on
  // HOST:PORT" line may come before it.
  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  const auto has_listening_line = [&] {
    const size_t at = output.find("vbd listening on ");
    return at != std::string::npos && output.find('\n', at) != std::string::npos;
  };
  while (!has_listening_line() && std::chrono::steady_clock::now() < deadline) {
    pollfd fd{out_pipe[0], POLLIN, 0};
    if (poll(&fd, 1, 200) <= 0) continue;
    char buffer[256];
    const ssize_t n = read(out_pipe[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
  }
  close(out_pipe[0]);
  // "vbd metrics on HOST:PORT" and "vbd http on HOST:PORT" come before the listening line.
  auto announced_port = [&output](const char* prefix) {
    const size_t at = output.find(prefix);
    if (at == std::string::npos) return -1;
    const std::string line = output.substr(at, output.find('\n', at) - at);
    return std::stoi(line.substr(line.rfind(':') + 1));
  };
  metrics_port_ = announced_port("vbd metrics on ");
  http_port_ = announced_port("vbd http on ");
  const size_t at = output.find("vbd listening on ");
  const std::string line =
      at == std::string::npos ? output : output.substr(at, output.find('\n', at) - at + 1);
  const size_t colon = line.rfind(':');
  if (line.rfind("vbd listening on ", 0) != 0 || colon == std::string::npos) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    exited_ = true;
    throw std::runtime_error("vbd did not start; stdout: \"" + line + "\" stderr: " + log());
  }
  port_ = std::stoi(line.substr(colon + 1));
}

DaemonProcess::~DaemonProcess() {
  if (!exited_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  unlink(log_path_.c_str());
}

void DaemonProcess::send_signal(int signal_number) {
  if (!exited_) kill(pid_, signal_number);
}

int DaemonProcess::wait_exit(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exited_ = true;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string DaemonProcess::log() const {
  std::ifstream file(log_path_);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace vb::testing
