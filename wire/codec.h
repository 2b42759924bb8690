// Conversions between the vb.v1 messages and the project's own types: specs, statuses and
// tensors cut into chunks. The one place where a gRPC status meets an absl::Status.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor_spec.h"
#include "vb/v1/compute.pb.h"

namespace vb::wire {

// libvb's chunk payload: a quarter of gRPC's default 4 MiB message limit.
inline constexpr size_t kDefaultChunkBytes = size_t{1} << 20;
// What the daemon accepts in one chunk; headroom for clients with other habits.
inline constexpr size_t kMaxChunkBytes = size_t{3} << 20;

grpc::Status to_grpc(const absl::Status& status);
absl::Status from_grpc(const grpc::Status& status);

v1::DType dtype_to_proto(DType dtype);
void spec_to_proto(const TensorSpec& spec, v1::TensorSpec* out);
// INVALID_ARGUMENT naming `field` for an unknown dtype or a shape validate_spec refuses.
absl::StatusOr<TensorSpec> spec_from_proto(const v1::TensorSpec& spec, absl::string_view field);

// Fills announced tensors from chunks as they arrive, refusing anything that does not add up.
class TensorAssembler {
 public:
  // `names` label the tensors in errors; `specs` must already be validated. Tensors are
  // allocated with `options` (pinned host memory when they feed a GPU).
  TensorAssembler(std::vector<std::string> names, std::vector<TensorSpec> specs,
                  at::TensorOptions options = {});

  absl::Status add(const v1::TensorChunk& chunk);
  // INVALID_ARGUMENT if a tensor has fewer bytes than its spec implies.
  absl::Status finish() const;
  uint64_t bytes_received() const { return bytes_received_; }
  std::vector<at::Tensor>& tensors() { return tensors_; }

 private:
  std::vector<std::string> names_;
  std::vector<TensorSpec> specs_;
  std::vector<at::Tensor> tensors_;
  std::vector<int64_t> filled_;
  uint64_t bytes_received_ = 0;
};

// Calls `emit(tensor_index, data, size)` for consecutive pieces of at most `chunk_bytes` of
// each tensor (contiguous, CPU) in order; stops and returns false as soon as emit does.
bool for_each_chunk(const std::vector<at::Tensor>& tensors, size_t chunk_bytes,
                    const std::function<bool(uint32_t, const char*, size_t)>& emit);

}  // namespace vb::wire
