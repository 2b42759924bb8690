// The service manager's side of vbd's lifecycle (sd_notify): READY=1 once the port is bound
// and the backend is up, WATCHDOG=1 every half WATCHDOG_USEC while the daemon is healthy,
// STOPPING=1 when a drain begins. Outside systemd (no NOTIFY_SOCKET) every call is a no-op,
// as it is in builds without libsystemd.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace vb::server {

class SystemdNotifier {
 public:
  // `healthy` is asked before each watchdog ping; a daemon whose workers are gone stops
  // pinging, and systemd restarts it.
  explicit SystemdNotifier(std::function<bool()> healthy);
  ~SystemdNotifier();
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  void ready(const std::string& status);
  void stopping();

 private:
  void watchdog_loop(long long interval_us);

  std::function<bool()> healthy_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace vb::server
