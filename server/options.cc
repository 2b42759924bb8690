#include "server/options.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "backends/device_manager.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace vb::server {
namespace {

using Setter = std::function<absl::Status(ServerOptions&, absl::string_view)>;

struct KeyDef {
  OptionKey key;
  Setter set;
  std::function<std::string(const ServerOptions&)> get;  // as a TOML value
};

absl::Status bad_value(absl::string_view key, absl::string_view value, absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(key, " = \"", value, "\": expected ", expected));
}

template <typename Int>
Setter int_setter(Int ServerOptions::*member, int64_t min, int64_t max, std::string key) {
  return [=](ServerOptions& o, absl::string_view value) -> absl::Status {
    int64_t parsed = 0;
    if (!absl::SimpleAtoi(value, &parsed) || parsed < min || parsed > max) {
      return bad_value(key, value, absl::StrCat("an integer from ", min, " to ", max));
    }
    o.*member = static_cast<Int>(parsed);
    return absl::OkStatus();
  };
}

Setter bool_setter(bool ServerOptions::*member, std::string key) {
  return [=](ServerOptions& o, absl::string_view value) -> absl::Status {
    if (value != "true" && value != "false") return bad_value(key, value, "true or false");
    o.*member = value == "true";
    return absl::OkStatus();
  };
}

std::function<std::string(const ServerOptions&)> bool_getter(bool ServerOptions::*member) {
  return [=](const ServerOptions& o) { return std::string(o.*member ? "true" : "false"); };
}

Setter bytes_setter(uint64_t ServerOptions::*member, std::string key) {
  return [=](ServerOptions& o, absl::string_view value) -> absl::Status {
    absl::StatusOr<uint64_t> parsed = parse_byte_size(value);
    if (!parsed.ok() || *parsed == 0) {
      return bad_value(key, value,
                       "a positive byte size such as 1073741824, \"512MiB\" or \"4GiB\"");
    }
    o.*member = *parsed;
    return absl::OkStatus();
  };
}

// Tier budgets by mode; keys set explicitly win.
struct ModePreset {
  const char* name;
  double device_share;  // of the compute device's memory
  uint64_t host_bytes;
  uint64_t ssd_bytes;
};
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr ModePreset kModes[] = {
    {"performance", 0.8, 0, 0},  // the device tier holds everything
    {"balanced", 0.5, 4 * kGiB, 64 * kGiB},
    {"memory", 0.15, 16 * kGiB, 512 * kGiB},
};

const ModePreset* find_mode(absl::string_view name) {
  for (const ModePreset& mode : kModes) {
    if (name == mode.name) return &mode;
  }
  return nullptr;
}

// "auto" (the mode decides) or a byte size; 0 is allowed (the tier is off).
Setter optional_bytes_setter(std::optional<uint64_t> ServerOptions::*member, std::string key) {
  return [=](ServerOptions& o, absl::string_view value) -> absl::Status {
    if (value == "auto") {
      o.*member = std::nullopt;
      return absl::OkStatus();
    }
    absl::StatusOr<uint64_t> parsed = parse_byte_size(value);
    if (!parsed.ok()) {
      return bad_value(key, value, "\"auto\" or a byte size such as 0, \"512MiB\" or \"4GiB\"");
    }
    o.*member = *parsed;
    return absl::OkStatus();
  };
}

std::function<std::string(const ServerOptions&)> optional_bytes_getter(
    std::optional<uint64_t> ServerOptions::*member) {
  return [=](const ServerOptions& o) {
    return (o.*member).has_value() ? absl::StrCat(*(o.*member)) : std::string("\"auto\"");
  };
}

