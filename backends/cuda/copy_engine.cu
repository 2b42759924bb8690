#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "common/status_macros.h"

namespace vb::backends::cuda {
namespace {

// Makes `device` current for the scope, and puts the previous one back.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    cudaGetDevice(&previous_);
    cudaSetDevice(device);
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// Enqueues a copy between pinned host memory and the device in chunks on `stream`.
absl::Status enqueue_chunks(void* dst, const void* src, size_t bytes, size_t chunk_bytes,
                            cudaMemcpyKind kind, cudaStream_t stream) {
  for (size_t offset = 0; offset < bytes; offset += chunk_bytes) {
    const size_t n = std::min(chunk_bytes, bytes - offset);
    VB_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(static_cast<char*>(dst) + offset,
                                    static_cast<const char*>(src) + offset, n, kind, stream),
                    kind == cudaMemcpyHostToDevice ? "cudaMemcpyAsync host-to-device"
                                                   : "cudaMemcpyAsync device-to-host"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status cuda_status(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::UnavailableError(message);
}

int visible_devices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

bool CopyEngine::is_pinned(const void* pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error of an unknown pointer
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

absl::StatusOr<std::unique_ptr<CopyEngine>> CopyEngine::create(int device, Options options) {
  if (options.chunk_bytes < (size_t{4} << 20) || options.staging_bytes < options.chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "copy engine: chunk_bytes = ", options.chunk_bytes,
        " and staging_bytes = ", options.staging_bytes, ": expected 4 MiB <= chunk <= staging"));
  }
  std::unique_ptr<CopyEngine> engine(new CopyEngine(device, options));
  DeviceScope scope(device);
  VB_RETURN_IF_ERROR(cuda_status(
      cudaStreamCreateWithFlags(&engine->h2d_stream_, cudaStreamNonBlocking), "h2d stream"));
  VB_RETURN_IF_ERROR(cuda_status(
      cudaStreamCreateWithFlags(&engine->d2h_stream_, cudaStreamNonBlocking), "d2h stream"));
  for (int i = 0; i < 2; ++i) {
    VB_RETURN_IF_ERROR(cuda_status(cudaMallocHost(&engine->h2d_staging_[i], options.staging_bytes),
                                   "pinned staging buffer"));
    VB_RETURN_IF_ERROR(cuda_status(cudaMallocHost(&engine->d2h_staging_[i], options.staging_bytes),
                                   "pinned staging buffer"));
    VB_RETURN_IF_ERROR(cuda_status(
        cudaEventCreateWithFlags(&engine->h2d_staged_[i], cudaEventDisableTiming), "event"));
    VB_RETURN_IF_ERROR(cuda_status(
        cudaEventCreateWithFlags(&engine->d2h_staged_[i], cudaEventDisableTiming), "event"));
  }
  VB_RETURN_IF_ERROR(
      cuda_status(cudaEventCreateWithFlags(&engine->h2d_done_, cudaEventDisableTiming), "event"));
  VB_RETURN_IF_ERROR(cuda_status(
      cudaEventCreateWithFlags(&engine->producer_done_, cudaEventDisableTiming), "event"));
  return engine;
}

CopyEngine::~CopyEngine() {
  DeviceScope scope(device_);
  for (cudaStream_t stream : {h2d_stream_, d2h_stream_}) {
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (h2d_staging_[i] != nullptr) cudaFreeHost(h2d_staging_[i]);
    if (d2h_staging_[i] != nullptr) cudaFreeHost(d2h_staging_[i]);
    if (h2d_staged_[i] != nullptr) cudaEventDestroy(h2d_staged_[i]);
    if (d2h_staged_[i] != nullptr) cudaEventDestroy(d2h_staged_[i]);
  }
  if (h2d_done_ != nullptr) cudaEventDestroy(h2d_done_);
  if (producer_done_ != nullptr) cudaEventDestroy(producer_done_);
}

absl::Status CopyEngine::to_device(void* device_dst, const void* host_src, size_t bytes,
                                   cudaStream_t consumer) {
  std::lock_guard<std::mutex> lock(h2d_mutex_);
  DeviceScope scope(device_);
  char* dst = static_cast<char*>(device_dst);
  const char* src = static_cast<const char*>(host_src);
  if (is_pinned(host_src)) {
    VB_RETURN_IF_ERROR(
        enqueue_chunks(dst, src, bytes, options_.chunk_bytes, cudaMemcpyHostToDevice, h2d_stream_));
  } else {
    // Double buffering: fill staging buffer i while the copy engine drains the other.
    int slot = 0;
    for (size_t offset = 0; offset < bytes; offset += options_.staging_bytes, slot ^= 1) {
      const size_t n = std::min(options_.staging_bytes, bytes - offset);
      VB_RETURN_IF_ERROR(
          cuda_status(cudaEventSynchronize(h2d_staged_[slot]), "waiting for a staging buffer"));
      std::memcpy(h2d_staging_[slot], src + offset, n);
      VB_RETURN_IF_ERROR(enqueue_chunks(dst + offset, h2d_staging_[slot], n, options_.chunk_bytes,
                                        cudaMemcpyHostToDevice, h2d_stream_));
      VB_RETURN_IF_ERROR(
          cuda_status(cudaEventRecord(h2d_staged_[slot], h2d_stream_), "cudaEventRecord"));
    }
    // The caller may reuse or free `host_src` once we return: the staging copies hold it.
  }
  VB_RETURN_IF_ERROR(cuda_status(cudaEventRecord(h2d_done_, h2d_stream_), "cudaEventRecord"));
  return cuda_status(cudaStreamWaitEvent(consumer, h2d_done_, 0), "cudaStreamWaitEvent");
}

absl::Status CopyEngine::to_host(void* host_dst, const void* device_src, size_t bytes,
                                 cudaStream_t producer) {
  std::lock_guard<std::mutex> lock(d2h_mutex_);
  DeviceScope scope(device_);
  VB_RETURN_IF_ERROR(cuda_status(cudaEventRecord(producer_done_, producer), "cudaEventRecord"));
  VB_RETURN_IF_ERROR(
      cuda_status(cudaStreamWaitEvent(d2h_stream_, producer_done_, 0), "cudaStreamWaitEvent"));
  char* dst = static_cast<char*>(host_dst);
  const char* src = static_cast<const char*>(device_src);
  if (is_pinned(host_dst)) {
    VB_RETURN_IF_ERROR(
        enqueue_chunks(dst, src, bytes, options_.chunk_bytes, cudaMemcpyDeviceToHost, d2h_stream_));
    return cuda_status(cudaStreamSynchronize(d2h_stream_), "device-to-host copy");
  }
  // Staged: while the CPU copies staging buffer i out, the copy engine fills the other.
  const size_t pieces = (bytes + options_.staging_bytes - 1) / options_.staging_bytes;
  auto enqueue = [&](size_t piece) -> absl::Status {
    const size_t offset = piece * options_.staging_bytes;
    const size_t n = std::min(options_.staging_bytes, bytes - offset);
    VB_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(d2h_staging_[piece % 2], src + offset, n,
                                                   cudaMemcpyDeviceToHost, d2h_stream_),
                                   "cudaMemcpyAsync device-to-host"));
    return cuda_status(cudaEventRecord(d2h_staged_[piece % 2], d2h_stream_), "cudaEventRecord");
  };
  if (pieces > 0) VB_RETURN_IF_ERROR(enqueue(0));
  for (size_t piece = 0; piece < pieces; ++piece) {
    if (piece + 1 < pieces) VB_RETURN_IF_ERROR(enqueue(piece + 1));
    VB_RETURN_IF_ERROR(
        cuda_status(cudaEventSynchronize(d2h_staged_[piece % 2]), "device-to-host copy"));
    const size_t offset = piece * options_.staging_bytes;
    std::memcpy(dst + offset, d2h_staging_[piece % 2],
                std::min(options_.staging_bytes, bytes - offset));
  }
  return absl::OkStatus();
}

}  // namespace vb::backends::cuda
