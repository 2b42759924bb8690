// The attention and left-spin ops against float64 references written here with plain ATen
// ops, independent of the ops' own code, plus their refusals of bad inputs.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/version.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "backends/attention_op.h"
#include "backends/left_spin_op.h"

namespace vb::backends {
namespace {

using ::testing::HasSubstr;

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor e = expected.to(at::kCPU, at::kDouble);
  return (actual.to(at::kCPU, at::kDouble) - e).norm().item<double>() / e.norm().item<double>();
}

std::vector<at::Tensor> grads_of(const at::Tensor& out, const std::vector<at::Tensor>& inputs,
                                 const at::Tensor& grad_output) {
  return torch::autograd::grad({out}, inputs, {grad_output});
}

at::Tensor leaf64(const at::Tensor& t) { return t.to(at::kDouble).detach().requires_grad_(true); }

void expect_refused(const absl::Status& status, const std::string& field) {
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(field));
}

// ---------------------------------------------------------------------------------------------
// Attention

// softmax(q k^T * scale + bias) v in float64, with PyTorch's is_causal (top-left) and bool
// masks turned into -inf biases.
at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& mask, bool is_causal, double scale) {
  const int64_t L = q.size(-2);
  const int64_t S = k.size(-2);
  at::Tensor bias = at::zeros({L, S}, at::kDouble);
  const double minus_inf = -std::numeric_limits<double>::infinity();
  if (is_causal) {
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = i + 1; j < S; ++j) bias[i][j] = minus_inf;
    }
  }
  if (mask.defined()) {
    bias = mask.scalar_type() == at::kBool
               ? at::where(mask, at::zeros({}, at::kDouble), at::full({}, minus_inf, at::kDouble))
               : mask.to(at::kDouble);
  }
  const at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale + bias;
  return at::matmul(at::softmax(scores, -1), v);
}

enum class MaskKind { kNone, kBool, kBoolBroadcast, kFloat };

struct AttentionCase {
  const char* name;
  int64_t L, S, E, Ev;
  MaskKind mask;
  bool is_causal;
  std::optional<double> scale;
};

constexpr int64_t kBatch = 2;
constexpr int64_t kHeads = 3;

at::Tensor make_mask(MaskKind kind, int64_t L, int64_t S, at::ScalarType dtype) {
  switch (kind) {
    case MaskKind::kNone:
      return {};
    case MaskKind::kBool:
    case MaskKind::kBoolBroadcast: {
      const std::vector<int64_t> shape = kind == MaskKind::kBool
                                             ? std::vector<int64_t>{L, S}
                                             : std::vector<int64_t>{kBatch, 1, L, S};
      at::Tensor mask = at::rand(shape) > 0.4;
      mask.select(-1, 0).fill_(true);  // no row fully masked: that case has its own test
      return mask;
    }
    case MaskKind::kFloat: {
      at::Tensor mask = at::randn({L, S});
      mask.masked_fill_(at::rand({L, S}) > 0.7, -std::numeric_limits<double>::infinity());
      mask.select(-1, 0).fill_(0.5);
      return mask.to(dtype);
    }
  }
  return {};
}

