#include "client/cloud_target.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"
#include "wire/http_tensors.h"

namespace vb {
namespace {

// Room left in every request for its JSON line (specs, digest, flags): far more than it takes.
constexpr uint64_t kHeaderAllowance = 4096;
// A weight may have to go up again this many times in one call (instances that restarted or
// never saw it, behind the gateway's balancer) before the call gives up.
constexpr int kMaxUploadRounds = 3;
constexpr char kOctetStream[] = "application/octet-stream";

// The weight as the JSON line names it; its dtype was checked with the call's arguments.
nlohmann::json weight_json(const WeightRef& weight) {
  const absl::StatusOr<DType> dtype = dtype_from_scalar_type(weight.tensor.scalar_type(), "weight");
  return {{"dtype", std::string(dtype_name(dtype.ok() ? *dtype : DType::kFloat32))},
          {"shape", weight.tensor.sizes().vec()},
          {"digest", weight.digest}};
}

// The answer's tensor `name`, checked against what the call must produce: a reply that does
// not match is refused rather than handed to the layer.
absl::StatusOr<at::Tensor> expect_tensor(const wire::TensorMessage& reply, const char* name,
                                         c10::ScalarType dtype, at::IntArrayRef shape,
                                         const std::string& target) {
  at::Tensor tensor = reply.find(name);
  if (!tensor.defined()) {
    return absl::DataLossError(absl::StrCat(target, " answered without \"", name, "\""));
  }
  if (tensor.scalar_type() != dtype || tensor.sizes() != shape) {
    return absl::DataLossError(absl::StrCat(target, " answered ", name, " ",
                                            c10::toString(tensor.scalar_type()), " ",
                                            shape_string(tensor.sizes().vec()), ", expected ",
                                            c10::toString(dtype), " ", shape_string(shape.vec())));
  }
  return tensor;
}

absl::StatusOr<wire::TensorMessage> decode_reply(const cloud::HttpReply& reply,
                                                 const std::string& target) {
  absl::StatusOr<wire::TensorMessage> message = wire::decode_tensor_message(reply.body);
  if (!message.ok()) {
    return absl::DataLossError(absl::StrCat(
        target, " answered a body that does not decode: ", message.status().message()));
  }
  return message;
}

// How many rows fit in one request of at most `limit` bytes, given the bytes every request
// carries whatever its rows and the bytes of one row; RESOURCE_EXHAUSTED when not even one.
absl::StatusOr<int64_t> rows_per_request(uint64_t limit, uint64_t fixed_bytes, uint64_t row_bytes,
                                         const std::string& target) {
  if (fixed_bytes + row_bytes + kHeaderAllowance > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        target, ": one row needs a request of ", fixed_bytes + row_bytes + kHeaderAllowance,
        " bytes, over the body limit of ", limit, " bytes; it cannot be sent to the cloud"));
  }
  return static_cast<int64_t>((limit - fixed_bytes - kHeaderAllowance) /
                              std::max<uint64_t>(row_bytes, 1));
}

}  // namespace

absl::StatusOr<std::shared_ptr<CloudTarget>> CloudTarget::create(cloud::ModelArtsOptions options) {
  VB_ASSIGN_OR_RETURN(std::unique_ptr<cloud::ModelArtsClient> client,
                      cloud::ModelArtsClient::create(std::move(options)));
  return std::shared_ptr<CloudTarget>(new CloudTarget(std::move(client)));
}

