#include "backends/tensor_util.h"

#include <ATen/Functions.h>
#include <c10/util/Exception.h>

#include <new>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::backends {

absl::StatusOr<TensorSpec> spec_of(const at::Tensor& tensor, absl::string_view field) {
  if (!tensor.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is undefined"));
  }
  TensorSpec spec;
  VB_ASSIGN_OR_RETURN(spec.dtype, dtype_from_scalar_type(tensor.scalar_type(), field));
  spec.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  VB_RETURN_IF_ERROR(validate_spec(spec, field));
  return spec;
}

at::Tensor view_bytes(const TensorSpec& spec, void* bytes) {
  return at::from_blob(bytes, spec.shape, at::TensorOptions().dtype(to_scalar_type(spec.dtype)));
}

absl::Status status_from_exception(absl::string_view what, std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of host memory"));
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (message.find("out of memory") != std::string::npos ||
        message.find("DefaultCPUAllocator: can't allocate") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": ", message));
    }
    return absl::InternalError(absl::StrCat(what, ": ", message));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(what, ": unknown exception"));
  }
}

}  // namespace vb::backends
