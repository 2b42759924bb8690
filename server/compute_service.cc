#include "server/compute_service.h"

#include <ATen/Functions.h>
#include <torch/version.h>

#include <cstring>
#include <future>

#include "absl/strings/str_cat.h"
#include "backends/tensor_util.h"
#include "common/log.h"
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

WeightUpload::WeightUpload(ComputeService* service, std::string digest, uint64_t byte_size,
                           std::string replaces)
    : service_(service),
      digest_(std::move(digest)),
      replaces_(std::move(replaces)),
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
  absl::Status stored = service_->store_->put(digest_, bytes_.data_ptr(), byte_size_, replaces_);
  bytes_ = at::Tensor();  // the store has its own copy now
  return stored;
}

absl::StatusOr<std::unique_ptr<ComputeService>> ComputeService::create(
    const ServerOptions& options, std::unique_ptr<backends::Backend> backend) {
  const std::vector<backends::DeviceDescription> devices = backend->devices();
  const uint64_t device_memory = devices.empty() ? 0 : devices.front().total_memory_bytes;
  VB_ASSIGN_OR_RETURN(backends::TierStoreOptions tiers, tier_store_options(options, device_memory));
  VB_ASSIGN_OR_RETURN(std::unique_ptr<backends::TierMemory> memory, backend->make_tier_memory());
  VB_ASSIGN_OR_RETURN(std::unique_ptr<backends::TierStore> store,
                      backends::TierStore::create(tiers, std::move(memory)));
  VB_LOG_INFO(
      "tier store (", options.store_mode, ", ", backends::policy_name(tiers.policy), "): device ",
      tiers.device_bytes, " bytes on ", store->memory().device_name(), ", host ", tiers.host_bytes,
      " bytes", store->memory().host_is_pinned() ? " pinned" : "", ", SSD ", tiers.ssd_bytes,
      " bytes", tiers.ssd_bytes > 0 ? absl::StrCat(" in ", tiers.ssd_directory) : std::string());
  auto service = std::unique_ptr<ComputeService>(
      new ComputeService(options, std::move(backend), std::move(store)));
  if (tiers.ssd_bytes > 0) service->ssd_directory_ = tiers.ssd_directory;
  return service;
}

ComputeService::ComputeService(const ServerOptions& options,
                               std::unique_ptr<backends::Backend> backend,
                               std::unique_ptr<backends::TierStore> store)
    : options_(options),
      backend_(std::move(backend)),
      store_(std::move(store)),
      queue_(options.workers, options.max_queue) {}

ComputeService::~ComputeService() { queue_.shutdown(); }

ComputeService::Info ComputeService::info() const {
  Info info;
  info.version = VB_VERSION;
  info.torch_version = TORCH_VERSION;
  info.devices = backend_->devices();
  info.dtypes = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
  info.store = store_->stats();
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
    const std::string& digest, uint64_t byte_size, const std::string& replaces) {
  VB_RETURN_IF_ERROR(check_digest_format(digest, "header.digest"));
  if (!replaces.empty()) VB_RETURN_IF_ERROR(check_digest_format(replaces, "header.replaces"));
  if (byte_size == 0) {
    return absl::InvalidArgumentError("header.byte_size = 0: a weight has at least one byte");
  }
  if (store_->contains(digest)) return nullptr;
  VB_RETURN_IF_ERROR(check_request_bytes(byte_size, "weight upload"));
  VB_RETURN_IF_ERROR(store_->check_fits(byte_size));
  try {
    return std::unique_ptr<WeightUpload>(new WeightUpload(this, digest, byte_size, replaces));
  } catch (...) {
    return backends::status_from_exception("allocating an upload buffer", std::current_exception());
  }
}

bool ComputeService::has_weight(const std::string& digest) const {
  return store_->contains(digest);
}

bool ComputeService::release_weight(const std::string& digest) { return store_->remove(digest); }

absl::Status ComputeService::check_weight(const std::string& digest, const TensorSpec& spec,
                                          absl::string_view field) const {
  absl::Status held = check_blob(digest, static_cast<uint64_t>(spec.byte_size()), field);
  if (absl::IsInvalidArgument(held)) {
    return absl::InvalidArgumentError(absl::StrCat("byte count mismatch: ", field,
                                                   ".spec = ", spec.to_string(), " needs ",
                                                   spec.byte_size(), " bytes; ", held.message()));
  }
  return held;
}

