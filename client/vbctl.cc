// vbctl: the operator's window into a running vbd. Each verb is a Command; the base handles
// the address, the deadline and --json, so every verb behaves the same way.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "client/daemon_client.h"
#include "client/vbctl_doctor.h"
#include "vb/v1/compute.pb.h"

namespace {

struct CommonFlags {
  std::string address = "127.0.0.1:50551";
  double timeout_s = 10;
  bool json = false;
  double watch_s = 0;      // stats: redraw every watch_s seconds
  int64_t iterations = 0;  // with --watch: stop after this many draws (0: until interrupted)
  // The words after the verb: stats, its view ("tiers", or none for calls); release, digests.
  std::vector<std::string> operands;
  std::string tls_ca, tls_cert, tls_key, token_file;
};

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", value, units[unit]);
}

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

class Command {
 public:
  virtual ~Command() = default;
  virtual const char* name() const = 0;
  virtual const char* help() const = 0;
  // Exit code: 0 success, 1 the daemon failed or answered with an error.
  virtual int run(vb::DaemonClient& client, const CommonFlags& flags) = 0;
  // How many words may follow the verb.
  virtual size_t min_operands() const { return 0; }
  virtual size_t max_operands() const { return 0; }

 protected:
  static int fail(const vb::DaemonClient& client, const absl::Status& status) {
    std::fprintf(stderr, "vbctl: %s: %s\n", client.address().c_str(), status.ToString().c_str());
    return 1;
  }
};

class InfoCommand final : public Command {
 public:
  const char* name() const override { return "info"; }
  const char* help() const override { return "version, devices, limits and weight store"; }
  int run(vb::DaemonClient& client, const CommonFlags& flags) override {
    absl::StatusOr<vb::v1::GetInfoResponse> info = client.get_info();
    if (!info.ok()) return fail(client, info.status());
    if (flags.json) {
      std::cout << to_json(*info);
      return 0;
    }
    std::cout << "vbd " << info->version() << " at " << client.address() << " (LibTorch "
              << info->torch_version() << ")\n\ndevices:\n";
    for (const vb::v1::DeviceInfo& d : info->devices()) {
      std::cout << absl::StrFormat(
          "  %s:%d  %s (%s)  memory %s total, %s free\n", d.kind(), d.index(), d.name(),
          d.platform(), human_bytes(d.total_memory_bytes()), human_bytes(d.free_memory_bytes()));
      if (!d.compute_capability().empty()) {
        std::cout << absl::StrFormat("        compute capability %s, driver %s, runtime %s\n",
                                     d.compute_capability(), d.driver_version(),
                                     d.runtime_version());
      }
    }
    const vb::v1::Limits& l = info->limits();
    std::cout << absl::StrFormat("\nlimits: %d worker(s), queue %d, max request %s, max chunk %s\n",
                                 l.workers(), l.max_queue(), human_bytes(l.max_request_bytes()),
                                 human_bytes(l.max_chunk_bytes()));
    const vb::v1::WeightStoreInfo& w = info->weight_store();
    std::cout << absl::StrFormat("weight store: %s of %s in %d weight(s)\n",
                                 human_bytes(w.used_bytes()), human_bytes(w.capacity_bytes()),
                                 w.entries());
    std::cout << "dtypes:";
    for (int dtype : info->dtypes()) {
      std::cout << " " << vb::v1::DType_Name(static_cast<vb::v1::DType>(dtype));
    }
    std::cout << "\n\nconfig in force:\n" << info->config_toml();
    return 0;
  }
};

// Drops weights from the daemon's store (ReleaseWeights); a client that names one again
// uploads it again.
class ReleaseCommand final : public Command {
 public:
  const char* name() const override { return "release"; }
  const char* help() const override {
    return "DIGEST...: drop these weights from the daemon's store (every tier)";
  }
  size_t min_operands() const override { return 1; }
  size_t max_operands() const override { return 1024; }
  int run(vb::DaemonClient& client, const CommonFlags& flags) override {
    absl::StatusOr<std::vector<bool>> released = client.release_weights(flags.operands);
    if (!released.ok()) return fail(client, released.status());
    nlohmann::json json = nlohmann::json::object();
    for (size_t i = 0; i < released->size(); ++i) {
      if (flags.json) {
        json[flags.operands[i]] = static_cast<bool>((*released)[i]);
      } else {
        std::cout << ((*released)[i] ? "released  " : "not held  ") << flags.operands[i] << "\n";
      }
    }
    if (flags.json) std::cout << json.dump(2) << "\n";
    return 0;
  }
};

