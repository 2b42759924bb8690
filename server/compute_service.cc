#include "server/compute_service.h"

#include <ATen/Functions.h>
#include <torch/version.h>

#include <cstring>
#include <future>

#include "absl/strings/str_cat.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"

#ifndef VB_VERSION
#define VB_VERSION "0.0.0"
#endif

namespace vb::server {
namespace {

double micros_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

WeightUpload::WeightUpload(ComputeService* service, std::string digest, uint64_t byte_size)
    : service_(service),
      digest_(std::move(digest)),
      byte_size_(byte_size),
      bytes_(at::empty({static_cast<int64_t>(byte_size)}, at::kByte)) {}

absl::Status WeightUpload::append(const void* data, size_t size) {
  if (received_ + size > byte_size_) {
    return absl::InvalidArgumentError(absl::StrCat("upload of ", digest_, " received ",
                                                   received_ + size,
                                                   " bytes but header.byte_size = ", byte_size_));
  }
  std::memcpy(static_cast<char*>(bytes_.data_ptr()) + received_, data, size);
  hash_.update(data, size);
  received_ += size;
  return absl::OkStatus();
}

absl::Status WeightUpload::commit() {
  if (received_ != byte_size_) {
    return absl::InvalidArgumentError(absl::StrCat("upload stream ended after ", received_,
                                                   " of header.byte_size = ", byte_size_,
                                                   " bytes of ", digest_));
  }
  const std::string actual = hash_.finish_hex();
  if (actual != digest_) {
    return absl::InvalidArgumentError(absl::StrCat("digest mismatch: header.digest = ", digest_,
                                                   " but the ", byte_size_,
                                                   " bytes received hash to ", actual));
  }
  return service_->store_.put(digest_, std::move(bytes_));
}

ComputeService::ComputeService(const ServerOptions& options,
                               std::unique_ptr<backends::Backend> backend)
    : options_(options),
      backend_(std::move(backend)),
      store_(options.store_capacity_bytes),
      queue_(options.workers, options.max_queue) {}

ComputeService::~ComputeService() { queue_.shutdown(); }

ComputeService::Info ComputeService::info() const {
  Info info;
  info.version = VB_VERSION;
  info.torch_version = TORCH_VERSION;
  info.devices = backend_->devices();
  info.dtypes = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
  info.store = store_.stats();
  return info;
}

double ComputeService::uptime_s() const { return micros_since(started_) / 1e6; }

absl::Status ComputeService::check_request_bytes(uint64_t bytes, absl::string_view what) const {
  if (bytes <= options_.max_request_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " carries ", bytes,
      " bytes, over this daemon's limits.max_request_bytes = ", options_.max_request_bytes));
}

absl::StatusOr<std::unique_ptr<WeightUpload>> ComputeService::begin_upload(
    const std::string& digest, uint64_t byte_size) {
  VB_RETURN_IF_ERROR(check_digest_format(digest, "header.digest"));
  if (byte_size == 0) {
    return absl::InvalidArgumentError("header.byte_size = 0: a weight has at least one byte");
  }
  if (store_.contains(digest)) return nullptr;
  VB_RETURN_IF_ERROR(check_request_bytes(byte_size, "weight upload"));
  VB_RETURN_IF_ERROR(store_.check_fits(byte_size));
  try {
    return std::unique_ptr<WeightUpload>(new WeightUpload(this, digest, byte_size));
  } catch (...) {
    return backends::status_from_exception("allocating an upload buffer", std::current_exception());
  }
}

bool ComputeService::has_weight(const std::string& digest) const { return store_.contains(digest); }

absl::StatusOr<at::Tensor> ComputeService::resolve_weight(const std::string& digest,
                                                          const TensorSpec& spec,
                                                          absl::string_view field) {
  VB_RETURN_IF_ERROR(check_digest_format(digest, absl::StrCat(field, ".digest")));
  std::shared_ptr<const at::Tensor> blob = store_.get(digest);
  if (blob == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(field, ".digest = ", digest, ": this daemon does not hold it; upload it"));
  }
  const int64_t stored = blob->numel();
  if (stored != spec.byte_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte count mismatch: ", field, ".spec = ", spec.to_string(), " needs ",
                     spec.byte_size(), " bytes but ", field, ".digest names ", stored, " bytes"));
  }
  // The view keeps the blob alive, so eviction during the call cannot pull the bytes away.
  return at::from_blob(
      const_cast<void*>(blob->data_ptr()), spec.shape, [blob](void*) {},
      at::TensorOptions().dtype(to_scalar_type(spec.dtype)));
}

template <typename T, typename Fn>
absl::StatusOr<T> ComputeService::run_queued(Fn&& fn, ComputeTiming* timing) {
  auto result = std::make_shared<std::promise<absl::StatusOr<T>>>();
  std::future<absl::StatusOr<T>> done = result->get_future();
  const auto enqueued = std::chrono::steady_clock::now();
  VB_RETURN_IF_ERROR(queue_.submit([&fn, result, enqueued, timing] {
    timing->queue_us = micros_since(enqueued);
    const auto started = std::chrono::steady_clock::now();
    absl::StatusOr<T> value = fn();
    timing->compute_us = micros_since(started);
    result->set_value(std::move(value));
  }));
  // The caller's thread blocks here; `fn` and `timing` outlive the task because of it.
  return done.get();
}

absl::StatusOr<at::Tensor> ComputeService::linear_forward(const backends::LinearForwardArgs& args,
                                                          ComputeTiming* timing) {
  return run_queued<at::Tensor>([&] { return backend_->linear_forward(args); }, timing);
}

absl::StatusOr<backends::LinearGrads> ComputeService::linear_backward(
    const backends::LinearBackwardArgs& args, ComputeTiming* timing) {
  return run_queued<backends::LinearGrads>([&] { return backend_->linear_backward(args); }, timing);
}

}  // namespace vb::server
