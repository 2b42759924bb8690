#include "cloud/signer.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/digest.h"

namespace vb::cloud {
namespace {

std::string hex(const unsigned char* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(size * 2, '0');
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 0xF];
  }
  return out;
}

std::string hmac_sha256_hex(absl::string_view key, absl::string_view message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &size);
  return hex(mac, size);
}

bool is_unreserved(unsigned char c) {
  return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

}  // namespace

std::string percent_encode(absl::string_view text) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (is_unreserved(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 0xF]);
    }
  }
  return out;
}

std::string canonical_uri(absl::string_view path) {
  std::vector<std::string> segments;
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    segments.push_back(percent_encode(segment));
  }
  std::string uri = absl::StrJoin(segments, "/");
  if (uri.empty() || uri.back() != '/') uri.push_back('/');
  return uri;
}

std::string canonical_query(std::vector<std::pair<std::string, std::string>> query) {
  // Sorted by name, and a repeated name's values sorted too, as the APIG SDKs do.
  std::sort(query.begin(), query.end());
  std::vector<std::string> parts;
  parts.reserve(query.size());
  for (const auto& [name, value] : query) {
    parts.push_back(absl::StrCat(percent_encode(name), "=", percent_encode(value)));
  }
  return absl::StrJoin(parts, "&");
}

Signature sign(const SignableRequest& request, const AkSk& credentials) {
  std::vector<std::pair<std::string, std::string>> headers;
  std::string date;
  for (const auto& [name, value] : request.headers) {
    std::string lower = absl::AsciiStrToLower(name);
    if (lower == "x-sdk-date") date = std::string(absl::StripAsciiWhitespace(value));
    headers.emplace_back(std::move(lower), std::string(absl::StripAsciiWhitespace(value)));
  }
  std::sort(headers.begin(), headers.end());
  std::string canonical_headers;
  std::vector<std::string> names;
  for (const auto& [name, value] : headers) {
    absl::StrAppend(&canonical_headers, name, ":", value, "\n");
    names.push_back(name);
  }
  Signature out;
  out.signed_headers = absl::StrJoin(names, ";");
  out.canonical_request =
      absl::StrCat(absl::AsciiStrToUpper(request.method), "\n", canonical_uri(request.path), "\n",
                   canonical_query(request.query), "\n", canonical_headers, "\n",
                   out.signed_headers, "\n", sha256_hex(request.body));
  out.canonical_request_hash = sha256_hex(out.canonical_request);
  const std::string string_to_sign =
      absl::StrCat("SDK-HMAC-SHA256\n", date, "\n", out.canonical_request_hash);
  out.signature = hmac_sha256_hex(credentials.secret_key, string_to_sign);
  out.authorization =
      absl::StrCat("SDK-HMAC-SHA256 Access=", credentials.access_key,
                   ", SignedHeaders=", out.signed_headers, ", Signature=", out.signature);
  return out;
}

std::string sdk_date(std::chrono::system_clock::time_point time) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y%m%dT%H%M%SZ", &utc);
  return text;
}

}  // namespace vb::cloud
