#include "client/daemon_client.h"

#include <grpcpp/client_context.h>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "backends/linear_op.h"
#include "backends/tensor_util.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "wire/codec.h"

namespace vb {
namespace {

// Sends each tensor after the header as chunks. Stops quietly when a write fails: the
// daemon has ended the call, and Finish() will say why.
template <typename Request, typename Stream>
void write_chunks(Stream* stream, const std::vector<at::Tensor>& tensors, size_t chunk_bytes,
                  TransferCount* transfer) {
  Request message;
  wire::for_each_chunk(tensors, chunk_bytes, [&](uint32_t index, const char* data, size_t size) {
    v1::TensorChunk* chunk = message.mutable_chunk();
    chunk->set_tensor_index(index);
    chunk->set_data(data, size);
    if (!stream->Write(message)) return false;
    transfer->bytes_sent += size;
    return true;
  });
  stream->WritesDone();
}

// Reads a TensorsResponse stream into tensors, insisting on exactly the outputs expected.
// An expected output without a spec may have any (an op's outputs are shaped by its inputs).
using ExpectedOutputs = std::vector<std::pair<std::string, std::optional<TensorSpec>>>;

template <typename Stream>
absl::StatusOr<std::vector<at::Tensor>> read_outputs(Stream* stream,
                                                     const ExpectedOutputs& expected,
                                                     TransferCount* transfer) {
  v1::TensorsResponse message;
  if (!stream->Read(&message)) {
    return wire::from_grpc(stream->Finish());
  }
  auto protocol_error = [&](const std::string& what) {
    return absl::InternalError(absl::StrCat("daemon broke the protocol: ", what));
  };
  if (!message.has_header()) return protocol_error("first answer is not a header");
  const v1::TensorsHeader& header = message.header();
  if (header.tensors_size() != static_cast<int>(expected.size())) {
    return protocol_error(
        absl::StrCat(header.tensors_size(), " outputs, expected ", expected.size()));
  }
  std::vector<std::string> names;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < header.tensors_size(); ++i) {
    const v1::NamedTensorSpec& named = header.tensors(i);
    VB_ASSIGN_OR_RETURN(TensorSpec spec, wire::spec_from_proto(named.spec(), named.name()));
    if (named.name() != expected[i].first || (expected[i].second && spec != *expected[i].second)) {
      return protocol_error(
          absl::StrCat("output ", i, " is ", named.name(), " ", spec.to_string(), ", expected ",
                       expected[i].first, " ",
                       expected[i].second ? expected[i].second->to_string() : "of any shape"));
    }
    names.push_back(named.name());
    specs.push_back(spec);
  }
  wire::TensorAssembler assembler(std::move(names), std::move(specs));
  absl::Status received = absl::OkStatus();
  while (stream->Read(&message)) {
    if (!received.ok()) continue;  // drain, so Finish() can complete
    received =
        message.has_chunk() ? assembler.add(message.chunk()) : protocol_error("a second header");
  }
  transfer->bytes_received += assembler.bytes_received();
  VB_RETURN_IF_ERROR(wire::from_grpc(stream->Finish()));
  VB_RETURN_IF_ERROR(received);
  absl::Status complete = assembler.finish();
  if (!complete.ok()) return protocol_error(std::string(complete.message()));
  return std::move(assembler.tensors());
}

// One compute call on an open stream: the header, the inline tensors as chunks, then the
// outputs, which must be exactly `expected`.
template <typename Request, typename Stream>
absl::StatusOr<std::vector<at::Tensor>> exchange(Stream* stream, const Request& header,
                                                 const std::vector<at::Tensor>& inline_tensors,
                                                 size_t chunk_bytes,
                                                 const ExpectedOutputs& expected,
                                                 TransferCount* transfer) {
  if (stream->Write(header)) {
    write_chunks<Request>(stream, inline_tensors, chunk_bytes, transfer);
  } else {
    stream->WritesDone();
  }
  return read_outputs(stream, expected, transfer);
}

void set_weight_ref(const WeightRef& weight, const TensorSpec& spec, v1::WeightRef* out) {
  out->set_digest(weight.digest);
  wire::spec_to_proto(spec, out->mutable_spec());
}

}  // namespace