class StatsCommand final : public Command {
 public:
  const char* name() const override { return "stats"; }
  size_t max_operands() const override { return 1; }
  const char* help() const override {
    return "calls, failures, bytes and latency per op; `stats tiers`: the VGPU stack";
  }
  int run(vb::DaemonClient& client, const CommonFlags& flags) override {
    if (!flags.operands.empty() && flags.operands[0] != "tiers") {
      std::fprintf(stderr, "vbctl: stats has no view \"%s\" (expected: tiers)\n",
                   flags.operands[0].c_str());
      return 2;
    }
    if (flags.watch_s <= 0) return draw(client, flags);
    for (int64_t i = 0; flags.iterations == 0 || i < flags.iterations; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::duration<double>(flags.watch_s));
      // Clear the screen and home the cursor, as watch(1) does; JSON gets one document a line.
      if (!flags.json) std::cout << "\033[H\033[2J";
      const int code = draw(client, flags);
      std::cout << std::flush;
      if (code != 0) return code;
    }
    return 0;
  }

 private:
  int draw(vb::DaemonClient& client, const CommonFlags& flags) {
    absl::StatusOr<vb::v1::GetStatsResponse> stats = client.get_stats();
    if (!stats.ok()) return fail(client, stats.status());
    if (!flags.operands.empty()) return draw_tiers(client, *stats, flags);  // "tiers"
    if (flags.json) {
      std::cout << to_json(*stats);
      return 0;
    }
    std::cout << absl::StrFormat("vbd at %s, up %.0f s\n\n", client.address(), stats->uptime_s());
    std::cout << absl::StrFormat("%-15s %8s %7s %11s %11s %9s %9s %9s %9s\n", "op", "calls",
                                 "failed", "bytes in", "bytes out", "p50 ms", "p99 ms", "queue p50",
                                 "comp p50");
    for (const vb::v1::OpStats& op : stats->ops()) {
      std::cout << absl::StrFormat("%-15s %8d %7d %11s %11s %9.3f %9.3f %9.3f %9.3f\n", op.op(),
                                   op.calls(), op.failures(), human_bytes(op.bytes_in()),
                                   human_bytes(op.bytes_out()), op.latency_p50_ms(),
                                   op.latency_p99_ms(), op.queue_p50_ms(), op.compute_p50_ms());
    }
    bool any_failure = false;
    for (const vb::v1::OpStats& op : stats->ops()) {
      for (const vb::v1::StatusCount& s : op.statuses()) {
        if (s.code() == "OK") continue;
        if (!any_failure) std::cout << "\nfailures by status:\n";
        any_failure = true;
        std::cout << absl::StrFormat("  %-15s %-20s %d\n", op.op(), s.code(), s.count());
      }
    }
    std::cout << "\ndevices:\n";
    for (const vb::v1::DeviceInfo& d : stats->devices()) {
      const uint64_t used =
          d.total_memory_bytes() - std::min(d.total_memory_bytes(), d.free_memory_bytes());
      std::cout << absl::StrFormat("  %s:%d  %-28s memory %s used of %s\n", d.kind(), d.index(),
                                   d.name(), human_bytes(used),
                                   human_bytes(d.total_memory_bytes()));
    }
    const vb::v1::QueueStats& q = stats->queue();
    std::cout << absl::StrFormat(
        "\nqueue: %d running on %d worker(s), %d waiting of %d, %d rejected; %d call(s) in "
        "flight\n",
        q.running(), q.workers(), q.queued(), q.max_queue(), q.rejected(), q.inflight_calls());
    const vb::v1::WeightStoreInfo& w = stats->weight_store();
    std::cout << absl::StrFormat("weight store: %s of %s in %d weight(s) (vbctl stats tiers)\n",
                                 human_bytes(w.used_bytes()), human_bytes(w.capacity_bytes()),
                                 w.entries());
    return 0;
  }

  static int draw_tiers(const vb::DaemonClient& client, const vb::v1::GetStatsResponse& stats,
                        const CommonFlags& flags) {
    const vb::v1::TierStoreStats& t = stats.tier_store();
    if (flags.json) {
      std::cout << to_json(t);
      return 0;
    }
    std::cout << absl::StrFormat(
        "vbd at %s: tier store, mode %s, policy %s, %d tensor(s), %d upload(s)\n\n",
        client.address(), t.mode(), t.policy(), t.tensors(), t.uploads());
    std::cout << absl::StrFormat("%-7s %11s %11s %7s %8s %8s %7s %7s %11s %11s %9s\n", "tier",
                                 "held", "budget", "tensors", "hits", "misses", "promo", "demo",
                                 "bytes in", "bytes out", "moving s");
    for (const vb::v1::TierStats& tier : t.tiers()) {
      std::cout << absl::StrFormat(
          "%-7s %11s %11s %7d %8d %8d %7d %7d %11s %11s %9.3f\n", tier.tier(),
          human_bytes(tier.held_bytes()), human_bytes(tier.budget_bytes()), tier.tensors(),
          tier.hits(), tier.misses(), tier.promotions(), tier.demotions(),
          human_bytes(tier.bytes_in()), human_bytes(tier.bytes_out()), tier.move_seconds());
    }
    std::cout << absl::StrFormat(
        "\nprefetch: %d brought up ahead, %d used; access order: %s\n", t.prefetches(),
        t.prefetch_hits(),
        t.cycle_length() == 0
            ? std::string("learning")
            : absl::StrCat("cycle of ", t.cycle_length(), t.cycle_hinted() ? " (hinted)" : ""));
    if (!t.ssd_dir().empty()) {
      std::cout << absl::StrFormat(
          "SSD tier: %s, %s; %d checksum failure(s); at start %d file(s) re-indexed, %d "
          "removed\n",
          t.ssd_dir(), t.ssd_direct_io() ? "direct I/O" : "page cache (no O_DIRECT here)",
          t.checksum_failures(), t.recovered_files(), t.removed_files());
    } else {
      std::cout << "SSD tier: off\n";
    }
    return 0;
  }
};