// The op runs on `device`; the reference on CPU copies in float64.
void check_attention_case(const AttentionCase& c, at::ScalarType dtype, double tolerance,
                          at::Device device = at::kCPU) {
  SCOPED_TRACE(c.name);
  AttentionArgs args;
  args.query = at::randn({kBatch, kHeads, c.L, c.E}).to(dtype);
  args.key = at::randn({kBatch, kHeads, c.S, c.E}).to(dtype);
  args.value = at::randn({kBatch, kHeads, c.S, c.Ev}).to(dtype);
  args.mask = make_mask(c.mask, c.L, c.S, dtype);
  args.is_causal = c.is_causal;
  args.scale = c.scale;
  const at::Tensor grad_output = at::randn({kBatch, kHeads, c.L, c.Ev}).to(dtype);

  AttentionArgs on_device = args;
  for (at::Tensor* t : {&on_device.query, &on_device.key, &on_device.value, &on_device.mask}) {
    if (t->defined()) *t = t->to(device);
  }
  absl::StatusOr<at::Tensor> out = attention_forward(on_device);
  ASSERT_TRUE(out.ok()) << out.status();
  absl::StatusOr<AttentionGrads> grads = attention_backward(on_device, grad_output.to(device));
  ASSERT_TRUE(grads.ok()) << grads.status();
  EXPECT_EQ(out->device().type(), device.type());
  EXPECT_EQ(grads->grad_key.device().type(), device.type());

  const at::Tensor q = leaf64(args.query), k = leaf64(args.key), v = leaf64(args.value);
  const double scale = c.scale.value_or(1.0 / std::sqrt(static_cast<double>(c.E)));
  const at::Tensor expected = reference_attention(q, k, v, args.mask, c.is_causal, scale);
  const std::vector<at::Tensor> expected_grads =
      grads_of(expected, {q, k, v}, grad_output.to(at::kDouble));

  EXPECT_EQ(out->scalar_type(), dtype);
  EXPECT_EQ(out->sizes(), expected.sizes());
  EXPECT_EQ(grads->grad_query.scalar_type(), dtype);
  const double errors[] = {relative_error(*out, expected),
                           relative_error(grads->grad_query, expected_grads[0]),
                           relative_error(grads->grad_key, expected_grads[1]),
                           relative_error(grads->grad_value, expected_grads[2])};
  std::printf("attention %-4s %-9s %-19s out %.2e  dq %.2e  dk %.2e  dv %.2e\n",
              device.str().c_str(), c10::toString(dtype), c.name, errors[0], errors[1], errors[2],
              errors[3]);
  for (double error : errors) EXPECT_LT(error, tolerance);
}

const AttentionCase kAttentionCases[] = {
    {"no mask", 7, 7, 16, 16, MaskKind::kNone, false, std::nullopt},
    {"causal", 7, 7, 16, 16, MaskKind::kNone, true, std::nullopt},
    {"causal L<S", 5, 9, 16, 8, MaskKind::kNone, true, std::nullopt},
    {"causal L>S", 9, 5, 16, 8, MaskKind::kNone, true, std::nullopt},
    {"bool mask", 7, 7, 16, 16, MaskKind::kBool, false, std::nullopt},
    {"bool mask [B,1,L,S]", 6, 11, 8, 12, MaskKind::kBoolBroadcast, false, std::nullopt},
    {"float mask", 7, 7, 16, 16, MaskKind::kFloat, false, std::nullopt},
    {"scale 0.37", 7, 7, 16, 16, MaskKind::kNone, false, 0.37},
    {"L != S, Ev != E", 5, 13, 16, 24, MaskKind::kNone, false, std::nullopt},
};

TEST(AttentionOpTest, Float32MatchesFloat64Reference) {
  std::printf("attention implementation: %s\n", attention_implementation());
  for (const AttentionCase& c : kAttentionCases) check_attention_case(c, at::kFloat, 1e-5);
}

TEST(AttentionOpTest, BFloat16MatchesFloat64Reference) {
  for (const AttentionCase& c : kAttentionCases) check_attention_case(c, at::kBFloat16, 1e-2);
}

TEST(AttentionOpTest, Float64MatchesReference) {
  for (const AttentionCase& c : kAttentionCases) check_attention_case(c, at::kDouble, 1e-12);
}

// On a GPU, LibTorch >= 2 may pick flash, memory-efficient or cuDNN kernels instead of math.
TEST(AttentionOpTest, CudaMatchesFloat64Reference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const AttentionCase& c : kAttentionCases) {
    check_attention_case(c, at::kFloat, 1e-4, at::kCUDA);
    check_attention_case(c, at::kHalf, 5e-3, at::kCUDA);
    check_attention_case(c, at::kBFloat16, 1e-2, at::kCUDA);
  }
}

TEST(AttentionOpTest, ImplementationFollowsTheLibTorchVersion) {
#if TORCH_VERSION_MAJOR >= 2
  EXPECT_STREQ(attention_implementation(), "sdpa");
#else
  EXPECT_STREQ(attention_implementation(), "math");
#endif
}

