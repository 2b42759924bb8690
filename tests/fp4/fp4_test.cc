// The 4-bit weight formats on the CPU: exact round trips of every code, the rounding rules
// (ties, saturation, subnormal scales), bad inputs, serialization, SQNR on Gaussian weights
// against an independent float64 quantizer, and the reference Linear against float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "backends/fp4/fp4.h"

namespace vb::backends::fp4 {
namespace {

constexpr Format kAllFormats[] = {Format::kNvfp4, Format::kMxfp4, Format::kNf4, Format::kBnbFp4};

std::vector<float> gaussian(size_t count, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}

uint32_t bits(float f) { return bits_from_float(f); }

TEST(Fp4FormatTest, ParsesNamesAndRefusesOthers) {
  for (Format f : kAllFormats) {
    auto parsed = parse_format(format_name(f));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, f);
  }
  EXPECT_EQ(block_size(Format::kNvfp4), 16);
  EXPECT_EQ(block_size(Format::kMxfp4), 32);
  EXPECT_EQ(block_size(Format::kNf4), 64);
  EXPECT_EQ(block_size(Format::kBnbFp4), 64);
  const absl::Status bad = parse_format("NVFP4").status();
  EXPECT_TRUE(absl::IsInvalidArgument(bad));
  EXPECT_NE(bad.message().find("\"NVFP4\""), absl::string_view::npos) << bad;
  EXPECT_NE(bad.message().find("bnb_fp4"), absl::string_view::npos) << bad;
}

TEST(Fp4CodecTest, E2M1EveryCodeRoundTrips) {
  const float magnitudes[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (uint8_t c = 0; c < 16; ++c) {
    const float v = e2m1_to_float(c);
    EXPECT_EQ(std::fabs(v), magnitudes[c & 7]) << int{c};
    EXPECT_EQ(std::signbit(v), (c & 8) != 0) << int{c};
    EXPECT_EQ(encode_e2m1(v), c) << int{c};
  }
}

TEST(Fp4CodecTest, E2M1RoundsToNearestEvenAndSaturates) {
  // Halfway cases go to the even code (even mantissa).
  EXPECT_EQ(encode_e2m1(0.25), 0);   // 0 | 0.5
  EXPECT_EQ(encode_e2m1(0.75), 2);   // 0.5 | 1
  EXPECT_EQ(encode_e2m1(1.25), 2);   // 1 | 1.5
  EXPECT_EQ(encode_e2m1(1.75), 4);   // 1.5 | 2
  EXPECT_EQ(encode_e2m1(2.5), 4);    // 2 | 3
  EXPECT_EQ(encode_e2m1(3.5), 6);    // 3 | 4
  EXPECT_EQ(encode_e2m1(5.0), 6);    // 4 | 6
  EXPECT_EQ(encode_e2m1(-5.0), 14);  // sign kept
  EXPECT_EQ(encode_e2m1(std::nextafter(0.25, 1.0)), 1);
  EXPECT_EQ(encode_e2m1(std::nextafter(5.0, 0.0)), 6);
  EXPECT_EQ(encode_e2m1(std::nextafter(5.0, 9.0)), 7);
  EXPECT_EQ(encode_e2m1(7.0), 7);  // saturation
  EXPECT_EQ(encode_e2m1(1e30), 7);
  EXPECT_EQ(encode_e2m1(-1e30), 15);
  EXPECT_EQ(encode_e2m1(-0.1), 8);  // -0
}

TEST(Fp4CodecTest, E4M3EveryCodeAndEdges) {
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(static_cast<uint32_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << c;
      EXPECT_EQ(bits(v), kCanonicalNanBits);
      continue;
    }
    EXPECT_EQ(encode_e4m3(v), c) << c << " = " << v;
  }
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), std::ldexp(7.0f, -9));  // largest subnormal
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_float(0xB8), -1.0f);
  EXPECT_EQ(encode_e4m3(0.0), 0x00);
  EXPECT_EQ(encode_e4m3(std::ldexp(1.0, -10)), 0x00);  // tie 0 | 2^-9: even
  EXPECT_EQ(encode_e4m3(std::ldexp(1.0, -11)), 0x00);
  EXPECT_EQ(encode_e4m3(std::ldexp(3.0, -10)), 0x02);   // tie 1 | 2 (x 2^-9): even
  EXPECT_EQ(encode_e4m3(std::ldexp(5.0, -10)), 0x02);   // tie 2 | 3: even
  EXPECT_EQ(encode_e4m3(std::ldexp(15.0, -10)), 0x08);  // tie 7 * 2^-9 | 2^-6: even
  EXPECT_EQ(encode_e4m3(432.0), 0x7E);                  // tie 416 | 448: even
  EXPECT_EQ(encode_e4m3(424.0), 0x7D);
  EXPECT_EQ(encode_e4m3(464.0), 0x7E);  // would round to 480 = NaN code: saturates
  EXPECT_EQ(encode_e4m3(1e10), 0x7E);
  EXPECT_EQ(encode_e4m3(-1e10), 0xFE);
}

