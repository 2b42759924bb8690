// The VGPU stack's figures, each against a baseline measured in the same run:
//  1. host -> device through the tier store (a promotion) vs a plain copy of the same bytes
//     from pinned memory (cudaMemcpy; memcpy on a CPU-only build); device -> host through
//     the store's memory (what a demotion runs) vs the same;
//  2. SSD tier write and read (direct I/O, chunks in flight, checksums) vs the disk's own
//     direct-I/O rate on a file of the same size (plain O_DIRECT pwrite/pread, the better of
//     one and of `io_threads` requests in flight, no checksums);
//  3. a model three times larger than the device tier, streamed layer by layer, vs the
//     bound max(bytes that crossed / measured host->device rate, all-resident compute), and
//     vs the same model all resident.
//
//   tier_bench [--quick] [--dir DIR]   (DIR: where the SSD files go; default a temp dir)
#include <ATen/ATen.h>
#include <fcntl.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backends/ssd_tier.h"
#include "backends/tier_memory.h"
#include "backends/tier_store.h"
#include "bench/timing.h"
#include "common/digest.h"
#include "tests/support/temp_dir.h"

#ifdef VB_WITH_CUDA
#include <cuda_runtime_api.h>

#include "backends/cuda/copy_engine.h"
#include "backends/cuda/cuda_tier_memory.h"
#endif

namespace {

using vb::backends::TierMemory;
using vb::backends::TierStore;
using vb::backends::TierStoreOptions;
using vb::bench::median_ms;

using vb::bench::check;

template <typename T>
T value_or_die(absl::StatusOr<T> value, const char* what) {
  check(value.status(), what);
  return std::move(*value);
}

double gbps(uint64_t bytes, double ms) { return static_cast<double>(bytes) / (ms * 1e6); }

std::unique_ptr<TierMemory> make_memory() {
#ifdef VB_WITH_CUDA
  return value_or_die(vb::backends::cuda::make_cuda_tier_memory(0), "CUDA tier memory");
#else
  return vb::backends::make_host_tier_memory();
#endif
}

void synchronize() {
#ifdef VB_WITH_CUDA
  cudaDeviceSynchronize();
#endif
}

c10::Device compute_device() {
#ifdef VB_WITH_CUDA
  return c10::Device(c10::kCUDA, 0);
#else
  return c10::Device(c10::kCPU);
#endif
}

// Plain copies between a page-locked host buffer and device memory: the baseline.
class PlainCopy {
 public:
  explicit PlainCopy(size_t bytes) : bytes_(bytes) {
#ifdef VB_WITH_CUDA
    check(vb::backends::cuda::cuda_status(cudaHostAlloc(&host_, bytes, 0), "pinned"), "pinned");
    check(vb::backends::cuda::cuda_status(cudaMalloc(&device_, bytes), "device"), "device");
#else
    host_ = std::aligned_alloc(4096, bytes);
    device_ = std::aligned_alloc(4096, bytes);
#endif
    std::memset(host_, 1, bytes);
  }
  ~PlainCopy() {
#ifdef VB_WITH_CUDA
    cudaFreeHost(host_);
    cudaFree(device_);
#else
    std::free(host_);
    std::free(device_);
#endif
  }
  void to_device() {
#ifdef VB_WITH_CUDA
    cudaMemcpy(device_, host_, bytes_, cudaMemcpyHostToDevice);
#else
    std::memcpy(device_, host_, bytes_);
#endif
  }
  void to_host() {
#ifdef VB_WITH_CUDA
    cudaMemcpy(host_, device_, bytes_, cudaMemcpyDeviceToHost);
#else
    std::memcpy(host_, device_, bytes_);
#endif
  }
  void* host() const { return host_; }
  void* device() const { return device_; }

 private:
  size_t bytes_;
  void* host_ = nullptr;
  void* device_ = nullptr;
};

std::vector<char> random_bytes(size_t bytes, unsigned seed) {
  std::vector<char> out(bytes);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < bytes; i += 8) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    std::memcpy(out.data() + i, &state, std::min<size_t>(8, bytes - i));
  }
  return out;
}

struct Stored {
  std::string digest;
};