class HealthCommand final : public Command {
 public:
  const char* name() const override { return "health"; }
  const char* help() const override { return "exit 0 when the daemon is SERVING, else 1"; }
  int run(vb::DaemonClient& client, const CommonFlags& flags) override {
    absl::Status health = client.check_health();
    if (flags.json) {
      std::cout << absl::StrFormat("{\n \"address\": \"%s\",\n \"serving\": %s\n}\n",
                                   client.address(), health.ok() ? "true" : "false");
      return health.ok() ? 0 : 1;
    }
    if (!health.ok()) return fail(client, health);
    std::cout << client.address() << ": SERVING\n";
    return 0;
  }
};

class DoctorCommand final : public Command {
 public:
  const char* name() const override { return "doctor"; }
  const char* help() const override {
    return "host checks: daemon, driver, GPUs, pinned copy bandwidth vs PCIe link";
  }
  int run(vb::DaemonClient& client, const CommonFlags& flags) override {
    const absl::Status health = client.check_health();
    const std::vector<vb::doctor::Check> checks =
        vb::doctor::run_checks(client.address(), health.ok() ? "" : health.ToString());
    static constexpr const char* kVerdict[] = {"pass", "warn", "fail"};
    bool failed = false;
    nlohmann::json json = nlohmann::json::array();
    for (const vb::doctor::Check& check : checks) {
      failed |= check.verdict == vb::doctor::Verdict::kFail;
      const char* verdict = kVerdict[static_cast<int>(check.verdict)];
      if (flags.json) {
        json.push_back({{"check", check.name}, {"verdict", verdict}, {"detail", check.detail}});
      } else {
        std::cout << absl::StrFormat("[%s] %-22s %s\n", verdict, check.name, check.detail);
      }
    }
    if (flags.json) std::cout << json.dump(2) << "\n";
    return failed ? 1 : 0;
  }
};

