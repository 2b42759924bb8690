// A Linear layer whose calls go to a Huawei Cloud ModelArts service, falling back to this
// process when the cloud fails (fallback_local, on by default). Statistics count cloud and
// local calls, fallbacks and the ratios like every RemoteLinear.
//
//   // HUAWEI_CLOUD_ENDPOINT, HUAWEI_CLOUD_SERVICE_ID and credentials in the environment:
//   vb::nn::CloudLinear layer(vb::nn::CloudLinearOptions(768, 768));
//   torch::Tensor y = layer(torch::randn({64, 768}));
//   std::cout << layer->get_stats().to_table();  // cloud_calls, local_calls, cloud_ratio ...
#pragma once

#include <optional>

#include "client/remote_linear.h"
#include "cloud/modelarts_client.h"

namespace vb::nn {

struct CloudLinearOptions {
  CloudLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  // Run the call locally when the cloud fails (and count it as a fallback).
  TORCH_ARG(bool, fallback_local) = true;
  // The service; unset reads ModelArtsOptions::from_env().
  TORCH_ARG(std::optional<cloud::ModelArtsOptions>, cloud) = std::nullopt;
};

// A router whose targets are the cloud service and, with fallback_local, this process.
// Throws c10::ValueError saying what is missing when the cloud options are incomplete.
std::shared_ptr<Router> make_cloud_router(const CloudLinearOptions& options);

class CloudLinearImpl : public RemoteLinearImpl {
 public:
  explicit CloudLinearImpl(CloudLinearOptions options);
  void pretty_print(std::ostream& stream) const override;

  CloudLinearOptions cloud_options;
};

TORCH_MODULE(CloudLinear);

}  // namespace vb::nn
