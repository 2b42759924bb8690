// The named ops through a real vbd and through the local target: 4-bit Linear (and
// patch_model_fp4), attention forward and backward, the left-spin residual forward and
// backward; every answer against a float64 reference, and the daemon's refusals of bad calls.
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <httplib.h>

#include <limits>
#include <nlohmann/json.hpp>

#include "client/daemon_client.h"
#include "client/fp4_linear.h"
#include "client/left_spin.h"
#include "client/patch_model.h"
#include "client/remote_attention.h"
#include "client/remote_linear.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"
#include "wire/http_tensors.h"

namespace vb::testing {
namespace {

using ::testing::HasSubstr;

class OpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { daemon_ = new DaemonProcess(); }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  static std::shared_ptr<Router> remote() { return make_router({daemon_->address()}); }
  static std::shared_ptr<Router> local() { return make_router({"local"}); }
  static DaemonProcess* daemon_;
};
DaemonProcess* OpsTest::daemon_ = nullptr;

TEST_F(OpsTest, Fp4LinearOnTheDaemonEqualsTheReferenceOfItsDequantizedWeight) {
  torch::NoGradGuard no_grad;
  for (const char* format : {"nvfp4", "mxfp4", "nf4", "bnb_fp4"}) {
    nn::FP4Linear layer(nn::FP4LinearOptions(256, 96).format(format), remote());
    const at::Tensor x = torch::randn({5, 3, 256});
    const at::Tensor expected =
        (x.to(at::kDouble).matmul(layer->dequantized_weight().to(at::kDouble).t()) +
         layer->bias.to(at::kDouble));
    const at::Tensor y = layer(x);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{5, 3, 96}));
    const double error = relative_error(y, expected);
    std::printf("fp4_linear %-8s float32 on vbd: relative error %.2e\n", format, error);
    EXPECT_LT(error, 1e-6) << format;
    EXPECT_EQ(layer->get_stats().remote_calls(), 1u);
    // bfloat16 in and out: the dequantized weight is exact, the output rounded once.
    const at::Tensor y16 = layer(x.to(at::kBFloat16));
    EXPECT_EQ(y16.scalar_type(), at::kBFloat16);
    EXPECT_LT(relative_error(y16, expected), 1e-2) << format;
  }
}

TEST_F(OpsTest, PatchModelFp4ConvertsEveryLinearAndTheDaemonAgreesWithLocal) {
  torch::manual_seed(4);
  torch::nn::Sequential model(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                              torch::nn::Linear(128, 32));
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({8, 64});
  const at::Tensor full_precision = model->forward(x);
  torch::nn::Sequential on_daemon(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                                  torch::nn::Linear(128, 32));
  torch::nn::Sequential on_host(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                                torch::nn::Linear(128, 32));
  for (auto* copy : {&on_daemon, &on_host}) {
    for (size_t i : {0, 2}) {
      auto* from = model[i]->as<torch::nn::Linear>();
      auto* to = (*copy)[i]->as<torch::nn::Linear>();
      to->weight.copy_(from->weight);
      to->bias.copy_(from->bias);
    }
  }
  const PatchReport report = patch_model_fp4(*on_daemon, backends::fp4::Format::kNvfp4, remote());
  EXPECT_EQ(report.replaced, (std::vector<std::string>{"0", "2"}));
  patch_model_fp4(*on_host, backends::fp4::Format::kNvfp4, local());
  const at::Tensor a = on_daemon->forward(x);
  const at::Tensor b = on_host->forward(x);
  EXPECT_LT(relative_error(a, b), 1e-6) << "the daemon and the local target agree";
  const double quantization = relative_error(a, full_precision);
  std::printf("patch_model_fp4 nvfp4: output vs full precision %.3f\n", quantization);
  EXPECT_LT(quantization, 0.2) << "4 bits cost precision, not the function";
  EXPECT_EQ(nn::collect_stats(*on_daemon).remote_calls(), 2u);
  // A width the format cannot take is refused before anything changes.
  torch::nn::Sequential odd(torch::nn::Linear(24, 8));
  EXPECT_THROW(patch_model_fp4(*odd, backends::fp4::Format::kMxfp4, remote()), c10::ValueError);
  EXPECT_NE(odd[0]->as<torch::nn::Linear>(), nullptr);
}

