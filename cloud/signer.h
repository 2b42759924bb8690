// Huawei Cloud's API gateway signature, "SDK-HMAC-SHA256" (the AK/SK scheme of the APIG SDKs):
//
//   canonical request = METHOD \n canonical URI \n canonical query \n canonical headers \n
//                       signed header names joined by ";" \n hex SHA-256 of the body
//   string to sign    = "SDK-HMAC-SHA256\n" + X-Sdk-Date + "\n" + hex SHA-256(canonical request)
//   signature         = hex HMAC-SHA256(SK, string to sign)
//   Authorization: SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b;c, Signature=...
//
// The canonical URI percent-encodes each path segment (RFC 3986 unreserved characters kept)
// and always ends in "/"; the query is sorted by name, then by value, each side encoded;
// headers are lowercased, their values trimmed, sorted, and every header given is signed.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace vb::cloud {

struct SignableRequest {
  std::string method = "POST";
  std::string path = "/";                                    // as sent, before percent-encoding
  std::vector<std::pair<std::string, std::string>> query;    // repeated names allowed
  std::vector<std::pair<std::string, std::string>> headers;  // Host and X-Sdk-Date included
  absl::string_view body;
};

struct AkSk {
  std::string access_key;
  std::string secret_key;
};

struct Signature {
  std::string canonical_request;
  std::string canonical_request_hash;  // hex SHA-256
  std::string signed_headers;          // "content-type;host;x-sdk-date"
  std::string signature;               // hex HMAC-SHA256
  std::string authorization;           // the Authorization header's value
};

// RFC 3986 percent-encoding: everything but A-Z a-z 0-9 - _ . ~ as %XX (upper-case hex).
std::string percent_encode(absl::string_view text);
std::string canonical_uri(absl::string_view path);
std::string canonical_query(std::vector<std::pair<std::string, std::string>> query);

Signature sign(const SignableRequest& request, const AkSk& credentials);

// X-Sdk-Date's form, YYYYMMDDTHHMMSSZ in UTC.
std::string sdk_date(std::chrono::system_clock::time_point time);

}  // namespace vb::cloud
