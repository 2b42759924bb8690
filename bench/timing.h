// Timing helpers shared by the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace vb::bench {

// Median wall time of `run` in milliseconds over `repetitions`, after one warm-up run that
// pays for first-touch allocation, connections and thread pools.
inline double median_ms(int repetitions, const std::function<void()>& run) {
  run();
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace vb::bench
