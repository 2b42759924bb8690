#include "client/cloud_linear.h"

#include "absl/strings/str_cat.h"
#include "client/cloud_target.h"

namespace vb::nn {

std::shared_ptr<Router> make_cloud_router(const CloudLinearOptions& options) {
  absl::StatusOr<cloud::ModelArtsOptions> cloud =
      options.cloud() ? absl::StatusOr<cloud::ModelArtsOptions>(*options.cloud())
                      : cloud::ModelArtsOptions::from_env();
  TORCH_CHECK_VALUE(cloud.ok(), "CloudLinear: ", cloud.status().ToString());
  absl::StatusOr<std::shared_ptr<CloudTarget>> target = CloudTarget::create(*cloud);
  TORCH_CHECK_VALUE(target.ok(), "CloudLinear: ", target.status().ToString());
  std::vector<std::shared_ptr<Target>> targets = {*target};
  if (options.fallback_local()) targets.push_back(std::make_shared<LocalTarget>());
  return std::make_shared<Router>(std::move(targets));
}

CloudLinearImpl::CloudLinearImpl(CloudLinearOptions options)
    : RemoteLinearImpl(
          RemoteLinearOptions(options.in_features(), options.out_features()).bias(options.bias()),
          make_cloud_router(options)),
      cloud_options(std::move(options)) {}

void CloudLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "vb::nn::CloudLinear(in_features=" << cloud_options.in_features()
         << ", out_features=" << cloud_options.out_features()
         << ", bias=" << (cloud_options.bias() ? "true" : "false")
         << ", target=" << router()->targets().front()->name()
         << ", fallback_local=" << (cloud_options.fallback_local() ? "true" : "false") << ")";
}

}  // namespace vb::nn
