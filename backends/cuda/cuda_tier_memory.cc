#include "backends/cuda/cuda_tier_memory.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "common/status_macros.h"

namespace vb::backends::cuda {
namespace {

class CudaTierMemory final : public TierMemory {
 public:
  static absl::StatusOr<std::unique_ptr<TierMemory>> create(int device) {
    auto memory = std::unique_ptr<CudaTierMemory>(new CudaTierMemory(device));
    VB_ASSIGN_OR_RETURN(memory->engine_, CopyEngine::create(device));
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    const absl::Status created = cuda_status(
        cudaStreamCreateWithFlags(&memory->stream_, cudaStreamNonBlocking), "tier stream");
    cudaSetDevice(previous);
    VB_RETURN_IF_ERROR(created);
    return std::unique_ptr<TierMemory>(std::move(memory));
  }

  ~CudaTierMemory() override {
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  std::string device_name() const override { return absl::StrCat("cuda:", device_); }
  bool host_is_pinned() const override { return true; }

  absl::StatusOr<void*> allocate_host(size_t bytes) override {
    void* region = nullptr;  // page-aligned, so O_DIRECT can read into it
    VB_RETURN_IF_ERROR(
        cuda_status(cudaHostAlloc(&region, bytes, cudaHostAllocPortable), "pinning the host tier"));
    return region;
  }
  void free_host(void* region) override { cudaFreeHost(region); }

  absl::StatusOr<void*> allocate_device(size_t bytes) override {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device_);
    void* region = nullptr;
    const absl::Status allocated =
        cuda_status(cudaMalloc(&region, bytes), "allocating the device tier");
    cudaSetDevice(previous);
    VB_RETURN_IF_ERROR(allocated);
    return region;
  }
  void free_device(void* region) override { cudaFree(region); }

  absl::Status to_device(void* device_dst, const void* host_src, size_t bytes) override {
    VB_RETURN_IF_ERROR(engine_->to_device(device_dst, host_src, bytes, stream_));
    return cuda_status(cudaStreamSynchronize(stream_), "host-to-device tier copy");
  }
  absl::Status to_host(void* host_dst, const void* device_src, size_t bytes) override {
    return engine_->to_host(host_dst, device_src, bytes, stream_);
  }

 private:
  explicit CudaTierMemory(int device) : device_(device) {}

  const int device_;
  std::unique_ptr<CopyEngine> engine_;
  cudaStream_t stream_ = nullptr;  // completion of tier copies is awaited on it
};

}  // namespace

absl::StatusOr<std::unique_ptr<TierMemory>> make_cuda_tier_memory(int device) {
  return CudaTierMemory::create(device);
}

}  // namespace vb::backends::cuda
