// Trains a 3-layer MLP whose Linear layers run through vbd, printing the loss as it falls and
// the call statistics at the end.
//
//   train_mlp [--targets 127.0.0.1:50551,local] [--steps 300]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/patch_model.h"
#include "client/remote_linear.h"
#include "examples/mlp_task.h"

int main(int argc, char** argv) {
  std::string targets = "127.0.0.1:50551,local";
  vb::examples::MlpTask task;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--targets") == 0) {
      targets = argv[i + 1];
    } else if (std::strcmp(argv[i], "--steps") == 0 && absl::SimpleAtoi(argv[i + 1], &task.steps) &&
               task.steps > 0) {
    } else {
      std::fprintf(stderr, "usage: train_mlp [--targets A,B,...] [--steps N]\n");
      return 2;
    }
  }
  absl::StatusOr<std::shared_ptr<vb::Router>> router =
      vb::Router::create(absl::StrSplit(targets, ',', absl::SkipWhitespace()));
  if (!router.ok()) {
    std::fprintf(stderr, "train_mlp: %s\n", router.status().ToString().c_str());
    return 2;
  }
  torch::nn::Sequential model = vb::examples::make_mlp(task);
  const vb::PatchReport patched = vb::patch_model(*model, *router);
  std::printf("model: %zu Linear layers patched to vb::nn::RemoteLinear, targets %s\n",
              patched.replaced.size(), targets.c_str());

  const int report_every = std::max(1, task.steps / 10);
  const std::vector<double> losses =
      vb::examples::train_mlp(model, task, {}, [&](int step, double loss) {
        if (step % report_every == 0 || step == task.steps - 1) {
          std::printf("step %4d  loss %.5f\n", step, loss);
        }
      });
  std::printf("loss %.5f -> %.5f over %d steps\n\n", losses.front(), losses.back(), task.steps);
  std::printf("client statistics (all layers):\n%s",
              vb::nn::collect_stats(*model).to_table().c_str());
  return losses.back() < losses.front() ? 0 : 1;
}
