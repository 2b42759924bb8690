// Remote Linear forward over loopback against the same op run locally, for three sizes, and
// the round trip of an empty call (the floor under any remote call). Remote is measured
// twice: over gRPC (DaemonClient) and over the HTTP face the cloud target uses (CloudTarget
// straight to vbd, no gateway). Prints medians, the machine, and ratios to local; asserts
// nothing.
//
//   remote_linear_bench [--quick]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "backends/cpu_backend.h"
#include "bench/timing.h"
#include "client/cloud_target.h"
#include "client/daemon_client.h"
#include "common/digest.h"
#include "tests/support/daemon_process.h"

namespace {

using vb::bench::median_ms;

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown cpu";
}

using vb::bench::check;

struct Size {
  int64_t batch, in, out;
  int repetitions;
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::vector<Size> sizes = {{1, 768, 768, 200}, {64, 4096, 4096, 20}, {4096, 4096, 4096, 5}};
  if (quick) sizes = {{1, 768, 768, 5}, {64, 512, 512, 3}};

  vb::testing::DaemonProcess daemon({"--http-port", "0"});
  vb::ClientOptions options;
  options.call_timeout = std::chrono::minutes(5);
  vb::DaemonClient client(daemon.address(), options);
  vb::backends::CpuBackend local;
  vb::cloud::ModelArtsOptions http_options;
  http_options.endpoint = "http://127.0.0.1:" + std::to_string(daemon.http_port());
  http_options.call_timeout = std::chrono::minutes(5);
  http_options.max_body_bytes = uint64_t{1} << 30;  // no gateway here: measure the face alone
  absl::StatusOr<std::shared_ptr<vb::CloudTarget>> http = vb::CloudTarget::create(http_options);
  check(http.status(), "http target");

  (void)at::mm(at::randn({64, 64}), at::randn({64, 64}));  // starts LibTorch's thread pool
  std::printf("machine: %s, %ld cores; LibTorch %s, %d intra-op threads; vbd on loopback\n",
              cpu_model().c_str(), sysconf(_SC_NPROCESSORS_ONLN), TORCH_VERSION,
              at::get_num_threads());
  const double floor_health =
      median_ms(quick ? 5 : 500, [&] { check(client.check_health(), "health"); });
  const at::Tensor tiny_w = at::randn({1, 1});
  const vb::WeightRef tiny{vb::sha256_hex(tiny_w.data_ptr(), 4), tiny_w};
  vb::TransferCount transfer;
  check(client.upload_weight(tiny, &transfer).status(), "upload");
  const at::Tensor tiny_x = at::randn({1, 1});
  const double floor_forward = median_ms(quick ? 5 : 500, [&] {
    check(client.linear_forward(tiny_x, tiny, {}, &transfer).status(), "forward");
  });
  std::printf("empty call round trip (median): health check %.3f ms, 1x1 LinearForward %.3f ms\n\n",
              floor_health, floor_forward);

  std::printf("%-22s %10s %10s %12s %12s %12s %8s %10s %8s\n", "float32 x[B,K] W[N,K]", "local ms",
              "remote ms", "local GF/s", "remote GF/s", "remote MB/s", "remote/", "http ms",
              "http/");
  std::printf("%-22s %10s %10s %12s %12s %12s %8s %10s %8s\n", "", "", "", "", "", "", "local", "",
              "local");
  for (const Size& s : sizes) {
    const at::Tensor x = at::randn({s.batch, s.in});
    const at::Tensor w = at::randn({s.out, s.in});
    const vb::WeightRef ref{vb::sha256_hex(w.data_ptr(), w.numel() * 4), w};
    check(client.upload_weight(ref, &transfer).status(), "upload");
    const double local_ms = median_ms(s.repetitions, [&] {
      check(local.linear_forward({x, w, {}}).status(), "local forward");
    });
    const double remote_ms = median_ms(s.repetitions, [&] {
      check(client.linear_forward(x, ref, {}, &transfer).status(), "remote forward");
    });
    const vb::LinearForwardCall call{x, ref, at::Tensor()};
    check((*http)->linear_forward(call, &transfer).status(), "http upload");
    const double http_ms = median_ms(s.repetitions, [&] {
      check((*http)->linear_forward(call, &transfer).status(), "http forward");
    });
    const double gflop = 2.0 * s.batch * s.in * s.out / 1e9;
    const double wire_mb = 4.0 * (s.batch * s.in + s.batch * s.out) / 1e6;
    char label[64];
    std::snprintf(label, sizeof(label), "%ldx%ld by %ldx%ld", static_cast<long>(s.batch),
                  static_cast<long>(s.in), static_cast<long>(s.out), static_cast<long>(s.in));
    std::printf("%-22s %10.3f %10.3f %12.2f %12.2f %12.1f %8.2f %10.3f %8.2f\n", label, local_ms,
                remote_ms, gflop / (local_ms / 1e3), gflop / (remote_ms / 1e3),
                wire_mb / (remote_ms / 1e3), remote_ms / local_ms, http_ms, http_ms / local_ms);
  }
  std::printf(
      "\nremote = upload of x + compute in vbd + download of y (weight already held), over gRPC;\n"
      "http = the same through vbd's HTTP face as the cloud target sends it (no TLS, no gateway);\n"
      "both sides share this machine's cores.\n");
  return 0;
}
