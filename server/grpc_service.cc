#include "server/grpc_service.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "backends/linear_op.h"
#include "common/status_macros.h"
#include "wire/codec.h"

namespace vb::server {
namespace {

// Counts the call as in flight and records it in the op statistics when it ends.
class CallScope {
 public:
  CallScope(ComputeService* service, std::atomic<uint32_t>* inflight,
            const std::atomic<bool>& draining, const TokenCheck& tokens,
            const grpc::ServerContext& context, std::string op)
      : service_(service), inflight_(inflight), op_(std::move(op)) {
    inflight_->fetch_add(1);
    // Checked after counting the call, so wait_idle() cannot miss one that slips in.
    if (draining.load()) {
      refusal_ = absl::UnavailableError("vbd is draining: try another target");
    } else {
      refusal_ = tokens.check(context);
    }
  }
  ~CallScope() { inflight_->fetch_sub(1); }

  // UNAVAILABLE while the daemon drains: handlers return finish(refusal()) before any work.
  const absl::Status& refusal() const { return refusal_; }

  grpc::Status finish(const absl::Status& status) {
    record.code = status.code();
    record.total_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started_)
            .count();
    service_->op_stats().record(op_, record);
    return wire::to_grpc(status);
  }

  CallRecord record;

 private:
  absl::Status refusal_;
  ComputeService* service_;
  std::atomic<uint32_t>* inflight_;
  std::string op_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

// The format of every digest of a Query/Prefetch/ReleaseWeights request, before any is acted
// on: a refused request changes nothing, and the error names digests[i].
absl::Status check_digests(const google::protobuf::RepeatedPtrField<std::string>& digests) {
  for (int i = 0; i < digests.size(); ++i) {
    VB_RETURN_IF_ERROR(check_digest_format(digests[i], absl::StrCat("digests[", i, "]")));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorSpec> weight_spec(const v1::WeightRef& ref, absl::string_view field) {
  if (!ref.has_spec()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".spec is missing"));
  }
  return wire::spec_from_proto(ref.spec(), absl::StrCat(field, ".spec"));
}

// Reads the chunks that follow a header into `assembler`; anything else in the stream is an
// error, and so is a stream that ends before every announced byte arrived.
template <typename Request, typename Stream>
absl::Status read_chunks(Stream* stream, wire::TensorAssembler* assembler) {
  Request message;
  while (stream->Read(&message)) {
    if (!message.has_chunk()) {
      return absl::InvalidArgumentError("a second header in one call: expected only chunks");
    }
    VB_RETURN_IF_ERROR(assembler->add(message.chunk()));
  }
  return assembler->finish();
}

// Streams named outputs back: one header, then chunks. Returns the bytes written.
template <typename Stream>
absl::StatusOr<uint64_t> write_tensors(Stream* stream, const std::vector<std::string>& names,
                                       const std::vector<at::Tensor>& tensors,
                                       const ComputeTiming& timing) {
  v1::TensorsResponse header_message;
  v1::TensorsHeader* header = header_message.mutable_header();
  for (size_t i = 0; i < tensors.size(); ++i) {
    v1::NamedTensorSpec* named = header->add_tensors();
    named->set_name(names[i]);
    TensorSpec spec;
    VB_ASSIGN_OR_RETURN(spec.dtype, dtype_from_scalar_type(tensors[i].scalar_type(), names[i]));
    spec.shape.assign(tensors[i].sizes().begin(), tensors[i].sizes().end());
    wire::spec_to_proto(spec, named->mutable_spec());
  }
  header->mutable_timing()->set_queue_us(static_cast<uint64_t>(timing.queue_us));
  header->mutable_timing()->set_compute_us(static_cast<uint64_t>(timing.compute_us));
  if (!stream->Write(header_message)) return absl::CancelledError("client went away");
  uint64_t written = 0;
  v1::TensorsResponse chunk_message;
  const bool all_sent = wire::for_each_chunk(
      tensors, wire::kDefaultChunkBytes, [&](uint32_t index, const char* data, size_t size) {
        v1::TensorChunk* chunk = chunk_message.mutable_chunk();
        chunk->set_tensor_index(index);
        chunk->set_data(data, size);
        written += size;
        return stream->Write(chunk_message);
      });
  if (!all_sent) return absl::CancelledError("client went away");
  return written;
}

uint64_t spec_bytes(const std::vector<TensorSpec>& specs) {
  uint64_t total = 0;
  for (const TensorSpec& spec : specs) total += static_cast<uint64_t>(spec.byte_size());
  return total;
}

void fill_device(const backends::DeviceDescription& device, v1::DeviceInfo* out) {
  out->set_kind(device.kind);
  out->set_index(device.index);
  out->set_name(device.name);
  out->set_total_memory_bytes(device.total_memory_bytes);
  out->set_free_memory_bytes(device.free_memory_bytes);
  out->set_platform(device.platform);
  out->set_compute_capability(device.compute_capability);
  out->set_driver_version(device.driver_version);
  out->set_runtime_version(device.runtime_version);
}

void fill_store_info(const backends::TierStoreStats& stats, v1::WeightStoreInfo* out) {
  out->set_capacity_bytes(stats.capacity_bytes);
  out->set_used_bytes(stats.committed_bytes);
  out->set_entries(stats.tensors);
}

void fill_tier_stats(const backends::TierStoreStats& stats, const ServerOptions& options,
                     const std::string& ssd_dir, v1::TierStoreStats* out) {
  for (int i = 0; i < backends::kTierCount; ++i) {
    const backends::TierCounters& c = stats.tiers[i];
    v1::TierStats* tier = out->add_tiers();
    tier->set_tier(backends::tier_name(static_cast<backends::Tier>(i)));
    tier->set_budget_bytes(c.budget_bytes);
    tier->set_held_bytes(c.held_bytes);
    tier->set_tensors(c.tensors);
    tier->set_hits(c.hits);
    tier->set_misses(c.misses);
    tier->set_promotions(c.promotions);
    tier->set_demotions(c.demotions);
    tier->set_bytes_in(c.bytes_in);
    tier->set_bytes_out(c.bytes_out);
    tier->set_move_seconds(c.move_seconds);
  }
  out->set_mode(options.store_mode);
  out->set_policy(backends::policy_name(stats.policy));
  out->set_tensors(stats.tensors);
  out->set_uploads(stats.uploads);
  out->set_prefetches(stats.prefetches);
  out->set_prefetch_hits(stats.prefetch_hits);
  out->set_checksum_failures(stats.checksum_failures);
  out->set_recovered_files(stats.recovered_files);
  out->set_removed_files(stats.removed_files);
  out->set_cycle_length(stats.cycle_length);
  out->set_cycle_hinted(stats.cycle_hinted);
  out->set_ssd_direct_io(stats.ssd_direct_io);
  out->set_ssd_dir(ssd_dir);
}

}  // namespace

bool GrpcComputeService::wait_idle(std::chrono::steady_clock::time_point deadline) const {
  while (inflight_.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

grpc::Status GrpcComputeService::GetInfo(grpc::ServerContext* context, const v1::GetInfoRequest*,
                                         v1::GetInfoResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "GetInfo");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  const ComputeService::Info info = service_->info();
  response->set_version(info.version);
  response->set_torch_version(info.torch_version);
  for (const backends::DeviceDescription& device : info.devices) {
    fill_device(device, response->add_devices());
  }
  const ServerOptions& options = service_->options();
  v1::Limits* limits = response->mutable_limits();
  limits->set_max_request_bytes(options.max_request_bytes);
  limits->set_max_queue(options.max_queue);
  limits->set_workers(options.workers);
  limits->set_max_chunk_bytes(wire::kMaxChunkBytes);
  fill_store_info(info.store, response->mutable_weight_store());
  for (DType dtype : info.dtypes) response->add_dtypes(wire::dtype_to_proto(dtype));
  response->set_config_toml(options_to_toml(service_->options()));
  return scope.finish(absl::OkStatus());
}

grpc::Status GrpcComputeService::UploadWeight(grpc::ServerContext* context,
                                              grpc::ServerReader<v1::UploadWeightRequest>* reader,
                                              v1::UploadWeightResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "UploadWeight");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  auto handle = [&]() -> absl::Status {
    v1::UploadWeightRequest message;
    if (!reader->Read(&message) || !message.has_header()) {
      return absl::InvalidArgumentError("the first message of UploadWeight must be a header");
    }
    const v1::UploadHeader& header = message.header();
    response->set_digest(header.digest());
    response->set_byte_size(header.byte_size());
    VB_ASSIGN_OR_RETURN(
        std::unique_ptr<WeightUpload> upload,
        service_->begin_upload(header.digest(), header.byte_size(), header.replaces()));
    if (upload == nullptr) {
      // Answer now; the client stops sending when its next write fails.
      response->set_already_present(true);
      return absl::OkStatus();
    }
    while (reader->Read(&message)) {
      if (message.part_case() != v1::UploadWeightRequest::kData) {
        return absl::InvalidArgumentError("a second header in one upload: expected only data");
      }
      VB_RETURN_IF_ERROR(upload->append(message.data().data(), message.data().size()));
      scope.record.bytes_in = upload->bytes_received();
    }
    return upload->commit();
  };
  return scope.finish(handle());
}

grpc::Status GrpcComputeService::QueryWeights(grpc::ServerContext* context,
                                              const v1::QueryWeightsRequest* request,
                                              v1::QueryWeightsResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "QueryWeights");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  const absl::Status formats = check_digests(request->digests());
  if (!formats.ok()) return scope.finish(formats);
  for (const std::string& digest : request->digests()) {
    response->add_present(service_->has_weight(digest));
  }
  return scope.finish(absl::OkStatus());
}