// A query row that may attend nothing gives zeros and sends back zero gradients; the other
// rows are untouched by it.
TEST(AttentionOpTest, FullyMaskedRowGivesZerosNotNaN) {
  std::vector<at::Device> devices = {at::kCPU};
  if (at::hasCUDA()) devices.emplace_back(at::kCUDA);
  for (const at::Device device : devices) {
    for (const bool additive : {false, true}) {
      SCOPED_TRACE(additive ? "additive mask" : "bool mask");
      AttentionArgs args;
      args.query = at::randn({2, 5, 8});
      args.key = at::randn({2, 6, 8});
      args.value = at::randn({2, 6, 4});
      at::Tensor allowed = at::ones({5, 6}, at::kBool);
      allowed[3].fill_(false);
      allowed[1][2] = false;
      args.mask =
          additive ? at::zeros({5, 6}).masked_fill(allowed.logical_not(), -INFINITY) : allowed;
      const at::Tensor grad_output = at::randn({2, 5, 4});
      AttentionArgs on_device;
      on_device.query = args.query.to(device);
      on_device.key = args.key.to(device);
      on_device.value = args.value.to(device);
      on_device.mask = args.mask.to(device);
      absl::StatusOr<at::Tensor> out = attention_forward(on_device);
      ASSERT_TRUE(out.ok()) << out.status();
      absl::StatusOr<AttentionGrads> grads = attention_backward(on_device, grad_output.to(device));
      ASSERT_TRUE(grads.ok()) << grads.status();
      EXPECT_TRUE(out->isfinite().all().item<bool>());
      EXPECT_EQ(out->select(1, 3).abs().max().item<double>(), 0.0);
      EXPECT_TRUE(grads->grad_query.isfinite().all().item<bool>());
      EXPECT_TRUE(grads->grad_key.isfinite().all().item<bool>());
      EXPECT_TRUE(grads->grad_value.isfinite().all().item<bool>());
      EXPECT_EQ(grads->grad_query.select(1, 3).abs().max().item<double>(), 0.0);

      // The other rows equal the reference without row 3.
      const at::Tensor keep = at::tensor(std::vector<int64_t>{0, 1, 2, 4});
      const at::Tensor q = leaf64(args.query.index_select(1, keep));
      const at::Tensor k = leaf64(args.key), v = leaf64(args.value);
      const at::Tensor expected = reference_attention(q, k, v, args.mask.index_select(0, keep),
                                                      false, 1.0 / std::sqrt(8.0));
      const std::vector<at::Tensor> expected_grads =
          grads_of(expected, {q, k, v}, grad_output.index_select(1, keep).to(at::kDouble));
      const double errors[] = {
          relative_error(out->cpu().index_select(1, keep), expected),
          relative_error(grads->grad_query.cpu().index_select(1, keep), expected_grads[0]),
          relative_error(grads->grad_key, expected_grads[1]),
          relative_error(grads->grad_value, expected_grads[2])};
      std::printf("attention %s fully masked row (%s): out %.2e  dq %.2e  dk %.2e  dv %.2e\n",
                  device.str().c_str(), additive ? "additive" : "bool", errors[0], errors[1],
                  errors[2], errors[3]);
      for (double error : errors) EXPECT_LT(error, device.is_cuda() ? 1e-4 : 1e-5);
    }
  }
}

// The daemon may call from no-grad or inference mode; the backward still has a graph.
TEST(AttentionOpTest, BackwardWorksUnderInferenceMode) {
  c10::InferenceMode inference;
  AttentionArgs args{at::randn({4, 8}), at::randn({6, 8}), at::randn({6, 3}), {}, true, {}};
  absl::StatusOr<AttentionGrads> grads = attention_backward(args, at::randn({4, 3}));
  ASSERT_TRUE(grads.ok()) << grads.status();
  EXPECT_TRUE(grads->grad_query.defined() && grads->grad_key.defined() &&
              grads->grad_value.defined());
}

