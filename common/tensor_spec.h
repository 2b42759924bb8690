// What a tensor is on the wire and inside the daemon before it has bytes: dtype and shape,
// with the checks every entry point applies before trusting either.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vb {

enum class DType { kFloat32, kFloat16, kBFloat16, kFloat64 };

absl::string_view dtype_name(DType dtype);
int64_t dtype_size(DType dtype);
c10::ScalarType to_scalar_type(DType dtype);
// INVALID_ARGUMENT naming `field` for scalar types the wire contract does not carry.
absl::StatusOr<DType> dtype_from_scalar_type(c10::ScalarType type, absl::string_view field);

// Ranks above this are refused: no layer op needs them, and they bound header size.
inline constexpr int kMaxRank = 8;

struct TensorSpec {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;

  // Valid only after validate_spec() accepted the spec.
  int64_t numel() const;
  int64_t byte_size() const { return numel() * dtype_size(dtype); }
  // "float32[64, 768]"
  std::string to_string() const;

  bool operator==(const TensorSpec& other) const {
    return dtype == other.dtype && shape == other.shape;
  }
  bool operator!=(const TensorSpec& other) const { return !(*this == other); }
};

// OK when the rank is within [min_rank, kMaxRank], every dimension is at least 1 and the
// byte size fits in int64; otherwise INVALID_ARGUMENT saying which of `field`'s values is off.
absl::Status validate_spec(const TensorSpec& spec, absl::string_view field, int min_rank = 1);

// "[64, 768]"
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace vb
