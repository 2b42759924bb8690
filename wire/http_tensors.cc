#include "wire/http_tensors.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::wire {
namespace {

absl::StatusOr<DType> dtype_from_name(const std::string& name, absl::string_view field) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64}) {
    if (dtype_name(dtype) == name) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, " is \"", name, "\": expected one of float32, float16, bfloat16, float64"));
}

nlohmann::json tensor_list(const std::vector<NamedTensor>& tensors, std::vector<int64_t>* sizes) {
  nlohmann::json list = nlohmann::json::array();
  for (const NamedTensor& named : tensors) {
    absl::StatusOr<DType> dtype = dtype_from_scalar_type(named.tensor.scalar_type(), named.name);
    TensorSpec spec{dtype.ok() ? *dtype : DType::kFloat32, named.tensor.sizes().vec()};
    nlohmann::json entry = spec_to_json(spec);
    entry["name"] = named.name;
    list.push_back(std::move(entry));
    if (sizes != nullptr) sizes->push_back(named.tensor.numel() * named.tensor.element_size());
  }
  return list;
}

}  // namespace

at::Tensor TensorMessage::find(absl::string_view name) const {
  for (const NamedTensor& named : tensors) {
    if (named.name == name) return named.tensor;
  }
  return at::Tensor();
}

nlohmann::json spec_to_json(const TensorSpec& spec) {
  return {{"dtype", std::string(dtype_name(spec.dtype))}, {"shape", spec.shape}};
}

absl::StatusOr<TensorSpec> spec_from_json(const nlohmann::json& value, absl::string_view field) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be an object with dtype and shape"));
  }
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".dtype is missing or not a string"));
  }
  TensorSpec spec;
  VB_ASSIGN_OR_RETURN(spec.dtype,
                      dtype_from_name(dtype->get<std::string>(), absl::StrCat(field, ".dtype")));
  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape is missing or not an array"));
  }
  for (const nlohmann::json& dim : *shape) {
    if (!dim.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape holds ", dim.dump(), ": expected integers"));
    }
    spec.shape.push_back(dim.get<int64_t>());
  }
  VB_RETURN_IF_ERROR(validate_spec(spec, absl::StrCat(field, ".shape")));
  return spec;
}

std::string encode_tensor_message(nlohmann::json header, const std::vector<NamedTensor>& tensors) {
  std::vector<int64_t> sizes;
  header["tensors"] = tensor_list(tensors, &sizes);
  std::string body = header.dump();
  body.push_back('\n');
  size_t offset = body.size();
  int64_t total = 0;
  for (int64_t size : sizes) total += size;
  body.resize(offset + static_cast<size_t>(total));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor tensor = tensors[i].tensor.contiguous();
    std::memcpy(&body[offset], tensor.data_ptr(), static_cast<size_t>(sizes[i]));
    offset += static_cast<size_t>(sizes[i]);
  }
  return body;
}

uint64_t encoded_size(const nlohmann::json& header, const std::vector<NamedTensor>& tensors) {
  nlohmann::json copy = header;
  std::vector<int64_t> sizes;
  copy["tensors"] = tensor_list(tensors, &sizes);
  uint64_t total = copy.dump().size() + 1;
  for (int64_t size : sizes) total += static_cast<uint64_t>(size);
  return total;
}

absl::StatusOr<TensorMessage> decode_tensor_message(absl::string_view body,
                                                    const at::TensorOptions& options) {
  const size_t newline = body.find('\n');
  if (newline == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "body: expected a JSON line, a newline, then the tensor bytes (no newline found)");
  }
  TensorMessage message;
  message.header =
      nlohmann::json::parse(body.substr(0, newline), nullptr, /*allow_exceptions=*/false);
  if (message.header.is_discarded() || !message.header.is_object()) {
    return absl::InvalidArgumentError("body: the first line is not a JSON object");
  }
  const auto list = message.header.find("tensors");
  if (list == message.header.end() || !list->is_array()) {
    return absl::InvalidArgumentError("body: \"tensors\" is missing or not an array");
  }
  absl::string_view bytes = body.substr(newline + 1);
  uint64_t offset = 0;
  for (size_t i = 0; i < list->size(); ++i) {
    const nlohmann::json& entry = (*list)[i];
    const std::string field = absl::StrCat("tensors[", i, "]");
    VB_ASSIGN_OR_RETURN(TensorSpec spec, spec_from_json(entry, field));
    const auto name = entry.find("name");
    if (name == entry.end() || !name->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name is missing or not a string"));
    }
    const uint64_t size = static_cast<uint64_t>(spec.byte_size());
    if (bytes.size() - offset < size) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " (", name->get<std::string>(), ", ", spec.to_string(), ") needs ",
                       size, " bytes but the body has ", bytes.size() - offset, " left"));
    }
    at::Tensor tensor = at::empty(spec.shape, options.dtype(to_scalar_type(spec.dtype)));
    std::memcpy(tensor.data_ptr(), bytes.data() + offset, size);
    offset += size;
    message.tensors.push_back({name->get<std::string>(), std::move(tensor)});
  }
  if (offset != bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body: ", bytes.size() - offset, " bytes follow the last listed tensor"));
  }
  return message;
}

}  // namespace vb::wire
