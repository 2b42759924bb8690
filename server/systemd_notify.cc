#include "server/systemd_notify.h"

#include <chrono>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/log.h"

#ifdef VB_WITH_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace vb::server {
namespace {

void notify(const std::string& state) {
#ifdef VB_WITH_SYSTEMD
  sd_notify(0, state.c_str());
#else
  (void)state;
#endif
}

// Microseconds between watchdog pings (half of WATCHDOG_USEC), or 0 when systemd asked for
// none.
long long watchdog_interval_us() {
#ifdef VB_WITH_SYSTEMD
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) return static_cast<long long>(usec / 2);
#endif
  return 0;
}

}  // namespace

SystemdNotifier::SystemdNotifier(std::function<bool()> healthy) : healthy_(std::move(healthy)) {}

SystemdNotifier::~SystemdNotifier() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

void SystemdNotifier::ready(const std::string& status) {
  notify(absl::StrCat("READY=1\nSTATUS=", status));
  const long long interval = watchdog_interval_us();
  if (interval > 0 && !watchdog_.joinable()) {
    VB_LOG_INFO("systemd watchdog: pinging every ", interval / 1000, " ms");
    watchdog_ = std::thread([this, interval] { watchdog_loop(interval); });
  }
}

void SystemdNotifier::stopping() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  notify("STOPPING=1\nSTATUS=draining");
}

void SystemdNotifier::watchdog_loop(long long interval_us) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, std::chrono::microseconds(interval_us), [this] { return stop_; })) {
    if (healthy_()) {
      notify("WATCHDOG=1");
    } else {
      VB_LOG_WARNING("not healthy: withholding the systemd watchdog ping");
    }
  }
}

}  // namespace vb::server