TEST(AttentionOpTest, RefusesBadInputsNamingTheField) {
  const auto good = [] {
    AttentionArgs args;
    args.query = at::randn({2, 4, 8});
    args.key = at::randn({2, 6, 8});
    args.value = at::randn({2, 6, 5});
    return args;
  };
  struct Bad {
    std::function<void(AttentionArgs&)> change;
    std::string field;
  };
  const Bad bads[] = {
      {[](AttentionArgs& a) { a.query = at::Tensor(); }, "query is undefined"},
      {[](AttentionArgs& a) { a.query = at::randn({8}); }, "query.shape = [8]"},
      {[](AttentionArgs& a) { a.query = a.query.to(at::kInt); }, "query.dtype = Int"},
      {[](AttentionArgs& a) {
         a.key = at::randn({6, 8});
       },
       "key.shape"},
      {[](AttentionArgs& a) { a.key = a.key.to(at::kDouble); }, "key.dtype = Double"},
      {[](AttentionArgs& a) {
         a.key = at::randn({3, 6, 8});
       },
       "key.shape = [3, 6, 8]"},
      {[](AttentionArgs& a) {
         a.key = at::randn({2, 6, 7});
       },
       "key.shape = [2, 6, 7]"},
      {[](AttentionArgs& a) {
         a.value = at::randn({2, 5, 5});
       },
       "value.shape = [2, 5, 5]"},
      {[](AttentionArgs& a) {
         a.value = at::randn({1, 6, 5});
       },
       "value.shape = [1, 6, 5]"},
      {[](AttentionArgs& a) { a.value = a.value.to(at::kHalf); }, "value.dtype = Half"},
      {[](AttentionArgs& a) { a.value = at::Tensor(); }, "value is undefined"},
      {[](AttentionArgs& a) {
         a.mask = at::ones({4, 6}, at::kBool);
         a.is_causal = true;
       },
       "is_causal"},
      {[](AttentionArgs& a) {
         a.mask = at::zeros({4, 6}, at::kDouble);
       },
       "mask.dtype = Double"},
      {[](AttentionArgs& a) {
         a.mask = at::zeros({4, 6}, at::kInt);
       },
       "mask.dtype = Int"},
      {[](AttentionArgs& a) {
         a.mask = at::ones({4, 5}, at::kBool);
       },
       "mask.shape = [4, 5]"},
      {[](AttentionArgs& a) {
         a.mask = at::ones({3, 4, 6}, at::kBool);
       },
       "mask.shape = [3, 4, 6]"},
      {[](AttentionArgs& a) {
         a.mask = at::ones({1, 2, 4, 6}, at::kBool);
       },
       "mask.shape"},
      {[](AttentionArgs& a) { a.mask = at::ones({}, at::kBool); }, "mask.shape = []"},
      {[](AttentionArgs& a) { a.scale = 0.0; }, "scale = 0"},
      {[](AttentionArgs& a) { a.scale = -1.0; }, "scale = -1"},
      {[](AttentionArgs& a) { a.scale = std::numeric_limits<double>::infinity(); }, "scale = inf"},
      {[](AttentionArgs& a) { a.scale = std::nan(""); }, "scale = nan"},
  };
  for (const Bad& bad : bads) {
    SCOPED_TRACE(bad.field);
    AttentionArgs args = good();
    bad.change(args);
    expect_refused(attention_forward(args).status(), bad.field);
    expect_refused(attention_backward(args, at::randn({2, 4, 5})).status(), bad.field);
  }
  // Broadcastable masks are accepted.
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{6}, {4, 1}, {1, 4, 6}, {2, 1, 6}}) {
    AttentionArgs args = good();
    args.mask = at::ones(shape, at::kBool);
    EXPECT_TRUE(attention_forward(args).ok()) << args.mask.sizes();
  }
  AttentionArgs args = good();
  expect_refused(attention_backward(args, at::randn({2, 4, 8})).status(),
                 "grad_output.shape = [2, 4, 8]");
  expect_refused(attention_backward(args, at::randn({2, 4, 5}, at::kDouble)).status(),
                 "grad_output.dtype = Double");
  expect_refused(attention_backward(args, at::Tensor()).status(), "grad_output is undefined");
}

// ---------------------------------------------------------------------------------------------
// Left-spin residual

