#include "common/tensor_spec.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace vb {

absl::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat64:
      return "float64";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

c10::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return c10::ScalarType::Float;
    case DType::kFloat16:
      return c10::ScalarType::Half;
    case DType::kBFloat16:
      return c10::ScalarType::BFloat16;
    case DType::kFloat64:
      return c10::ScalarType::Double;
  }
  return c10::ScalarType::Undefined;
}

absl::StatusOr<DType> dtype_from_scalar_type(c10::ScalarType type, absl::string_view field) {
  switch (type) {
    case c10::ScalarType::Float:
      return DType::kFloat32;
    case c10::ScalarType::Half:
      return DType::kFloat16;
    case c10::ScalarType::BFloat16:
      return DType::kBFloat16;
    case c10::ScalarType::Double:
      return DType::kFloat64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".dtype = ", c10::toString(type),
                       ": expected one of float32, float16, bfloat16, float64"));
  }
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string TensorSpec::to_string() const {
  return absl::StrCat(dtype_name(dtype), shape_string(shape));
}

absl::Status validate_spec(const TensorSpec& spec, absl::string_view field, int min_rank) {
  const int rank = static_cast<int>(spec.shape.size());
  if (rank < min_rank || rank > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".shape = ", shape_string(spec.shape), " has rank ", rank, ": expected rank ",
        min_rank == kMaxRank ? absl::StrCat(min_rank) : absl::StrCat(min_rank, " to ", kMaxRank)));
  }
  // Overflow is checked on the byte count, the largest number anyone derives from a spec.
  const int64_t limit = std::numeric_limits<int64_t>::max() / dtype_size(spec.dtype);
  int64_t numel = 1;
  for (int i = 0; i < rank; ++i) {
    const int64_t d = spec.shape[i];
    if (d < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape[", i, "] = ", d, ": every dimension must be at least 1"));
    }
    if (numel > limit / d) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape = ", shape_string(spec.shape),
                                                     " overflows: ", dtype_name(spec.dtype),
                                                     " bytes for it exceed 2^63 - 1"));
    }
    numel *= d;
  }
  return absl::OkStatus();
}

}  // namespace vb