const std::vector<KeyDef>& key_defs() {
  static const std::vector<KeyDef> defs = [] {
    std::vector<KeyDef> d;
    d.push_back({{"server.host", "host", "address to listen on (127.0.0.1)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   if (v.empty()) return bad_value("server.host", v, "an address or host name");
                   o.host = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.host, "\""); }});
    d.push_back({{"server.port", "port", "TCP port; 0 picks a free one and prints it (50551)"},
                 int_setter(&ServerOptions::port, 0, 65535, "server.port"),
                 [](const ServerOptions& o) { return absl::StrCat(o.port); }});
    d.push_back({{"server.drain_timeout_s", "drain-timeout",
                  "seconds calls in flight may take to finish after SIGTERM (30)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   double parsed = 0;
                   if (!absl::SimpleAtod(v, &parsed) || !(parsed >= 0) || parsed > 86400) {
                     return bad_value("server.drain_timeout_s", v, "seconds from 0 to 86400");
                   }
                   o.drain_timeout_s = parsed;
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat(o.drain_timeout_s); }});
    d.push_back({{"limits.workers", "workers", "compute calls that run at once (2)"},
                 int_setter(&ServerOptions::workers, 1, 1024, "limits.workers"),
                 [](const ServerOptions& o) { return absl::StrCat(o.workers); }});
    d.push_back({{"limits.max_queue", "max-queue",
                  "compute calls that may wait; one more gets RESOURCE_EXHAUSTED (64)"},
                 int_setter(&ServerOptions::max_queue, 0, 1 << 20, "limits.max_queue"),
                 [](const ServerOptions& o) { return absl::StrCat(o.max_queue); }});
    d.push_back({{"limits.max_request_bytes", "max-request-bytes",
                  "tensor bytes one call may carry (1GiB)"},
                 bytes_setter(&ServerOptions::max_request_bytes, "limits.max_request_bytes"),
                 [](const ServerOptions& o) { return absl::StrCat(o.max_request_bytes); }});
    d.push_back({{"store.mode", "store-mode",
                  "tier budgets preset: performance, balanced or memory (balanced)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   if (find_mode(v) == nullptr) {
                     return bad_value("store.mode", v, "performance, balanced or memory");
                   }
                   o.store_mode = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.store_mode, "\""); }});
    d.push_back({{"store.device_bytes", "store-device-bytes",
                  "device tier budget; auto: the mode's share of device memory (auto)"},
                 optional_bytes_setter(&ServerOptions::store_device_bytes, "store.device_bytes"),
                 optional_bytes_getter(&ServerOptions::store_device_bytes)});
    d.push_back({{"store.host_bytes", "store-host-bytes",
                  "host tier budget, pinned on GPUs, allocated at start (auto)"},
                 optional_bytes_setter(&ServerOptions::store_host_bytes, "store.host_bytes"),
                 optional_bytes_getter(&ServerOptions::store_host_bytes)});
    d.push_back({{"store.ssd_bytes", "store-ssd-bytes", "SSD tier budget; 0 turns it off (auto)"},
                 optional_bytes_setter(&ServerOptions::store_ssd_bytes, "store.ssd_bytes"),
                 optional_bytes_getter(&ServerOptions::store_ssd_bytes)});
    d.push_back({{"store.ssd_dir", "store-ssd-dir",
                  "SSD tier directory, created 0700; unset: $STATE_DIRECTORY/tiers or no SSD tier"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   o.store_ssd_dir = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.store_ssd_dir, "\""); }});
    d.push_back({{"store.ssd_recover", "store-ssd-recover",
                  "at start, re-index the SSD tier's whole files (else delete them) (true)"},
                 bool_setter(&ServerOptions::store_ssd_recover, "store.ssd_recover"),
                 bool_getter(&ServerOptions::store_ssd_recover)});
    d.push_back({{"store.policy", "store-policy",
                  "what moves down a tier: next-use (furthest next use in the learned order) "
                  "or lru (next-use)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   VB_RETURN_IF_ERROR(backends::parse_eviction_policy(v, "store.policy").status());
                   o.store_policy = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.store_policy, "\""); }});
    d.push_back({{"store.prefetch_depth", "store-prefetch-depth",
                  "tensors brought up to the device ahead of use; 0 turns prefetch off (2)"},
                 int_setter(&ServerOptions::store_prefetch_depth, 0, 64, "store.prefetch_depth"),
                 [](const ServerOptions& o) { return absl::StrCat(o.store_prefetch_depth); }});
    d.push_back(
        {{"store.io_threads", "store-io-threads", "SSD tier requests in flight for one tensor (4)"},
         int_setter(&ServerOptions::store_io_threads, 1, 64, "store.io_threads"),
         [](const ServerOptions& o) { return absl::StrCat(o.store_io_threads); }});
    d.push_back({{"compute.threads", "compute-threads",
                  "LibTorch intra-op threads; 0 keeps LibTorch's default (0)"},
                 int_setter(&ServerOptions::compute_threads, 0, 1024, "compute.threads"),
                 [](const ServerOptions& o) { return absl::StrCat(o.compute_threads); }});
    d.push_back({{"compute.allow_tf32", "allow-tf32",
                  "TF32 for float32 matmuls on GPUs; off keeps results close to the CPU (false)"},
                 bool_setter(&ServerOptions::allow_tf32, "compute.allow_tf32"),
                 bool_getter(&ServerOptions::allow_tf32)});
    d.push_back({{"devices.order", "device-order",
                  "accelerator kinds by preference; the first present is used "
                  "(cuda,hpu,npu,xpu,cpu)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   absl::Status parsed = backends::parse_device_order(v).status();
                   if (!parsed.ok()) return parsed;
                   o.device_order = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.device_order, "\""); }});
    d.push_back({{"devices.npu_library", "npu-library",
                  "torch_npu's shared library, loaded before detecting Ascend NPUs (none)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   o.npu_library = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.npu_library, "\""); }});
    const auto path_key = [](std::string ServerOptions::*member, const char* toml, const char* flag,
                             const char* help) {
      return KeyDef{
          {toml, flag, help},
          [member](ServerOptions& o, absl::string_view v) -> absl::Status {
            o.*member = std::string(v);
            return absl::OkStatus();
          },
          [member](const ServerOptions& o) { return absl::StrCat("\"", o.*member, "\""); }};
    };
    d.push_back(path_key(&ServerOptions::tls_cert_file, "tls.cert_file", "tls-cert",
                         "server certificate chain, PEM; turns TLS on (none)"));
    d.push_back(path_key(&ServerOptions::tls_key_file, "tls.key_file", "tls-key",
                         "private key of tls.cert_file, PEM (none)"));
    d.push_back(path_key(&ServerOptions::tls_client_ca_file, "tls.client_ca_file", "tls-client-ca",
                         "CA whose certificates clients must present: mutual TLS (none)"));
    d.push_back(path_key(&ServerOptions::token_file, "auth.token_file", "token-file",
                         "bearer tokens, one per line; every call must carry one (none)"));
    d.push_back({{"server.insecure", "insecure",
                  "allow plaintext, unauthenticated service on a non-loopback address (false)"},
                 bool_setter(&ServerOptions::insecure, "server.insecure"),
                 bool_getter(&ServerOptions::insecure)});
    d.push_back({{"metrics.host", "metrics-host",
                  "address of the /metrics endpoint; loopback unless opened up (127.0.0.1)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   if (v.empty()) return bad_value("metrics.host", v, "an address");
                   o.metrics_host = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.metrics_host, "\""); }});
    d.push_back({{"metrics.port", "metrics-port",
                  "port of /metrics (Prometheus text); 0 picks one, -1 turns it off (9551)"},
                 int_setter(&ServerOptions::metrics_port, -1, 65535, "metrics.port"),
                 [](const ServerOptions& o) { return absl::StrCat(o.metrics_port); }});
    d.push_back({{"http.host", "http-host",
                  "address of the HTTP face (POST /v1/..., GET /health) (127.0.0.1)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   if (v.empty()) return bad_value("http.host", v, "an address");
                   o.http_host = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.http_host, "\""); }});
    d.push_back({{"http.port", "http-port",
                  "port of the HTTP face; 0 picks one, -1 turns it off (-1; 8080 on ModelArts)"},
                 int_setter(&ServerOptions::http_port, -1, 65535, "http.port"),
                 [](const ServerOptions& o) { return absl::StrCat(o.http_port); }});
    d.push_back({{"log.level", "log-level", "debug, info, warning or error (info)"},
                 [](ServerOptions& o, absl::string_view v) -> absl::Status {
                   LogLevel level;
                   if (!parse_log_level(v, &level)) {
                     return bad_value("log.level", v, "debug, info, warning or error");
                   }
                   o.log_level = std::string(v);
                   return absl::OkStatus();
                 },
                 [](const ServerOptions& o) { return absl::StrCat("\"", o.log_level, "\""); }});
    return d;
  }();
  return defs;
}

