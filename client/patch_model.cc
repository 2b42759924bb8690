#include "client/patch_model.h"

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/fp4_linear.h"
#include "client/remote_linear.h"

namespace vb {
namespace {

struct Site {
  torch::nn::Module* parent;
  std::string name;  // child name within parent
  std::string path;  // dotted path from the root
  std::shared_ptr<torch::nn::LinearImpl> linear;
};

void find_linears(torch::nn::Module& module, const std::string& prefix, std::vector<Site>* sites) {
  for (const auto& item : module.named_children()) {
    const std::string path = prefix.empty() ? item.key() : absl::StrCat(prefix, ".", item.key());
    if (auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value())) {
      sites->push_back({&module, item.key(), path, linear});
    } else {
      find_linears(*item.value(), path, sites);
    }
  }
}

bool is_container(const torch::nn::Module& module) {
  return dynamic_cast<const torch::nn::SequentialImpl*>(&module) != nullptr ||
         dynamic_cast<const torch::nn::ModuleListImpl*>(&module) != nullptr;
}

// A container calls whatever sits in its slot, so swapping there always takes effect. Any
// other parent calls its children through member variables: if anything besides the
// children_ map (and `site.linear` here) holds the Linear, a member does, and the swap would
// not take effect.
bool swappable(const Site& site) {
  return is_container(*site.parent) || site.linear.use_count() <= 2;
}

template <typename Layer>
void replace_in_container(torch::nn::Module& parent, const std::string& name,
                          const std::shared_ptr<Layer>& remote) {
  const size_t index = std::stoul(name);
  if (auto* sequential = dynamic_cast<torch::nn::SequentialImpl*>(&parent)) {
    *(sequential->begin() + static_cast<std::ptrdiff_t>(index)) = torch::nn::AnyModule(remote);
  } else if (auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(&parent)) {
    *(list->begin() + static_cast<std::ptrdiff_t>(index)) = remote;
  }
}

// Swaps every Linear for make(linear): all or nothing.
template <typename Make>
PatchReport patch_with(torch::nn::Module& module, const char* layer_name, Make&& make) {
  std::vector<Site> sites;
  find_linears(module, "", &sites);

  // Check every site before changing any, so a refusal leaves the model as it was.
  std::vector<std::string> unreachable;
  for (const Site& site : sites) {
    if (!swappable(site)) unreachable.push_back(site.path);
  }
  TORCH_CHECK_VALUE(
      unreachable.empty(), "patch_model: cannot swap Linear layer(s) ",
      absl::StrJoin(unreachable, ", "),
      ": they are held outside a Sequential or ModuleList (e.g. as a torch::nn::Linear member), "
      "so the parent's forward() would keep calling the local layer. Build those layers as ",
      layer_name, ", or hold them in a Sequential/ModuleList.");

  PatchReport report;
  for (Site& site : sites) {
    auto remote = make(*site.linear);
    replace_in_container(*site.parent, site.name, remote);
    site.parent->replace_module(site.name, remote);
    report.replaced.push_back(site.path);
  }
  return report;
}

}  // namespace

PatchReport patch_model(torch::nn::Module& module, std::shared_ptr<Router> router) {
  TORCH_CHECK_VALUE(router != nullptr, "patch_model: router is null");
  return patch_with(module, "vb::nn::RemoteLinear", [&](const torch::nn::LinearImpl& linear) {
    return std::make_shared<nn::RemoteLinearImpl>(linear, router);
  });
}

PatchReport patch_model_fp4(torch::nn::Module& module, backends::fp4::Format format,
                            std::shared_ptr<Router> router) {
  TORCH_CHECK_VALUE(router != nullptr, "patch_model_fp4: router is null");
  // Quantize every layer first: a weight the format refuses (k not a multiple of its block)
  // stops the patch before any layer changed.
  std::vector<Site> sites;
  find_linears(module, "", &sites);
  for (const Site& site : sites) {
    nn::FP4LinearImpl::check_quantizable(*site.linear, format, site.path);
  }
  return patch_with(module, "vb::nn::FP4Linear", [&](const torch::nn::LinearImpl& linear) {
    return std::make_shared<nn::FP4LinearImpl>(linear, format, router);
  });
}

}  // namespace vb
