#include "common/digest.h"

#include <openssl/evp.h>

#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace vb {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("OpenSSL: cannot initialise SHA-256");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_->md); }

void Sha256::update(const void* data, size_t size) {
  if (size > 0) EVP_DigestUpdate(ctx_->md, data, size);
}

std::string Sha256::finish_hex() {
  unsigned char raw[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx_->md, raw, &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(2 * length, '0');
  for (unsigned int i = 0; i < length; ++i) {
    hex[2 * i] = kHex[raw[i] >> 4];
    hex[2 * i + 1] = kHex[raw[i] & 0xf];
  }
  return hex;
}

std::string sha256_hex(const void* data, size_t size) {
  Sha256 hash;
  hash.update(data, size);
  return hash.finish_hex();
}

std::string sha256_hex(absl::string_view bytes) { return sha256_hex(bytes.data(), bytes.size()); }

absl::Status check_digest_format(absl::string_view digest, absl::string_view field) {
  bool hex = digest.size() == 64;
  for (char c : digest) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (hex) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = \"", digest.substr(0, 80),
                   "\": expected 64 lowercase hex characters (SHA-256 of the bytes)"));
}

}  // namespace vb