// u + g * du in float64, one g per sample, written from the formula.
at::Tensor reference_left_spin(const at::Tensor& u, const at::Tensor& du, const at::Tensor& du_prev,
                               const LeftSpinParams& p) {
  const auto norm = [](const at::Tensor& x) {
    return x.to(at::kDouble).reshape({x.size(0), -1}).pow(2).sum(1).sqrt();
  };
  const at::Tensor u64 = u.to(at::kDouble), du64 = du.to(at::kDouble);
  const at::Tensor d = norm(du64) / (norm(u64) + p.eps);
  at::Tensor a = at::zeros_like(d);
  if (du_prev.defined()) {
    const at::Tensor prev = du_prev.to(at::kDouble);
    a = norm(du64 - prev) / (norm(du64) + norm(prev) + p.eps);
  }
  const at::Tensor x = p.w1 * d + p.w2 * a - p.tau;
  const at::Tensor softplus = x.clamp_min(0) + at::log1p(at::exp(-x.abs()));
  const at::Tensor phi = p.alpha * softplus;
  const at::Tensor g = 1.0 / at::sqrt(1.0 + phi.pow(2));
  std::vector<int64_t> shape(static_cast<size_t>(u.dim()), 1);
  shape[0] = u.size(0);
  return u64 + g.reshape(shape) * du64;
}

LeftSpinParams strong_params() {
  LeftSpinParams p;
  p.alpha = 2.0;
  p.tau = 0.1;
  p.w1 = 0.8;
  p.w2 = 1.3;
  p.eps = 1e-5;
  return p;
}

TEST(LeftSpinOpTest, ForwardMatchesFloat64Reference) {
  struct Case {
    std::vector<int64_t> shape;
    at::ScalarType dtype;
    double tolerance;
  };
  const Case cases[] = {{{4, 3, 5}, at::kFloat, 1e-6}, {{4, 3, 5}, at::kBFloat16, 1e-2},
                        {{4, 3, 5}, at::kHalf, 1e-3},  {{4, 3, 5}, at::kDouble, 1e-14},
                        {{7}, at::kFloat, 1e-6},       {{2, 64}, at::kFloat, 1e-6}};
  for (const LeftSpinParams& p : {LeftSpinParams{}, strong_params()}) {
    for (const Case& c : cases) {
      for (const bool with_prev : {false, true}) {
        const at::Tensor u = at::randn(c.shape).to(c.dtype);
        const at::Tensor du = (0.8 * at::randn(c.shape)).to(c.dtype);
        const at::Tensor du_prev = with_prev ? at::randn(c.shape).to(c.dtype) : at::Tensor();
        absl::StatusOr<at::Tensor> out = left_spin_forward(u, du, du_prev, p);
        ASSERT_TRUE(out.ok()) << out.status();
        EXPECT_EQ(out->scalar_type(), c.dtype);
        EXPECT_EQ(out->sizes(), u.sizes());
        const double error = relative_error(*out, reference_left_spin(u, du, du_prev, p));
        std::printf("left-spin forward %-9s %-10s alpha %.1f du_prev %-9s err %.2e\n",
                    c10::toString(c.dtype), c10::str(c.shape).c_str(), p.alpha,
                    with_prev ? "defined" : "undefined", error);
        EXPECT_LT(error, c.tolerance);
      }
    }
  }
}

TEST(LeftSpinOpTest, DuPrevChangesTheDampingOnly) {
  const LeftSpinParams p = strong_params();
  const at::Tensor u = at::randn({3, 5}, at::kDouble);
  const at::Tensor du = at::randn({3, 5}, at::kDouble);
  const at::Tensor first = *left_spin_forward(u, du, {}, p);
  const at::Tensor same = *left_spin_forward(u, du, du, p);
  const at::Tensor opposite = *left_spin_forward(u, du, -du, p);
  // du_prev == du makes a = 0, exactly the first step.
  EXPECT_LT(relative_error(same, first), 1e-12);
  // An update that reverses the previous one is damped harder: a = 1.
  const double step_first = (first - u).norm().item<double>();
  const double step_opposite = (opposite - u).norm().item<double>();
  std::printf("left-spin step |u'-u|: first %.4f, du_prev = -du %.4f, |du| %.4f\n", step_first,
              step_opposite, du.norm().item<double>());
  EXPECT_LT(step_opposite, step_first);
  EXPECT_LT(step_first, du.norm().item<double>());
}

