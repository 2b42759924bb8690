// The VGPU stack through a real vbd: a model three times larger than the device tier trains
// with the local loss curve; a daemon killed with SIGKILL and started again on the same SSD
// directory serves only whole tensors; flipped bytes in a tier file make the client upload
// the weight again; a full store answers RESOURCE_EXHAUSTED and the client falls back; the
// order a client hints is prefetched; `vbctl stats tiers` shows it all.
#include <signal.h>
#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <nlohmann/json.hpp>

#include "client/daemon_client.h"
#include "client/patch_model.h"
#include "client/remote_linear.h"
#include "common/digest.h"
#include "tests/integration/test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/temp_dir.h"

namespace vb::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kWidth = 96;                         // 96x96 float32: 36 KiB a layer
constexpr int kLayers = 6;                             // 216 KiB of weights in all
constexpr uint64_t kLayerBytes = kWidth * kWidth * 4;  // a whole number of 4 KiB slots

// Device tier: two layers (a third of the model); host tier: two; SSD: the rest and more.
std::vector<std::string> small_tiers(const TempDir& dir, const std::string& policy = "next-use") {
  return {"--store-device-bytes", std::to_string(2 * kLayerBytes),
          "--store-host-bytes",   std::to_string(2 * kLayerBytes),
          "--store-ssd-bytes",    "4MiB",
          "--store-ssd-dir",      dir.sub("tiers"),
          "--store-policy",       policy};
}

torch::nn::Sequential make_model(uint64_t seed) {
  torch::manual_seed(seed);
  torch::nn::Sequential model;
  for (int i = 0; i < kLayers; ++i) {
    model->push_back(torch::nn::Linear(kWidth, kWidth));
    if (i + 1 < kLayers) model->push_back(torch::nn::Tanh());
  }
  return model;
}

// SGD on a fixed regression target; the data depends only on the step.
std::vector<double> train(torch::nn::Sequential& model, int steps) {
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05));
  torch::manual_seed(11);
  const at::Tensor mixing = torch::randn({kWidth, kWidth}) / std::sqrt(double{kWidth});
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    torch::manual_seed(1000 + step);
    const at::Tensor x = torch::randn({32, kWidth});
    const at::Tensor target = torch::sin(x.mm(mixing));
    optimizer.zero_grad();
    const at::Tensor loss = (model->forward(x) - target).pow(2).mean();
    loss.backward();
    optimizer.step();
    losses.push_back(loss.item<double>());
  }
  return losses;
}

v1::TierStoreStats tier_stats(const DaemonProcess& daemon) {
  DaemonClient client(daemon.address());
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  EXPECT_TRUE(stats.ok()) << stats.status();
  return stats.ok() ? stats->tier_store() : v1::TierStoreStats();
}

const v1::TierStats& tier(const v1::TierStoreStats& stats, const std::string& name) {
  for (const v1::TierStats& t : stats.tiers()) {
    if (t.tier() == name) return t;
  }
  static const v1::TierStats none;
  ADD_FAILURE() << "no tier " << name;
  return none;
}

std::string digest_of(const at::Tensor& weight) {
  const at::Tensor c = weight.detach().contiguous();
  return sha256_hex(c.data_ptr(), c.numel() * c.element_size());
}

TEST(TiersTest, ModelThreeTimesTheDeviceTierTrainsWithTheLocalLossCurve) {
  TempDir dir;
  DaemonProcess daemon(small_tiers(dir));
  constexpr int kSteps = 12;
  torch::nn::Sequential local = make_model(5);
  const std::vector<double> expected = train(local, kSteps);
  torch::nn::Sequential remote = make_model(5);
  patch_model(*remote, make_router({daemon.address()}));
  const std::vector<double> actual = train(remote, kSteps);
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], 1e-5 * std::abs(expected[i])) << "step " << i;
  }
  EXPECT_LT(expected.back(), expected.front()) << "the model learns";
  const StatsSnapshot client = nn::collect_stats(*remote);
  EXPECT_DOUBLE_EQ(client.remote_ratio(), 1.0) << client.to_table();

  const v1::TierStoreStats stats = tier_stats(daemon);
  const v1::TierStats& device = tier(stats, "device");
  EXPECT_LE(device.held_bytes(), 2 * kLayerBytes);
  EXPECT_GT(device.demotions(), 0u);
  EXPECT_GT(tier(stats, "ssd").bytes_in(), 0u) << "layers went all the way down";
  EXPECT_GT(tier(stats, "ssd").hits(), 0u) << "and came back up";
  // Each step's new weights replace the old ones: the store holds one version per layer.
  EXPECT_EQ(stats.tensors(), static_cast<uint64_t>(kLayers));
  // Forward 1..6 and backward 6..2 (layer 1's input needs no gradient): 11 accesses a step.
  EXPECT_EQ(stats.cycle_length(), 11u);
  EXPECT_EQ(stats.checksum_failures(), 0u);
}

