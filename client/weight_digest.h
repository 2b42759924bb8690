// The SHA-256 digest under which a weight is uploaded, recomputed only when its bytes
// change. LibTorch's version counter cannot tell: SGD in LibTorch 1.13 updates parameters
// through .data(), which leaves the counter alone. So a 128-bit XXH3 fingerprint of the bytes
// (tens of GB/s) decides whether the SHA-256 (about 1.8 GB/s) must be computed again.
#pragma once

#include <ATen/core/Tensor.h>

#include <mutex>
#include <string>

#include "client/daemon_client.h"

namespace vb {

class WeightDigestCache {
 public:
  // `weight` as a contiguous CPU tensor plus the digest of its bytes, and the digest of the
  // version before it (what a daemon may release once it holds this one).
  WeightRef ref(const at::Tensor& weight);
  // How often the SHA-256 was actually computed (for tests and statistics).
  uint64_t digests_computed() const;

 private:
  mutable std::mutex mutex_;
  bool valid_ = false;
  uint64_t fingerprint_high_ = 0;
  uint64_t fingerprint_low_ = 0;
  int64_t byte_size_ = -1;
  std::string digest_;
  std::string previous_digest_;
  uint64_t digests_computed_ = 0;
};

}  // namespace vb
