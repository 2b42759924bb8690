#include "backends/ops.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "backends/attention_op.h"
#include "backends/left_spin_op.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"

namespace vb::backends {
namespace {

struct OpDef {
  const char* name;
  std::vector<std::string> required;
  std::vector<std::string> optional;
  size_t weights;
  std::vector<std::string> attributes;
  std::vector<std::string> outputs;
};

const std::vector<OpDef>& op_defs() {
  static const std::vector<OpDef> defs = {
      {"attention.forward",
       {"query", "key", "value"},
       {"mask"},
       0,
       {"is_causal", "scale"},
       {"output"}},
      {"attention.backward",
       {"query", "key", "value", "grad_output"},
       {"mask"},
       0,
       {"is_causal", "scale"},
       {"grad_query", "grad_key", "grad_value"}},
      {"left_spin.forward",
       {"u", "du"},
       {"du_prev"},
       0,
       {"alpha", "tau", "beta", "w1", "w2", "eps"},
       {"output"}},
      {"left_spin.backward",
       {"u", "du", "grad_output"},
       {"du_prev"},
       0,
       {"alpha", "tau", "beta", "w1", "w2", "eps"},
       {"grad_u", "grad_du"}},
      {"fp4_linear.forward", {"input"}, {"bias"}, 1, {}, {"output"}},
  };
  return defs;
}

const OpDef* find_op(const std::string& op) {
  for (const OpDef& def : op_defs()) {
    if (op == def.name) return &def;
  }
  return nullptr;
}

double attribute(const OpArgs& args, const char* name, double fallback) {
  auto it = args.attributes.find(name);
  return it == args.attributes.end() ? fallback : it->second;
}

LeftSpinParams left_spin_params(const OpArgs& args) {
  LeftSpinParams p;
  p.alpha = attribute(args, "alpha", p.alpha);
  p.tau = attribute(args, "tau", p.tau);
  p.beta = attribute(args, "beta", p.beta);
  p.w1 = attribute(args, "w1", p.w1);
  p.w2 = attribute(args, "w2", p.w2);
  p.eps = attribute(args, "eps", p.eps);
  return p;
}

absl::StatusOr<AttentionArgs> attention_args(const OpArgs& args) {
  AttentionArgs a;
  a.query = find_input(args.inputs, "query");
  a.key = find_input(args.inputs, "key");
  a.value = find_input(args.inputs, "value");
  a.mask = find_input(args.inputs, "mask");
  const double causal = attribute(args, "is_causal", 0);
  if (causal != 0 && causal != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("attribute is_causal = ", causal, ": expected 0 or 1"));
  }
  a.is_causal = causal == 1;
  if (auto it = args.attributes.find("scale"); it != args.attributes.end()) a.scale = it->second;
  return a;
}

// The dequantized weight as float32 [n, k] on the CPU.
absl::StatusOr<at::Tensor> dequantized(const at::Tensor& blob) {
  const at::Tensor bytes = blob.contiguous();
  VB_ASSIGN_OR_RETURN(const fp4::PackedWeight weight,
                      fp4::deserialize(absl::string_view(static_cast<const char*>(bytes.data_ptr()),
                                                         static_cast<size_t>(bytes.numel()))));
  at::Tensor out = at::empty({weight.n, weight.k}, at::kFloat);
  VB_RETURN_IF_ERROR(fp4::dequantize(weight, out.data_ptr<float>()));
  return out;
}

absl::StatusOr<NamedTensors> fp4_linear(const OpArgs& args) {
  const at::Tensor& blob = args.weights.at(0);
  if (!blob.device().is_cpu()) {
    return absl::InvalidArgumentError(
        "fp4_linear.forward: this backend computes 4-bit weights on the CPU only");
  }
  const at::Tensor input = find_input(args.inputs, "input");
  const at::Tensor bias = find_input(args.inputs, "bias");
  const at::Tensor bytes = blob.contiguous();
  VB_ASSIGN_OR_RETURN(
      const fp4::BlobHeader header,
      fp4::parse_blob_header(absl::string_view(static_cast<const char*>(bytes.data_ptr()),
                                               static_cast<size_t>(bytes.numel())),
                             static_cast<uint64_t>(bytes.numel())));
  VB_RETURN_IF_ERROR(check_fp4_linear(header, input, bias));
  VB_ASSIGN_OR_RETURN(const at::Tensor w, dequantized(bytes));
  // float32 accumulation over the exactly dequantized weight, rounded once to the input's
  // dtype, as the GPU kernels do.
  const at::ScalarType compute = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = at::linear(input.to(compute), w.to(compute),
                            bias.defined() ? bias.to(compute) : at::Tensor());
  return NamedTensors{{"output", y.to(input.scalar_type()).contiguous()}};
}

}  // namespace