TEST(TiersTest, SigkilledDaemonRestartsOnItsDirectoryServingOnlyWholeTensors) {
  TempDir dir;
  torch::nn::Sequential model = make_model(9);
  std::vector<at::Tensor> weights;
  for (const auto& child : model->children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) weights.push_back(linear->weight);
  }
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({4, kWidth});
  const at::Tensor expected = model->forward(x);
  std::vector<std::string> on_ssd;
  {
    DaemonProcess daemon(small_tiers(dir));
    torch::nn::Sequential remote = make_model(9);
    patch_model(*remote, make_router({daemon.address()}));
    EXPECT_LT(relative_error(remote->forward(x), expected), 1e-6);
    for (const at::Tensor& w : weights) {
      if (file_exists(dir.sub("tiers") + "/" + digest_of(w) + ".vbt")) {
        on_ssd.push_back(digest_of(w));
      }
    }
    ASSERT_GE(on_ssd.size(), 2u) << "the first layers were pushed down to the SSD";
    daemon.send_signal(SIGKILL);
    ASSERT_EQ(daemon.wait_exit(std::chrono::seconds(10)), 128 + SIGKILL);
  }
  // A write cut off by the kill, and a tier file damaged meanwhile.
  std::ofstream(dir.sub("tiers") + "/" + std::string(64, 'c') + ".tmp") << "partial";
  const std::string damaged = dir.sub("tiers") + "/" + on_ssd[0] + ".vbt";
  ASSERT_TRUE(resize_file(damaged, file_size(damaged) / 2));

  DaemonProcess daemon(small_tiers(dir));
  const v1::TierStoreStats stats = tier_stats(daemon);
  EXPECT_EQ(stats.recovered_files(), on_ssd.size() - 1) << daemon.log();
  EXPECT_EQ(stats.removed_files(), 2u);
  DaemonClient client(daemon.address());
  absl::StatusOr<std::vector<bool>> held = client.query_weights(on_ssd);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_FALSE((*held)[0]) << "the damaged file is not a tensor";
  for (size_t i = 1; i < on_ssd.size(); ++i) EXPECT_TRUE((*held)[i]) << "re-indexed";

  torch::nn::Sequential remote = make_model(9);
  patch_model(*remote, make_router({daemon.address()}));
  EXPECT_LT(relative_error(remote->forward(x), expected), 1e-6);
  uint64_t uploads = 0;
  for (const auto& child : remote->children()) {
    if (auto* layer = child->as<nn::RemoteLinear>()) {
      for (const auto& [name, target] : layer->get_stats().targets) uploads += target.uploads;
    }
  }
  // Everything that was not on the SSD (it lived in memory), plus the damaged one.
  EXPECT_EQ(uploads, kLayers - on_ssd.size() + 1);
}

TEST(TiersTest, FlippedBytesInATierFileAreRefusedAndTheWeightUploadedAgain) {
  TempDir dir;
  DaemonProcess daemon(small_tiers(dir));
  torch::nn::Sequential model = make_model(13);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({4, kWidth});
  const at::Tensor expected = model->forward(x);
  torch::nn::Sequential remote = make_model(13);
  patch_model(*remote, make_router({daemon.address()}));
  EXPECT_LT(relative_error(remote->forward(x), expected), 1e-6);
  // The first layer's weight is on the SSD tier by now: flip bytes in the middle of its data.
  auto* first = remote->children()[0]->as<nn::RemoteLinear>();
  ASSERT_NE(first, nullptr);
  const std::string path = dir.sub("tiers") + "/" + digest_of(first->weight) + ".vbt";
  ASSERT_TRUE(file_exists(path));
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(4096 + kLayerBytes / 2);
    file.put('\x01').put('\x02').put('\x03');
  }
  EXPECT_LT(relative_error(remote->forward(x), expected), 1e-6) << "never a wrong tensor";
  const TargetStats target = first->get_stats().targets.begin()->second;
  EXPECT_EQ(target.uploads, 2u) << "NOT_FOUND, then uploaded again";
  EXPECT_EQ(first->get_stats().failed_calls, 0u);
  EXPECT_EQ(tier_stats(daemon).checksum_failures(), 1u);
}