grpc::Status GrpcComputeService::ReleaseWeights(grpc::ServerContext* context,
                                                const v1::ReleaseWeightsRequest* request,
                                                v1::ReleaseWeightsResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "ReleaseWeights");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  const absl::Status formats = check_digests(request->digests());
  if (!formats.ok()) return scope.finish(formats);
  for (const std::string& digest : request->digests()) {
    response->add_released(service_->release_weight(digest));
  }
  return scope.finish(absl::OkStatus());
}

grpc::Status GrpcComputeService::PrefetchWeights(grpc::ServerContext* context,
                                                 const v1::PrefetchWeightsRequest* request,
                                                 v1::PrefetchWeightsResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "PrefetchWeights");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  const absl::Status formats = check_digests(request->digests());
  if (!formats.ok()) return scope.finish(formats);
  const std::vector<std::string> digests(request->digests().begin(), request->digests().end());
  response->set_held(static_cast<uint32_t>(service_->prefetch(digests)));
  return scope.finish(absl::OkStatus());
}

grpc::Status GrpcComputeService::LinearForward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::TensorsResponse, v1::LinearForwardRequest>* stream) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "LinearForward");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  ComputeTiming timing;
  auto handle = [&]() -> absl::Status {
    v1::LinearForwardRequest message;
    if (!stream->Read(&message) || !message.has_header()) {
      return absl::InvalidArgumentError("the first message of LinearForward must be a header");
    }
    const v1::LinearForwardHeader& header = message.header();
    backends::LinearForwardSpecs specs;
    VB_ASSIGN_OR_RETURN(specs.input, wire::spec_from_proto(header.input(), "input"));
    VB_ASSIGN_OR_RETURN(specs.weight, weight_spec(header.weight(), "weight"));
    std::vector<std::string> names = {"input"};
    std::vector<TensorSpec> inline_specs = {specs.input};
    if (header.has_bias()) {
      VB_ASSIGN_OR_RETURN(specs.bias, wire::spec_from_proto(header.bias(), "bias"));
      names.push_back("bias");
      inline_specs.push_back(*specs.bias);
    }
    // Everything that can be refused from the header is refused before any bytes move.
    VB_RETURN_IF_ERROR(backends::check_linear_forward(specs).status());
    VB_RETURN_IF_ERROR(service_->check_request_bytes(spec_bytes(inline_specs), "LinearForward"));
    backends::LinearForwardArgs args;
    args.placement = {header.has_device_index() ? header.device_index() : -1,
                      header.weight().digest()};
    VB_RETURN_IF_ERROR(service_->check_placement(args.placement));
    VB_RETURN_IF_ERROR(service_->check_weight(header.weight().digest(), specs.weight, "weight"));
    wire::TensorAssembler assembler(names, inline_specs, service_->host_tensor_options());
    absl::Status received = read_chunks<v1::LinearForwardRequest>(stream, &assembler);
    scope.record.bytes_in = assembler.bytes_received();
    VB_RETURN_IF_ERROR(received);
    args.input = assembler.tensors()[0];
    if (specs.bias) args.bias = assembler.tensors()[1];
    VB_ASSIGN_OR_RETURN(at::Tensor output,
                        service_->linear_forward(std::move(args), specs.weight, &timing));
    VB_ASSIGN_OR_RETURN(scope.record.bytes_out,
                        write_tensors(stream, {"output"}, {output}, timing));
    return absl::OkStatus();
  };
  absl::Status status = handle();
  scope.record.queue_us = timing.queue_us;
  scope.record.compute_us = timing.compute_us;
  return scope.finish(status);
}

