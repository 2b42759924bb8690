#include "server/http_service.h"

#include <httplib.h>

#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "backends/linear_op.h"
#include "backends/ops.h"
#include "backends/tensor_util.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "wire/http_tensors.h"

namespace vb::server {
namespace {

// Partial uploads wait this long for their next part before a new upload may replace them;
// and no more than this many wait at once, so abandoned ones cannot pile up.
constexpr std::chrono::minutes kPartTimeout{10};
constexpr size_t kMaxPartialUploads = 64;
// Room for the JSON line on top of the tensor bytes a call may carry.
constexpr size_t kHeaderAllowance = 64 << 10;

int http_status_of(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kFailedPrecondition:
      return 412;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

void reply_error(httplib::Response& response, const absl::Status& status) {
  response.status = http_status_of(status.code());
  const nlohmann::json body = {
      {"error_code", absl::StrCat("VB.", absl::StatusCodeToString(status.code()))},
      {"error_msg", std::string(status.message())}};
  response.set_content(body.dump(), "application/json");
}

void reply_json(httplib::Response& response, const nlohmann::json& body) {
  response.status = 200;
  response.set_content(body.dump(), "application/json");
}

absl::StatusOr<std::string> digest_of(const nlohmann::json& weight, absl::string_view field) {
  const auto digest = weight.find("digest");
  if (digest == weight.end() || !digest->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".digest is missing or not a string"));
  }
  VB_RETURN_IF_ERROR(
      check_digest_format(digest->get<std::string>(), absl::StrCat(field, ".digest")));
  return digest->get<std::string>();
}

absl::StatusOr<bool> flag_of(const nlohmann::json& header, const char* key, bool fallback) {
  const auto value = header.find(key);
  if (value == header.end()) return fallback;
  if (!value->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " is ", value->dump(), ": expected true or false"));
  }
  return value->get<bool>();
}

absl::StatusOr<uint64_t> query_number(const httplib::Request& request, const char* key,
                                      uint64_t fallback) {
  if (!request.has_param(key)) return fallback;
  uint64_t value = 0;
  const std::string text = request.get_param_value(key);
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("query parameter ", key, " is \"", text, "\": expected a byte count"));
  }
  return value;
}

}  // namespace

struct HttpFace::Impl {
  ComputeService* service = nullptr;
  const TokenCheck* tokens = nullptr;
  std::unique_ptr<httplib::Server> http;
  std::thread thread;
  int port = -1;
  std::atomic<bool> draining{false};
  std::atomic<uint32_t> inflight{0};

  struct PartialUpload {
    std::unique_ptr<WeightUpload> upload;
    uint64_t total = 0;
    std::chrono::steady_clock::time_point last_part;
  };
  std::mutex uploads_mutex;
  std::map<std::string, PartialUpload> uploads;

