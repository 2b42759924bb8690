// Settings of libvb's connections and router, as plain structs with defaults.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace vb {

struct ClientOptions {
  // Deadline of every RPC, uploads included.
  std::chrono::milliseconds call_timeout{30000};
  // Payload of one chunk message; the daemon accepts up to 3 MiB.
  size_t chunk_bytes = size_t{1} << 20;
  // How soon a channel retries a daemon that went away. gRPC's default backoff grows to two
  // minutes; a daemon that restarts should be found again within seconds.
  std::chrono::milliseconds min_reconnect_backoff{100};
  std::chrono::milliseconds max_reconnect_backoff{1000};
  // TLS: set tls_ca_file (the CA that signed the daemon's certificate) to connect over TLS;
  // tls_cert_file and tls_key_file add a client certificate for mutual TLS.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Sent as "authorization: Bearer <token>" on every call; never logged.
  std::string token;
};

struct BreakerOptions {
  // Consecutive failures that open the breaker (the target is then skipped).
  int failure_threshold = 3;
  // How long an open breaker skips its target before one call probes it again; doubled after
  // each failed probe, up to max_open_duration.
  std::chrono::milliseconds open_duration{1000};
  std::chrono::milliseconds max_open_duration{30000};
};

}  // namespace vb
