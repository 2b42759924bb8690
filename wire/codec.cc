#include "wire/codec.h"

#include <ATen/Functions.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::wire {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format is little-endian and tensors are sent as they lie in memory");

grpc::Status to_grpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share the canonical numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status from_grpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

v1::DType dtype_to_proto(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case DType::kFloat64:
      return v1::DTYPE_FLOAT64;
  }
  return v1::DTYPE_UNSPECIFIED;
}

void spec_to_proto(const TensorSpec& spec, v1::TensorSpec* out) {
  out->set_dtype(dtype_to_proto(spec.dtype));
  out->mutable_shape()->Assign(spec.shape.begin(), spec.shape.end());
}

absl::StatusOr<TensorSpec> spec_from_proto(const v1::TensorSpec& spec, absl::string_view field) {
  TensorSpec out;
  switch (spec.dtype()) {
    case v1::DTYPE_FLOAT32:
      out.dtype = DType::kFloat32;
      break;
    case v1::DTYPE_FLOAT16:
      out.dtype = DType::kFloat16;
      break;
    case v1::DTYPE_BFLOAT16:
      out.dtype = DType::kBFloat16;
      break;
    case v1::DTYPE_FLOAT64:
      out.dtype = DType::kFloat64;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".dtype = ", v1::DType_Name(spec.dtype()), " (", spec.dtype(),
          "): expected DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT64"));
  }
  out.shape.assign(spec.shape().begin(), spec.shape().end());
  VB_RETURN_IF_ERROR(validate_spec(out, field));
  return out;
}

TensorAssembler::TensorAssembler(std::vector<std::string> names, std::vector<TensorSpec> specs,
                                 at::TensorOptions options)
    : names_(std::move(names)), specs_(std::move(specs)), filled_(specs_.size(), 0) {
  tensors_.reserve(specs_.size());
  for (const TensorSpec& spec : specs_) {
    tensors_.push_back(at::empty(spec.shape, options.dtype(to_scalar_type(spec.dtype))));
  }
}

absl::Status TensorAssembler::add(const v1::TensorChunk& chunk) {
  const uint32_t index = chunk.tensor_index();
  if (index >= specs_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk.tensor_index = ", index, ": the header announced ", specs_.size(), " tensor(s)"));
  }
  const std::string& data = chunk.data();
  if (data.size() > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", data.size(), " bytes for ",
                                                   names_[index], ": at most ", kMaxChunkBytes,
                                                   " bytes per chunk"));
  }
  const int64_t expected = specs_[index].byte_size();
  const int64_t size = static_cast<int64_t>(data.size());
  if (filled_[index] + size > expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(names_[index], " received ", filled_[index] + size, " bytes but ",
                     specs_[index].to_string(), " has ", expected, " bytes"));
  }
  std::memcpy(static_cast<char*>(tensors_[index].data_ptr()) + filled_[index], data.data(),
              data.size());
  filled_[index] += size;
  bytes_received_ += data.size();
  return absl::OkStatus();
}

absl::Status TensorAssembler::finish() const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (filled_[i] != specs_[i].byte_size()) {
      return absl::InvalidArgumentError(absl::StrCat("stream ended after ", filled_[i], " of ",
                                                     specs_[i].byte_size(), " bytes of ", names_[i],
                                                     " ", specs_[i].to_string()));
    }
  }
  return absl::OkStatus();
}

bool for_each_chunk(const std::vector<at::Tensor>& tensors, size_t chunk_bytes,
                    const std::function<bool(uint32_t, const char*, size_t)>& emit) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const char* data = static_cast<const char*>(tensors[i].data_ptr());
    const size_t total = tensors[i].numel() * tensors[i].element_size();
    for (size_t offset = 0; offset < total; offset += chunk_bytes) {
      if (!emit(static_cast<uint32_t>(i), data + offset, std::min(chunk_bytes, total - offset))) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace vb::wire
