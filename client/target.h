// A place where a layer's call can run: this process (LocalTarget), a vbd (DaemonTarget), and
// later a cloud endpoint. The router tries them in order.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
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

// A named op (backends/ops.h): `args` carries the inputs and attributes; `weights` the blobs
// it names (a 4-bit packed weight), uploaded to a daemon under their digests.
struct OpCall {
  backends::OpArgs args;
  std::vector<WeightRef> weights;
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
  // UNIMPLEMENTED where the target has no such op (the router then tries the next one
  // without counting it a failure).
  virtual absl::StatusOr<backends::NamedTensors> run_op(const OpCall& call,
                                                        TransferCount* transfer) {
    (void)transfer;
    return absl::UnimplementedError(absl::StrCat(name(), " does not run ", call.args.op));
  }
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
  absl::StatusOr<backends::NamedTensors> run_op(const OpCall& call,
                                                TransferCount* transfer) override;

 private:
  std::string name_ = "local";
};

}  // namespace vb