namespace {

std::string read_pem(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

std::shared_ptr<grpc::ChannelCredentials> channel_credentials(const ClientOptions& options) {
  if (options.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = read_pem(options.tls_ca_file);
  if (!options.tls_cert_file.empty()) {
    ssl.pem_cert_chain = read_pem(options.tls_cert_file);
    ssl.pem_private_key = read_pem(options.tls_key_file);
  }
  return grpc::SslCredentials(ssl);
}

std::string grpc_target_of(const std::string& address) {
  constexpr absl::string_view kScheme = "vbd://";
  if (absl::string_view(address).substr(0, kScheme.size()) != kScheme) return address;
  const std::string hosts = address.substr(kScheme.size());
  if (hosts.find('|') == std::string::npos) return hosts;
  // Several daemons: gRPC's static list of IPv4 addresses, balanced round-robin.
  return "ipv4:" + absl::StrJoin(absl::StrSplit(hosts, '|', absl::SkipEmpty()), ",");
}

int backend_count_of(const std::string& address) {
  const std::string target = grpc_target_of(address);
  if (target.rfind("ipv4:", 0) == 0 || target.rfind("ipv6:", 0) == 0) {
    return static_cast<int>(std::count(target.begin(), target.end(), ',')) + 1;
  }
  // A DNS name may stand for many; assume a handful.
  return target.rfind("dns:", 0) == 0 ? 8 : 1;
}

DaemonClient::DaemonClient(const std::string& address, ClientOptions options)
    : address_(address), options_(options), connection_(connect()) {}

std::shared_ptr<DaemonClient::Connection> DaemonClient::connect() const {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(options_.min_reconnect_backoff.count()));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(options_.max_reconnect_backoff.count()));
  // Without it, channels to the same address share one subchannel process-wide, and a new
  // channel would inherit the old one's backoff.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Where the address stands for several daemons (a list, or a DNS name answering with many,
  // such as a headless Service), spread calls over every one that is up.
  args.SetServiceConfigJSON(R"({"loadBalancingConfig": [{"round_robin": {}}]})");
  auto connection = std::make_shared<Connection>();
  connection->channel =
      grpc::CreateCustomChannel(grpc_target_of(address_), channel_credentials(options_), args);
  connection->stub = v1::Compute::NewStub(connection->channel);
  return connection;
}

std::shared_ptr<DaemonClient::Connection> DaemonClient::connection() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return connection_;
}

void DaemonClient::reconnect() {
  std::shared_ptr<Connection> fresh = connect();
  std::lock_guard<std::mutex> lock(mutex_);
  connection_ = std::move(fresh);
}

std::unique_ptr<grpc::ClientContext> DaemonClient::new_context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  return context;
}

absl::StatusOr<v1::GetInfoResponse> DaemonClient::get_info() {
  auto context = new_context();
  v1::GetInfoResponse response;
  VB_RETURN_IF_ERROR(wire::from_grpc(connection()->stub->GetInfo(context.get(), {}, &response)));
  return response;
}

absl::StatusOr<v1::GetStatsResponse> DaemonClient::get_stats() {
  auto context = new_context();
  v1::GetStatsResponse response;
  VB_RETURN_IF_ERROR(wire::from_grpc(connection()->stub->GetStats(context.get(), {}, &response)));
  return response;
}