grpc::Status GrpcComputeService::LinearBackward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::TensorsResponse, v1::LinearBackwardRequest>* stream) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "LinearBackward");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  ComputeTiming timing;
  auto handle = [&]() -> absl::Status {
    v1::LinearBackwardRequest message;
    if (!stream->Read(&message) || !message.has_header()) {
      return absl::InvalidArgumentError("the first message of LinearBackward must be a header");
    }
    const v1::LinearBackwardHeader& header = message.header();
    backends::LinearBackwardSpecs specs;
    VB_ASSIGN_OR_RETURN(specs.grad_output,
                        wire::spec_from_proto(header.grad_output(), "grad_output"));
    VB_ASSIGN_OR_RETURN(specs.weight, weight_spec(header.weight(), "weight"));
    specs.need_grad_input = header.need_grad_input();
    specs.need_grad_weight = header.need_grad_weight();
    specs.need_grad_bias = header.need_grad_bias();
    std::vector<std::string> names = {"grad_output"};
    std::vector<TensorSpec> inline_specs = {specs.grad_output};
    if (header.has_input()) {
      VB_ASSIGN_OR_RETURN(specs.input, wire::spec_from_proto(header.input(), "input"));
      names.push_back("input");
      inline_specs.push_back(*specs.input);
    }
    VB_RETURN_IF_ERROR(backends::check_linear_backward(specs).status());
    VB_RETURN_IF_ERROR(service_->check_request_bytes(spec_bytes(inline_specs), "LinearBackward"));
    backends::LinearBackwardArgs args;
    args.placement = {header.has_device_index() ? header.device_index() : -1,
                      header.weight().digest()};
    VB_RETURN_IF_ERROR(service_->check_placement(args.placement));
    VB_RETURN_IF_ERROR(service_->check_weight(header.weight().digest(), specs.weight, "weight"));
    wire::TensorAssembler assembler(names, inline_specs, service_->host_tensor_options());
    absl::Status received = read_chunks<v1::LinearBackwardRequest>(stream, &assembler);
    scope.record.bytes_in = assembler.bytes_received();
    VB_RETURN_IF_ERROR(received);
    args.grad_output = assembler.tensors()[0];
    if (specs.input) args.input = assembler.tensors()[1];
    args.need_grad_input = specs.need_grad_input;
    args.need_grad_weight = specs.need_grad_weight;
    args.need_grad_bias = specs.need_grad_bias;
    VB_ASSIGN_OR_RETURN(backends::LinearGrads grads,
                        service_->linear_backward(std::move(args), specs.weight, &timing));
    std::vector<std::string> out_names;
    std::vector<at::Tensor> outputs;
    for (auto [name, tensor] :
         {std::pair{"grad_input", &grads.grad_input}, std::pair{"grad_weight", &grads.grad_weight},
          std::pair{"grad_bias", &grads.grad_bias}}) {
      if (!tensor->defined()) continue;
      out_names.emplace_back(name);
      outputs.push_back(*tensor);
    }
    VB_ASSIGN_OR_RETURN(scope.record.bytes_out, write_tensors(stream, out_names, outputs, timing));
    return absl::OkStatus();
  };
  absl::Status status = handle();
  scope.record.queue_us = timing.queue_us;
  scope.record.compute_us = timing.compute_us;
  return scope.finish(status);
}