// float64 reference of softmax(q k^T * scale + mask) v, with its gradients.
struct AttentionReference {
  at::Tensor out, dq, dk, dv;
};
AttentionReference attention_reference(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& additive_mask,
                                       const at::Tensor& grad) {
  torch::AutoGradMode grad_mode(true);  // callers may be in inference
  torch::Tensor q64 = q.detach().to(at::kDouble).requires_grad_(true);
  torch::Tensor k64 = k.detach().to(at::kDouble).requires_grad_(true);
  torch::Tensor v64 = v.detach().to(at::kDouble).requires_grad_(true);
  torch::Tensor scores = q64.matmul(k64.transpose(-2, -1)) / std::sqrt(double(q.size(-1)));
  if (additive_mask.defined()) scores = scores + additive_mask.to(at::kDouble);
  const torch::Tensor out = torch::softmax(scores, -1).matmul(v64);
  out.backward(grad.to(at::kDouble));
  return {out.detach(), q64.grad(), k64.grad(), v64.grad()};
}

TEST_F(OpsTest, AttentionForwardAndBackwardOnTheDaemonMatchFloat64) {
  for (bool causal : {false, true}) {
    nn::RemoteAttention attention(nn::RemoteAttentionOptions().is_causal(causal), remote());
    torch::Tensor q = torch::randn({2, 3, 7, 16}, torch::requires_grad());
    torch::Tensor k = torch::randn({2, 3, 7, 16}, torch::requires_grad());
    torch::Tensor v = torch::randn({2, 3, 7, 8}, torch::requires_grad());
    const torch::Tensor out = attention(q, k, v);
    const torch::Tensor grad = torch::randn_like(out);
    out.backward(grad);
    const at::Tensor mask =
        causal ? torch::zeros({7, 7}).masked_fill(torch::ones({7, 7}).triu(1).to(torch::kBool),
                                                  -std::numeric_limits<double>::infinity())
               : at::Tensor();
    const AttentionReference ref = attention_reference(q, k, v, mask, grad);
    std::printf("attention on vbd, causal=%d: out %.2e dq %.2e dk %.2e dv %.2e\n", causal,
                relative_error(out, ref.out), relative_error(q.grad(), ref.dq),
                relative_error(k.grad(), ref.dk), relative_error(v.grad(), ref.dv));
    EXPECT_LT(relative_error(out, ref.out), 1e-5);
    EXPECT_LT(relative_error(q.grad(), ref.dq), 1e-5);
    EXPECT_LT(relative_error(k.grad(), ref.dk), 1e-5);
    EXPECT_LT(relative_error(v.grad(), ref.dv), 1e-5);
    EXPECT_EQ(attention->get_stats().remote_calls(), 2u) << "forward and backward";
  }
  // A boolean mask travels as an additive one.
  nn::RemoteAttention attention(nn::RemoteAttentionOptions(), remote());
  const at::Tensor q = torch::randn({1, 2, 4, 8});
  const at::Tensor keep = torch::rand({4, 5}) > 0.3;
  keep.select(1, 0).fill_(true);  // every row may attend somewhere
  const at::Tensor k = torch::randn({1, 2, 5, 8});
  const at::Tensor v = torch::randn({1, 2, 5, 8});
  torch::NoGradGuard no_grad;
  const at::Tensor additive = torch::zeros({4, 5}).masked_fill(
      keep.logical_not(), -std::numeric_limits<double>::infinity());
  EXPECT_LT(relative_error(attention(q, k, v, keep),
                           attention_reference(q, k, v, additive, torch::zeros({1, 2, 4, 8})).out),
            1e-5);
}