  // Runs `handle` as one call of `op`: counted in flight, refused while draining or without a
  // valid token, recorded in the op statistics, its status turned into an HTTP answer.
  void serve(const char* op, const httplib::Request& request, httplib::Response& response,
             const std::function<absl::Status(CallRecord*)>& handle) {
    inflight.fetch_add(1);
    const auto started = std::chrono::steady_clock::now();
    CallRecord record;
    record.bytes_in = request.body.size();
    absl::Status status;
    if (draining.load()) {
      status = absl::UnavailableError("vbd is draining: try another instance");
    } else {
      const std::string authorization = request.get_header_value("Authorization");
      status = tokens->check_authorization(request.has_header("Authorization") ? &authorization
                                                                               : nullptr);
    }
    if (status.ok()) status = handle(&record);
    if (!status.ok()) reply_error(response, status);
    record.code = status.code();
    record.bytes_out = response.body.size();
    record.total_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started)
            .count();
    service->op_stats().record(op, record);
    inflight.fetch_sub(1);
  }

  absl::Status upload_part(const std::string& digest, const httplib::Request& request,
                           nlohmann::json* answer) {
    VB_RETURN_IF_ERROR(check_digest_format(digest, "path digest"));
    VB_ASSIGN_OR_RETURN(uint64_t offset, query_number(request, "offset", 0));
    VB_ASSIGN_OR_RETURN(uint64_t total, query_number(request, "total", request.body.size()));
    if (offset + request.body.size() > total) {
      return absl::InvalidArgumentError(absl::StrCat("part at offset ", offset, " of ",
                                                     request.body.size(), " bytes runs past total ",
                                                     total));
    }
    std::lock_guard<std::mutex> lock(uploads_mutex);
    const auto now = std::chrono::steady_clock::now();
    auto it = uploads.find(digest);
    if (offset == 0) {
      if (it != uploads.end()) uploads.erase(it);
      VB_ASSIGN_OR_RETURN(std::unique_ptr<WeightUpload> upload,
                          service->begin_upload(digest, total));
      if (upload == nullptr) {
        *answer = {
            {"digest", digest}, {"received", total}, {"complete", true}, {"already_present", true}};
        return absl::OkStatus();
      }
      for (auto old = uploads.begin(); old != uploads.end();) {
        old = now - old->second.last_part > kPartTimeout ? uploads.erase(old) : std::next(old);
      }
      if (uploads.size() >= kMaxPartialUploads) {
        return absl::ResourceExhaustedError(absl::StrCat(
            uploads.size(), " weight uploads are waiting for their next part: try again later"));
      }
      it = uploads.emplace(digest, PartialUpload{std::move(upload), total, now}).first;
    } else if (it == uploads.end() || it->second.upload->bytes_received() != offset ||
               it->second.total != total) {
      const uint64_t expected = it == uploads.end() ? 0 : it->second.upload->bytes_received();
      return absl::AbortedError(absl::StrCat("weight ", digest, ": a part at offset ", offset,
                                             " of total ", total,
                                             " does not continue the upload here (expected offset ",
                                             expected, "): send it again from offset 0"));
    }
    PartialUpload& partial = it->second;
    partial.last_part = now;
    absl::Status appended = partial.upload->append(request.body.data(), request.body.size());
    if (!appended.ok()) {
      uploads.erase(it);
      return appended;
    }
    const uint64_t received = partial.upload->bytes_received();
    const bool complete = received == total;
    if (complete) {
      absl::Status committed = partial.upload->commit();
      uploads.erase(it);
      VB_RETURN_IF_ERROR(committed);
    }
    *answer = {{"digest", digest},
               {"received", received},
               {"complete", complete},
               {"already_present", false}};
    return absl::OkStatus();
  }

  absl::Status linear_forward(const httplib::Request& request, httplib::Response& response,
                              CallRecord* record) {
    VB_RETURN_IF_ERROR(service->check_request_bytes(request.body.size(), "linear/forward"));
    VB_ASSIGN_OR_RETURN(wire::TensorMessage message,
                        wire::decode_tensor_message(request.body, service->host_tensor_options()));
    backends::LinearForwardArgs args;
    args.input = message.find("input");
    args.bias = message.find("bias");
    backends::LinearForwardSpecs specs;
    VB_ASSIGN_OR_RETURN(specs.input, backends::spec_of(args.input, "input"));
    if (args.bias.defined()) {
      VB_ASSIGN_OR_RETURN(specs.bias, backends::spec_of(args.bias, "bias"));
    }
    const nlohmann::json weight = message.header.value("weight", nlohmann::json());
    VB_ASSIGN_OR_RETURN(specs.weight, wire::spec_from_json(weight, "weight"));
    VB_ASSIGN_OR_RETURN(std::string digest, digest_of(weight, "weight"));
    VB_RETURN_IF_ERROR(backends::check_linear_forward(specs).status());
    args.placement = {message.header.value("device_index", -1), digest};
    VB_RETURN_IF_ERROR(service->check_placement(args.placement));
    VB_RETURN_IF_ERROR(service->check_weight(digest, specs.weight, "weight"));
    ComputeTiming timing;
    absl::StatusOr<at::Tensor> output =
        service->linear_forward(std::move(args), specs.weight, &timing);
    record->queue_us = timing.queue_us;
    record->compute_us = timing.compute_us;
    VB_RETURN_IF_ERROR(output.status());
    reply_tensors(response, {{"output", *output}}, timing);
    return absl::OkStatus();
  }

  absl::Status linear_backward(const httplib::Request& request, httplib::Response& response,
                               CallRecord* record) {
    VB_RETURN_IF_ERROR(service->check_request_bytes(request.body.size(), "linear/backward"));
    VB_ASSIGN_OR_RETURN(wire::TensorMessage message,
                        wire::decode_tensor_message(request.body, service->host_tensor_options()));
    backends::LinearBackwardArgs args;
    args.grad_output = message.find("grad_output");
    args.input = message.find("input");
    backends::LinearBackwardSpecs specs;
    VB_ASSIGN_OR_RETURN(specs.grad_output, backends::spec_of(args.grad_output, "grad_output"));
    if (args.input.defined()) {
      VB_ASSIGN_OR_RETURN(specs.input, backends::spec_of(args.input, "input"));
    }
    const nlohmann::json weight = message.header.value("weight", nlohmann::json());
    VB_ASSIGN_OR_RETURN(specs.weight, wire::spec_from_json(weight, "weight"));
    VB_ASSIGN_OR_RETURN(std::string digest, digest_of(weight, "weight"));
    VB_ASSIGN_OR_RETURN(specs.need_grad_input, flag_of(message.header, "need_grad_input", true));
    VB_ASSIGN_OR_RETURN(specs.need_grad_weight, flag_of(message.header, "need_grad_weight", true));
    VB_ASSIGN_OR_RETURN(specs.need_grad_bias, flag_of(message.header, "need_grad_bias", true));
    VB_RETURN_IF_ERROR(backends::check_linear_backward(specs).status());
    args.need_grad_input = specs.need_grad_input;
    args.need_grad_weight = specs.need_grad_weight;
    args.need_grad_bias = specs.need_grad_bias;
    args.placement = {message.header.value("device_index", -1), digest};
    VB_RETURN_IF_ERROR(service->check_placement(args.placement));
    VB_RETURN_IF_ERROR(service->check_weight(digest, specs.weight, "weight"));
    ComputeTiming timing;
    absl::StatusOr<backends::LinearGrads> grads =
        service->linear_backward(std::move(args), specs.weight, &timing);
    record->queue_us = timing.queue_us;
    record->compute_us = timing.compute_us;
    VB_RETURN_IF_ERROR(grads.status());
    std::vector<wire::NamedTensor> outputs;
    if (grads->grad_input.defined()) outputs.push_back({"grad_input", grads->grad_input});
    if (grads->grad_weight.defined()) outputs.push_back({"grad_weight", grads->grad_weight});
    if (grads->grad_bias.defined()) outputs.push_back({"grad_bias", grads->grad_bias});
    reply_tensors(response, outputs, timing);
    return absl::OkStatus();
  }

  // POST /v1/ops/{op}: a named op of RunOp (backends/ops.h). The tensors are its inputs by
  // name; the JSON line may add "attributes" (numbers, or true/false for 1/0), "weights"
  // ([{"digest", "byte_size"}], blobs the daemon holds) and "device_index". The answer holds
  // the op's outputs.
  absl::Status run_op(const std::string& op, const httplib::Request& request,
                      httplib::Response& response, CallRecord* record) {
    VB_RETURN_IF_ERROR(service->check_request_bytes(request.body.size(), "ops"));
    VB_ASSIGN_OR_RETURN(wire::TensorMessage message,
                        wire::decode_tensor_message(request.body, service->host_tensor_options()));
    backends::OpArgs args;
    args.op = op;
    const nlohmann::json& header = message.header;
    if (const auto attributes = header.find("attributes"); attributes != header.end()) {
      if (!attributes->is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat("attributes is ", attributes->dump(), ": expected an object of numbers"));
      }
      for (const auto& [name, value] : attributes->items()) {
        if (value.is_boolean()) {
          args.attributes[name] = value.get<bool>() ? 1.0 : 0.0;
        } else if (value.is_number()) {
          args.attributes[name] = value.get<double>();
        } else {
          return absl::InvalidArgumentError(absl::StrCat("attributes.", name, " is ", value.dump(),
                                                         ": expected a number or true/false"));
        }
      }
    }
    if (const auto device = header.find("device_index"); device != header.end()) {
      if (!device->is_number_integer() || device->get<int64_t>() < -1 ||
          device->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat("device_index is ", device->dump(),
                                                       ": expected -1 (any) or a device index"));
      }
      args.device_index = static_cast<int>(device->get<int64_t>());
    }
    std::vector<std::string> weights;
    std::vector<uint64_t> weight_bytes;
    if (const auto list = header.find("weights"); list != header.end()) {
      if (!list->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weights is ", list->dump(), ": expected a list of {\"digest\", \"byte_size\"}"));
      }
      for (size_t i = 0; i < list->size(); ++i) {
        const std::string field = absl::StrCat("weights[", i, "]");
        const nlohmann::json& weight = (*list)[i];
        if (!weight.is_object()) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, " is ", weight.dump(), ": expected {\"digest\", \"byte_size\"}"));
        }
        VB_ASSIGN_OR_RETURN(std::string digest, digest_of(weight, field));
        const auto size = weight.find("byte_size");
        if (size == weight.end() || !size->is_number_unsigned()) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ".byte_size is missing or not a byte count"));
        }
        weights.push_back(std::move(digest));
        weight_bytes.push_back(size->get<uint64_t>());
      }
    }
    std::vector<std::string> names;
    for (const wire::NamedTensor& tensor : message.tensors) names.push_back(tensor.name);
    VB_RETURN_IF_ERROR(backends::check_op_header(op, names, weights.size(), args.attributes));
    VB_RETURN_IF_ERROR(service->check_placement({args.device_index, ""}));
    for (size_t i = 0; i < weights.size(); ++i) {
      VB_RETURN_IF_ERROR(
          service->check_blob(weights[i], weight_bytes[i], absl::StrCat("weights[", i, "]")));
    }
    for (wire::NamedTensor& tensor : message.tensors) {
      args.inputs.push_back({std::move(tensor.name), std::move(tensor.tensor)});
    }
    ComputeTiming timing;
    absl::StatusOr<backends::NamedTensors> outputs =
        service->run_op(std::move(args), weights, &timing);
    record->queue_us = timing.queue_us;
    record->compute_us = timing.compute_us;
    VB_RETURN_IF_ERROR(outputs.status());
    std::vector<wire::NamedTensor> answer;
    for (backends::NamedTensor& output : *outputs) {
      answer.push_back({std::move(output.name), std::move(output.tensor)});
    }
    reply_tensors(response, answer, timing);
    return absl::OkStatus();
  }

  static void reply_tensors(httplib::Response& response,
                            const std::vector<wire::NamedTensor>& tensors,
                            const ComputeTiming& timing) {
    nlohmann::json header = {
        {"timing", {{"queue_us", timing.queue_us}, {"compute_us", timing.compute_us}}}};
    response.status = 200;
    response.set_content(wire::encode_tensor_message(std::move(header), tensors),
                         wire::kTensorsContentType);
  }

  nlohmann::json info_json() const {
    const ComputeService::Info info = service->info();
    nlohmann::json devices = nlohmann::json::array();
    for (const backends::DeviceDescription& device : info.devices) {
      devices.push_back({{"kind", device.kind},
                         {"index", device.index},
                         {"name", device.name},
                         {"total_memory_bytes", device.total_memory_bytes},
                         {"free_memory_bytes", device.free_memory_bytes}});
    }
    nlohmann::json dtypes = nlohmann::json::array();
    for (DType dtype : info.dtypes) dtypes.push_back(std::string(dtype_name(dtype)));
    const ServerOptions& options = service->options();
    return {{"version", info.version},
            {"torch_version", info.torch_version},
            {"devices", devices},
            {"dtypes", dtypes},
            {"limits",
             {{"max_request_bytes", options.max_request_bytes},
              {"max_queue", options.max_queue},
              {"workers", options.workers}}}};
  }
};

