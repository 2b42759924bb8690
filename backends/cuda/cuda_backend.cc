#include "backends/cuda/cuda_backend.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/cuda_tier_memory.h"
#include "backends/cuda/fp4_kernels.h"
#include "backends/linear_op.h"
#include "backends/tensor_util.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace vb::backends::cuda {
namespace {

std::string version_string(int version) {
  // CUDA encodes 13.0 as 13000.
  return absl::StrCat(version / 1000, ".", (version % 1000) / 10);
}

struct Device {
  int index = 0;
  std::unique_ptr<CopyEngine> copy;
  std::atomic<int> inflight{0};
};

class InflightGuard {
 public:
  explicit InflightGuard(Device& device) : device_(device) { ++device_.inflight; }
  ~InflightGuard() { --device_.inflight; }

 private:
  Device& device_;
};

}  // namespace

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> create(const CudaBackendOptions& options) {
    const int count = visible_devices();
    if (count == 0) return absl::UnavailableError("no CUDA device is visible");
    auto backend = std::unique_ptr<CudaBackend>(new CudaBackend());
    // float16 / bfloat16 products accumulate in float32; TF32 only when allowed.
    at::globalContext().setFloat32MatmulPrecision(options.allow_tf32 ? "high" : "highest");
    at::globalContext().setAllowFP16ReductionCuBLAS(false);
    at::globalContext().setAllowBF16ReductionCuBLAS(false);
    for (int i = 0; i < count; ++i) {
      auto device = std::make_unique<Device>();
      device->index = i;
      VB_ASSIGN_OR_RETURN(device->copy, CopyEngine::create(i));
      backend->devices_.push_back(std::move(device));
    }
    VB_LOG_INFO("CUDA backend on ", count, " device(s); TF32 ",
                options.allow_tf32 ? "allowed" : "off");
    return std::unique_ptr<Backend>(std::move(backend));
  }

  std::vector<DeviceDescription> devices() const override {
    std::vector<DeviceDescription> out;
    int driver = 0;
    int runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    for (const auto& device : devices_) {
      cudaDeviceProp properties{};
      cudaGetDeviceProperties(&properties, device->index);
      size_t free_bytes = 0;
      size_t total_bytes = 0;
      {
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device->index));
        cudaMemGetInfo(&free_bytes, &total_bytes);
      }
      DeviceDescription d;
      d.kind = "cuda";
      d.index = device->index;
      d.name = properties.name;
      d.total_memory_bytes = total_bytes;
      d.free_memory_bytes = free_bytes;
      d.platform = at::hasHIP() ? "ROCm" : "CUDA";
      d.compute_capability = absl::StrCat(properties.major, ".", properties.minor);
      d.driver_version = version_string(driver);
      d.runtime_version = version_string(runtime);
      out.push_back(d);
    }
    return out;
  }

  absl::StatusOr<std::unique_ptr<TierMemory>> make_tier_memory() const override {
    return make_cuda_tier_memory(devices_.front()->index);
  }
  c10::Device tier_device() const override {
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(devices_.front()->index));
  }

  at::TensorOptions host_tensor_options() const override {
    return at::TensorOptions().pinned_memory(true);
  }

  absl::Status check_placement(const Placement& placement) const override {
    const int count = static_cast<int>(devices_.size());
    if (placement.device_index >= -1 && placement.device_index < count) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("device_index = ", placement.device_index,
                                                   ": this daemon has ", count,
                                                   " CUDA device(s), 0 to ", count - 1));
  }

  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardArgs& args) override {
    VB_RETURN_IF_ERROR(check_args(args));
    VB_RETURN_IF_ERROR(check_placement(args.placement));
    Device& device = pick(args.placement.device_index);
    InflightGuard busy(device);
    try {
      c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device.index));
      const c10::cuda::CUDAStream stream = stream_for(device);
      c10::cuda::CUDAStreamGuard stream_guard(stream);
      VB_ASSIGN_OR_RETURN(at::Tensor x, to_device(device, args.input, stream));
      const at::Tensor w = weight_on(device, args.weight);
      at::Tensor b;
      if (args.bias.defined()) {
        VB_ASSIGN_OR_RETURN(b, to_device(device, args.bias, stream));
      }
      return to_host(device, at::linear(x, w, b), stream);
    } catch (...) {
      return recover("linear_forward on cuda", std::current_exception());
    }
  }

  absl::StatusOr<LinearGrads> linear_backward(const LinearBackwardArgs& args) override {
    VB_RETURN_IF_ERROR(check_args(args));
    VB_RETURN_IF_ERROR(check_placement(args.placement));
    Device& device = pick(args.placement.device_index);
    InflightGuard busy(device);
    try {
      c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device.index));
      const c10::cuda::CUDAStream stream = stream_for(device);
      c10::cuda::CUDAStreamGuard stream_guard(stream);
      const int64_t out_features = args.weight.size(0);
      const int64_t in_features = args.weight.size(1);
      VB_ASSIGN_OR_RETURN(at::Tensor grad, to_device(device, args.grad_output, stream));
      const at::Tensor grad_2d = grad.reshape({-1, out_features});
      LinearGrads grads;
      if (args.need_grad_input) {
        const at::Tensor w = weight_on(device, args.weight);
        std::vector<int64_t> shape(args.grad_output.sizes().begin(),
                                   args.grad_output.sizes().end());
        shape.back() = in_features;
        VB_ASSIGN_OR_RETURN(grads.grad_input,
                            to_host(device, grad_2d.mm(w).reshape(shape), stream));
      }
      if (args.need_grad_weight) {
        VB_ASSIGN_OR_RETURN(at::Tensor x, to_device(device, args.input, stream));
        VB_ASSIGN_OR_RETURN(grads.grad_weight,
                            to_host(device, grad_2d.t().mm(x.reshape({-1, in_features})), stream));
      }
      if (args.need_grad_bias) {
        VB_ASSIGN_OR_RETURN(grads.grad_bias, to_host(device, grad_2d.sum(0), stream));
      }
      return grads;
    } catch (...) {
      return recover("linear_backward on cuda", std::current_exception());
    }
  }

  absl::StatusOr<NamedTensors> run_op(const OpArgs& args) override {
    std::vector<std::string> names;
    for (const NamedTensor& t : args.inputs) names.push_back(t.name);
    VB_RETURN_IF_ERROR(check_op_header(args.op, names, args.weights.size(), args.attributes));
    VB_RETURN_IF_ERROR(check_placement({args.device_index, ""}));
    Device& device = pick(args.device_index);
    InflightGuard busy(device);
    try {
      c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device.index));
      const c10::cuda::CUDAStream stream = stream_for(device);
      c10::cuda::CUDAStreamGuard stream_guard(stream);
      OpArgs on_device = args;
      for (NamedTensor& t : on_device.inputs) {
        VB_ASSIGN_OR_RETURN(t.tensor, to_device(device, t.tensor, stream));
      }
      for (at::Tensor& w : on_device.weights) w = weight_on(device, w);
      NamedTensors outputs;
      if (args.op == "fp4_linear.forward") {
        VB_ASSIGN_OR_RETURN(outputs, fp4_linear(on_device, stream));
      } else {
        VB_ASSIGN_OR_RETURN(outputs, backends::run_op(on_device));
      }
      for (NamedTensor& t : outputs) {
        VB_ASSIGN_OR_RETURN(t.tensor, to_host(device, t.tensor, stream));
      }
      return outputs;
    } catch (...) {
      return recover(args.op.c_str(), std::current_exception());
    }
  }

 private:
  CudaBackend() = default;

  // y = x W^T (+ bias) from a 4-bit blob resident on the device: the fused kernel reads the
  // packed weight directly for up to kFusedMaxBatch rows; above that fp4_gemm does, for bf16
  // on Hopper, and elsewhere the weight is expanded once per call and multiplied by cuBLAS
  // (through LibTorch).
  static absl::StatusOr<NamedTensors> fp4_linear(const OpArgs& args,
                                                 const c10::cuda::CUDAStream& stream) {
    const at::Tensor& blob = args.weights.at(0);
    const at::Tensor input = find_input(args.inputs, "input");
    const at::Tensor bias = find_input(args.inputs, "bias");
    char header_bytes[backends::fp4::kBlobHeaderBytes];
    if (blob.numel() < backends::fp4::kBlobHeaderBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("fp4 blob of ", blob.numel(), " bytes: shorter than its header"));
    }
    VB_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(header_bytes, blob.data_ptr(), sizeof(header_bytes),
                                    cudaMemcpyDeviceToHost, stream.stream()),
                    "reading an fp4 blob header"));
    VB_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream.stream()), "fp4 blob header"));
    VB_ASSIGN_OR_RETURN(
        const backends::fp4::BlobHeader header,
        backends::fp4::parse_blob_header(absl::string_view(header_bytes, sizeof(header_bytes)),
                                         static_cast<uint64_t>(blob.numel())));
    VB_RETURN_IF_ERROR(check_fp4_linear(header, input, bias));
    const at::ScalarType type = input.scalar_type();
    const auto* base = static_cast<const uint8_t*>(blob.data_ptr());
    fp4::DeviceWeightView view;
    view.format = header.format;
    view.n = header.n;
    view.k = header.k;
    view.codes = base + header.codes_offset;
    view.scales = base + header.scales_offset;
    view.tensor_scale = header.tensor_scale;
    at::Tensor x = input.reshape({-1, header.k}).contiguous();
    // The fused kernels read x in 16-byte words: a view starting mid-allocation gets a copy.
    if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) x = x.clone();
    const int64_t rows = x.size(0);
    std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
    out_shape.back() = header.n;
    if ((type == at::kBFloat16 || type == at::kHalf) && rows <= fp4::kFusedMaxBatch) {
      at::Tensor y = at::empty({rows, header.n}, x.options());
      VB_RETURN_IF_ERROR(fp4::fp4_linear(
          view, x.data_ptr(), rows,
          type == at::kBFloat16 ? fp4::Activation::kBf16 : fp4::Activation::kFp16,
          bias.defined() ? bias.contiguous().data_ptr() : nullptr, y.data_ptr(), stream.stream()));
      return NamedTensors{{"output", y.reshape(out_shape)}};
    }
    if (type == at::kBFloat16 && fp4::fp4_gemm_supported(view, rows, fp4::Activation::kBf16).ok()) {
      at::Tensor y = at::empty({rows, header.n}, x.options());
      VB_RETURN_IF_ERROR(fp4::fp4_gemm(view, x.data_ptr(), rows, fp4::Activation::kBf16,
                                       bias.defined() ? bias.contiguous().data_ptr() : nullptr,
                                       y.data_ptr(), stream.stream()));
      return NamedTensors{{"output", y.reshape(out_shape)}};
    }
    // Elsewhere: bf16 weights are what a bf16 GEMM reads; any other input gets the exact float32
    // weight, so its product rounds only where the input's type does.
    at::Tensor w;
    if (type == at::kBFloat16) {
      w = at::empty({header.n, header.k}, x.options());
      VB_RETURN_IF_ERROR(
          fp4::dequantize_to_bf16(view, static_cast<uint16_t*>(w.data_ptr()), stream.stream()));
    } else {
      w = at::empty({header.n, header.k}, x.options().dtype(at::kFloat));
      VB_RETURN_IF_ERROR(fp4::dequantize_to_float(view, w.data_ptr<float>(), stream.stream()));
      w = w.to(type);
    }
    at::Tensor y = at::linear(x, w, bias.defined() ? bias : at::Tensor());
    return NamedTensors{{"output", y.reshape(out_shape).contiguous()}};
  }

  // Each worker thread keeps one stream per device. LibTorch's caching allocator keeps freed
  // blocks per stream, so a stream that changed every call (as drawing from the pool does)
  // would keep missing its cache and calling cudaMalloc; one stream per worker also keeps
  // one cuBLAS workspace warm, while different workers still overlap.
  static c10::cuda::CUDAStream stream_for(const Device& device) {
    thread_local std::unordered_map<int, c10::cuda::CUDAStream> streams;
    auto it = streams.find(device.index);
    if (it == streams.end()) {
      it = streams.emplace(device.index, c10::cuda::getStreamFromPool(false, device.index)).first;
    }
    return it->second;
  }

  Device& pick(int requested) {
    if (requested >= 0) return *devices_[requested];
    Device* best = devices_.front().get();
    for (const auto& d : devices_) {
      if (d->inflight.load() < best->inflight.load()) best = d.get();
    }
    return *best;
  }

  // A host tensor on `device`, copied by the copy engine; `stream` waits for the copy.
  absl::StatusOr<at::Tensor> to_device(Device& device, const at::Tensor& host,
                                       const c10::cuda::CUDAStream& stream) {
    const at::Tensor source = host.contiguous();
    at::Tensor out = at::empty(
        source.sizes(),
        source.options().device(at::Device(at::kCUDA, device.index)).pinned_memory(false));
    VB_RETURN_IF_ERROR(device.copy->to_device(out.data_ptr(), source.data_ptr(),
                                              source.numel() * source.element_size(),
                                              stream.stream()));
    return out;
  }

  // The weight on `device`: the tier store keeps it resident on the first GPU; a call
  // placed on another one copies it there (peer to peer where the GPUs allow).
  static at::Tensor weight_on(const Device& device, const at::Tensor& weight) {
    if (weight.device().index() == device.index) return weight;
    return weight.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device.index)));
  }

  // `device_tensor` (computed on `stream`) into pinned host memory.
  absl::StatusOr<at::Tensor> to_host(Device& device, const at::Tensor& device_tensor,
                                     const c10::cuda::CUDAStream& stream) {
    const at::Tensor source = device_tensor.contiguous();
    at::Tensor out = at::empty(source.sizes(),
                               at::TensorOptions().dtype(source.scalar_type()).pinned_memory(true));
    VB_RETURN_IF_ERROR(device.copy->to_host(out.data_ptr(), source.data_ptr(),
                                            source.numel() * source.element_size(),
                                            stream.stream()));
    return out;
  }

  // Out of memory leaves the allocator holding cached blocks: give them back so the next
  // call starts clean, and answer with LibTorch's message (it names the sizes).
  static absl::Status recover(const char* what, std::exception_ptr error) {
    absl::Status status = status_from_exception(what, error);
    if (absl::IsResourceExhausted(status)) {
      c10::cuda::CUDACachingAllocator::emptyCache();
      VB_LOG_WARNING(status.message());
    }
    return status;
  }

  std::vector<std::unique_ptr<Device>> devices_;
};

