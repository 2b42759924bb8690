#include "backends/fp4/fp4.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace vb::backends::fp4 {
namespace {

// A sorted list of representable values with their codes. Rounding picks the nearest value;
// on a tie (v exactly halfway, which float64 holds exactly for these tables) the even code.
// Below the first value or above the last, the end value (saturation).
template <size_t N>
struct Table {
  std::array<double, N> values;
  std::array<uint8_t, N> codes;

  uint8_t round(double v) const {
    if (!(v > values[0])) return codes[0];
    if (v >= values[N - 1]) return codes[N - 1];
    // First value > v; v lies in [values[i - 1], values[i]).
    const size_t i = std::upper_bound(values.begin(), values.end(), v) - values.begin();
    const double below = values[i - 1];
    const double above = values[i];
    const double mid = below + (above - below) / 2;  // exact: both are float32 values
    if (v < mid) return codes[i - 1];
    if (v > mid) return codes[i];
    return (codes[i - 1] & 1) == 0 ? codes[i - 1] : codes[i];
  }
};

const Table<8>& e2m1_magnitudes() {
  static const Table<8> table = [] {
    Table<8> t;
    for (uint8_t c = 0; c < 8; ++c) {
      t.values[c] = e2m1_to_float(c);
      t.codes[c] = c;
    }
    return t;
  }();
  return table;
}

const Table<127>& e4m3_magnitudes() {  // codes 0x00..0x7E, increasing
  static const Table<127> table = [] {
    Table<127> t;
    for (uint8_t c = 0; c < 127; ++c) {
      t.values[c] = e4m3_to_float(c);
      t.codes[c] = c;
    }
    return t;
  }();
  return table;
}

const Table<16>& nf4_values() {  // the table is sorted by code already
  static const Table<16> table = [] {
    Table<16> t;
    for (uint8_t c = 0; c < 16; ++c) {
      t.values[c] = nf4_to_float(c);
      t.codes[c] = c;
    }
    return t;
  }();
  return table;
}

const Table<8>& bnb_fp4_magnitudes() {
  static const Table<8> table = [] {
    Table<8> t;
    std::array<uint8_t, 8> order = {0, 1, 2, 3, 4, 5, 6, 7};
    std::sort(order.begin(), order.end(),
              [](uint8_t a, uint8_t b) { return bnb_fp4_magnitude(a) < bnb_fp4_magnitude(b); });
    for (size_t i = 0; i < 8; ++i) {
      t.values[i] = bnb_fp4_magnitude(order[i]);
      t.codes[i] = order[i];
    }
    return t;
  }();
  return table;
}

uint8_t sign_bit(double x) { return std::signbit(x) ? 8 : 0; }

absl::Status check_finite(const float* w, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n * k; ++i) {
    if (!std::isfinite(w[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("fp4 quantize: w[", i / k, ", ", i % k, "] = ", w[i],
                       ": expected a finite value (NaN and infinity cannot be quantized)"));
    }
  }
  return absl::OkStatus();
}

float block_amax(const float* x, int count) {
  float amax = 0.0f;
  for (int i = 0; i < count; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

void put_nibble(std::vector<uint8_t>& codes, int64_t index, uint8_t code) {
  uint8_t& byte = codes[index / 2];
  byte = (index % 2 == 0) ? static_cast<uint8_t>((byte & 0xF0) | code)
                          : static_cast<uint8_t>((byte & 0x0F) | (code << 4));
}

void put_float(std::vector<uint8_t>& bytes, int64_t index, float value) {
  const uint32_t bits = bits_from_float(value);
  for (int b = 0; b < 4; ++b) bytes[index * 4 + b] = static_cast<uint8_t>(bits >> (8 * b));
}

uint32_t get_u32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

void put_u32(std::string& out, uint32_t v) {
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>(v >> (8 * b)));
}

void put_u64(std::string& out, uint64_t v) {
  for (int b = 0; b < 8; ++b) out.push_back(static_cast<char>(v >> (8 * b)));
}

uint64_t get_u64(const uint8_t* p) { return get_u32(p) | uint64_t{get_u32(p + 4)} << 32; }

constexpr char kMagic[8] = {'V', 'B', 'F', 'P', '4', 'W', '\0', '\0'};
constexpr uint32_t kBlobVersion = 1;

}  // namespace

absl::StatusOr<Format> parse_format(absl::string_view name) {
  if (name == "nvfp4") return Format::kNvfp4;
  if (name == "mxfp4") return Format::kMxfp4;
  if (name == "nf4") return Format::kNf4;
  if (name == "bnb_fp4") return Format::kBnbFp4;
  return absl::InvalidArgumentError(
      absl::StrCat("fp4 format \"", name, "\": expected one of nvfp4, mxfp4, nf4, bnb_fp4"));
}

const char* format_name(Format format) {
  switch (format) {
    case Format::kNvfp4:
      return "nvfp4";
    case Format::kMxfp4:
      return "mxfp4";
    case Format::kNf4:
      return "nf4";
    case Format::kBnbFp4:
      return "bnb_fp4";
  }
  return "unknown";
}

int scale_bytes(Format format) { return has_byte_scales(format) ? 1 : 4; }

uint32_t PackedWeight::scale_bits(int64_t row, int64_t block) const {
  const int64_t index = row * blocks_per_row() + block;
  if (has_byte_scales(format)) return scales[index];
  return get_u32(&scales[index * 4]);
}

absl::Status check_shape(Format format, int64_t n, int64_t k) {
  const int block = block_size(format);
  if (n < 0)
    return absl::InvalidArgumentError(absl::StrCat("fp4 weight n = ", n, ": expected >= 0"));
  if (k < 0 || k % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 weight k = ", k,
                                                   ": expected a multiple of ", block, " (the ",
                                                   format_name(format), " block size)"));
  }
  return absl::OkStatus();
}