void usage(const std::vector<std::unique_ptr<Command>>& commands) {
  std::cout << "usage: vbctl [--address HOST:PORT] [--timeout SECONDS] [--json] VERB [ARGS]\n\n"
               "  --address   daemon to ask (default $VB_ADDRESS or 127.0.0.1:50551)\n"
               "  --timeout   seconds to wait for the answer (default 10)\n"
               "  --json      machine-readable output\n"
               "  --watch N   stats: redraw every N seconds (--iterations K: K times)\n"
               "  --tls-ca FILE [--tls-cert FILE --tls-key FILE]   TLS (mutual with a cert)\n"
               "  --token-file FILE   bearer token (first line) for daemons that ask for one\n"
               "\nverbs:\n";
  for (const auto& command : commands) {
    std::cout << absl::StrFormat("  %-8s %s\n", command->name(), command->help());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(std::make_unique<StatsCommand>());
  commands.push_back(std::make_unique<InfoCommand>());
  commands.push_back(std::make_unique<HealthCommand>());
  commands.push_back(std::make_unique<DoctorCommand>());
  commands.push_back(std::make_unique<ReleaseCommand>());

  CommonFlags flags;
  if (const char* env = std::getenv("VB_ADDRESS"); env != nullptr && *env != '\0') {
    flags.address = env;
  }
  std::string verb;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "vbctl: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      usage(commands);
      return 0;
    } else if (arg == "--json") {
      flags.json = true;
    } else if (arg == "--watch" || arg == "--iterations") {
      const std::string text = value(arg.c_str());
      double number = 0;
      if (!absl::SimpleAtod(text, &number) || !(number > 0)) {
        std::fprintf(stderr, "vbctl: %s \"%s\": expected a positive number\n", arg.c_str(),
                     text.c_str());
        return 2;
      }
      if (arg == "--watch") {
        flags.watch_s = number;
      } else {
        flags.iterations = static_cast<int64_t>(number);
      }
    } else if (arg == "--tls-ca") {
      flags.tls_ca = value("--tls-ca");
    } else if (arg == "--tls-cert") {
      flags.tls_cert = value("--tls-cert");
    } else if (arg == "--tls-key") {
      flags.tls_key = value("--tls-key");
    } else if (arg == "--token-file") {
      flags.token_file = value("--token-file");
    } else if (arg == "--address") {
      flags.address = value("--address");
    } else if (arg == "--timeout") {
      const std::string text = value("--timeout");
      if (!absl::SimpleAtod(text, &flags.timeout_s) || !(flags.timeout_s > 0)) {
        std::fprintf(stderr, "vbctl: --timeout \"%s\": expected a positive number of seconds\n",
                     text.c_str());
        return 2;
      }
    } else if (verb.empty() && arg.rfind("--", 0) != 0) {
      verb = arg;
    } else if (!verb.empty() && arg.rfind("--", 0) != 0) {
      flags.operands.push_back(arg);
    } else {
      std::fprintf(stderr, "vbctl: unexpected argument \"%s\" (vbctl --help)\n", arg.c_str());
      return 2;
    }
  }
  for (const auto& command : commands) {
    if (verb != command->name()) continue;
    if (flags.operands.size() > command->max_operands()) {
      std::fprintf(stderr, "vbctl: unexpected argument \"%s\" (vbctl --help)\n",
                   flags.operands[command->max_operands()].c_str());
      return 2;
    }
    if (flags.operands.size() < command->min_operands()) {
      std::fprintf(stderr, "vbctl: %s needs at least %zu argument(s) (vbctl --help)\n",
                   verb.c_str(), command->min_operands());
      return 2;
    }
    vb::ClientOptions options;
    options.call_timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000));
    options.tls_ca_file = flags.tls_ca;
    options.tls_cert_file = flags.tls_cert;
    options.tls_key_file = flags.tls_key;
    if (!flags.token_file.empty()) {
      std::ifstream file(flags.token_file);
      if (!std::getline(file, options.token) || options.token.empty()) {
        std::fprintf(stderr, "vbctl: --token-file %s: no token in it\n", flags.token_file.c_str());
        return 2;
      }
    }
    vb::DaemonClient client(flags.address, options);
    return command->run(client, flags);
  }
  if (verb.empty()) {
    usage(commands);
  } else {
    std::fprintf(stderr, "vbctl: unknown verb \"%s\" (vbctl --help)\n", verb.c_str());
  }
  return 2;
}
