// Minimal leveled logging to stderr. Debian 12's Abseil predates absl/log, and the daemon's
// needs are small: one line per event, timestamped, safe from several threads.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"

namespace vb {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
bool parse_log_level(absl::string_view name, LogLevel* level);
void log_line(LogLevel level, absl::string_view message);

template <typename... Args>
void log(LogLevel level, const Args&... args) {
  if (level >= log_level()) log_line(level, absl::StrCat(args...));
}

}  // namespace vb

#define VB_LOG_INFO(...) ::vb::log(::vb::LogLevel::kInfo, __VA_ARGS__)
#define VB_LOG_WARNING(...) ::vb::log(::vb::LogLevel::kWarning, __VA_ARGS__)
#define VB_LOG_ERROR(...) ::vb::log(::vb::LogLevel::kError, __VA_ARGS__)
#define VB_LOG_DEBUG(...) ::vb::log(::vb::LogLevel::kDebug, __VA_ARGS__)