std::vector<std::string> op_output_names(const std::string& op) {
  const OpDef* def = find_op(op);
  return def == nullptr ? std::vector<std::string>() : def->outputs;
}

at::Tensor find_input(const NamedTensors& inputs, absl::string_view name) {
  for (const NamedTensor& t : inputs) {
    if (t.name == name) return t.tensor;
  }
  return at::Tensor();
}

absl::Status check_op_header(const std::string& op, const std::vector<std::string>& input_names,
                             size_t weights, const std::map<std::string, double>& attributes) {
  const OpDef* def = find_op(op);
  if (def == nullptr) {
    std::vector<std::string> names;
    for (const OpDef& d : op_defs()) names.push_back(d.name);
    return absl::InvalidArgumentError(
        absl::StrCat("op = \"", op, "\": expected one of ", absl::StrJoin(names, ", ")));
  }
  for (const std::string& name : input_names) {
    const bool known = std::count(def->required.begin(), def->required.end(), name) +
                           std::count(def->optional.begin(), def->optional.end(), name) >
                       0;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": input \"", name, "\" is not one of ", absl::StrJoin(def->required, ", "), " (",
          absl::StrJoin(def->optional, ", "), " optional)"));
    }
    if (std::count(input_names.begin(), input_names.end(), name) > 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": input \"", name, "\" given twice"));
    }
  }
  for (const std::string& name : def->required) {
    if (std::count(input_names.begin(), input_names.end(), name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": input \"", name, "\" is missing"));
    }
  }
  if (weights != def->weights) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", weights, " weight(s) named, expected ", def->weights));
  }
  for (const auto& [name, value] : attributes) {
    if (std::count(def->attributes.begin(), def->attributes.end(), name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": attribute \"", name, "\" is not one of ", absl::StrJoin(def->attributes, ", ")));
    }
    if (!std::isfinite(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": attribute ", name, " = ", value, ": expected a finite number"));
    }
  }
  return absl::OkStatus();
}

absl::Status check_fp4_linear(const fp4::BlobHeader& weight, const at::Tensor& input,
                              const at::Tensor& bias) {
  VB_ASSIGN_OR_RETURN(const TensorSpec x, spec_of(input, "input"));
  if (x.shape.back() != weight.k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input = ", x.to_string(), ": its last dimension must be the weight's k = ", weight.k, " (",
        fp4::format_name(weight.format), " weight [", weight.n, ", ", weight.k, "])"));
  }
  if (bias.defined()) {
    VB_ASSIGN_OR_RETURN(const TensorSpec b, spec_of(bias, "bias"));
    if (b.shape != std::vector<int64_t>{weight.n} || b.dtype != x.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("bias = ", b.to_string(), ": expected ",
                                                     dtype_name(x.dtype), "[", weight.n, "]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> run_op(const OpArgs& args) {
  std::vector<std::string> names;
  for (const NamedTensor& t : args.inputs) names.push_back(t.name);
  VB_RETURN_IF_ERROR(check_op_header(args.op, names, args.weights.size(), args.attributes));
  try {
    if (args.op == "attention.forward") {
      VB_ASSIGN_OR_RETURN(const AttentionArgs a, attention_args(args));
      VB_ASSIGN_OR_RETURN(at::Tensor out, attention_forward(a));
      return NamedTensors{{"output", out.contiguous()}};
    }
    if (args.op == "attention.backward") {
      VB_ASSIGN_OR_RETURN(const AttentionArgs a, attention_args(args));
      VB_ASSIGN_OR_RETURN(AttentionGrads g,
                          attention_backward(a, find_input(args.inputs, "grad_output")));
      return NamedTensors{{"grad_query", g.grad_query.contiguous()},
                          {"grad_key", g.grad_key.contiguous()},
                          {"grad_value", g.grad_value.contiguous()}};
    }
    const LeftSpinParams params = left_spin_params(args);
    if (args.op == "left_spin.forward") {
      VB_ASSIGN_OR_RETURN(
          at::Tensor out,
          left_spin_forward(find_input(args.inputs, "u"), find_input(args.inputs, "du"),
                            find_input(args.inputs, "du_prev"), params));
      return NamedTensors{{"output", out.contiguous()}};
    }
    if (args.op == "left_spin.backward") {
      VB_ASSIGN_OR_RETURN(
          LeftSpinGrads g,
          left_spin_backward(find_input(args.inputs, "u"), find_input(args.inputs, "du"),
                             find_input(args.inputs, "du_prev"), params,
                             find_input(args.inputs, "grad_output")));
      return NamedTensors{{"grad_u", g.grad_u.contiguous()}, {"grad_du", g.grad_du.contiguous()}};
    }
    return fp4_linear(args);
  } catch (...) {
    return status_from_exception(args.op, std::current_exception());
  }
}

}  // namespace vb::backends