absl::Status validate(const PackedWeight& w) {
  const uint32_t raw_format = static_cast<uint32_t>(w.format);
  if (raw_format > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 weight format = ", raw_format, ": expected 0..3"));
  }
  VB_RETURN_IF_ERROR(check_shape(w.format, w.n, w.k));
  const uint64_t codes = static_cast<uint64_t>(w.n) * static_cast<uint64_t>(w.k) / 2;
  if (w.codes.size() != codes) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 weight codes: ", w.codes.size(), " bytes, expected n * k / 2 = ", codes));
  }
  const uint64_t blocks = static_cast<uint64_t>(w.n) * static_cast<uint64_t>(w.blocks_per_row());
  const uint64_t scales = blocks * scale_bytes(w.format);
  if (w.scales.size() != scales) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 weight scales: ", w.scales.size(),
                                                   " bytes, expected ", blocks, " blocks * ",
                                                   scale_bytes(w.format), " = ", scales));
  }
  if (w.format == Format::kNvfp4) {
    if (!std::isfinite(w.tensor_scale) || w.tensor_scale < 0) {
      return absl::InvalidArgumentError(absl::StrCat("fp4 weight tensor_scale = ", w.tensor_scale,
                                                     ": expected a finite value >= 0"));
    }
  } else if (w.tensor_scale != 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 weight tensor_scale = ", w.tensor_scale,
                                                   ": expected 1 for ", format_name(w.format)));
  } else if (!has_byte_scales(w.format)) {
    for (uint64_t i = 0; i < blocks; ++i) {
      const float s = float_from_bits(get_u32(&w.scales[i * 4]));
      if (!std::isfinite(s) || s < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("fp4 weight absmax of row ", i / w.blocks_per_row(), " block ",
                         i % w.blocks_per_row(), " = ", s, ": expected a finite value >= 0"));
      }
    }
  }
  return absl::OkStatus();
}

uint8_t encode_e2m1(double x) { return sign_bit(x) | e2m1_magnitudes().round(std::fabs(x)); }

uint8_t encode_e4m3(double x) {
  return static_cast<uint8_t>((std::signbit(x) ? 0x80 : 0) | e4m3_magnitudes().round(std::fabs(x)));
}

uint8_t encode_nf4(double x) { return nf4_values().round(x); }

uint8_t encode_bnb_fp4(double x) { return sign_bit(x) | bnb_fp4_magnitudes().round(std::fabs(x)); }

uint8_t mxfp4_scale_byte(float block_amax) {
  if (!(block_amax > 0)) return 0;  // 2^-127
  int exponent = 0;
  std::frexp(block_amax, &exponent);  // amax = m * 2^exponent, m in [0.5, 1)
  const int shared = std::clamp(exponent - 1 - 2, -127, 127);
  return static_cast<uint8_t>(shared + 127);
}