TEST(Fp4CodecTest, E8M0DecodesPowersOfTwoAndNan) {
  EXPECT_EQ(e8m0_to_float(127), 1.0f);
  EXPECT_EQ(e8m0_to_float(0), std::ldexp(1.0f, -127));  // a float32 subnormal
  EXPECT_EQ(e8m0_to_float(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(e8m0_to_float(255)));
  EXPECT_EQ(mxfp4_scale_byte(1.0f), 125);  // floor(log2 1) - 2 = -2
  EXPECT_EQ(mxfp4_scale_byte(6.0f), 127);  // floor(log2 6) - 2 = 0
  EXPECT_EQ(mxfp4_scale_byte(7.99f), 127);
  EXPECT_EQ(mxfp4_scale_byte(8.0f), 128);
  EXPECT_EQ(mxfp4_scale_byte(0.0f), 0);
  EXPECT_EQ(mxfp4_scale_byte(std::numeric_limits<float>::max()), 252);
  EXPECT_EQ(mxfp4_scale_byte(std::numeric_limits<float>::denorm_min()), 0);  // clamped
}

TEST(Fp4CodecTest, TablesRoundTripAndBreakTiesToEvenCodes) {
  for (uint8_t c = 0; c < 16; ++c) EXPECT_EQ(encode_nf4(nf4_to_float(c)), c) << int{c};
  for (uint8_t c = 0; c < 16; ++c) EXPECT_EQ(encode_bnb_fp4(bnb_fp4_to_float(c)), c) << int{c};
  EXPECT_EQ(nf4_to_float(0), -1.0f);
  EXPECT_EQ(nf4_to_float(7), 0.0f);
  EXPECT_EQ(nf4_to_float(15), 1.0f);
  // NF4 ties: exactly halfway between indices 7|8 and 8|9 go to index 8 (even).
  const double n7 = nf4_to_float(7), n8 = nf4_to_float(8), n9 = nf4_to_float(9);
  EXPECT_EQ(encode_nf4((n7 + n8) / 2), 8);
  EXPECT_EQ(encode_nf4((n8 + n9) / 2), 8);
  EXPECT_EQ(encode_nf4(std::nextafter((n8 + n9) / 2, 1.0)), 9);
  EXPECT_EQ(encode_nf4(-3.0), 0);  // saturation
  EXPECT_EQ(encode_nf4(3.0), 15);
  // bnb_fp4 ties: 1/192 (code 1) | 1/6 (code 6) -> 6; 1/4 (code 7) | 1/3 (code 4) -> 4.
  const double m1 = bnb_fp4_magnitude(1), m6 = bnb_fp4_magnitude(6);
  const double m7 = bnb_fp4_magnitude(7), m4 = bnb_fp4_magnitude(4);
  EXPECT_EQ(encode_bnb_fp4((m1 + m6) / 2), 6);
  EXPECT_EQ(encode_bnb_fp4((m7 + m4) / 2), 4);
  EXPECT_EQ(encode_bnb_fp4(-(m7 + m4) / 2), 12);
  EXPECT_EQ(encode_bnb_fp4(2.0), 3);  // 1.0
}

TEST(Fp4CodecTest, SixteenBitConversionsRoundToNearestEven) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie: even
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie: even
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_fp16_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_fp16_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16_bits(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16_bits(65520.0f), 0x7C00);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie: even
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(3.0f, -25)), 0x0002);  // tie: even
  EXPECT_EQ(float_to_fp16_bits(-1.5f), 0xBE00);
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    EXPECT_EQ(float_to_fp16_bits(fp16_bits_to_float(static_cast<uint16_t>(h))), h);
  }
}