size_t ComputeService::prefetch(const std::vector<std::string>& digests) {
  size_t held = 0;
  for (const std::string& digest : digests) held += store_->contains(digest) ? 1 : 0;
  store_->hint(digests);
  return held;
}

absl::Status ComputeService::check_blob(const std::string& digest, uint64_t byte_size,
                                        absl::string_view field) const {
  VB_RETURN_IF_ERROR(check_digest_format(digest, absl::StrCat(field, ".digest")));
  const std::optional<uint64_t> stored = store_->size_of(digest);
  if (!stored) {
    return absl::NotFoundError(
        absl::StrCat(field, ".digest = ", digest, ": this daemon does not hold it; upload it"));
  }
  if (*stored != byte_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".digest names ", *stored, " bytes, not ", byte_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<backends::NamedTensors> ComputeService::run_op(
    backends::OpArgs args, const std::vector<std::string>& weights, ComputeTiming* timing) {
  return run_queued<backends::NamedTensors>(
      [&]() -> absl::StatusOr<backends::NamedTensors> {
        for (const std::string& digest : weights) {
          VB_ASSIGN_OR_RETURN(std::shared_ptr<backends::TierStore::Lease> lease,
                              store_->acquire(digest));
          try {
            args.weights.push_back(at::from_blob(
                const_cast<void*>(lease->data()), {static_cast<int64_t>(lease->size())},
                [lease](void*) {},
                at::TensorOptions().dtype(at::kByte).device(backend_->tier_device())));
          } catch (...) {
            return backends::status_from_exception("viewing a weight", std::current_exception());
          }
        }
        absl::StatusOr<backends::NamedTensors> outputs = backend_->run_op(args);
        args.weights.clear();  // unpins the blobs before the answer travels
        return outputs;
      },
      timing);
}

absl::StatusOr<at::Tensor> ComputeService::acquire_weight(const std::string& digest,
                                                          const TensorSpec& spec) {
  VB_ASSIGN_OR_RETURN(std::shared_ptr<backends::TierStore::Lease> lease, store_->acquire(digest));
  if (lease->size() != static_cast<uint64_t>(spec.byte_size())) {
    // check_weight ran on the header; a different version cannot appear under one digest.
    return absl::InternalError(absl::StrCat("weight ", digest, " changed size while queued"));
  }
  try {
    // The view holds the lease: the tensor stays pinned on the device until compute is done.
    return at::from_blob(
        const_cast<void*>(lease->data()), spec.shape, [lease](void*) {},
        at::TensorOptions().dtype(to_scalar_type(spec.dtype)).device(backend_->tier_device()));
  } catch (...) {
    return backends::status_from_exception("viewing a weight", std::current_exception());
  }
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

absl::StatusOr<at::Tensor> ComputeService::linear_forward(backends::LinearForwardArgs args,
                                                          const TensorSpec& weight_spec,
                                                          ComputeTiming* timing) {
  return run_queued<at::Tensor>(
      [&]() -> absl::StatusOr<at::Tensor> {
        VB_ASSIGN_OR_RETURN(args.weight, acquire_weight(args.placement.weight_key, weight_spec));
        absl::StatusOr<at::Tensor> output = backend_->linear_forward(args);
        args.weight = at::Tensor();  // unpins the weight before the answer travels
        return output;
      },
      timing);
}

absl::StatusOr<backends::LinearGrads> ComputeService::linear_backward(
    backends::LinearBackwardArgs args, const TensorSpec& weight_spec, ComputeTiming* timing) {
  return run_queued<backends::LinearGrads>(
      [&]() -> absl::StatusOr<backends::LinearGrads> {
        if (args.need_grad_input) {
          VB_ASSIGN_OR_RETURN(args.weight, acquire_weight(args.placement.weight_key, weight_spec));
        } else {
          // Only grad_input reads the weight: a placeholder of its shape spares the tier
          // store a promotion (and keeps this call out of the learned access order).
          args.weight = at::zeros({}, at::TensorOptions().dtype(to_scalar_type(weight_spec.dtype)))
                            .expand(weight_spec.shape);
        }
        absl::StatusOr<backends::LinearGrads> grads = backend_->linear_backward(args);
        args.weight = at::Tensor();
        return grads;
      },
      timing);
}

}  // namespace vb::server