absl::StatusOr<PackedWeight> quantize(const float* w, int64_t n, int64_t k, Format format) {
  VB_RETURN_IF_ERROR(check_shape(format, n, k));
  if (w == nullptr && n * k > 0) return absl::InvalidArgumentError("fp4 quantize: w is null");
  VB_RETURN_IF_ERROR(check_finite(w, n, k));
  const int block = block_size(format);
  PackedWeight out;
  out.format = format;
  out.n = n;
  out.k = k;
  out.codes.assign(static_cast<size_t>(n * k / 2), 0);
  out.scales.assign(static_cast<size_t>(n * (k / block) * scale_bytes(format)), 0);
  const int64_t blocks = n * (k / block);

  if (format == Format::kNvfp4) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n * k; ++i) amax = std::max(amax, std::fabs(w[i]));
    float ts = static_cast<float>(static_cast<double>(amax) / (448.0 * 6.0));
    if (ts == 0.0f && amax > 0.0f) ts = std::numeric_limits<float>::denorm_min();
    out.tensor_scale = ts;
    if (ts == 0.0f) return out;  // all zeros: scales and codes stay 0
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = w + b * block;
      const double bscale = static_cast<double>(block_amax(x, block)) / 6.0 / ts;
      const uint8_t s = encode_e4m3(bscale);
      out.scales[b] = s;
      const double divisor = static_cast<double>(e4m3_to_float(s)) * ts;  // exact in float64
      if (divisor == 0.0) continue;
      for (int i = 0; i < block; ++i)
        put_nibble(out.codes, b * block + i, encode_e2m1(x[i] / divisor));
    }
    return out;
  }

  if (format == Format::kMxfp4) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = w + b * block;
      const uint8_t s = mxfp4_scale_byte(block_amax(x, block));
      out.scales[b] = s;
      const double scale = std::ldexp(1.0, int{s} - 127);
      for (int i = 0; i < block; ++i)
        put_nibble(out.codes, b * block + i, encode_e2m1(x[i] / scale));
    }
    return out;
  }

  // NF4, bnb_fp4: float32 absmax per block.
  const uint8_t zero_code = format == Format::kNf4 ? encode_nf4(0.0) : 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* x = w + b * block;
    const float absmax = block_amax(x, block);
    put_float(out.scales, b, absmax);
    for (int i = 0; i < block; ++i) {
      uint8_t code = zero_code;
      if (absmax > 0) {
        const double v = static_cast<double>(x[i]) / absmax;
        code = format == Format::kNf4 ? encode_nf4(v) : encode_bnb_fp4(v);
      }
      put_nibble(out.codes, b * block + i, code);
    }
  }
  return out;
}