const KeyDef* find_by_toml(absl::string_view key) {
  for (const KeyDef& def : key_defs()) {
    if (def.key.toml_key == key) return &def;
  }
  return nullptr;
}

const KeyDef* find_by_flag(absl::string_view flag) {
  for (const KeyDef& def : key_defs()) {
    if (def.key.flag == flag) return &def;
  }
  return nullptr;
}

// A TOML scalar as the text a flag would carry.
std::optional<std::string> scalar_text(const toml::node& node) {
  if (auto s = node.as_string()) return s->get();
  if (auto i = node.as_integer()) return absl::StrCat(i->get());
  if (auto f = node.as_floating_point()) return absl::StrCat(f->get());
  if (auto b = node.as_boolean()) return std::string(b->get() ? "true" : "false");
  return std::nullopt;
}

absl::Status apply_table(const toml::table& table, const std::string& prefix,
                         absl::string_view source, ServerOptions& options) {
  for (const auto& [name, node] : table) {
    const std::string key = prefix.empty() ? std::string(name.str())
                                           : absl::StrCat(prefix, ".", std::string(name.str()));
    if (const toml::table* sub = node.as_table()) {
      VB_RETURN_IF_ERROR(apply_table(*sub, key, source, options));
      continue;
    }
    const KeyDef* def = find_by_toml(key);
    const auto where = node.source().begin;
    const std::string location = absl::StrCat(source, ":", where.line);
    if (def == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(location, ": unknown key ", key, " (vbd --help lists the keys)"));
    }
    std::optional<std::string> text = scalar_text(node);
    if (!text) {
      return absl::InvalidArgumentError(
          absl::StrCat(location, ": ", key, " must be a string or a number"));
    }
    absl::Status set = def->set(options, *text);
    if (!set.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(location, ": ", set.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status apply_toml(absl::string_view text, absl::string_view source, ServerOptions& options) {
  toml::table table;
  try {
    table = toml::parse(std::string_view(text.data(), text.size()),
                        std::string_view(source.data(), source.size()));
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ":", e.source().begin.line, ":",
                                                   e.source().begin.column, ": ",
                                                   std::string(e.description())));
  }
  return apply_table(table, "", source, options);
}

}  // namespace

