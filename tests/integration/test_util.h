// Small helpers shared by the integration tests.
#pragma once

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "client/router.h"

namespace vb::testing {

// Norm-wise relative error ||actual - expected|| / ||expected||, computed in float64.
inline double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

inline std::shared_ptr<Router> make_router(const std::vector<std::string>& targets,
                                           BreakerOptions breaker = {}) {
  ClientOptions client;
  client.call_timeout = std::chrono::seconds(60);
  absl::StatusOr<std::shared_ptr<Router>> router = Router::create(targets, client, breaker);
  EXPECT_TRUE(router.ok()) << router.status();
  return *router;
}

}  // namespace vb::testing
