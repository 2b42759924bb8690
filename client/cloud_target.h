// Calls that run on a Huawei Cloud ModelArts service (a vbd packaged as a custom image, behind
// the API gateway), through vbd's HTTP face. Weights go up once per digest, in parts under the
// gateway's body limit; a batch whose request would exceed the limit is split into calls of
// whole rows (outputs concatenated, weight and bias gradients summed), and a single row that
// alone exceeds it is refused with RESOURCE_EXHAUSTED, so the router falls back.
//
//   auto cloud = *vb::CloudTarget::create(*vb::cloud::ModelArtsOptions::from_env());
//   auto router = std::make_shared<vb::Router>(
//       std::vector<std::shared_ptr<vb::Target>>{cloud, std::make_shared<vb::LocalTarget>()});
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "client/target.h"
#include "cloud/modelarts_client.h"

namespace vb {

class CloudTarget final : public Target {
 public:
  // INVALID_ARGUMENT naming what is missing from `options` (see ModelArtsOptions::validate).
  static absl::StatusOr<std::shared_ptr<CloudTarget>> create(cloud::ModelArtsOptions options);

  const std::string& name() const override { return client_->name(); }
  TargetKind kind() const override { return TargetKind::kCloud; }
  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardCall& call,
                                            TransferCount* transfer) override;
  absl::StatusOr<backends::LinearGrads> linear_backward(const LinearBackwardCall& call,
                                                        TransferCount* transfer) override;

  cloud::ModelArtsClient& client() { return *client_; }

 private:
  explicit CloudTarget(std::unique_ptr<cloud::ModelArtsClient> client)
      : client_(std::move(client)) {}

  absl::Status upload(const WeightRef& weight, TransferCount* transfer);
  // Runs `call` with the weight held by the service: uploads it first if this target has not
  // yet, and again when the service answers NOT_FOUND (a restarted or different instance).
  template <typename T, typename Fn>
  absl::StatusOr<T> with_weight(const WeightRef& weight, TransferCount* transfer, Fn&& call);

  std::unique_ptr<cloud::ModelArtsClient> client_;
  std::mutex mutex_;
  std::unordered_set<std::string> held_;
};

}  // namespace vb