TEST(LeftSpinOpTest, BackwardMatchesCentralDifferences) {
  const LeftSpinParams p = strong_params();
  for (const bool with_prev : {false, true}) {
    const at::Tensor u = at::randn({3, 5}, at::kDouble);
    const at::Tensor du = at::randn({3, 5}, at::kDouble);
    const at::Tensor du_prev = with_prev ? at::randn({3, 5}, at::kDouble) : at::Tensor();
    const at::Tensor grad_output = at::randn({3, 5}, at::kDouble);
    absl::StatusOr<LeftSpinGrads> grads = left_spin_backward(u, du, du_prev, p, grad_output);
    ASSERT_TRUE(grads.ok()) << grads.status();
    const auto loss = [&](const at::Tensor& uu, const at::Tensor& dd) {
      return (*left_spin_forward(uu, dd, du_prev, p) * grad_output).sum().item<double>();
    };
    constexpr double kStep = 1e-6;
    double worst = 0;
    for (const bool wrt_u : {true, false}) {
      const at::Tensor& analytic = wrt_u ? grads->grad_u : grads->grad_du;
      for (int64_t i = 0; i < u.numel(); ++i) {
        at::Tensor plus = (wrt_u ? u : du).clone(), minus = (wrt_u ? u : du).clone();
        plus.view(-1)[i] += kStep;
        minus.view(-1)[i] -= kStep;
        const double numeric = wrt_u ? (loss(plus, du) - loss(minus, du)) / (2 * kStep)
                                     : (loss(u, plus) - loss(u, minus)) / (2 * kStep);
        const double value = analytic.view(-1)[i].item<double>();
        // Relative, floored at 0.1 so that near-zero entries are held to 1e-7 absolute.
        const double error = std::abs(value - numeric) / std::max(std::abs(numeric), 0.1);
        worst = std::max(worst, error);
        EXPECT_LT(error, 1e-6) << (wrt_u ? "grad_u[" : "grad_du[") << i << "] = " << value
                               << ", central difference " << numeric;
      }
    }
    std::printf("left-spin backward vs central differences (du_prev %s): worst rel err %.2e\n",
                with_prev ? "defined" : "undefined", worst);
  }
}

TEST(LeftSpinOpTest, BackwardMatchesAutogradOfReference) {
  const LeftSpinParams p = strong_params();
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor u = at::randn({4, 6, 3}).to(dtype);
    const at::Tensor du = at::randn({4, 6, 3}).to(dtype);
    const at::Tensor du_prev = at::randn({4, 6, 3}).to(dtype);
    const at::Tensor grad_output = at::randn({4, 6, 3}).to(dtype);
    absl::StatusOr<LeftSpinGrads> grads = left_spin_backward(u, du, du_prev, p, grad_output);
    ASSERT_TRUE(grads.ok()) << grads.status();
    EXPECT_EQ(grads->grad_u.scalar_type(), dtype);
    const at::Tensor u64 = leaf64(u), du64 = leaf64(du);
    const std::vector<at::Tensor> expected = grads_of(reference_left_spin(u64, du64, du_prev, p),
                                                      {u64, du64}, grad_output.to(at::kDouble));
    const double error_u = relative_error(grads->grad_u, expected[0]);
    const double error_du = relative_error(grads->grad_du, expected[1]);
    std::printf("left-spin backward %-9s vs float64 autograd: du %.2e  ddu %.2e\n",
                c10::toString(dtype), error_u, error_du);
    const double tolerance = dtype == at::kFloat ? 1e-5 : 1e-2;
    EXPECT_LT(error_u, tolerance);
    EXPECT_LT(error_du, tolerance);
  }
}

TEST(LeftSpinOpTest, RefusesBadInputsNamingTheField) {
  const at::Tensor u = at::randn({3, 5});
  const at::Tensor g = at::randn({3, 5});
  const LeftSpinParams p;
  struct Bad {
    at::Tensor u, du, du_prev;
    std::string field;
  };
  const Bad bads[] = {
      {at::Tensor(), u, {}, "u is undefined"},
      {u.to(at::kInt), u.to(at::kInt), {}, "u.dtype = Int"},
      {at::randn({}), at::randn({}), {}, "u.shape"},
      {u, at::Tensor(), {}, "du is undefined"},
      {u, at::randn({3, 4}), {}, "du.shape = [3, 4]"},
      {u, at::randn({5, 3}), {}, "du.shape = [5, 3]"},
      {u, u.to(at::kDouble), {}, "du.dtype = Double"},
      {u, u, at::randn({2, 5}), "du_prev.shape = [2, 5]"},
      {u, u, u.to(at::kHalf), "du_prev.dtype = Half"},
  };
  for (const Bad& bad : bads) {
    SCOPED_TRACE(bad.field);
    expect_refused(left_spin_forward(bad.u, bad.du, bad.du_prev, p).status(), bad.field);
    expect_refused(left_spin_backward(bad.u, bad.du, bad.du_prev, p, g).status(), bad.field);
  }
  expect_refused(left_spin_backward(u, u, {}, p, at::randn({3, 6})).status(),
                 "grad_output.shape = [3, 6]");
  expect_refused(left_spin_backward(u, u, {}, p, g.to(at::kDouble)).status(),
                 "grad_output.dtype = Double");
  expect_refused(left_spin_backward(u, u, {}, p, at::Tensor()).status(),
                 "grad_output is undefined");
}