TEST(Fp4QuantizeTest, RepresentableValuesRoundTripExactly) {
  // MXFP4: one block holding every E2M1 value (both signs) times 2^-3.
  {
    std::vector<float> w(32);
    for (int i = 0; i < 32; ++i) w[i] = std::ldexp(e2m1_to_float(i % 16), -3);
    auto q = quantize(w.data(), 1, 32, Format::kMxfp4);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(q->scales[0], 127 - 3);
    std::vector<float> back(32);
    ASSERT_TRUE(dequantize(*q, back.data()).ok());
    for (int i = 0; i < 32; ++i) EXPECT_EQ(bits(back[i]), bits(w[i])) << i;
  }
  // NVFP4: block 0 has amax 6 (block scale 448), block 1 amax 3 (block scale 224).
  {
    std::vector<float> w(32);
    for (int i = 0; i < 16; ++i) w[i] = e2m1_to_float(i);
    for (int i = 0; i < 16; ++i) w[16 + i] = 0.5f * e2m1_to_float(i);
    auto q = quantize(w.data(), 1, 32, Format::kNvfp4);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(q->tensor_scale, static_cast<float>(6.0 / 2688.0));
    EXPECT_EQ(e4m3_to_float(q->scales[0]), 448.0f);
    EXPECT_EQ(e4m3_to_float(q->scales[1]), 224.0f);
    for (int i = 0; i < 16; ++i) {
      EXPECT_EQ(q->codes[i / 2] >> (4 * (i % 2)) & 15, i) << i;
      EXPECT_EQ(q->codes[8 + i / 2] >> (4 * (i % 2)) & 15, i) << i;
    }
    std::vector<float> back(32);
    ASSERT_TRUE(dequantize(*q, back.data()).ok());
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], w[i], 1e-6 * std::fabs(w[i])) << i;
  }
  // NF4 and bnb_fp4: the table values times absmax 2.
  for (Format f : {Format::kNf4, Format::kBnbFp4}) {
    std::vector<float> w(64);
    for (int i = 0; i < 64; ++i) w[i] = 2.0f * element_to_float(f, i % 16);
    auto q = quantize(w.data(), 1, 64, f);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(float_from_bits(q->scale_bits(0, 0)), 2.0f);
    std::vector<float> back(64);
    ASSERT_TRUE(dequantize(*q, back.data()).ok());
    for (int i = 0; i < 64; ++i) EXPECT_EQ(bits(back[i]), bits(w[i])) << format_name(f) << " " << i;
  }
}

TEST(Fp4QuantizeTest, ZerosStayZeroAndSubnormalScalesWork) {
  for (Format f : kAllFormats) {
    std::vector<float> w(2 * 64, 0.0f);
    auto q = quantize(w.data(), 2, 64, f);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> back(w.size(), 1.0f);
    ASSERT_TRUE(dequantize(*q, back.data()).ok());
    for (float v : back) EXPECT_EQ(v, 0.0f) << format_name(f);
  }
  // NVFP4: a block 6e4 times smaller than the largest gets a subnormal E4M3 scale; one 1e7
  // smaller gets scale 0 and zero codes.
  std::vector<float> w(48);
  for (int i = 0; i < 16; ++i) w[i] = 6.0f * (i % 2 ? 1 : -1);
  for (int i = 0; i < 16; ++i) w[16 + i] = 1e-4f;
  for (int i = 0; i < 16; ++i) w[32 + i] = 6e-7f;
  auto q = quantize(w.data(), 1, 48, Format::kNvfp4);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_LT(q->scales[1], 0x08) << "expected a subnormal E4M3 scale";
  EXPECT_GT(q->scales[1], 0x00);
  EXPECT_EQ(q->scales[2], 0x00);
  std::vector<float> back(48);
  ASSERT_TRUE(dequantize(*q, back.data()).ok());
  for (int i = 16; i < 32; ++i) EXPECT_NEAR(back[i], 1e-4f, 1e-4f * 0.25f);
  for (int i = 32; i < 48; ++i) EXPECT_EQ(back[i], 0.0f);
}

TEST(Fp4QuantizeTest, Mxfp4NanScaleDecodesWholeBlockToNan) {
  PackedWeight w;
  w.format = Format::kMxfp4;
  w.n = 1;
  w.k = 64;
  w.codes.assign(32, 0x21);
  w.scales = {0xFF, 127};
  std::vector<float> out(64);
  ASSERT_TRUE(dequantize(w, out.data()).ok());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(bits(out[i]), kCanonicalNanBits) << i;
  for (int i = 32; i < 64; ++i) EXPECT_FALSE(std::isnan(out[i])) << i;
}