Stored put(TierStore& store, const std::vector<char>& bytes) {
  Stored s{vb::sha256_hex(bytes.data(), bytes.size())};
  check(store.put(s.digest, bytes.data(), bytes.size()), "put");
  return s;
}

// ---- 1. host <-> device ----

void copies(size_t bytes, int repetitions) {
  TierStoreOptions options;
  options.device_bytes = bytes;  // one tensor: every acquire of the other one promotes
  options.host_bytes = 3 * bytes;
  options.policy = vb::backends::EvictionPolicy::kLru;
  options.prefetch_depth = 0;
  std::unique_ptr<TierStore> store =
      value_or_die(TierStore::create(options, make_memory()), "tier store");
  const Stored a = put(*store, random_bytes(bytes, 1));
  const Stored b = put(*store, random_bytes(bytes, 2));
  PlainCopy plain(bytes);
  int turn = 0;
  const double store_h2d = median_ms(repetitions, [&] {
    auto lease = store->acquire((turn++ % 2) ? a.digest : b.digest);
    check(lease.status(), "acquire");
  });
  const double plain_h2d = median_ms(repetitions, [&] { plain.to_device(); });
  // A demotion runs the store's memory->to_host on a slot of the device region.
  std::unique_ptr<TierMemory> memory = make_memory();
  void* device = value_or_die(memory->allocate_device(bytes), "device region");
  const double store_d2h =
      median_ms(repetitions, [&] { check(memory->to_host(plain.host(), device, bytes), "d2h"); });
  memory->free_device(device);
  const double plain_d2h = median_ms(repetitions, [&] { plain.to_host(); });
  const vb::backends::TierStoreStats stats = store->stats();
  std::printf("1. host <-> device, %zu MiB (store: %s, host tier %s)\n", bytes >> 20,
              store->memory().device_name().c_str(),
              store->memory().host_is_pinned() ? "pinned" : "pageable");
  std::printf("   %-28s %9.3f ms %8.2f GB/s | plain %9.3f ms %8.2f GB/s | ratio %.3f\n",
              "host->device (promotion)", store_h2d, gbps(bytes, store_h2d), plain_h2d,
              gbps(bytes, plain_h2d), plain_h2d / store_h2d);
  std::printf("   %-28s %9.3f ms %8.2f GB/s | plain %9.3f ms %8.2f GB/s | ratio %.3f\n",
              "device->host (demotion copy)", store_d2h, gbps(bytes, store_d2h), plain_d2h,
              gbps(bytes, plain_d2h), plain_d2h / store_d2h);
  std::printf("   (%lu promotions counted by the store)\n",
              static_cast<unsigned long>(stats.tiers[0].promotions));
}

// ---- 2. SSD tier vs the disk's own direct I/O ----

double raw_direct_io(const std::string& path, char* buffer, size_t bytes, bool write, int threads,
                     size_t chunk) {
  const int flags = write ? (O_CREAT | O_WRONLY | O_TRUNC | O_DIRECT) : (O_RDONLY | O_DIRECT);
  const auto start = std::chrono::steady_clock::now();
  const int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (size_t offset = t * chunk; offset < bytes; offset += threads * chunk) {
        const size_t n = std::min(chunk, bytes - offset);
        const ssize_t done = write ? ::pwrite(fd, buffer + offset, n, offset)
                                   : ::pread(fd, buffer + offset, n, offset);
        if (done != static_cast<ssize_t>(n)) std::perror("raw direct I/O");
      }
    });
  }
  for (std::thread& w : workers) w.join();
  ::close(fd);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