TEST_F(OpsTest, LeftSpinOnTheDaemonEqualsLocalAndKeepsItsInertia) {
  nn::LeftSpinResidual on_daemon(nn::LeftSpinOptions(), remote());
  nn::LeftSpinResidual on_host(nn::LeftSpinOptions(), local());
  for (int step = 0; step < 3; ++step) {
    torch::Tensor u = torch::randn({4, 6}, torch::requires_grad());
    torch::Tensor du = torch::randn({4, 6}, torch::requires_grad());
    torch::Tensor u2 = u.detach().clone().requires_grad_(true);
    torch::Tensor du2 = du.detach().clone().requires_grad_(true);
    const torch::Tensor a = on_daemon(u, du);
    const torch::Tensor b = on_host(u2, du2);
    EXPECT_LT(relative_error(a, b), 1e-6) << "step " << step;
    const torch::Tensor grad = torch::randn_like(a);
    a.backward(grad);
    b.backward(grad);
    EXPECT_LT(relative_error(u.grad(), u2.grad()), 1e-6);
    EXPECT_LT(relative_error(du.grad(), du2.grad()), 1e-6);
    ASSERT_TRUE(on_daemon->previous_update().defined());
    EXPECT_LT(relative_error(on_daemon->previous_update(), on_host->previous_update()), 1e-6);
  }
  EXPECT_EQ(on_daemon->get_stats().remote_calls(), 6u);
  EXPECT_EQ(on_host->get_stats().local_calls(), 6u);
}

TEST_F(OpsTest, TheDaemonRefusesBadCallsNamingWhatIsWrong) {
  DaemonClient client(daemon_->address());
  TransferCount transfer;
  backends::OpArgs args;
  args.op = "attention.forward";
  args.inputs = {{"query", torch::randn({2, 4, 8})}, {"key", torch::randn({2, 4, 8})}};
  absl::StatusOr<backends::NamedTensors> missing = client.run_op(args, {}, &transfer);
  EXPECT_TRUE(absl::IsInvalidArgument(missing.status())) << missing.status();
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("input \"value\" is missing"));
  args.inputs.push_back({"value", torch::randn({2, 4, 8})});
  args.attributes["temperature"] = 2;
  absl::StatusOr<backends::NamedTensors> attribute = client.run_op(args, {}, &transfer);
  EXPECT_THAT(std::string(attribute.status().message()),
              HasSubstr("attribute \"temperature\" is not one of is_causal, scale"));
  args.attributes = {{"is_causal", 1}};
  args.inputs[1].tensor = torch::randn({2, 4, 9});
  absl::StatusOr<backends::NamedTensors> shapes = client.run_op(args, {}, &transfer);
  EXPECT_TRUE(absl::IsInvalidArgument(shapes.status())) << shapes.status();
  EXPECT_THAT(std::string(shapes.status().message()), HasSubstr("key"));
  // A 4-bit weight the daemon does not hold: NOT_FOUND, so the client uploads it.
  nn::FP4Linear layer(nn::FP4LinearOptions(64, 16), remote());
  backends::OpArgs fp4;
  fp4.op = "fp4_linear.forward";
  fp4.inputs = {{"input", torch::randn({2, 64})}};
  absl::StatusOr<backends::NamedTensors> unknown =
      client.run_op(fp4, {WeightRef{layer->weight_digest(), layer->packed, ""}}, &transfer);
  EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();
  // The wrong width for the weight.
  ASSERT_TRUE(
      client.upload_weight(WeightRef{layer->weight_digest(), layer->packed, ""}, &transfer).ok());
  fp4.inputs = {{"input", torch::randn({2, 32})}};
  absl::StatusOr<backends::NamedTensors> width =
      client.run_op(fp4, {WeightRef{layer->weight_digest(), layer->packed, ""}}, &transfer);
  EXPECT_TRUE(absl::IsInvalidArgument(width.status())) << width.status();
  EXPECT_THAT(std::string(width.status().message()), HasSubstr("the weight's k = 64"));
  // A blob that is not a 4-bit weight at all.
  WeightRef junk;
  junk.tensor = torch::randint(0, 255, {100}, torch::kByte);
  junk.digest = sha256_hex(junk.tensor.data_ptr(), 100);
  ASSERT_TRUE(client.upload_weight(junk, &transfer).ok());
  absl::StatusOr<backends::NamedTensors> not_fp4 = client.run_op(fp4, {junk}, &transfer);
  EXPECT_THAT(std::string(not_fp4.status().message()), HasSubstr("fp4 blob"));
  // And it goes on serving.
  torch::NoGradGuard no_grad;
  EXPECT_EQ(layer(torch::randn({2, 64})).size(1), 16);
}