TEST(Fp4QuantizeTest, BadInputsNameTheFieldAndValue) {
  std::vector<float> w(4 * 64, 1.0f);
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find(needle), absl::string_view::npos) << s << " lacks " << needle;
  };
  expect_error(quantize(w.data(), 1, 24, Format::kMxfp4).status(), "k = 24");
  expect_error(quantize(w.data(), 1, 24, Format::kMxfp4).status(), "multiple of 32");
  expect_error(quantize(w.data(), 1, 48, Format::kNf4).status(), "multiple of 64");
  expect_error(quantize(w.data(), -1, 64, Format::kNf4).status(), "n = -1");
  w[64 + 3] = std::numeric_limits<float>::quiet_NaN();
  expect_error(quantize(w.data(), 4, 64, Format::kNvfp4).status(), "w[1, 3]");
  w[64 + 3] = -std::numeric_limits<float>::infinity();
  expect_error(quantize(w.data(), 4, 64, Format::kNf4).status(), "-inf");
  w[64 + 3] = 1.0f;

  auto q = quantize(w.data(), 4, 64, Format::kNvfp4);
  ASSERT_TRUE(q.ok());
  PackedWeight bad = *q;
  bad.codes.pop_back();
  expect_error(validate(bad), "codes: 127 bytes, expected n * k / 2 = 128");
  bad = *q;
  bad.scales.push_back(0);
  expect_error(validate(bad), "scales: 17 bytes");
  bad = *q;
  bad.tensor_scale = -1.0f;
  expect_error(validate(bad), "tensor_scale = -1");
  std::vector<float> out(4 * 64);
  expect_error(dequantize(bad, out.data()), "tensor_scale");

  auto n = quantize(w.data(), 4, 64, Format::kNf4);
  ASSERT_TRUE(n.ok());
  bad = *n;
  bad.tensor_scale = 2.0f;
  expect_error(validate(bad), "expected 1 for nf4");
  bad = *n;
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(&bad.scales[4 * 2], &inf, 4);
  expect_error(validate(bad), "absmax of row 2 block 0 = inf");
}

TEST(Fp4SerializeTest, RoundTripsEveryFormatAndRefusesDamage) {
  const std::vector<float> w = gaussian(3 * 128, 7);
  for (Format f : kAllFormats) {
    auto q = quantize(w.data(), 3, 128, f);
    ASSERT_TRUE(q.ok()) << q.status();
    const std::string blob = serialize(*q);
    EXPECT_EQ(blob.size(), kBlobHeaderBytes + q->codes.size() + q->scales.size());
    EXPECT_EQ(blob.compare(kBlobHeaderBytes, q->codes.size(),
                           std::string(q->codes.begin(), q->codes.end())),
              0);
    auto back = deserialize(blob);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->format, f);
    EXPECT_EQ(back->n, 3);
    EXPECT_EQ(back->k, 128);
    EXPECT_EQ(bits(back->tensor_scale), bits(q->tensor_scale));
    EXPECT_EQ(back->codes, q->codes);
    EXPECT_EQ(back->scales, q->scales);

    EXPECT_FALSE(deserialize(blob.substr(0, 10)).ok());
    EXPECT_FALSE(deserialize(blob.substr(0, blob.size() - 1)).ok());
    std::string damaged = blob;
    damaged[0] = 'X';
    EXPECT_NE(deserialize(damaged).status().message().find("magic"), absl::string_view::npos);
    damaged = blob;
    damaged[8] = 2;
    EXPECT_NE(deserialize(damaged).status().message().find("version = 2"), absl::string_view::npos);
    damaged = blob;
    damaged[12] = 9;
    EXPECT_NE(deserialize(damaged).status().message().find("format = 9"), absl::string_view::npos);
  }
}

