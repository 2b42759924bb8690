#include "client/fp4_linear.h"

#include <torch/nn/init.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/layer_util.h"
#include "common/digest.h"

namespace vb::nn {

namespace fp4 = backends::fp4;

namespace {

fp4::Format format_or_throw(const std::string& name) {
  absl::StatusOr<fp4::Format> format = fp4::parse_format(name);
  raise_if_error(format.status(), "FP4Linear options.format");
  return *format;
}

}  // namespace

FP4LinearImpl::FP4LinearImpl(FP4LinearOptions options_, std::shared_ptr<Router> router)
    : options(std::move(options_)),
      router_(std::move(router)),
      stats_(std::make_shared<CallStats>()) {
  TORCH_CHECK_VALUE(router_ != nullptr, "FP4Linear: router is null");
  torch::NoGradGuard no_grad;
  torch::Tensor weight = torch::empty({options.out_features(), options.in_features()});
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  pack(weight, format_or_throw(options.format()));
  if (options.bias()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
    bias = register_buffer("bias", torch::empty({options.out_features()}).uniform_(-bound, bound));
  }
}

FP4LinearImpl::FP4LinearImpl(const torch::nn::LinearImpl& linear, fp4::Format format,
                             std::shared_ptr<Router> router)
    : options(linear.options.in_features(), linear.options.out_features()),
      router_(std::move(router)),
      stats_(std::make_shared<CallStats>()) {
  TORCH_CHECK_VALUE(router_ != nullptr, "FP4Linear: router is null");
  options.bias(linear.options.bias()).format(fp4::format_name(format));
  torch::NoGradGuard no_grad;
  pack(linear.weight, format);
  if (options.bias()) {
    bias = register_buffer("bias", linear.bias.detach().to(torch::kFloat).clone());
  }
}

void FP4LinearImpl::check_quantizable(const torch::nn::LinearImpl& linear, fp4::Format format,
                                      const std::string& path) {
  const absl::Status shape =
      fp4::check_shape(format, linear.options.out_features(), linear.options.in_features());
  TORCH_CHECK_VALUE(shape.ok(), "patch_model_fp4: layer ", path, " (in_features ",
                    linear.options.in_features(), "): ", std::string(shape.message()));
}

void FP4LinearImpl::pack(const torch::Tensor& weight, fp4::Format format) {
  const torch::Tensor w = weight.detach().to(torch::kCPU, torch::kFloat).contiguous();
  absl::StatusOr<fp4::PackedWeight> quantized =
      fp4::quantize(w.data_ptr<float>(), w.size(0), w.size(1), format);
  raise_if_error(quantized.status(), "FP4Linear quantize");
  const std::string blob = fp4::serialize(*quantized);
  torch::Tensor bytes = torch::empty({static_cast<int64_t>(blob.size())}, torch::kByte);
  std::memcpy(bytes.data_ptr(), blob.data(), blob.size());
  packed = register_buffer("packed", bytes);
  digest_ = sha256_hex(blob.data(), blob.size());
}

torch::Tensor FP4LinearImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK_VALUE(!input.requires_grad(),
                    "FP4Linear is for inference: call it under torch::NoGradGuard (its input "
                    "requires grad)");
  OpCall call;
  call.args.op = "fp4_linear.forward";
  call.args.inputs.push_back({"input", input.contiguous()});
  if (bias.defined()) call.args.inputs.push_back({"bias", bias.to(input.scalar_type())});
  call.weights.push_back(WeightRef{digest_, packed, ""});
  absl::StatusOr<backends::NamedTensors> outputs = router_->run_op(call, stats_.get());
  raise_if_error(outputs.status(), "FP4Linear forward");
  return outputs->at(0).tensor;
}

torch::Tensor FP4LinearImpl::dequantized_weight() const {
  absl::StatusOr<fp4::PackedWeight> weight = fp4::deserialize(absl::string_view(
      static_cast<const char*>(packed.data_ptr()), static_cast<size_t>(packed.numel())));
  raise_if_error(weight.status(), "FP4Linear weight");
  torch::Tensor out = torch::empty({weight->n, weight->k});
  raise_if_error(fp4::dequantize(*weight, out.data_ptr<float>()), "FP4Linear weight");
  return out;
}

void FP4LinearImpl::pretty_print(std::ostream& stream) const {
  stream << "vb::nn::FP4Linear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha
         << options.bias() << ", format=" << options.format() << ")";
}

}  // namespace vb::nn
