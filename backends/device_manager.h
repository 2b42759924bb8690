// Which accelerators this host has, in the order of preference the config gives (CUDA, then
// Gaudi HPU, Ascend NPU, Intel XPU, then the CPU by default), and one interface to what
// each offers: device count and names, memory allocated and reserved, empty cache,
// synchronize. Detection goes through an AcceleratorRuntime, which LibTorch backs in the
// daemon and tests replace to inject what is "available".
#pragma once

#include <c10/core/DeviceType.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vb::backends {

enum class AcceleratorKind { kCuda, kHpu, kNpu, kXpu, kCpu };

absl::string_view accelerator_name(AcceleratorKind kind);  // "cuda", "hpu", "npu", "xpu", "cpu"
c10::DeviceType device_type_of(AcceleratorKind kind);
// "cuda,npu,cpu" -> kinds. INVALID_ARGUMENT for unknown or repeated names; "cpu" is
// appended when missing, so detection always ends somewhere.
absl::StatusOr<std::vector<AcceleratorKind>> parse_device_order(absl::string_view order);

struct MemoryUsage {
  bool known = false;  // false where the runtime does not report it
  uint64_t allocated_bytes = 0;
  uint64_t reserved_bytes = 0;
};

// What the process can see of each kind of accelerator.
class AcceleratorRuntime {
 public:
  virtual ~AcceleratorRuntime() = default;
  virtual int device_count(AcceleratorKind kind) const = 0;
  virtual std::string device_name(AcceleratorKind kind, int index) const = 0;
  // A HIP build of LibTorch answers for AMD GPUs under the CUDA device type.
  virtual bool cuda_is_rocm() const = 0;
  virtual MemoryUsage memory(AcceleratorKind kind, int index) const = 0;
  // false where the runtime has no such operation.
  virtual bool empty_cache(AcceleratorKind kind) = 0;
  virtual bool synchronize(AcceleratorKind kind, int index) = 0;
};

// Through LibTorch's registry of device implementations: a kind is present when its
// backend registered a device guard (libtorch_cuda for CUDA and ROCm; torch_npu registers
// "npu" as PrivateUse1 once loaded; Habana's and Intel's libraries register HPU and XPU).
std::shared_ptr<AcceleratorRuntime> libtorch_runtime();

struct DeviceManagerOptions {
  std::vector<AcceleratorKind> order = {AcceleratorKind::kCuda, AcceleratorKind::kHpu,
                                        AcceleratorKind::kNpu, AcceleratorKind::kXpu,
                                        AcceleratorKind::kCpu};
  // torch_npu's library, loaded (RTLD_GLOBAL) before detection when set.
  std::string npu_library;
};

class DeviceManager {
 public:
  // Picks the first kind in `options.order` with at least one device.
  static absl::StatusOr<DeviceManager> detect(const DeviceManagerOptions& options,
                                              std::shared_ptr<AcceleratorRuntime> runtime);

  AcceleratorKind kind() const { return kind_; }
  c10::DeviceType device_type() const { return device_type_of(kind_); }
  int device_count() const { return count_; }
  std::vector<std::string> device_names() const;
  // "CUDA", "ROCm", "Gaudi HPU", "Ascend NPU", "Intel XPU" or "CPU".
  std::string platform() const;
  MemoryUsage memory(int index) const { return runtime_->memory(kind_, index); }
  bool empty_cache() { return runtime_->empty_cache(kind_); }
  bool synchronize(int index) { return runtime_->synchronize(kind_, index); }

 private:
  DeviceManager(std::shared_ptr<AcceleratorRuntime> runtime, AcceleratorKind kind, int count)
      : runtime_(std::move(runtime)), kind_(kind), count_(count) {}

  std::shared_ptr<AcceleratorRuntime> runtime_;
  AcceleratorKind kind_;
  int count_;
};

}  // namespace vb::backends
