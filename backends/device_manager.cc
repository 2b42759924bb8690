#include "backends/device_manager.h"

#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dlfcn.h>
#include <torch/version.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace vb::backends {
namespace {

constexpr AcceleratorKind kAllKinds[] = {AcceleratorKind::kCuda, AcceleratorKind::kHpu,
                                         AcceleratorKind::kNpu, AcceleratorKind::kXpu,
                                         AcceleratorKind::kCpu};

class LibTorchRuntime final : public AcceleratorRuntime {
 public:
  int device_count(AcceleratorKind kind) const override {
    if (kind == AcceleratorKind::kCpu) return 1;
    const c10::DeviceType type = device_type_of(kind);
    if (!c10::impl::hasDeviceGuardImpl(type)) return 0;
    return c10::impl::getDeviceGuardImpl(type)->deviceCount();
  }
  std::string device_name(AcceleratorKind kind, int index) const override {
    return absl::StrCat(accelerator_name(kind), ":", index);
  }
  bool cuda_is_rocm() const override { return at::hasHIP(); }
  MemoryUsage memory(AcceleratorKind, int) const override { return {}; }
  bool empty_cache(AcceleratorKind) override { return false; }
  bool synchronize(AcceleratorKind kind, int index) override {
#if TORCH_VERSION_MAJOR >= 2
    const c10::DeviceType type = device_type_of(kind);
    if (kind == AcceleratorKind::kCpu || !c10::impl::hasDeviceGuardImpl(type)) return false;
    c10::impl::getDeviceGuardImpl(type)->synchronizeDevice(static_cast<c10::DeviceIndex>(index));
    return true;
#else
    // LibTorch 1.13's device guards have no synchronizeDevice.
    (void)kind;
    (void)index;
    return false;
#endif
  }
};

}  // namespace

absl::string_view accelerator_name(AcceleratorKind kind) {
  switch (kind) {
    case AcceleratorKind::kCuda:
      return "cuda";
    case AcceleratorKind::kHpu:
      return "hpu";
    case AcceleratorKind::kNpu:
      return "npu";
    case AcceleratorKind::kXpu:
      return "xpu";
    case AcceleratorKind::kCpu:
      return "cpu";
  }
  return "unknown";
}

c10::DeviceType device_type_of(AcceleratorKind kind) {
  switch (kind) {
    case AcceleratorKind::kCuda:
      return c10::DeviceType::CUDA;
    case AcceleratorKind::kHpu:
      return c10::DeviceType::HPU;
    case AcceleratorKind::kNpu:
      return c10::DeviceType::PrivateUse1;
    case AcceleratorKind::kXpu:
      return c10::DeviceType::XPU;
    case AcceleratorKind::kCpu:
      return c10::DeviceType::CPU;
  }
  return c10::DeviceType::CPU;
}

absl::StatusOr<std::vector<AcceleratorKind>> parse_device_order(absl::string_view order) {
  std::vector<AcceleratorKind> kinds;
  for (absl::string_view raw : absl::StrSplit(order, ',', absl::SkipWhitespace())) {
    const absl::string_view name = absl::StripAsciiWhitespace(raw);
    const AcceleratorKind* found =
        std::find_if(std::begin(kAllKinds), std::end(kAllKinds),
                     [&](AcceleratorKind k) { return accelerator_name(k) == name; });
    if (found == std::end(kAllKinds)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "devices.order: \"", name, "\" is not a device kind; expected cuda, hpu, npu, xpu, cpu"));
    }
    if (std::find(kinds.begin(), kinds.end(), *found) != kinds.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("devices.order: \"", name, "\" appears twice"));
    }
    kinds.push_back(*found);
  }
  if (std::find(kinds.begin(), kinds.end(), AcceleratorKind::kCpu) == kinds.end()) {
    kinds.push_back(AcceleratorKind::kCpu);
  }
  return kinds;
}

std::shared_ptr<AcceleratorRuntime> libtorch_runtime() {
  return std::make_shared<LibTorchRuntime>();
}

absl::StatusOr<DeviceManager> DeviceManager::detect(const DeviceManagerOptions& options,
                                                    std::shared_ptr<AcceleratorRuntime> runtime) {
  if (!options.npu_library.empty() &&
      dlopen(options.npu_library.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "devices.npu_library = \"", options.npu_library, "\" cannot be loaded: ", dlerror()));
  }
  for (AcceleratorKind kind : options.order) {
    const int count = runtime->device_count(kind);
    if (count > 0) return DeviceManager(std::move(runtime), kind, count);
  }
  return DeviceManager(std::move(runtime), AcceleratorKind::kCpu, 1);
}

std::vector<std::string> DeviceManager::device_names() const {
  std::vector<std::string> names;
  for (int i = 0; i < count_; ++i) names.push_back(runtime_->device_name(kind_, i));
  return names;
}

std::string DeviceManager::platform() const {
  switch (kind_) {
    case AcceleratorKind::kCuda:
      return runtime_->cuda_is_rocm() ? "ROCm" : "CUDA";
    case AcceleratorKind::kHpu:
      return "Gaudi HPU";
    case AcceleratorKind::kNpu:
      return "Ascend NPU";
    case AcceleratorKind::kXpu:
      return "Intel XPU";
    case AcceleratorKind::kCpu:
      return "CPU";
  }
  return "unknown";
}

}  // namespace vb::backends