absl::Status dequantize(const PackedWeight& weight, float* out) {
  VB_RETURN_IF_ERROR(validate(weight));
  const int block = block_size(weight.format);
  const int64_t bpr = weight.blocks_per_row();
  for (int64_t r = 0; r < weight.n; ++r) {
    for (int64_t b = 0; b < bpr; ++b) {
      const uint32_t s = weight.scale_bits(r, b);
      for (int i = 0; i < block; ++i) {
        const int64_t index = r * weight.k + b * block + i;
        const uint8_t byte = weight.codes[index / 2];
        const uint32_t code = (index % 2 == 0) ? (byte & 15u) : (byte >> 4);
        out[index] = dequantize_value(weight.format, code, s, weight.tensor_scale);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status linear(const float* x, int64_t batch, const PackedWeight& weight, const float* bias,
                    float* y) {
  if (batch < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 linear batch = ", batch, ": expected >= 0"));
  }
  std::vector<float> w(static_cast<size_t>(weight.n * weight.k));
  VB_RETURN_IF_ERROR(dequantize(weight, w.data()));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < weight.n; ++j) {
      double sum = bias != nullptr ? bias[j] : 0.0;
      const float* row = &w[j * weight.k];
      const float* xb = x + b * weight.k;
      for (int64_t i = 0; i < weight.k; ++i) sum += static_cast<double>(xb[i]) * row[i];
      y[b * weight.n + j] = static_cast<float>(sum);
    }
  }
  return absl::OkStatus();
}

std::string serialize(const PackedWeight& weight) {
  std::string out(kMagic, sizeof kMagic);
  put_u32(out, kBlobVersion);
  put_u32(out, static_cast<uint32_t>(weight.format));
  put_u32(out, static_cast<uint32_t>(block_size(weight.format)));
  put_u32(out, 0);
  put_u64(out, static_cast<uint64_t>(weight.n));
  put_u64(out, static_cast<uint64_t>(weight.k));
  put_u32(out, bits_from_float(weight.tensor_scale));
  out.resize(kBlobHeaderBytes, '\0');
  out.append(reinterpret_cast<const char*>(weight.codes.data()), weight.codes.size());
  out.append(reinterpret_cast<const char*>(weight.scales.data()), weight.scales.size());
  return out;
}

absl::StatusOr<BlobHeader> parse_blob_header(absl::string_view blob_start, uint64_t blob_bytes) {
  if (blob_start.size() < static_cast<size_t>(kBlobHeaderBytes)) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 blob: ", blob_start.size(),
                                                   " bytes, expected at least the ",
                                                   kBlobHeaderBytes, "-byte header"));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(blob_start.data());
  if (std::memcmp(p, kMagic, sizeof kMagic) != 0) {
    return absl::InvalidArgumentError("fp4 blob magic: expected \"VBFP4W\\0\\0\"");
  }
  const uint32_t version = get_u32(p + 8);
  if (version != kBlobVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 blob version = ", version, ": expected ", kBlobVersion));
  }
  const uint32_t raw_format = get_u32(p + 12);
  if (raw_format > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 blob format = ", raw_format, ": expected 0..3"));
  }
  BlobHeader h;
  h.format = static_cast<Format>(raw_format);
  const uint32_t block = get_u32(p + 16);
  if (block != static_cast<uint32_t>(block_size(h.format))) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 blob block size = ", block, ": expected ",
                                                   block_size(h.format), " for ",
                                                   format_name(h.format)));
  }
  const uint64_t n = get_u64(p + 24);
  const uint64_t k = get_u64(p + 32);
  constexpr uint64_t kLimit = uint64_t{1} << 40;  // keeps n * k far from overflow
  if (n > kLimit || k > kLimit || (k > 0 && n > kLimit / k)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp4 blob n = ", n, ", k = ", k, ": expected n * k <= 2^40"));
  }
  h.n = static_cast<int64_t>(n);
  h.k = static_cast<int64_t>(k);
  h.tensor_scale = float_from_bits(get_u32(p + 40));
  VB_RETURN_IF_ERROR(check_shape(h.format, h.n, h.k));
  h.codes_offset = kBlobHeaderBytes;
  h.scales_offset = kBlobHeaderBytes + static_cast<int64_t>(n * k / 2);
  const uint64_t scales = n * (k / block) * scale_bytes(h.format);
  const uint64_t expected = static_cast<uint64_t>(h.scales_offset) + scales;
  if (blob_bytes != expected) {
    return absl::InvalidArgumentError(absl::StrCat("fp4 blob: ", blob_bytes, " bytes, expected ",
                                                   expected, " (header + codes + scales)"));
  }
  return h;
}

absl::StatusOr<PackedWeight> deserialize(absl::string_view blob) {
  VB_ASSIGN_OR_RETURN(const BlobHeader h, parse_blob_header(blob, blob.size()));
  const auto* p = reinterpret_cast<const uint8_t*>(blob.data());
  PackedWeight w;
  w.format = h.format;
  w.n = h.n;
  w.k = h.k;
  w.tensor_scale = h.tensor_scale;
  w.codes.assign(p + h.codes_offset, p + h.scales_offset);
  w.scales.assign(p + h.scales_offset, p + blob.size());
  VB_RETURN_IF_ERROR(validate(w));
  return w;
}

uint16_t float_to_bf16_bits(float f) {
  const uint32_t bits = bits_from_float(f);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x0040);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

float bf16_bits_to_float(uint16_t bits) { return float_from_bits(uint32_t{bits} << 16); }

uint16_t float_to_fp16_bits(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7E00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7C00;  // rounds to infinity
  if (a < std::ldexp(1.0, -14)) {          // subnormal range: multiples of 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(a * std::ldexp(1.0, 24)));
  }
  int exponent = 0;
  std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  const int e = exponent - 1;
  const double mantissa = std::ldexp(a, -e) - 1.0;  // [0, 1), exact
  const auto q = static_cast<uint32_t>(std::nearbyint(mantissa * 1024.0));
  return sign | static_cast<uint16_t>(((e + 15) << 10) + q);  // q = 1024 carries into e
}

float fp16_bits_to_float(uint16_t bits) {
  const float sign = (bits & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (bits >> 10) & 31;
  const int mantissa = bits & 1023;
  if (exponent == 31) {
    return mantissa != 0 ? std::numeric_limits<float>::quiet_NaN()
                         : sign * std::numeric_limits<float>::infinity();
  }
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  return sign * std::ldexp(static_cast<float>(1024 + mantissa), exponent - 25);
}

}  // namespace vb::backends::fp4
