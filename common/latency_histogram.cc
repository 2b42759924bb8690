#include "common/latency_histogram.h"

#include <algorithm>
#include <cmath>

namespace vb {
namespace {

int bucket_of(double microseconds) {
  if (!(microseconds > 1.0)) return 0;  // also catches NaN
  const int bucket =
      1 + static_cast<int>(std::log2(microseconds) * LatencyHistogram::kBucketsPerOctave);
  return std::min(bucket, LatencyHistogram::kBuckets - 1);
}

// Geometric middle of a bucket, in microseconds.
double bucket_middle_us(int bucket) {
  if (bucket == 0) return 1.0;
  return std::exp2((bucket - 0.5) / LatencyHistogram::kBucketsPerOctave);
}

}  // namespace

void LatencyHistogram::record_us(double microseconds) {
  ++buckets_[bucket_of(microseconds)];
  ++count_;
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
  for (int i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
  count_ += other.count_;
}

double LatencyHistogram::quantile_ms(double q) const {
  if (count_ == 0) return 0;
  // Rank of the sample at quantile q, 1-based: the smallest sample with at least q of all
  // samples at or below it.
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * count_)));
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= rank) return bucket_middle_us(i) / 1000.0;
  }
  return bucket_middle_us(kBuckets - 1) / 1000.0;
}

}  // namespace vb