const std::vector<OptionKey>& option_keys() {
  static const std::vector<OptionKey> keys = [] {
    std::vector<OptionKey> k;
    for (const KeyDef& def : key_defs()) k.push_back(def.key);
    return k;
  }();
  return keys;
}

absl::StatusOr<uint64_t> parse_byte_size(absl::string_view text) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  uint64_t multiplier = 1;
  static const std::pair<absl::string_view, uint64_t> kSuffixes[] = {{"KiB", uint64_t{1} << 10},
                                                                     {"MiB", uint64_t{1} << 20},
                                                                     {"GiB", uint64_t{1} << 30},
                                                                     {"TiB", uint64_t{1} << 40},
                                                                     {"B", 1}};
  for (const auto& [suffix, factor] : kSuffixes) {
    if (absl::EndsWith(digits, suffix)) {
      digits = absl::StripAsciiWhitespace(digits.substr(0, digits.size() - suffix.size()));
      multiplier = factor;
      break;
    }
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(digits, &value) ||
      value > std::numeric_limits<uint64_t>::max() / multiplier) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" is not a byte size"));
  }
  return value * multiplier;
}

absl::StatusOr<ServerOptions> parse_server_options_toml(absl::string_view toml_text,
                                                        absl::string_view source_name) {
  ServerOptions options;
  VB_RETURN_IF_ERROR(apply_toml(toml_text, source_name, options));
  return options;
}

