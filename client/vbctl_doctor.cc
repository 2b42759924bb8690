#include "client/vbctl_doctor.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

#ifdef VB_WITH_CUDA_RUNTIME
#include <cuda_runtime_api.h>

#include "backends/cuda/copy_engine.h"
#endif

namespace vb::doctor {
namespace {

std::string read_line(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return std::string(absl::StripAsciiWhitespace(line));
}

#ifdef VB_WITH_CUDA_RUNTIME
std::string cuda_version(int version) {
  return absl::StrFormat("%d.%d", version / 1000, (version % 1000) / 10);
}

// Median GB/s of `bytes` through the daemon's copy engine, pinned host memory, one way.
double measure_gbps(backends::cuda::CopyEngine& engine, void* pinned, void* device, size_t bytes,
                    bool to_device) {
  std::vector<double> rates;
  for (int i = 0; i < 7; ++i) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status status = to_device ? engine.to_device(device, pinned, bytes, nullptr)
                                    : engine.to_host(pinned, device, bytes, nullptr);
    if (to_device) cudaDeviceSynchronize();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!status.ok()) return 0;
    if (i > 0) rates.push_back(bytes / seconds / 1e9);  // the first run warms up
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}
#endif

}  // namespace

double expected_pcie_gbps(int generation, int width, const std::string& gpu_name) {
  // What a x16 link delivers from pinned memory in practice (about 85% of the raw rate).
  static const double kPerGenerationX16[] = {0, 3.4, 6.8, 13, 26, 53, 100};
  if (generation >= 1 && generation <= 6 && width > 0) {
    return kPerGenerationX16[generation] * width / 16.0;
  }
  // Link unknown (no sysfs): the figures seen for common GPUs in their usual slots.
  if (absl::StrContains(gpu_name, "H100") || absl::StrContains(gpu_name, "H200")) return 53;
  if (absl::StrContains(gpu_name, "A100")) return 24;
  if (absl::StrContains(gpu_name, "L40") || absl::StrContains(gpu_name, "A10")) return 24;
  return 0;
}

std::vector<Check> run_checks(const std::string& address, const std::string& daemon_health) {
  std::vector<Check> checks;
  checks.push_back(
      {"daemon", daemon_health.empty() ? Verdict::kPass : Verdict::kWarn,
       daemon_health.empty() ? address + " is SERVING" : address + ": " + daemon_health});
#ifdef VB_WITH_CUDA_RUNTIME
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
    checks.push_back(
        {"cuda driver", Verdict::kWarn, "no CUDA driver: this host computes on the CPU"});
    return checks;
  }
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  const std::string driver_version = read_line("/sys/module/nvidia/version");
  checks.push_back(
      {"cuda driver", driver >= runtime ? Verdict::kPass : Verdict::kFail,
       absl::StrFormat("driver %s (CUDA %s), runtime CUDA %s%s",
                       driver_version.empty() ? "?" : driver_version, cuda_version(driver),
                       cuda_version(runtime), driver >= runtime ? "" : ": the driver is older")});
  const int count = backends::cuda::visible_devices();
  checks.push_back({"gpus visible", count > 0 ? Verdict::kPass : Verdict::kFail,
                    absl::StrFormat("%d device(s)", count)});
  constexpr size_t kBytes = size_t{256} << 20;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp properties{};
    cudaGetDeviceProperties(&properties, i);
    char bus_id[32] = {0};
    cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), i);
    const std::string sysfs = "/sys/bus/pci/devices/" + absl::AsciiStrToLower(bus_id);
    const std::string speed = read_line(sysfs + "/current_link_speed");  // "32.0 GT/s PCIe"
    const std::string width_text = read_line(sysfs + "/current_link_width");
    int generation = 0;
    for (auto [gts, gen] :
         {std::pair{"2.5 GT", 1}, std::pair{"5.0 GT", 2}, std::pair{"8.0 GT", 3},
          std::pair{"16.0 GT", 4}, std::pair{"32.0 GT", 5}, std::pair{"64.0 GT", 6}}) {
      if (absl::StartsWith(speed, gts)) generation = gen;
    }
    const int width = width_text.empty() ? 0 : std::atoi(width_text.c_str());
    const std::string gpu = absl::StrFormat("gpu %d", i);
    checks.push_back(
        {gpu, Verdict::kPass,
         absl::StrFormat("%s, sm %d.%d, %.1f GiB, PCIe %s", properties.name, properties.major,
                         properties.minor, properties.totalGlobalMem / 1073741824.0,
                         generation > 0 ? absl::StrFormat("gen%d x%d", generation, width)
                                        : std::string("link not readable"))});
    std::fprintf(stderr, "doctor: measuring pinned copies on %s (%s)...\n", gpu.c_str(),
                 properties.name);
    cudaSetDevice(i);
    void* pinned = nullptr;
    void* device = nullptr;
    auto engine = backends::cuda::CopyEngine::create(i);
    if (!engine.ok() || cudaMallocHost(&pinned, kBytes) != cudaSuccess ||
        cudaMalloc(&device, kBytes) != cudaSuccess) {
      checks.push_back({gpu + " bandwidth", Verdict::kFail, "cannot allocate 256 MiB to measure"});
      continue;
    }
    const double expected = expected_pcie_gbps(generation, width, properties.name);
    for (bool to_device : {true, false}) {
      const double rate = measure_gbps(**engine, pinned, device, kBytes, to_device);
      const double share = expected > 0 ? rate / expected : 1;
      const Verdict verdict =
          share >= 0.8 ? Verdict::kPass : (share >= 0.5 ? Verdict::kWarn : Verdict::kFail);
      checks.push_back({gpu + (to_device ? " host-to-device" : " device-to-host"), verdict,
                        expected > 0 ? absl::StrFormat("%.1f GB/s, %.0f%% of the %.0f GB/s "
                                                       "expected",
                                                       rate, 100 * share, expected)
                                     : absl::StrFormat("%.1f GB/s (no expected figure)", rate)});
    }
    cudaFree(device);
    cudaFreeHost(pinned);
  }
#else
  checks.push_back({"cuda", Verdict::kWarn, "vbctl was built without the CUDA runtime"});
#endif
  return checks;
}

}  // namespace vb::doctor