// The named ops over the HTTP face, as a caller without gRPC sends them: POST /v1/ops/{op}
// with tensor bodies, against the same references; refusals name what is wrong.
TEST(OpsHttpTest, TheHttpFaceRunsTheNamedOpsAndRefusesBadCalls) {
  DaemonProcess daemon({"--http-port", "0"});
  ASSERT_GT(daemon.http_port(), 0);
  httplib::Client http("127.0.0.1", daemon.http_port());
  http.set_read_timeout(60, 0);
  struct Answer {
    int status = 0;
    nlohmann::json error;
    wire::TensorMessage message;
  };
  auto call = [&http](const std::string& op, const nlohmann::json& header,
                      const std::vector<wire::NamedTensor>& inputs) {
    Answer answer;
    auto reply = http.Post("/v1/ops/" + op, wire::encode_tensor_message(header, inputs),
                           wire::kTensorsContentType);
    if (!reply) {
      ADD_FAILURE() << op << ": no answer";
      return answer;
    }
    answer.status = reply->status;
    if (reply->status == 200) {
      absl::StatusOr<wire::TensorMessage> decoded = wire::decode_tensor_message(reply->body);
      EXPECT_TRUE(decoded.ok()) << decoded.status();
      if (decoded.ok()) answer.message = std::move(*decoded);
    } else {
      answer.error = nlohmann::json::parse(reply->body, nullptr, false);
    }
    return answer;
  };

  // Causal attention against float64.
  const at::Tensor q = torch::randn({2, 3, 7, 16});
  const at::Tensor k = torch::randn({2, 3, 7, 16});
  const at::Tensor v = torch::randn({2, 3, 7, 8});
  const Answer attention = call("attention.forward", {{"attributes", {{"is_causal", true}}}},
                                {{"query", q}, {"key", k}, {"value", v}});
  ASSERT_EQ(attention.status, 200) << attention.error.dump();
  const at::Tensor causal = torch::zeros({7, 7}).masked_fill(
      torch::ones({7, 7}).triu(1).to(torch::kBool), -std::numeric_limits<double>::infinity());
  const at::Tensor output = attention.message.find("output");
  ASSERT_TRUE(output.defined());
  EXPECT_LT(relative_error(output, attention_reference(q, k, v, causal, torch::zeros_like(v)).out),
            1e-5);
  EXPECT_TRUE(attention.message.header.contains("timing"));

  // The left-spin residual with its attributes, against the local layer's forward.
  const at::Tensor u = torch::randn({4, 6});
  const at::Tensor du = torch::randn({4, 6});
  const at::Tensor du_prev = torch::randn({4, 6});
  const Answer spin = call("left_spin.forward", {{"attributes", {{"alpha", 0.8}, {"tau", 0.1}}}},
                           {{"u", u}, {"du", du}, {"du_prev", du_prev}});
  ASSERT_EQ(spin.status, 200) << spin.error.dump();
  backends::OpArgs local_spin;
  local_spin.op = "left_spin.forward";
  local_spin.inputs = {{"u", u}, {"du", du}, {"du_prev", du_prev}};
  local_spin.attributes = {{"alpha", 0.8}, {"tau", 0.1}};
  absl::StatusOr<backends::NamedTensors> expected_spin = backends::run_op(local_spin);
  ASSERT_TRUE(expected_spin.ok()) << expected_spin.status();
  EXPECT_LT(relative_error(spin.message.find("output"), (*expected_spin)[0].tensor), 1e-6);

  // A 4-bit Linear on a weight uploaded over HTTP.
  torch::NoGradGuard no_grad;
  nn::FP4Linear layer(nn::FP4LinearOptions(64, 16), make_router({"local"}));
  const at::Tensor x = torch::randn({3, 64});
  const nlohmann::json weights = nlohmann::json::array(
      {{{"digest", layer->weight_digest()}, {"byte_size", layer->packed.numel()}}});
  const Answer absent = call("fp4_linear.forward", {{"weights", weights}}, {{"input", x}});
  EXPECT_EQ(absent.status, 404) << absent.error.dump();
  const at::Tensor blob = layer->packed.contiguous();
  auto uploaded = http.Post("/v1/weights/" + layer->weight_digest(),
                            std::string(static_cast<const char*>(blob.data_ptr()), blob.numel()),
                            "application/octet-stream");
  ASSERT_TRUE(uploaded && uploaded->status == 200) << (uploaded ? uploaded->body : "no answer");
  const Answer fp4 = call("fp4_linear.forward", {{"weights", weights}},
                          {{"input", x}, {"bias", layer->bias.detach()}});
  ASSERT_EQ(fp4.status, 200) << fp4.error.dump();
  EXPECT_LT(relative_error(fp4.message.find("output"), layer(x)), 1e-6);

  // Released over HTTP: gone for the next call, and a second release is a 404.
  auto released = http.Delete("/v1/weights/" + layer->weight_digest());
  ASSERT_TRUE(released && released->status == 200) << (released ? released->body : "no answer");
  EXPECT_EQ(nlohmann::json::parse(released->body).value("released", false), true) << released->body;
  EXPECT_EQ(call("fp4_linear.forward", {{"weights", weights}}, {{"input", x}}).status, 404);
  auto again = http.Delete("/v1/weights/" + layer->weight_digest());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 404) << again->body;
  EXPECT_THAT(again->body, HasSubstr("VB.NOT_FOUND"));
  auto malformed = http.Delete("/v1/weights/ABC");
  ASSERT_TRUE(malformed);
  EXPECT_EQ(malformed->status, 400) << malformed->body;
  EXPECT_THAT(malformed->body, HasSubstr("path digest"));

  // Refusals: 400 with the error naming the op, field or value.
  auto refused = [&](const Answer& answer, const std::string& text) {
    EXPECT_EQ(answer.status, 400) << answer.error.dump();
    EXPECT_EQ(answer.error.value("error_code", ""), "VB.INVALID_ARGUMENT") << answer.error.dump();
    EXPECT_THAT(answer.error.value("error_msg", ""), HasSubstr(text)) << answer.error.dump();
  };
  refused(call("attention.sideways", nlohmann::json::object(), {{"query", q}}),
          "attention.sideways");
  refused(call("attention.forward", {{"attributes", {{"is_causal", "yes"}}}},
               {{"query", q}, {"key", k}, {"value", v}}),
          "attributes.is_causal");
  refused(
      call("attention.forward", {{"attributes", {1, 2}}}, {{"query", q}, {"key", k}, {"value", v}}),
      "attributes is [1,2]");
  refused(call("attention.forward", nlohmann::json::object(), {{"query", q}, {"key", k}}),
          "input \"value\" is missing");
  refused(call("fp4_linear.forward", {{"weights", "abc"}}, {{"input", x}}), "weights is \"abc\"");
  refused(call("fp4_linear.forward",
               {{"weights", nlohmann::json::array({{{"digest", layer->weight_digest()}}})}},
               {{"input", x}}),
          "weights[0].byte_size");
  refused(call("left_spin.forward", {{"device_index", "gpu"}}, {{"u", u}, {"du", du}}),
          "device_index is \"gpu\"");
  refused(call("left_spin.forward", {{"device_index", int64_t{1} << 40}}, {{"u", u}, {"du", du}}),
          "device_index is 1099511627776");
  // And it goes on serving.
  EXPECT_EQ(call("left_spin.forward", nlohmann::json::object(), {{"u", u}, {"du", du}}).status,
            200);
}

}  // namespace
}  // namespace vb::testing
