// Host <-> device copies through the GPU's copy engines, on the CUDA runtime alone (no
// LibTorch), so that this part builds wherever nvcc does.
//
// Each engine owns, for one device, a host-to-device and a device-to-host stream and two
// pinned staging buffers allocated once at creation (pinning costs about 0.4 s per GiB;
// never per transfer). Copies from pinned memory go straight to the copy engine in chunks;
// copies from pageable memory are staged: the CPU fills one staging buffer while the copy
// engine drains the other.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <mutex>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vb::backends::cuda {

// OK, or UNAVAILABLE / RESOURCE_EXHAUSTED (out of memory) naming the call and CUDA's error.
absl::Status cuda_status(cudaError_t error, const char* what);

// Number of visible CUDA devices; 0 where there is no driver or no GPU.
int visible_devices();

class CopyEngine {
 public:
  struct Options {
    size_t staging_bytes = size_t{32} << 20;  // each of the two pinned staging buffers
    size_t chunk_bytes = size_t{8} << 20;     // one cudaMemcpyAsync; at least 4 MiB
  };

  static absl::StatusOr<std::unique_ptr<CopyEngine>> create(int device, Options options);
  static absl::StatusOr<std::unique_ptr<CopyEngine>> create(int device) {
    return create(device, Options());
  }
  ~CopyEngine();
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  // Copies `bytes` from host memory (pinned or pageable) to device memory. Returns once the
  // copy is enqueued; `consumer` (may be null: the legacy default stream) is made to wait
  // for it, so kernels on `consumer` see the data without the host blocking. Pageable
  // sources may be reused at once (they were staged); pinned ones must stay untouched until
  // work on `consumer` after this point has run.
  absl::Status to_device(void* device_dst, const void* host_src, size_t bytes,
                         cudaStream_t consumer);
  // Copies `bytes` from device memory to host memory once work already enqueued on
  // `producer` is done. Returns when the bytes are in `host_dst`.
  absl::Status to_host(void* host_dst, const void* device_src, size_t bytes, cudaStream_t producer);

  int device() const { return device_; }
  // Whether `pointer` is page-locked host memory (copies from it skip the staging buffers).
  static bool is_pinned(const void* pointer);

 private:
  CopyEngine(int device, Options options) : device_(device), options_(options) {}

  const int device_;
  const Options options_;
  std::mutex h2d_mutex_;  // one transfer each way at a time shares the staging buffers
  std::mutex d2h_mutex_;
  cudaStream_t h2d_stream_ = nullptr;
  cudaStream_t d2h_stream_ = nullptr;
  void* h2d_staging_[2] = {nullptr, nullptr};
  void* d2h_staging_[2] = {nullptr, nullptr};
  cudaEvent_t h2d_staged_[2] = {nullptr, nullptr};  // staging buffer i may be refilled
  cudaEvent_t d2h_staged_[2] = {nullptr, nullptr};
  cudaEvent_t h2d_done_ = nullptr;
  cudaEvent_t producer_done_ = nullptr;
};

}  // namespace vb::backends::cuda