HttpFace::HttpFace(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpFace::~HttpFace() { stop(); }

int HttpFace::port() const { return impl_->port; }

void HttpFace::begin_drain() { impl_->draining.store(true); }

bool HttpFace::wait_idle(std::chrono::steady_clock::time_point deadline) const {
  while (impl_->inflight.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void HttpFace::stop() {
  if (impl_->http != nullptr) impl_->http->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

absl::StatusOr<std::unique_ptr<HttpFace>> HttpFace::start(ComputeService* service,
                                                          const TokenCheck* tokens) {
  const ServerOptions& options = service->options();
  auto impl = std::make_unique<Impl>();
  impl->service = service;
  impl->tokens = tokens;
  if (options.tls_cert_file.empty()) {
    impl->http = std::make_unique<httplib::Server>();
  } else {
    auto tls = std::make_unique<httplib::SSLServer>(
        options.tls_cert_file.c_str(), options.tls_key_file.c_str(),
        options.tls_client_ca_file.empty() ? nullptr : options.tls_client_ca_file.c_str());
    if (!tls->is_valid()) {
      return absl::FailedPreconditionError(
          absl::StrCat("http: cannot load tls.cert_file \"", options.tls_cert_file,
                       "\" / tls.key_file \"", options.tls_key_file, "\" for the HTTP face"));
    }
    impl->http = std::move(tls);
  }
  Impl* self = impl.get();
  httplib::Server& http = *impl->http;
  http.set_payload_max_length(options.max_request_bytes + kHeaderAllowance);
  // Answers go out as headers then body: without this, Nagle's algorithm holds the body
  // until the client's delayed ACK.
  http.set_tcp_nodelay(true);
  http.Get("/health", [self](const httplib::Request&, httplib::Response& response) {
    const bool serving = !self->draining.load();
    response.status = serving ? 200 : 503;
    response.set_content(nlohmann::json{{"health", serving ? "true" : "false"}}.dump(),
                         "application/json");
  });
  http.Get("/v1/info", [self](const httplib::Request& request, httplib::Response& response) {
    self->serve("http.GetInfo", request, response, [&](CallRecord*) {
      reply_json(response, self->info_json());
      return absl::OkStatus();
    });
  });
  http.Get(R"(/v1/weights/([^/]+))",
           [self](const httplib::Request& request, httplib::Response& response) {
             self->serve("http.QueryWeights", request, response, [&](CallRecord*) -> absl::Status {
               const std::string digest = request.matches[1];
               VB_RETURN_IF_ERROR(check_digest_format(digest, "path digest"));
               if (!self->service->has_weight(digest)) {
                 return absl::NotFoundError(absl::StrCat("weight ", digest, " is not held"));
               }
               reply_json(response, {{"digest", digest}, {"present", true}});
               return absl::OkStatus();
             });
           });
  http.Delete(R"(/v1/weights/([^/]+))", [self](const httplib::Request& request,
                                               httplib::Response& response) {
    self->serve("http.ReleaseWeights", request, response, [&](CallRecord*) -> absl::Status {
      const std::string digest = request.matches[1];
      VB_RETURN_IF_ERROR(check_digest_format(digest, "path digest"));
      if (!self->service->release_weight(digest)) {
        return absl::NotFoundError(absl::StrCat("weight ", digest, " is not held"));
      }
      reply_json(response, {{"digest", digest}, {"released", true}});
      return absl::OkStatus();
    });
  });
  http.Post(R"(/v1/weights/([^/]+))",
            [self](const httplib::Request& request, httplib::Response& response) {
              self->serve("http.UploadWeight", request, response, [&](CallRecord*) -> absl::Status {
                nlohmann::json answer;
                VB_RETURN_IF_ERROR(self->upload_part(request.matches[1], request, &answer));
                reply_json(response, answer);
                return absl::OkStatus();
              });
            });
  http.Post("/v1/linear/forward",
            [self](const httplib::Request& request, httplib::Response& response) {
              self->serve("http.LinearForward", request, response, [&](CallRecord* record) {
                return self->linear_forward(request, response, record);
              });
            });
  http.Post("/v1/linear/backward",
            [self](const httplib::Request& request, httplib::Response& response) {
              self->serve("http.LinearBackward", request, response, [&](CallRecord* record) {
                return self->linear_backward(request, response, record);
              });
            });
  http.Post(R"(/v1/ops/([A-Za-z0-9_.]+))",
            [self](const httplib::Request& request, httplib::Response& response) {
              self->serve("http.RunOp", request, response, [&](CallRecord* record) {
                return self->run_op(request.matches[1], request, response, record);
              });
            });
  // Unknown routes answer in the same error format as everything else.
  http.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    const std::string what = response.status == 404
                                 ? absl::StrCat("no route ", request.method, " ", request.path)
                                 : absl::StrCat("HTTP ", response.status);
    const nlohmann::json body = {{"error_code", absl::StrCat("VB.HTTP_", response.status)},
                                 {"error_msg", what}};
    response.set_content(body.dump(), "application/json");
  });

  const std::string& host = options.http_host;
  impl->port = options.http_port == 0
                   ? http.bind_to_any_port(host)
                   : (http.bind_to_port(host, options.http_port) ? options.http_port : -1);
  if (impl->port <= 0) {
    return absl::UnavailableError(absl::StrCat("http: cannot listen on ", host, ":",
                                               options.http_port, " (address in use?)"));
  }
  impl->thread = std::thread([self] { self->http->listen_after_bind(); });
  return std::unique_ptr<HttpFace>(new HttpFace(std::move(impl)));
}

}  // namespace vb::server