absl::StatusOr<std::unique_ptr<Backend>> create_cuda_backend(const CudaBackendOptions& options) {
  return CudaBackend::create(options);
}

namespace {

class CudaRuntime final : public AcceleratorRuntime {
 public:
  CudaRuntime() : base_(libtorch_runtime()) {}
  int device_count(AcceleratorKind kind) const override {
    if (kind == AcceleratorKind::kCuda) return visible_devices();
    return base_->device_count(kind);
  }
  std::string device_name(AcceleratorKind kind, int index) const override {
    if (kind != AcceleratorKind::kCuda) return base_->device_name(kind, index);
    cudaDeviceProp properties{};
    cudaGetDeviceProperties(&properties, index);
    return properties.name;
  }
  bool cuda_is_rocm() const override { return base_->cuda_is_rocm(); }
  MemoryUsage memory(AcceleratorKind kind, int index) const override {
    if (kind != AcceleratorKind::kCuda) return base_->memory(kind, index);
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    // Index 0 is StatType::AGGREGATE; the enum moved between namespaces across LibTorch 2.x.
    const size_t aggregate = 0;
    MemoryUsage usage;
    usage.known = true;
    usage.allocated_bytes = stats.allocated_bytes[aggregate].current;
    usage.reserved_bytes = stats.reserved_bytes[aggregate].current;
    return usage;
  }
  bool empty_cache(AcceleratorKind kind) override {
    if (kind != AcceleratorKind::kCuda) return base_->empty_cache(kind);
    c10::cuda::CUDACachingAllocator::emptyCache();
    return true;
  }
  bool synchronize(AcceleratorKind kind, int index) override {
    if (kind != AcceleratorKind::kCuda) return base_->synchronize(kind, index);
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
    return cudaDeviceSynchronize() == cudaSuccess;
  }

 private:
  std::shared_ptr<AcceleratorRuntime> base_;
};

}  // namespace

std::shared_ptr<AcceleratorRuntime> cuda_runtime() { return std::make_shared<CudaRuntime>(); }

}  // namespace vb::backends::cuda