absl::Status CloudTarget::upload(const WeightRef& weight, TransferCount* transfer) {
  const at::Tensor bytes = weight.tensor.contiguous();
  const uint64_t total = static_cast<uint64_t>(bytes.numel() * bytes.element_size());
  const char* data = static_cast<const char*>(bytes.data_ptr());
  const uint64_t part_bytes = client_->options().max_body_bytes;
  for (uint64_t offset = 0; offset < total;) {
    const uint64_t size = std::min(part_bytes, total - offset);
    VB_ASSIGN_OR_RETURN(cloud::HttpReply reply,
                        client_->post(absl::StrCat("/v1/weights/", weight.digest,
                                                   "?offset=", offset, "&total=", total),
                                      std::string(data + offset, size), kOctetStream));
    transfer->bytes_sent += size;
    // An instance that holds the weight answers the first part so; the rest need not go.
    const nlohmann::json answer = nlohmann::json::parse(reply.body, nullptr, false);
    if (answer.is_object() && answer.value("already_present", false)) break;
    offset += size;
  }
  ++transfer->uploads;
  std::lock_guard<std::mutex> lock(mutex_);
  held_.insert(weight.digest);
  return absl::OkStatus();
}

template <typename T, typename Fn>
absl::StatusOr<T> CloudTarget::with_weight(const WeightRef& weight, TransferCount* transfer,
                                           Fn&& call) {
  bool held = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    held = held_.count(weight.digest) > 0;
  }
  if (!held) VB_RETURN_IF_ERROR(upload(weight, transfer));
  absl::StatusOr<T> result = call();
  for (int round = 0; round < kMaxUploadRounds && absl::IsNotFound(result.status()); ++round) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held_.erase(weight.digest);
    }
    VB_RETURN_IF_ERROR(upload(weight, transfer));
    result = call();
  }
  return result;
}

absl::StatusOr<at::Tensor> CloudTarget::linear_forward(const LinearForwardCall& call,
                                                       TransferCount* transfer) {
  backends::LinearForwardArgs checked{call.input, call.weight.tensor, call.bias, {}};
  VB_RETURN_IF_ERROR(backends::check_args(checked));
  const int64_t in_features = call.weight.tensor.size(1);
  const int64_t out_features = call.weight.tensor.size(0);
  const at::Tensor rows = call.input.reshape({-1, in_features}).contiguous();
  const uint64_t item = static_cast<uint64_t>(rows.element_size());
  const uint64_t bias_bytes = call.bias.defined() ? static_cast<uint64_t>(out_features) * item : 0;
  VB_ASSIGN_OR_RETURN(int64_t per_request,
                      rows_per_request(client_->options().max_body_bytes, bias_bytes,
                                       static_cast<uint64_t>(in_features) * item, name()));
  const nlohmann::json header = {{"weight", weight_json(call.weight)}};
  auto run = [&]() -> absl::StatusOr<at::Tensor> {
    std::vector<at::Tensor> outputs;
    for (int64_t start = 0; start < rows.size(0); start += per_request) {
      const at::Tensor part = rows.narrow(0, start, std::min(per_request, rows.size(0) - start));
      std::vector<wire::NamedTensor> tensors = {{"input", part}};
      if (call.bias.defined()) tensors.push_back({"bias", call.bias.contiguous()});
      const std::string body = wire::encode_tensor_message(header, tensors);
      VB_ASSIGN_OR_RETURN(cloud::HttpReply reply,
                          client_->post("/v1/linear/forward", body, wire::kTensorsContentType));
      transfer->bytes_sent += body.size();
      transfer->bytes_received += reply.body.size();
      VB_ASSIGN_OR_RETURN(wire::TensorMessage message, decode_reply(reply, name()));
      VB_ASSIGN_OR_RETURN(at::Tensor output, expect_tensor(message, "output", rows.scalar_type(),
                                                           {part.size(0), out_features}, name()));
      outputs.push_back(std::move(output));
    }
    std::vector<int64_t> shape = call.input.sizes().vec();
    shape.back() = out_features;
    return (outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0)).reshape(shape);
  };
  return with_weight<at::Tensor>(call.weight, transfer, run);
}