grpc::Status GrpcComputeService::RunOp(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::TensorsResponse, v1::OpRequest>* stream) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "RunOp");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  ComputeTiming timing;
  auto handle = [&]() -> absl::Status {
    v1::OpRequest message;
    if (!stream->Read(&message) || !message.has_header()) {
      return absl::InvalidArgumentError("the first message of RunOp must be a header");
    }
    const v1::OpHeader& header = message.header();
    backends::OpArgs args;
    args.op = header.op();
    args.attributes.insert(header.attributes().begin(), header.attributes().end());
    args.device_index = header.has_device_index() ? header.device_index() : -1;
    std::vector<std::string> names;
    std::vector<TensorSpec> inline_specs;
    for (int i = 0; i < header.inputs_size(); ++i) {
      const v1::NamedTensorSpec& input = header.inputs(i);
      VB_ASSIGN_OR_RETURN(TensorSpec spec, wire::spec_from_proto(input.spec(), input.name()));
      names.push_back(input.name());
      inline_specs.push_back(std::move(spec));
    }
    // Everything that can be refused from the header is refused before any bytes move.
    VB_RETURN_IF_ERROR(
        backends::check_op_header(args.op, names, header.weights_size(), args.attributes));
    VB_RETURN_IF_ERROR(service_->check_request_bytes(spec_bytes(inline_specs), "RunOp"));
    VB_RETURN_IF_ERROR(service_->check_placement({args.device_index, ""}));
    std::vector<std::string> weights;
    for (int i = 0; i < header.weights_size(); ++i) {
      const v1::BlobRef& blob = header.weights(i);
      VB_RETURN_IF_ERROR(
          service_->check_blob(blob.digest(), blob.byte_size(), absl::StrCat("weights[", i, "]")));
      weights.push_back(blob.digest());
    }
    wire::TensorAssembler assembler(names, inline_specs, service_->host_tensor_options());
    absl::Status received = read_chunks<v1::OpRequest>(stream, &assembler);
    scope.record.bytes_in = assembler.bytes_received();
    VB_RETURN_IF_ERROR(received);
    for (size_t i = 0; i < names.size(); ++i) {
      args.inputs.push_back({names[i], assembler.tensors()[i]});
    }
    VB_ASSIGN_OR_RETURN(backends::NamedTensors outputs,
                        service_->run_op(std::move(args), weights, &timing));
    std::vector<std::string> out_names;
    std::vector<at::Tensor> out_tensors;
    for (backends::NamedTensor& t : outputs) {
      out_names.push_back(t.name);
      out_tensors.push_back(std::move(t.tensor));
    }
    VB_ASSIGN_OR_RETURN(scope.record.bytes_out,
                        write_tensors(stream, out_names, out_tensors, timing));
    return absl::OkStatus();
  };
  absl::Status status = handle();
  scope.record.queue_us = timing.queue_us;
  scope.record.compute_us = timing.compute_us;
  return scope.finish(status);
}