void ssd(const std::string& dir, size_t bytes, int repetitions) {
  vb::backends::SsdTierOptions options;
  options.directory = dir + "/tiers";
  vb::backends::SsdTier::OpenReport report;
  std::unique_ptr<vb::backends::SsdTier> tier =
      value_or_die(vb::backends::SsdTier::open(options, &report), "SSD tier");
  char* buffer = static_cast<char*>(std::aligned_alloc(4096, bytes));
  const std::vector<char> content = random_bytes(bytes, 3);
  std::memcpy(buffer, content.data(), bytes);
  const std::string digest = vb::sha256_hex(buffer, bytes);
  const std::string raw = dir + "/raw.bin";
  auto best_raw = [&](bool write) {
    double best = 1e30;
    for (int threads : {1, options.io_threads}) {
      best = std::min(best, median_ms(repetitions, [&] {
                        raw_direct_io(raw, buffer, bytes, write, threads, options.chunk_bytes);
                      }));
    }
    return best;
  };
  const double raw_write = best_raw(true);
  const double tier_write =
      median_ms(repetitions, [&] { check(tier->write(digest, buffer, bytes), "tier write"); });
  const double raw_read = best_raw(false);
  const double tier_read =
      median_ms(repetitions, [&] { check(tier->read(digest, buffer, bytes), "tier read"); });
  std::printf("2. SSD tier, %zu MiB file in %s (%s)\n", bytes >> 20, dir.c_str(),
              tier->direct_io() ? "O_DIRECT" : "no O_DIRECT here: page cache");
  std::printf("   %-28s %9.3f ms %8.2f GB/s | raw   %9.3f ms %8.2f GB/s | ratio %.3f\n",
              "write (checksummed)", tier_write, gbps(bytes, tier_write), raw_write,
              gbps(bytes, raw_write), raw_write / tier_write);
  std::printf("   %-28s %9.3f ms %8.2f GB/s | raw   %9.3f ms %8.2f GB/s | ratio %.3f\n",
              "read (verified)", tier_read, gbps(bytes, tier_read), raw_read, gbps(bytes, raw_read),
              raw_read / tier_read);
  tier->remove(digest);
  ::unlink(raw.c_str());
  std::free(buffer);
}

// ---- 3. streaming a model three times the device tier ----

struct StepResult {
  double step_ms;
  double bytes_per_step;
  uint64_t prefetch_hits;
  vb::backends::TierStoreStats stats;
};

StepResult stream(int layers, int64_t rows, int64_t cols, int64_t batch, at::ScalarType dtype,
                  int resident_layers, int steps,
                  vb::backends::EvictionPolicy policy = vb::backends::EvictionPolicy::kNextUse,
                  int prefetch_depth = 2) {
  const uint64_t layer_bytes = rows * cols * at::elementSize(dtype);
  TierStoreOptions options;
  options.device_bytes = resident_layers * layer_bytes;
  options.host_bytes = (layers + 1) * layer_bytes;
  options.policy = policy;
  options.prefetch_depth = prefetch_depth;
  std::unique_ptr<TierStore> store =
      value_or_die(TierStore::create(options, make_memory()), "tier store");
  std::vector<std::string> digests;
  for (int i = 0; i < layers; ++i) {
    const at::Tensor w = (at::randn({rows, cols}) / std::sqrt(double(cols))).to(dtype).contiguous();
    digests.push_back(vb::sha256_hex(w.data_ptr(), layer_bytes));
    check(store->put(digests.back(), w.data_ptr(), layer_bytes), "put layer");
  }
  const at::Tensor x =
      at::randn({batch, cols}, at::TensorOptions().dtype(dtype).device(compute_device()));
  auto step = [&] {
    for (const std::string& digest : digests) {
      std::shared_ptr<TierStore::Lease> lease = value_or_die(store->acquire(digest), "acquire");
      const at::Tensor w = at::from_blob(const_cast<void*>(lease->data()), {rows, cols},
                                         at::TensorOptions().dtype(dtype).device(compute_device()));
      const at::Tensor y = at::linear(x, w);
      synchronize();  // the lease may go only when compute is done with the weight
    }
  };
  for (int i = 0; i < 3; ++i) step();  // the store learns the order
  const uint64_t bytes_before = store->stats().tiers[0].bytes_in;
  const double ms = median_ms(steps, step);
  const vb::backends::TierStoreStats stats = store->stats();
  return {ms, static_cast<double>(stats.tiers[0].bytes_in - bytes_before) / (steps + 1),
          stats.prefetch_hits, stats};
}

