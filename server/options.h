// vbd's configuration: a plain struct whose defaults run on any machine, filled from an
// optional TOML file and then from command-line flags (a flag wins over the file).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/tier_store.h"

namespace vb::server {

struct ServerOptions {
  // [server]
  std::string host = "127.0.0.1";
  int port = 50551;             // 0 picks a free port; vbd prints the one it bound
  double drain_timeout_s = 30;  // SIGTERM: how long calls in flight may take to finish
  // [limits]
  uint32_t workers = 2;     // compute calls running at once
  uint32_t max_queue = 64;  // compute calls waiting; one more is RESOURCE_EXHAUSTED
  uint64_t max_request_bytes = uint64_t{1} << 30;  // tensor bytes one call may carry
  // [store]: the VGPU stack (backends/tier_store.h). Budgets left unset ("auto") come from
  // the mode: performance (all on the device, no SSD tier), balanced, memory (a small device
  // tier over large host and SSD tiers).
  std::string store_mode = "balanced";
  std::optional<uint64_t> store_device_bytes;
  std::optional<uint64_t> store_host_bytes;
  std::optional<uint64_t> store_ssd_bytes;
  std::string store_ssd_dir;      // unset: $STATE_DIRECTORY/tiers under systemd, else no SSD tier
  bool store_ssd_recover = true;  // re-index the SSD tier's files at start
  std::string store_policy = "next-use";  // or "lru"
  int store_prefetch_depth = 2;
  int store_io_threads = 4;
  // [compute]
  int compute_threads = 0;  // LibTorch intra-op threads; 0 keeps LibTorch's choice
  bool allow_tf32 = false;  // TF32 for float32 matmuls on GPUs
  // [devices]
  std::string device_order = "cuda,hpu,npu,xpu,cpu";  // first kind present wins
  std::string npu_library;  // torch_npu's library, loaded before detection
  // [tls] / [auth]: required on any non-loopback address unless `insecure`.
  std::string tls_cert_file;       // server certificate chain (PEM)
  std::string tls_key_file;        // its private key (PEM)
  std::string tls_client_ca_file;  // set: mutual TLS, clients must present a cert it signed
  std::string token_file;          // bearer tokens, one per line ("# comments" allowed)
  bool insecure = false;           // allow plaintext, unauthenticated service off loopback
  // [metrics]
  std::string metrics_host = "127.0.0.1";  // loopback unless an operator opens it up
  int metrics_port = 9551;                 // 0 picks a free port; -1 turns /metrics off
  // [http]: the same compute over HTTP (JSON line + raw tensor bytes), and GET /health, as
  // a ModelArts custom image serves it. Same TLS, tokens and exposure rule as gRPC.
  std::string http_host = "127.0.0.1";
  int http_port = -1;  // 0 picks a free port; -1: off
  // [log]
  std::string log_level = "info";
  // The file the options came from, if any (not a key).
  std::string config_path;
};

// One configurable key: its TOML path, its flag and what it means. Both sources go through
// the same parser, so a key behaves identically wherever it is set.
struct OptionKey {
  std::string toml_key;  // "limits.max_queue"
  std::string flag;      // "max-queue"
  std::string help;
};
const std::vector<OptionKey>& option_keys();

// Parses `--config PATH` (TOML) first, then every other flag. `--key value` and
// `--key=value` both work. Errors name the key, the value and what was expected.
absl::StatusOr<ServerOptions> parse_server_options(const std::vector<std::string>& args);
absl::StatusOr<ServerOptions> parse_server_options_toml(absl::string_view toml_text,
                                                        absl::string_view source_name);
// "4GiB", "512MiB", "1000" -> bytes.
absl::StatusOr<uint64_t> parse_byte_size(absl::string_view text);

// The tier store's options: the mode's budgets where the keys leave them unset (the device
// budget as a share of `device_memory_bytes`), the SSD directory resolved.
absl::StatusOr<backends::TierStoreOptions> tier_store_options(const ServerOptions& options,
                                                              uint64_t device_memory_bytes);

std::string options_usage();
// The options in force, as TOML (for logs and `vbctl info`).
std::string options_to_toml(const ServerOptions& options);

}  // namespace vb::server