TEST(TiersTest, FullStoreAnswersResourceExhaustedAndTheClientFallsBack) {
  // Room for one 40 KB weight on the device and nowhere below it.
  DaemonProcess daemon(
      {"--store-device-bytes", "64KiB", "--store-host-bytes", "0", "--store-ssd-bytes", "0"});
  auto router = make_router({daemon.address(), "local"});
  nn::RemoteLinear first(nn::RemoteLinearOptions(100, 100), router);
  nn::RemoteLinear second(nn::RemoteLinearOptions(100, 100), router);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({2, 100});
  for (nn::RemoteLinear* layer : {&first, &second}) {
    const at::Tensor want = x.mm((*layer)->weight.t()) + (*layer)->bias;
    EXPECT_LT(relative_error((*layer)->forward(x), want), 1e-6);
  }
  EXPECT_EQ(first->get_stats().remote_calls(), 1u);
  EXPECT_EQ(second->get_stats().local_calls(), 1u) << "the daemon had no room: local instead";
  EXPECT_EQ(second->get_stats().fallbacks(), 1u);
  // What the daemon says, asked directly.
  DaemonClient client(daemon.address());
  TransferCount transfer;
  WeightRef ref;
  ref.tensor = torch::randn({100, 100}).contiguous();
  ref.digest = digest_of(ref.tensor);
  absl::StatusOr<v1::UploadWeightResponse> refused = client.upload_weight(ref, &transfer);
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("the tier store is full: a tensor of 40000 bytes"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("store.device_bytes"));
  EXPECT_EQ(tier_stats(daemon).tensors(), 1u) << "the weight it held is still there";
  // The store as a whole holds as much as its lowest tier, here the device tier.
  absl::StatusOr<v1::GetStatsResponse> stats = client.get_stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->weight_store().capacity_bytes(), 65536u);
  EXPECT_EQ(stats->weight_store().used_bytes(), 40960u) << "one 40000-byte weight in 4 KiB slots";
}

TEST(TiersTest, HintedOrderIsPrefetchedAndShownByVbctl) {
  TempDir dir;
  DaemonProcess daemon(small_tiers(dir));
  torch::nn::Sequential model = make_model(17);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({4, kWidth});
  torch::nn::Sequential remote = make_model(17);
  patch_model(*remote, make_router({daemon.address()}));
  (void)remote->forward(x);  // uploads every layer; the first ones end up on the SSD
  std::vector<std::string> order;
  for (const auto& child : remote->children()) {
    if (auto* layer = child->as<nn::RemoteLinear>()) order.push_back(digest_of(layer->weight));
  }
  DaemonClient client(daemon.address());
  absl::StatusOr<uint32_t> held = client.prefetch_weights(order);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, static_cast<uint32_t>(kLayers));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (tier_stats(daemon).prefetches() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  v1::TierStoreStats stats = tier_stats(daemon);
  EXPECT_TRUE(stats.cycle_hinted());
  EXPECT_EQ(stats.prefetches(), 2u) << "the first two layers, the device tier's room";
  const at::Tensor expected = model->forward(x);
  EXPECT_LT(relative_error(remote->forward(x), expected), 1e-6);
  stats = tier_stats(daemon);
  EXPECT_GE(stats.prefetch_hits(), 2u);

  // The operator's view of the same numbers.
  const std::string command =
      std::string(VB_VBCTL_PATH) + " --address " + daemon.address() + " --json stats tiers";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  ASSERT_EQ(::pclose(pipe), 0) << out;
  const nlohmann::json json = nlohmann::json::parse(out);
  EXPECT_EQ(json["policy"], "next-use");
  EXPECT_EQ(json["tiers"].size(), 3u);
  EXPECT_EQ(json["tiers"][2]["tier"], "ssd");
  EXPECT_EQ(json["prefetch_hits"].get<std::string>(), std::to_string(stats.prefetch_hits()))
      << "uint64 fields travel as strings in proto3 JSON";
}

}  // namespace
}  // namespace vb::testing