absl::Status DaemonClient::check_health() {
  auto health = grpc::health::v1::Health::NewStub(channel());
  auto context = new_context();
  grpc::health::v1::HealthCheckResponse response;
  VB_RETURN_IF_ERROR(wire::from_grpc(health->Check(context.get(), {}, &response)));
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(
        absl::StrCat(address_, " is ",
                     grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::UploadWeightResponse> DaemonClient::upload_weight(const WeightRef& weight,
                                                                     TransferCount* transfer) {
  auto context = new_context();
  v1::UploadWeightResponse response;
  const std::shared_ptr<Connection> connection = this->connection();
  auto stream = connection->stub->UploadWeight(context.get(), &response);
  v1::UploadWeightRequest message;
  const char* data = static_cast<const char*>(weight.tensor.data_ptr());
  const size_t total = weight.tensor.numel() * weight.tensor.element_size();
  message.mutable_header()->set_digest(weight.digest);
  message.mutable_header()->set_byte_size(total);
  message.mutable_header()->set_replaces(weight.replaces);
  uint64_t sent = 0;
  if (stream->Write(message)) {
    for (size_t offset = 0; offset < total; offset += options_.chunk_bytes) {
      const size_t size = std::min(options_.chunk_bytes, total - offset);
      message.set_data(data + offset, size);
      // A failed write means the daemon answered early (it holds the digest) or failed.
      if (!stream->Write(message)) break;
      sent += size;
    }
  }
  stream->WritesDone();
  VB_RETURN_IF_ERROR(wire::from_grpc(stream->Finish()));
  transfer->bytes_sent += sent;
  if (!response.already_present()) ++transfer->uploads;
  return response;
}

absl::StatusOr<uint32_t> DaemonClient::prefetch_weights(const std::vector<std::string>& digests) {
  auto context = new_context();
  v1::PrefetchWeightsRequest request;
  for (const std::string& digest : digests) request.add_digests(digest);
  v1::PrefetchWeightsResponse response;
  VB_RETURN_IF_ERROR(
      wire::from_grpc(connection()->stub->PrefetchWeights(context.get(), request, &response)));
  return response.held();
}

absl::StatusOr<std::vector<bool>> DaemonClient::release_weights(
    const std::vector<std::string>& digests) {
  auto context = new_context();
  v1::ReleaseWeightsRequest request;
  for (const std::string& digest : digests) request.add_digests(digest);
  v1::ReleaseWeightsResponse response;
  VB_RETURN_IF_ERROR(
      wire::from_grpc(connection()->stub->ReleaseWeights(context.get(), request, &response)));
  if (response.released_size() != request.digests_size()) {
    return absl::InternalError(absl::StrCat("daemon answered ", response.released_size(), " of ",
                                            request.digests_size(), " digests"));
  }
  return std::vector<bool>(response.released().begin(), response.released().end());
}

absl::StatusOr<std::vector<bool>> DaemonClient::query_weights(
    const std::vector<std::string>& digests) {
  auto context = new_context();
  v1::QueryWeightsRequest request;
  for (const std::string& digest : digests) request.add_digests(digest);
  v1::QueryWeightsResponse response;
  VB_RETURN_IF_ERROR(
      wire::from_grpc(connection()->stub->QueryWeights(context.get(), request, &response)));
  if (response.present_size() != request.digests_size()) {
    return absl::InternalError(absl::StrCat("daemon answered ", response.present_size(), " of ",
                                            request.digests_size(), " digests"));
  }
  return std::vector<bool>(response.present().begin(), response.present().end());
}

absl::StatusOr<backends::NamedTensors> DaemonClient::run_op(const backends::OpArgs& args,
                                                            const std::vector<WeightRef>& weights,
                                                            TransferCount* transfer) {
  v1::OpRequest message;
  v1::OpHeader* header = message.mutable_header();
  header->set_op(args.op);
  std::vector<at::Tensor> inline_tensors;
  for (const backends::NamedTensor& input : args.inputs) {
    VB_ASSIGN_OR_RETURN(TensorSpec spec, backends::spec_of(input.tensor, input.name));
    v1::NamedTensorSpec* named = header->add_inputs();
    named->set_name(input.name);
    wire::spec_to_proto(spec, named->mutable_spec());
    inline_tensors.push_back(input.tensor.to(at::kCPU).contiguous());
  }
  for (const WeightRef& weight : weights) {
    v1::BlobRef* blob = header->add_weights();
    blob->set_digest(weight.digest);
    blob->set_byte_size(
        static_cast<uint64_t>(weight.tensor.numel() * weight.tensor.element_size()));
  }
  header->mutable_attributes()->insert(args.attributes.begin(), args.attributes.end());
  if (args.device_index >= 0) header->set_device_index(args.device_index);
  ExpectedOutputs expected;
  for (const std::string& name : backends::op_output_names(args.op)) {
    expected.emplace_back(name, std::nullopt);
  }
  if (expected.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("op = \"", args.op, "\": not an op libvb knows"));
  }
  auto context = new_context();
  const std::shared_ptr<Connection> connection = this->connection();
  auto stream = connection->stub->RunOp(context.get());
  VB_ASSIGN_OR_RETURN(
      std::vector<at::Tensor> outputs,
      exchange(stream.get(), message, inline_tensors, options_.chunk_bytes, expected, transfer));
  backends::NamedTensors named;
  for (size_t i = 0; i < outputs.size(); ++i) named.push_back({expected[i].first, outputs[i]});
  return named;
}

absl::StatusOr<at::Tensor> DaemonClient::linear_forward(const at::Tensor& input,
                                                        const WeightRef& weight,
                                                        const at::Tensor& bias,
                                                        TransferCount* transfer) {
  backends::LinearForwardSpecs specs;
  VB_ASSIGN_OR_RETURN(specs.input, backends::spec_of(input, "input"));
  VB_ASSIGN_OR_RETURN(specs.weight, backends::spec_of(weight.tensor, "weight"));
  if (bias.defined()) {
    VB_ASSIGN_OR_RETURN(specs.bias, backends::spec_of(bias, "bias"));
  }
  VB_ASSIGN_OR_RETURN(TensorSpec output_spec, backends::check_linear_forward(specs));

  v1::LinearForwardRequest message;
  v1::LinearForwardHeader* header = message.mutable_header();
  wire::spec_to_proto(specs.input, header->mutable_input());
  set_weight_ref(weight, specs.weight, header->mutable_weight());
  std::vector<at::Tensor> inline_tensors = {input.contiguous()};
  if (specs.bias) {
    wire::spec_to_proto(*specs.bias, header->mutable_bias());
    inline_tensors.push_back(bias.contiguous());
  }
  auto context = new_context();
  const std::shared_ptr<Connection> connection = this->connection();
  auto stream = connection->stub->LinearForward(context.get());
  VB_ASSIGN_OR_RETURN(std::vector<at::Tensor> outputs,
                      exchange(stream.get(), message, inline_tensors, options_.chunk_bytes,
                               {{"output", output_spec}}, transfer));
  return outputs[0];
}

absl::StatusOr<backends::LinearGrads> DaemonClient::linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const WeightRef& weight,
    bool need_grad_input, bool need_grad_weight, bool need_grad_bias, TransferCount* transfer) {
  backends::LinearBackwardSpecs specs;
  VB_ASSIGN_OR_RETURN(specs.grad_output, backends::spec_of(grad_output, "grad_output"));
  VB_ASSIGN_OR_RETURN(specs.weight, backends::spec_of(weight.tensor, "weight"));
  // The input travels only when grad_weight needs it.
  if (need_grad_weight) {
    VB_ASSIGN_OR_RETURN(specs.input, backends::spec_of(input, "input"));
  }
  specs.need_grad_input = need_grad_input;
  specs.need_grad_weight = need_grad_weight;
  specs.need_grad_bias = need_grad_bias;
  VB_ASSIGN_OR_RETURN(backends::LinearGradSpecs grad_specs, backends::check_linear_backward(specs));

  v1::LinearBackwardRequest message;
  v1::LinearBackwardHeader* header = message.mutable_header();
  wire::spec_to_proto(specs.grad_output, header->mutable_grad_output());
  set_weight_ref(weight, specs.weight, header->mutable_weight());
  header->set_need_grad_input(need_grad_input);
  header->set_need_grad_weight(need_grad_weight);
  header->set_need_grad_bias(need_grad_bias);
  std::vector<at::Tensor> inline_tensors = {grad_output.contiguous()};
  if (specs.input) {
    wire::spec_to_proto(*specs.input, header->mutable_input());
    inline_tensors.push_back(input.contiguous());
  }
  ExpectedOutputs expected;
  if (grad_specs.grad_input) expected.emplace_back("grad_input", *grad_specs.grad_input);
  if (grad_specs.grad_weight) expected.emplace_back("grad_weight", *grad_specs.grad_weight);
  if (grad_specs.grad_bias) expected.emplace_back("grad_bias", *grad_specs.grad_bias);

  auto context = new_context();
  const std::shared_ptr<Connection> connection = this->connection();
  auto stream = connection->stub->LinearBackward(context.get());
  VB_ASSIGN_OR_RETURN(
      std::vector<at::Tensor> outputs,
      exchange(stream.get(), message, inline_tensors, options_.chunk_bytes, expected, transfer));
  backends::LinearGrads grads;
  size_t next = 0;
  if (grad_specs.grad_input) grads.grad_input = outputs[next++];
  if (grad_specs.grad_weight) grads.grad_weight = outputs[next++];
  if (grad_specs.grad_bias) grads.grad_bias = outputs[next++];
  return grads;
}

}  // namespace vb
