// SHA-256 content digests: the names under which the daemon stores weights.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace vb {

// Incremental SHA-256 over OpenSSL's EVP interface.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, size_t size);
  // Lowercase hex of the 32-byte digest. The object must not be updated afterwards.
  std::string finish_hex();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string sha256_hex(const void* data, size_t size);
std::string sha256_hex(absl::string_view bytes);

// OK when `digest` is 64 lowercase hex characters; otherwise INVALID_ARGUMENT naming `field`.
absl::Status check_digest_format(absl::string_view digest, absl::string_view field);

}  // namespace vb
