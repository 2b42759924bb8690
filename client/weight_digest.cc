#include "client/weight_digest.h"

#include <xxhash.h>

#include "common/digest.h"

namespace vb {

WeightRef WeightDigestCache::ref(const at::Tensor& weight) {
  WeightRef ref;
  ref.tensor = weight.detach().to(at::kCPU).contiguous();
  const void* data = ref.tensor.data_ptr();
  const int64_t size = ref.tensor.numel() * static_cast<int64_t>(ref.tensor.element_size());
  const XXH128_hash_t fingerprint = XXH3_128bits(data, static_cast<size_t>(size));
  std::lock_guard<std::mutex> lock(mutex_);
  if (!valid_ || size != byte_size_ || fingerprint.high64 != fingerprint_high_ ||
      fingerprint.low64 != fingerprint_low_) {
    std::string digest = sha256_hex(data, static_cast<size_t>(size));
    if (valid_ && digest != digest_) previous_digest_ = std::move(digest_);
    digest_ = std::move(digest);
    fingerprint_high_ = fingerprint.high64;
    fingerprint_low_ = fingerprint.low64;
    byte_size_ = size;
    valid_ = true;
    ++digests_computed_;
  }
  ref.digest = digest_;
  ref.replaces = previous_digest_;
  return ref;
}

uint64_t WeightDigestCache::digests_computed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return digests_computed_;
}

}  // namespace vb
