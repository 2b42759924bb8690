// The gRPC face of ComputeService: each handler validates and converts the request, calls the
// service, converts the answer and the status back. No decisions are made here.
#pragma once

#include <atomic>
#include <chrono>

#include "server/compute_service.h"
#include "server/security.h"
#include "vb/v1/compute.grpc.pb.h"

namespace vb::server {

class GrpcComputeService final : public v1::Compute::Service {
 public:
  GrpcComputeService(ComputeService* service, TokenCheck tokens)
      : service_(service), tokens_(std::move(tokens)) {}

  grpc::Status GetInfo(grpc::ServerContext* context, const v1::GetInfoRequest* request,
                       v1::GetInfoResponse* response) override;
  grpc::Status UploadWeight(grpc::ServerContext* context,
                            grpc::ServerReader<v1::UploadWeightRequest>* reader,
                            v1::UploadWeightResponse* response) override;
  grpc::Status QueryWeights(grpc::ServerContext* context, const v1::QueryWeightsRequest* request,
                            v1::QueryWeightsResponse* response) override;
  grpc::Status ReleaseWeights(grpc::ServerContext* context,
                              const v1::ReleaseWeightsRequest* request,
                              v1::ReleaseWeightsResponse* response) override;
  grpc::Status PrefetchWeights(grpc::ServerContext* context,
                               const v1::PrefetchWeightsRequest* request,
                               v1::PrefetchWeightsResponse* response) override;
  grpc::Status LinearForward(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::TensorsResponse, v1::LinearForwardRequest>* stream) override;
  grpc::Status LinearBackward(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::TensorsResponse, v1::LinearBackwardRequest>* stream) override;
  grpc::Status RunOp(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<v1::TensorsResponse, v1::OpRequest>* stream) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

  uint32_t inflight_calls() const { return inflight_.load(); }

  // From now on every new call is answered UNAVAILABLE at once, so clients move on.
  void begin_drain() { draining_.store(true); }
  // Waits until no call is being handled, or until `deadline`; true when none is.
  bool wait_idle(std::chrono::steady_clock::time_point deadline) const;

 private:
  ComputeService* service_;
  const TokenCheck tokens_;
  std::atomic<uint32_t> inflight_{0};
  std::atomic<bool> draining_{false};
};

}  // namespace vb::server