TEST(LeftSpinOpTest, RefusesBadParamsNamingTheField) {
  const double inf = std::numeric_limits<double>::infinity();
  struct Bad {
    std::function<void(LeftSpinParams&)> change;
    std::string field;
  };
  const Bad bads[] = {
      {[](LeftSpinParams& p) { p.alpha = -0.1; }, "params.alpha = -0.1"},
      {[&](LeftSpinParams& p) { p.alpha = inf; }, "params.alpha = inf"},
      {[](LeftSpinParams& p) { p.tau = std::nan(""); }, "params.tau = nan"},
      {[](LeftSpinParams& p) { p.beta = 1.0; }, "params.beta = 1"},
      {[](LeftSpinParams& p) { p.beta = -0.5; }, "params.beta = -0.5"},
      {[&](LeftSpinParams& p) { p.w1 = -inf; }, "params.w1 = -inf"},
      {[](LeftSpinParams& p) { p.w2 = std::nan(""); }, "params.w2 = nan"},
      {[](LeftSpinParams& p) { p.eps = 0.0; }, "params.eps = 0"},
      {[](LeftSpinParams& p) { p.eps = -1e-6; }, "params.eps = -1e-06"},
  };
  const at::Tensor u = at::randn({3, 5});
  for (const Bad& bad : bads) {
    SCOPED_TRACE(bad.field);
    LeftSpinParams p;
    bad.change(p);
    expect_refused(check_left_spin_params(p), bad.field);
    expect_refused(left_spin_forward(u, u, {}, p).status(), bad.field);
    expect_refused(left_spin_backward(u, u, {}, p, u).status(), bad.field);
  }
  LeftSpinParams edge;
  edge.alpha = 0.0;
  edge.beta = 0.0;
  EXPECT_TRUE(check_left_spin_params(edge).ok());
  EXPECT_TRUE(check_left_spin_params(LeftSpinParams{}).ok());
}

TEST(LeftSpinOpTest, NextPrevIsTheInertiaUpdate) {
  LeftSpinParams p;
  p.beta = 0.7;
  const at::Tensor du_prev = at::randn({3, 5});
  at::Tensor du = at::randn({3, 5});
  const at::Tensor next = left_spin_next_prev(du_prev, du, p);
  const double error =
      relative_error(next, 0.7 * du_prev.to(at::kDouble) + 0.3 * du.to(at::kDouble));
  std::printf("left-spin next_prev err %.2e\n", error);
  EXPECT_LT(error, 1e-6);

  // The first step keeps a copy of du, not a view of it.
  const at::Tensor first = left_spin_next_prev({}, du, p);
  EXPECT_TRUE(first.equal(du));
  du.fill_(0);
  EXPECT_GT(first.abs().sum().item<double>(), 0.0);

  const at::Tensor tracked = at::randn({3, 5}).requires_grad_(true);
  EXPECT_FALSE(left_spin_next_prev(du_prev, tracked * 2, p).requires_grad());
  const at::Tensor half =
      left_spin_next_prev(du_prev.to(at::kBFloat16), at::randn({3, 5}).to(at::kBFloat16), p);
  EXPECT_EQ(half.scalar_type(), at::kBFloat16);
  EXPECT_FALSE(left_spin_next_prev(at::randn({2, 5}), at::randn({3, 5}), p).defined())
      << "a batch of another size restarts the inertia";
  EXPECT_FALSE(left_spin_next_prev(du_prev, at::Tensor(), p).defined());
}

}  // namespace
}  // namespace vb::backends
