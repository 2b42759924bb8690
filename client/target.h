// A place where a layer's call can run: this process (LocalTarget), a vbd (DaemonTarget), and
// later a cloud endpoint. The router tries them in order.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "backends/backend.h"
#include "client/daemon_client.h"
#include "client/stats.h"

namespace vb {

struct LinearForwardCall {
  at::Tensor input;
  WeightRef weight;
  at::Tensor bias;  // undefined: no bias
};

struct LinearBackwardCall {
  at::Tensor grad_output;
  at::Tensor input;
  WeightRef weight;
  bool need_grad_input = true;
  bool need_grad_weight = true;
  bool need_grad_bias = true;
};

class Target {
 public:
  virtual ~Target() = default;
  // Unique within a router; the key of its statistics ("local", "vbd://127.0.0.1:50551").
  virtual const std::string& name() const = 0;
  virtual TargetKind kind() const = 0;

  virtual absl::StatusOr<at::Tensor> linear_forward(const LinearForwardCall& call,
                                                    TransferCount* transfer) = 0;
  virtual absl::StatusOr<backends::LinearGrads> linear_backward(const LinearBackwardCall& call,
                                                                TransferCount* transfer) = 0;
};

// Runs calls in this process through the same CPU backend the daemon uses.
class LocalTarget final : public Target {
 public:
  const std::string& name() const override { return name_; }
  TargetKind kind() const override { return TargetKind::kLocal; }
  absl::StatusOr<at::Tensor> linear_forward(const LinearForwardCall& call,
                                            TransferCount* transfer) override;
  absl::StatusOr<backends::LinearGrads> linear_backward(const LinearBackwardCall& call,
                                                        TransferCount* transfer) override;

 private:
  std::string name_ = "local";
};

}  // namespace vb