absl::StatusOr<ServerOptions> parse_server_options(const std::vector<std::string>& args) {
  // Split "--key=value" and "--key value" into pairs first, so --config can be found
  // wherever it stands and applied before the flags that override it.
  std::vector<std::pair<std::string, std::string>> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\": options are --key value"));
    }
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      flags.emplace_back(arg.substr(2, eq - 2), arg.substr(eq + 1));
    } else if (i + 1 < args.size()) {
      flags.emplace_back(arg.substr(2), args[++i]);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
    }
  }
  ServerOptions options;
  for (const auto& [flag, value] : flags) {
    if (flag != "config") continue;
    std::ifstream file(value);
    if (!file) {
      return absl::NotFoundError(absl::StrCat("--config ", value, ": cannot open the file"));
    }
    std::stringstream text;
    text << file.rdbuf();
    VB_RETURN_IF_ERROR(apply_toml(text.str(), value, options));
    options.config_path = value;
  }
  for (const auto& [flag, value] : flags) {
    if (flag == "config") continue;
    const KeyDef* def = find_by_flag(flag);
    if (def == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", flag, " (vbd --help lists the flags)"));
    }
    absl::Status set = def->set(options, value);
    if (!set.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", set.message()));
    }
  }
  return options;
}

absl::StatusOr<backends::TierStoreOptions> tier_store_options(const ServerOptions& options,
                                                              uint64_t device_memory_bytes) {
  const ModePreset* mode = find_mode(options.store_mode);
  if (mode == nullptr) {
    return bad_value("store.mode", options.store_mode, "performance, balanced or memory");
  }
  backends::TierStoreOptions tiers;
  tiers.device_bytes = options.store_device_bytes.value_or(
      static_cast<uint64_t>(mode->device_share * static_cast<double>(device_memory_bytes)));
  tiers.host_bytes = options.store_host_bytes.value_or(mode->host_bytes);
  tiers.ssd_bytes = options.store_ssd_bytes.value_or(mode->ssd_bytes);
  tiers.ssd_directory = options.store_ssd_dir;
  if (tiers.ssd_directory.empty()) {
    // systemd's StateDirectory= (the unit has one); anywhere else an SSD tier needs a
    // directory named on purpose, or files would be left behind in a temporary one.
    if (const char* state = std::getenv("STATE_DIRECTORY"); state != nullptr && *state != 0) {
      const std::string first(state, std::strcspn(state, ":"));
      tiers.ssd_directory = absl::StrCat(first, "/tiers");
    }
  }
  if (tiers.ssd_directory.empty() && tiers.ssd_bytes > 0) {
    if (options.store_ssd_bytes.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store.ssd_bytes = ", tiers.ssd_bytes,
          " but store.ssd_dir is unset (and no $STATE_DIRECTORY): name the SSD tier's directory"));
    }
    VB_LOG_INFO("no store.ssd_dir (nor $STATE_DIRECTORY): the SSD tier is off");
    tiers.ssd_bytes = 0;
  }
  VB_ASSIGN_OR_RETURN(tiers.policy,
                      backends::parse_eviction_policy(options.store_policy, "store.policy"));
  tiers.ssd_recover = options.store_ssd_recover;
  tiers.prefetch_depth = options.store_prefetch_depth;
  tiers.io_threads = options.store_io_threads;
  return tiers;
}

std::string options_usage() {
  std::string usage =
      "usage: vbd [--config FILE.toml] [--KEY VALUE ...]\n\n"
      "Every key can be set in the TOML file (as shown on the right) or by its flag;\n"
      "a flag overrides the file.\n\n";
  for (const KeyDef& def : key_defs()) {
    absl::StrAppendFormat(&usage, "  --%-22s %-26s %s\n", def.key.flag, def.key.toml_key,
                          def.key.help);
  }
  return usage;
}

std::string options_to_toml(const ServerOptions& options) {
  // Keys grouped by table, tables in the order they first appear.
  std::vector<std::pair<std::string, std::string>> tables;
  for (const KeyDef& def : key_defs()) {
    const size_t dot = def.key.toml_key.find('.');
    const std::string table = def.key.toml_key.substr(0, dot);
    auto it = std::find_if(tables.begin(), tables.end(),
                           [&](const auto& entry) { return entry.first == table; });
    if (it == tables.end()) it = tables.insert(tables.end(), {table, ""});
    absl::StrAppend(&it->second, def.key.toml_key.substr(dot + 1), " = ", def.get(options), "\n");
  }
  std::string out;
  for (const auto& [table, lines] : tables) {
    absl::StrAppend(&out, out.empty() ? "" : "\n", "[", table, "]\n", lines);
  }
  return out;
}

}  // namespace vb::server