void streaming(int layers, int64_t size, int64_t batch, at::ScalarType dtype, size_t copy_bytes,
               int steps) {
  const uint64_t layer_bytes = size * size * at::elementSize(dtype);
  PlainCopy plain(copy_bytes);
  const double h2d_ms = median_ms(5, [&] { plain.to_device(); });
  const double h2d_bytes_per_ms = static_cast<double>(copy_bytes) / h2d_ms;
  const int budget_layers = (layers + 2) / 3;
  const StepResult resident = stream(layers, size, size, batch, dtype, layers, steps);
  const StepResult streamed = stream(layers, size, size, batch, dtype, budget_layers, steps);
  const double transfer_ms = streamed.bytes_per_step / h2d_bytes_per_ms;
  const double bound_ms = std::max(transfer_ms, resident.step_ms);
  std::printf(
      "3. streaming %d layers of %ldx%ld %s (%.0f MiB each, %.0f MiB in all), batch %ld, "
      "device tier of %d layers\n",
      layers, static_cast<long>(size), static_cast<long>(size), c10::toString(dtype),
      layer_bytes / 1048576.0, layers * layer_bytes / 1048576.0, static_cast<long>(batch),
      budget_layers);
  std::printf("   all resident:  %9.3f ms a step (compute alone)\n", resident.step_ms);
  std::printf(
      "   streamed:      %9.3f ms a step; %.0f MiB crossed a step at %.2f GB/s measured -> "
      "%.3f ms; %lu prefetched layers used\n",
      streamed.step_ms, streamed.bytes_per_step / 1048576.0, h2d_bytes_per_ms / 1e6, transfer_ms,
      static_cast<unsigned long>(streamed.prefetch_hits));
  const vb::backends::TierCounters& device = streamed.stats.tiers[0];
  std::printf(
      "   device tier over the whole run: %lu hits, %lu misses, %lu promotions (%lu by "
      "prefetch, %lu of them used)\n",
      static_cast<unsigned long>(device.hits), static_cast<unsigned long>(device.misses),
      static_cast<unsigned long>(device.promotions),
      static_cast<unsigned long>(streamed.stats.prefetches),
      static_cast<unsigned long>(streamed.stats.prefetch_hits));
  std::printf(
      "   streamed / bound max(transfer, compute) = %.3f   streamed / all resident = %.3f\n",
      streamed.step_ms / bound_ms, streamed.step_ms / resident.step_ms);
  // The policies alone (no prefetch): how many bytes each makes cross.
  for (auto policy : {vb::backends::EvictionPolicy::kLru, vb::backends::EvictionPolicy::kNextUse}) {
    const StepResult alone =
        stream(layers, size, size, batch, dtype, budget_layers, steps, policy, 0);
    const vb::backends::TierCounters& d = alone.stats.tiers[0];
    std::printf(
        "   no prefetch, %-8s %9.3f ms a step; %.0f MiB crossed a step; device hit rate %.3f\n",
        vb::backends::policy_name(policy), alone.step_ms, alone.bytes_per_step / 1048576.0,
        static_cast<double>(d.hits) / static_cast<double>(d.hits + d.misses));
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else {
      std::fprintf(stderr, "usage: tier_bench [--quick] [--dir DIR]\n");
      return 2;
    }
  }
  std::optional<vb::testing::TempDir> temp;
  if (dir.empty()) dir = temp.emplace("vb-tier-bench").path();
  at::manual_seed(0);
#ifdef VB_WITH_CUDA
  cudaDeviceProp properties{};
  cudaGetDeviceProperties(&properties, 0);
  std::printf("machine: %s, %u cores; LibTorch %s\n\n", properties.name,
              std::thread::hardware_concurrency(), TORCH_VERSION);
#else
  std::printf("machine: CPU only (device tier = compute memory), %u cores; LibTorch %s\n\n",
              std::thread::hardware_concurrency(), TORCH_VERSION);
#endif
  if (quick) {
    copies(size_t{8} << 20, 5);
    ssd(dir, size_t{16} << 20, 3);
    streaming(6, 256, 64, at::kFloat, size_t{8} << 20, 3);
  } else {
#ifdef VB_WITH_CUDA
    copies(size_t{256} << 20, 20);
    ssd(dir, size_t{1} << 30, 5);
    streaming(12, 8192, 2048, at::kBFloat16, size_t{256} << 20, 5);
#else
    copies(size_t{256} << 20, 10);
    ssd(dir, size_t{512} << 20, 3);
    streaming(9, 1024, 256, at::kFloat, size_t{64} << 20, 5);
#endif
  }
  return 0;
}
