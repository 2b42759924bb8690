// A mergeable latency histogram with logarithmic buckets, for p50/p99 figures that can be
// summed over layers, targets and ops without keeping every sample.
#pragma once

#include <array>
#include <cstdint>

namespace vb {

class LatencyHistogram {
 public:
  // Eight buckets per power of two from 1 us to about 2^33 us (2.4 h): any reported
  // percentile is within 4.5% of a real sample's value.
  static constexpr int kBucketsPerOctave = 8;
  static constexpr int kOctaves = 33;
  static constexpr int kBuckets = kBucketsPerOctave * kOctaves + 1;

  void record_us(double microseconds);
  void merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  // The q-quantile (0 < q <= 1) in milliseconds; 0 when empty.
  double quantile_ms(double q) const;

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
};

}  // namespace vb
