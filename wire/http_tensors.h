// The body format of vbd's HTTP face (and so of the ModelArts backend): one line of JSON, a
// newline, then the raw bytes of the tensors that line lists, in its order, back to back.
//
//   {"tensors":[{"name":"input","dtype":"float32","shape":[2,3]}],"weight":{...}}\n<24 bytes>
//
// Bytes are little-endian, row-major and contiguous as on the gRPC wire; each tensor has
// exactly product(shape) * itemsize bytes and the body ends with the last one. Any other key
// of the JSON line belongs to the operation (see README "HTTP face").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor_spec.h"

namespace vb::wire {

inline constexpr char kTensorsContentType[] = "application/vnd.vb.tensors";

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

struct TensorMessage {
  nlohmann::json header;  // the JSON line, "tensors" included
  std::vector<NamedTensor> tensors;

  // The tensor called `name`, or an undefined tensor when the message has none.
  at::Tensor find(absl::string_view name) const;
};

// The body for `header` (a JSON object; its "tensors" key is replaced) and `tensors`
// (contiguous CPU tensors of the wire's dtypes).
std::string encode_tensor_message(nlohmann::json header, const std::vector<NamedTensor>& tensors);
// What encode_tensor_message would return, without the tensor bytes: the JSON line's size
// plus the bytes, so a sender can plan its requests under a body limit.
uint64_t encoded_size(const nlohmann::json& header, const std::vector<NamedTensor>& tensors);

// INVALID_ARGUMENT naming the field for a body that is not this format: no newline, JSON
// that does not parse, an unknown dtype, a bad shape, or a byte count that does not match.
absl::StatusOr<TensorMessage> decode_tensor_message(absl::string_view body,
                                                    const at::TensorOptions& options = {});

// A spec as the JSON line writes it ({"dtype": "float32", "shape": [2, 3]}) and back.
nlohmann::json spec_to_json(const TensorSpec& spec);
absl::StatusOr<TensorSpec> spec_from_json(const nlohmann::json& value, absl::string_view field);

}  // namespace vb::wire