absl::StatusOr<backends::LinearGrads> CloudTarget::linear_backward(const LinearBackwardCall& call,
                                                                   TransferCount* transfer) {
  backends::LinearBackwardArgs checked;
  checked.grad_output = call.grad_output;
  checked.input = call.input;
  checked.weight = call.weight.tensor;
  checked.need_grad_input = call.need_grad_input;
  checked.need_grad_weight = call.need_grad_weight;
  checked.need_grad_bias = call.need_grad_bias;
  VB_RETURN_IF_ERROR(backends::check_args(checked));
  const int64_t in_features = call.weight.tensor.size(1);
  const int64_t out_features = call.weight.tensor.size(0);
  const at::Tensor grad_rows = call.grad_output.reshape({-1, out_features}).contiguous();
  const at::Tensor input_rows =
      call.need_grad_weight ? call.input.reshape({-1, in_features}).contiguous() : at::Tensor();
  const uint64_t item = static_cast<uint64_t>(grad_rows.element_size());
  const uint64_t row_bytes =
      (static_cast<uint64_t>(out_features) + (call.need_grad_weight ? in_features : 0)) * item;
  VB_ASSIGN_OR_RETURN(int64_t per_request,
                      rows_per_request(client_->options().max_body_bytes, 0, row_bytes, name()));
  const nlohmann::json header = {{"weight", weight_json(call.weight)},
                                 {"need_grad_input", call.need_grad_input},
                                 {"need_grad_weight", call.need_grad_weight},
                                 {"need_grad_bias", call.need_grad_bias}};
  const c10::ScalarType dtype = grad_rows.scalar_type();
  auto run = [&]() -> absl::StatusOr<backends::LinearGrads> {
    std::vector<at::Tensor> grad_inputs;
    backends::LinearGrads grads;
    for (int64_t start = 0; start < grad_rows.size(0); start += per_request) {
      const int64_t count = std::min(per_request, grad_rows.size(0) - start);
      std::vector<wire::NamedTensor> tensors = {{"grad_output", grad_rows.narrow(0, start, count)}};
      if (call.need_grad_weight) tensors.push_back({"input", input_rows.narrow(0, start, count)});
      const std::string body = wire::encode_tensor_message(header, tensors);
      VB_ASSIGN_OR_RETURN(cloud::HttpReply reply,
                          client_->post("/v1/linear/backward", body, wire::kTensorsContentType));
      transfer->bytes_sent += body.size();
      transfer->bytes_received += reply.body.size();
      VB_ASSIGN_OR_RETURN(wire::TensorMessage message, decode_reply(reply, name()));
      if (call.need_grad_input) {
        VB_ASSIGN_OR_RETURN(at::Tensor part, expect_tensor(message, "grad_input", dtype,
                                                           {count, in_features}, name()));
        grad_inputs.push_back(std::move(part));
      }
      // Gradients of the weight and bias sum over rows, so the parts' gradients add up.
      if (call.need_grad_weight) {
        VB_ASSIGN_OR_RETURN(at::Tensor part, expect_tensor(message, "grad_weight", dtype,
                                                           {out_features, in_features}, name()));
        grads.grad_weight = grads.grad_weight.defined() ? grads.grad_weight + part : part;
      }
      if (call.need_grad_bias) {
        VB_ASSIGN_OR_RETURN(at::Tensor part,
                            expect_tensor(message, "grad_bias", dtype, {out_features}, name()));
        grads.grad_bias = grads.grad_bias.defined() ? grads.grad_bias + part : part;
      }
    }
    if (call.need_grad_input) {
      at::Tensor all = grad_inputs.size() == 1 ? grad_inputs[0] : at::cat(grad_inputs, 0);
      grads.grad_input = all.reshape(call.input.defined() ? call.input.sizes().vec() : [&] {
        std::vector<int64_t> shape = call.grad_output.sizes().vec();
        shape.back() = in_features;
        return shape;
      }());
    }
    return grads;
  };
  return with_weight<backends::LinearGrads>(call.weight, transfer, run);
}

}  // namespace vb