// An independent float64 quantizer: brute-force nearest over every representable value (no
// tie rule: ties have probability zero for Gaussian data), with the scale rules re-derived.
struct Reference {
  static std::vector<double> e2m1() {
    std::vector<double> v;
    for (double m : {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}) v.push_back(m), v.push_back(-m);
    return v;
  }
  static std::vector<double> e4m3_positive() {
    std::vector<double> v;
    for (int e = 0; e < 16; ++e) {
      for (int m = 0; m < 8; ++m) {
        if (e == 15 && m == 7) continue;
        v.push_back(e == 0 ? m / 8.0 * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7));
      }
    }
    return v;
  }
  static double nearest(const std::vector<double>& values, double x) {
    double best = values[0];
    for (double v : values) {
      if (std::fabs(v - x) < std::fabs(best - x)) best = v;
    }
    return best;
  }
  static std::vector<double> dequantized(const std::vector<float>& w, int64_t n, int64_t k,
                                         Format f) {
    const int block = block_size(f);
    std::vector<double> out(w.size());
    double amax = 0;
    for (float x : w) amax = std::max(amax, std::fabs(double{x}));
    const double ts = static_cast<float>(amax / 2688.0);
    std::vector<double> table;
    if (f == Format::kNf4 || f == Format::kBnbFp4) {
      for (uint32_t c = 0; c < 16; ++c) table.push_back(element_to_float(f, c));
    }
    for (int64_t b = 0; b < n * k / block; ++b) {
      double bmax = 0;
      for (int i = 0; i < block; ++i) bmax = std::max(bmax, std::fabs(double{w[b * block + i]}));
      for (int i = 0; i < block; ++i) {
        const double x = w[b * block + i];
        double& y = out[b * block + i];
        if (f == Format::kNvfp4) {
          const double s = std::min(448.0, nearest(e4m3_positive(), bmax / 6 / ts));
          y = s == 0 ? 0 : nearest(e2m1(), x / (s * ts)) * s * ts;
        } else if (f == Format::kMxfp4) {
          const int e = std::max(-127, static_cast<int>(std::floor(std::log2(bmax))) - 2);
          y = nearest(e2m1(), x / std::pow(2.0, e)) * std::pow(2.0, e);
        } else {
          y = nearest(table, x / bmax) * bmax;
        }
      }
    }
    return out;
  }
};

double sqnr_db(const std::vector<float>& w, const std::vector<double>& q) {
  double signal = 0, noise = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    signal += double{w[i]} * w[i];
    noise += (w[i] - q[i]) * (w[i] - q[i]);
  }
  return 10 * std::log10(signal / noise);
}

TEST(Fp4QuantizeTest, GaussianSqnrMatchesAnIndependentFloat64Quantizer) {
  const int64_t n = 64, k = 1024;
  const std::vector<float> w = gaussian(n * k, 11, 0.02f);
  for (Format f : kAllFormats) {
    auto q = quantize(w.data(), n, k, f);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> back(w.size());
    ASSERT_TRUE(dequantize(*q, back.data()).ok());
    const double ours = sqnr_db(w, std::vector<double>(back.begin(), back.end()));
    const double reference = sqnr_db(w, Reference::dequantized(w, n, k, f));
    std::printf("SQNR %-8s %.3f dB (independent float64 quantizer: %.3f dB)\n", format_name(f),
                ours, reference);
    EXPECT_NEAR(ours, reference, 0.01) << format_name(f);
    EXPECT_GT(ours, 10.0) << format_name(f);  // far from a broken quantizer's ~0 dB
  }
}

TEST(Fp4LinearTest, ReferenceLinearMatchesFloat64) {
  const int64_t batch = 5, n = 33, k = 192;
  const std::vector<float> w = gaussian(n * k, 3);
  const std::vector<float> x = gaussian(batch * k, 4);
  const std::vector<float> bias = gaussian(n, 5);
  for (Format f : kAllFormats) {
    auto q = quantize(w.data(), n, k, f);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> deq(n * k);
    ASSERT_TRUE(dequantize(*q, deq.data()).ok());
    for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
      std::vector<float> y(batch * n, std::numeric_limits<float>::quiet_NaN());
      ASSERT_TRUE(linear(x.data(), batch, *q, b, y.data()).ok());
      double num = 0, den = 0;
      for (int64_t i = 0; i < batch; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double ref = b ? b[j] : 0.0;
          for (int64_t c = 0; c < k; ++c) ref += double{x[i * k + c]} * deq[j * k + c];
          num += (y[i * n + j] - ref) * (y[i * n + j] - ref);
          den += ref * ref;
        }
      }
      EXPECT_LT(std::sqrt(num / den), 1e-6) << format_name(f);
    }
  }
  PackedWeight empty;
  EXPECT_FALSE(linear(x.data(), -1, empty, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace vb::backends::fp4