grpc::Status GrpcComputeService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*,
                                          v1::GetStatsResponse* response) {
  CallScope scope(service_, &inflight_, draining_, tokens_, *context, "GetStats");
  if (!scope.refusal().ok()) return scope.finish(scope.refusal());
  for (const OpSnapshot& op : service_->op_stats().snapshot()) {
    v1::OpStats* out = response->add_ops();
    out->set_op(op.op);
    out->set_calls(op.calls);
    out->set_failures(op.failures);
    out->set_bytes_in(op.bytes_in);
    out->set_bytes_out(op.bytes_out);
    out->set_latency_p50_ms(op.total.quantile_ms(0.5));
    out->set_latency_p99_ms(op.total.quantile_ms(0.99));
    out->set_queue_p50_ms(op.queue.quantile_ms(0.5));
    out->set_queue_p99_ms(op.queue.quantile_ms(0.99));
    out->set_compute_p50_ms(op.compute.quantile_ms(0.5));
    out->set_compute_p99_ms(op.compute.quantile_ms(0.99));
    for (const auto& [code, count] : op.statuses) {
      v1::StatusCount* status = out->add_statuses();
      status->set_code(absl::StatusCodeToString(code));
      status->set_count(count);
    }
  }
  const WorkQueue::Stats queue = service_->queue_stats();
  v1::QueueStats* q = response->mutable_queue();
  q->set_workers(queue.workers);
  q->set_max_queue(queue.max_queue);
  q->set_queued(queue.queued);
  q->set_running(queue.running);
  q->set_rejected(queue.rejected);
  // This call itself is in flight too; report the others.
  q->set_inflight_calls(inflight_.load() - 1);
  const backends::TierStoreStats tiers = service_->store_stats();
  fill_store_info(tiers, response->mutable_weight_store());
  fill_tier_stats(tiers, service_->options(), service_->ssd_directory(),
                  response->mutable_tier_store());
  for (const backends::DeviceDescription& device : service_->info().devices) {
    fill_device(device, response->add_devices());
  }
  response->set_uptime_s(service_->uptime_s());
  return scope.finish(absl::OkStatus());
}

}  // namespace vb::server
