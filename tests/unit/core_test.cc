// Unit tests of the pieces below the network: options, specs, digests, histograms, the work
// queue, the circuit breaker, the weight store, the codec and the statistics.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "backends/device_manager.h"
#include "backends/linear_op.h"
#include "backends/tier_store.h"
#include "client/circuit_breaker.h"
#include "client/stats.h"
#include "common/digest.h"
#include "common/latency_histogram.h"
#include "common/tensor_spec.h"
#include "server/options.h"
#include "server/work_queue.h"
#include "wire/codec.h"

namespace vb {
namespace {

using ::testing::HasSubstr;

std::string message_of(const absl::Status& status) { return std::string(status.message()); }

// ---- options ----

TEST(OptionsTest, DefaultsRunAnywhere) {
  absl::StatusOr<server::ServerOptions> options = server::parse_server_options({});
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->host, "127.0.0.1");
  EXPECT_EQ(options->port, 50551);
  EXPECT_EQ(options->max_queue, 64u);
}

TEST(OptionsTest, TomlSetsEveryKindOfKey) {
  absl::StatusOr<server::ServerOptions> options = server::parse_server_options_toml(R"(
[server]
host = "0.0.0.0"
port = 7000
drain_timeout_s = 2.5
[limits]
workers = 4
max_queue = 8
max_request_bytes = "512MiB"
[store]
mode = "memory"
device_bytes = "1MiB"
ssd_bytes = 0
policy = "lru"
[log]
level = "debug"
)",
                                                                                    "test.toml");
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->host, "0.0.0.0");
  EXPECT_EQ(options->port, 7000);
  EXPECT_DOUBLE_EQ(options->drain_timeout_s, 2.5);
  EXPECT_EQ(options->workers, 4u);
  EXPECT_EQ(options->max_queue, 8u);
  EXPECT_EQ(options->max_request_bytes, uint64_t{512} << 20);
  EXPECT_EQ(options->store_mode, "memory");
  EXPECT_EQ(options->store_device_bytes, uint64_t{1} << 20);
  EXPECT_EQ(options->store_ssd_bytes, 0u);
  EXPECT_FALSE(options->store_host_bytes.has_value()) << "left to the mode";
  EXPECT_EQ(options->store_policy, "lru");
  absl::StatusOr<backends::TierStoreOptions> tiers =
      server::tier_store_options(*options, uint64_t{8} << 30);
  ASSERT_TRUE(tiers.ok()) << tiers.status();
  EXPECT_EQ(tiers->device_bytes, uint64_t{1} << 20) << "the key wins over the mode";
  EXPECT_EQ(tiers->host_bytes, uint64_t{16} << 30) << "memory mode's host budget";
  EXPECT_EQ(tiers->ssd_bytes, 0u);
  EXPECT_EQ(tiers->policy, backends::EvictionPolicy::kLru);
  EXPECT_EQ(options->log_level, "debug");
}

TEST(OptionsTest, FlagsOverrideTheFile) {
  char path[] = "/tmp/vbd-options-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = "[server]\nport = 7000\n[limits]\nworkers = 3\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  absl::StatusOr<server::ServerOptions> options =
      server::parse_server_options({"--port=0", "--config", path, "--max-queue", "5"});
  unlink(path);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->port, 0) << "the flag wins wherever it stands";
  EXPECT_EQ(options->workers, 3u) << "from the file";
  EXPECT_EQ(options->max_queue, 5u);
}

TEST(OptionsTest, ErrorsNameKeyValueAndExpectation) {
  absl::StatusOr<server::ServerOptions> bad_port =
      server::parse_server_options({"--port", "70000"});
  EXPECT_THAT(message_of(bad_port.status()),
              HasSubstr("server.port = \"70000\": expected an integer from 0 to 65535"));
  absl::StatusOr<server::ServerOptions> unknown = server::parse_server_options({"--prot", "1"});
  EXPECT_THAT(message_of(unknown.status()), HasSubstr("unknown flag --prot"));
  absl::StatusOr<server::ServerOptions> missing = server::parse_server_options({"--port"});
  EXPECT_THAT(message_of(missing.status()), HasSubstr("--port needs a value"));
  absl::StatusOr<server::ServerOptions> file =
      server::parse_server_options({"--config", "/nonexistent/vbd.toml"});
  EXPECT_TRUE(absl::IsNotFound(file.status()));
  absl::StatusOr<server::ServerOptions> key =
      server::parse_server_options_toml("[limits]\n\nworkerz = 2\n", "vbd.toml");
  EXPECT_THAT(message_of(key.status()), HasSubstr("vbd.toml:3: unknown key limits.workerz"));
  absl::StatusOr<server::ServerOptions> syntax =
      server::parse_server_options_toml("[limits\n", "vbd.toml");
  EXPECT_THAT(message_of(syntax.status()), HasSubstr("vbd.toml:1"));
  absl::StatusOr<server::ServerOptions> size =
      server::parse_server_options({"--store-device-bytes", "lots"});
  EXPECT_THAT(message_of(size.status()), HasSubstr("store.device_bytes = \"lots\""));
  absl::StatusOr<server::ServerOptions> policy =
      server::parse_server_options({"--store-policy", "fifo"});
  EXPECT_THAT(message_of(policy.status()),
              HasSubstr("store.policy = \"fifo\": expected \"lru\" or \"next-use\""));
  absl::StatusOr<server::ServerOptions> mode =
      server::parse_server_options({"--store-mode", "fast"});
  EXPECT_THAT(message_of(mode.status()), HasSubstr("store.mode = \"fast\": expected performance"));
  // An SSD budget with nowhere to put the files is refused, not silently dropped.
  absl::StatusOr<server::ServerOptions> no_dir =
      server::parse_server_options({"--store-ssd-bytes", "1GiB"});
  ASSERT_TRUE(no_dir.ok());
  if (std::getenv("STATE_DIRECTORY") == nullptr) {
    EXPECT_THAT(message_of(server::tier_store_options(*no_dir, 1 << 30).status()),
                HasSubstr("store.ssd_dir is unset"));
  }
}

TEST(OptionsTest, ByteSizes) {
  EXPECT_EQ(*server::parse_byte_size("4GiB"), uint64_t{4} << 30);
  EXPECT_EQ(*server::parse_byte_size("512 MiB"), uint64_t{512} << 20);
  EXPECT_EQ(*server::parse_byte_size("1000"), 1000u);
  EXPECT_FALSE(server::parse_byte_size("-1").ok());
  EXPECT_FALSE(server::parse_byte_size("99999999999999999999GiB").ok());
}

TEST(OptionsTest, EffectiveConfigRoundTripsThroughToml) {
  server::ServerOptions options;
  options.port = 1234;
  options.max_request_bytes = 777;
  absl::StatusOr<server::ServerOptions> back =
      server::parse_server_options_toml(server::options_to_toml(options), "dump");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->port, 1234);
  EXPECT_EQ(back->max_request_bytes, 777u);
}

// ---- specs and the Linear contract ----

TEST(TensorSpecTest, RejectsBadShapesWithFieldAndValue) {
  EXPECT_THAT(message_of(validate_spec({DType::kFloat32, {}}, "x")),
              HasSubstr("x.shape = [] has rank 0"));
  EXPECT_THAT(message_of(validate_spec({DType::kFloat32, {3, -1}}, "x")),
              HasSubstr("x.shape[1] = -1"));
  EXPECT_THAT(message_of(validate_spec({DType::kFloat32, {0}}, "x")), HasSubstr("x.shape[0] = 0"));
  EXPECT_THAT(message_of(validate_spec({DType::kFloat64, {int64_t{1} << 60, 16}}, "x")),
              HasSubstr("overflows"));
  EXPECT_TRUE(validate_spec({DType::kBFloat16, {2, 3, 4}}, "x").ok());
  EXPECT_EQ((TensorSpec{DType::kBFloat16, {2, 3, 4}}.byte_size()), 48);
}

TEST(LinearOpTest, ForwardAndBackwardSpecs) {
  backends::LinearForwardSpecs forward{
      {DType::kFloat32, {2, 5, 8}}, {DType::kFloat32, {3, 8}}, TensorSpec{DType::kFloat32, {3}}};
  absl::StatusOr<TensorSpec> out = backends::check_linear_forward(forward);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->shape, (std::vector<int64_t>{2, 5, 3}));
  forward.bias = TensorSpec{DType::kFloat32, {4}};
  EXPECT_THAT(message_of(backends::check_linear_forward(forward).status()),
              HasSubstr("bias.shape = [4]"));
  forward.bias.reset();
  forward.weight.shape = {3, 8, 1};
  EXPECT_THAT(message_of(backends::check_linear_forward(forward).status()), HasSubstr("rank 2"));

  backends::LinearBackwardSpecs backward;
  backward.grad_output = {DType::kFloat16, {4, 3}};
  backward.input = TensorSpec{DType::kFloat16, {4, 8}};
  backward.weight = {DType::kFloat16, {3, 8}};
  absl::StatusOr<backends::LinearGradSpecs> grads = backends::check_linear_backward(backward);
  ASSERT_TRUE(grads.ok());
  EXPECT_EQ(grads->grad_input->shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(grads->grad_weight->shape, (std::vector<int64_t>{3, 8}));
  EXPECT_EQ(grads->grad_bias->shape, (std::vector<int64_t>{3}));
  backward.input = TensorSpec{DType::kFloat16, {5, 8}};
  EXPECT_THAT(message_of(backends::check_linear_backward(backward).status()),
              HasSubstr("input.shape = [5, 8]"));
}

// ---- digests ----

TEST(DigestTest, KnownVectorAndIncrementalUpdates) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 hash;
  hash.update("a", 1);
  hash.update("bc", 2);
  EXPECT_EQ(hash.finish_hex(), sha256_hex("abc"));
  EXPECT_TRUE(check_digest_format(sha256_hex("x"), "d").ok());
  EXPECT_FALSE(check_digest_format(std::string(64, 'G'), "d").ok());
  EXPECT_FALSE(check_digest_format("abc", "d").ok());
}

// ---- latency histogram ----

TEST(LatencyHistogramTest, QuantilesWithinBucketResolution) {
  std::mt19937 rng(1);
  std::lognormal_distribution<double> latency(6.0, 1.5);  // microseconds, heavy-tailed
  std::vector<double> samples(20000);
  LatencyHistogram histogram;
  for (double& s : samples) {
    s = latency(rng);
    histogram.record_us(s);
  }
  std::sort(samples.begin(), samples.end());
  for (double q : {0.5, 0.9, 0.99}) {
    const double exact_ms = samples[static_cast<size_t>(std::ceil(q * samples.size())) - 1] / 1000;
    EXPECT_NEAR(histogram.quantile_ms(q) / exact_ms, 1.0, 0.045) << "q = " << q;
  }
  LatencyHistogram other;
  other.merge(histogram);
  other.merge(histogram);
  EXPECT_EQ(other.count(), 2 * histogram.count());
  EXPECT_DOUBLE_EQ(other.quantile_ms(0.5), histogram.quantile_ms(0.5));
  EXPECT_EQ(LatencyHistogram().quantile_ms(0.5), 0.0);
}

// ---- work queue ----

class Gate {
 public:
  void open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST(WorkQueueTest, FullQueueRefusesAtOnceAndShutdownDrains) {
  server::WorkQueue queue(/*workers=*/1, /*max_queue=*/1);
  Gate gate;
  Gate started;
  std::atomic<int> done{0};
  ASSERT_TRUE(queue
                  .submit([&] {
                    started.open();
                    gate.wait();
                    ++done;
                  })
                  .ok());
  started.wait();  // the worker is busy now
  ASSERT_TRUE(queue.submit([&] { ++done; }).ok()) << "one may wait";
  const absl::Status full = queue.submit([&] { ++done; });
  EXPECT_TRUE(absl::IsResourceExhausted(full));
  EXPECT_THAT(message_of(full), HasSubstr("limits.max_queue = 1"));
  EXPECT_EQ(queue.stats().rejected, 1u);
  EXPECT_EQ(queue.stats().queued, 1u);
  EXPECT_EQ(queue.stats().running, 1u);
  std::thread stopper([&] { queue.shutdown(); });
  gate.open();
  stopper.join();
  EXPECT_EQ(done.load(), 2) << "everything accepted ran";
  EXPECT_TRUE(absl::IsUnavailable(queue.submit([] {})));
}

// ---- circuit breaker ----

TEST(CircuitBreakerTest, OpensProbesAndBacksOff) {
  CircuitBreaker::Clock::time_point now{};
  BreakerOptions options;
  options.failure_threshold = 2;
  options.open_duration = std::chrono::milliseconds(100);
  options.max_open_duration = std::chrono::milliseconds(300);
  CircuitBreaker breaker(options, [&] { return now; });
  using State = CircuitBreaker::State;

  EXPECT_TRUE(breaker.allow());
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), State::kClosed);
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), State::kOpen);
  EXPECT_FALSE(breaker.allow());
  now += std::chrono::milliseconds(100);
  EXPECT_TRUE(breaker.allow()) << "the probe";
  EXPECT_FALSE(breaker.allow()) << "only one probe at a time";
  breaker.record_failure();  // failed probe: open for 200 ms
  now += std::chrono::milliseconds(199);
  EXPECT_FALSE(breaker.allow());
  now += std::chrono::milliseconds(1);
  EXPECT_TRUE(breaker.allow());
  breaker.record_failure();  // 400 ms, capped at 300
  now += std::chrono::milliseconds(300);
  EXPECT_TRUE(breaker.allow());
  breaker.record_success();
  EXPECT_EQ(breaker.state(), State::kClosed);
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), State::kClosed) << "the count restarted";
}

// ---- codec ----

TEST(CodecTest, StatusCodesSurviveTheRoundTrip) {
  for (const absl::Status& status :
       {absl::InvalidArgumentError("a"), absl::NotFoundError("b"),
        absl::ResourceExhaustedError("c"), absl::UnavailableError("d"),
        absl::DeadlineExceededError("e"), absl::UnauthenticatedError("f")}) {
    EXPECT_EQ(wire::from_grpc(wire::to_grpc(status)), status);
  }
}

TEST(CodecTest, AssemblerRebuildsChunkedTensorsAndRefusesWhatDoesNotAddUp) {
  const at::Tensor a = at::randn({300, 70});
  const at::Tensor b = at::randn({5}).to(at::kBFloat16);
  std::vector<v1::TensorChunk> chunks;
  ASSERT_TRUE(wire::for_each_chunk({a, b}, 1000, [&](uint32_t index, const char* data, size_t n) {
    v1::TensorChunk chunk;
    chunk.set_tensor_index(index);
    chunk.set_data(data, n);
    chunks.push_back(chunk);
    return true;
  }));
  EXPECT_EQ(chunks.size(), 84u + 1u);  // 84000 bytes in 1000-byte pieces, then b
  wire::TensorAssembler assembler({"a", "b"},
                                  {{DType::kFloat32, {300, 70}}, {DType::kBFloat16, {5}}});
  for (const v1::TensorChunk& chunk : chunks) ASSERT_TRUE(assembler.add(chunk).ok());
  ASSERT_TRUE(assembler.finish().ok());
  EXPECT_TRUE(assembler.tensors()[0].equal(a));
  EXPECT_TRUE(assembler.tensors()[1].equal(b));

  wire::TensorAssembler short_one({"a"}, {{DType::kFloat32, {2}}});
  v1::TensorChunk four_bytes;
  four_bytes.set_data(std::string(4, '\0'));
  ASSERT_TRUE(short_one.add(four_bytes).ok());
  EXPECT_THAT(message_of(short_one.finish()), HasSubstr("stream ended after 4 of 8 bytes of a"));
  v1::TensorChunk too_much;
  too_much.set_data(std::string(8, '\0'));
  EXPECT_THAT(message_of(short_one.add(too_much)), HasSubstr("a received 12 bytes"));
}

TEST(CodecTest, SpecFromProtoRefusesUnknownDtypes) {
  v1::TensorSpec spec;
  spec.set_dtype(static_cast<v1::DType>(42));
  spec.add_shape(2);
  EXPECT_THAT(message_of(wire::spec_from_proto(spec, "input").status()), HasSubstr("input.dtype"));
}

// ---- device manager ----

// Availability as a test says, so detection order can be checked without the hardware.
class InjectedRuntime final : public backends::AcceleratorRuntime {
 public:
  explicit InjectedRuntime(std::map<backends::AcceleratorKind, int> counts, bool rocm = false)
      : counts_(std::move(counts)), rocm_(rocm) {}
  int device_count(backends::AcceleratorKind kind) const override {
    if (kind == backends::AcceleratorKind::kCpu) return 1;
    auto it = counts_.find(kind);
    return it == counts_.end() ? 0 : it->second;
  }
  std::string device_name(backends::AcceleratorKind kind, int index) const override {
    return absl::StrCat(backends::accelerator_name(kind), "-card-", index);
  }
  bool cuda_is_rocm() const override { return rocm_; }
  backends::MemoryUsage memory(backends::AcceleratorKind, int index) const override {
    return {true, 100u * (index + 1), 200u * (index + 1)};
  }
  bool empty_cache(backends::AcceleratorKind) override { return ++emptied_ > 0; }
  bool synchronize(backends::AcceleratorKind, int) override { return true; }
  int emptied_ = 0;

 private:
  std::map<backends::AcceleratorKind, int> counts_;
  bool rocm_;
};

backends::DeviceManager detect(const std::string& order,
                               std::map<backends::AcceleratorKind, int> counts, bool rocm = false) {
  backends::DeviceManagerOptions options;
  options.order = *backends::parse_device_order(order);
  absl::StatusOr<backends::DeviceManager> manager = backends::DeviceManager::detect(
      options, std::make_shared<InjectedRuntime>(std::move(counts), rocm));
  EXPECT_TRUE(manager.ok()) << manager.status();
  return *manager;
}

TEST(DeviceManagerTest, DefaultOrderPrefersCudaThenHpuNpuXpuCpu) {
  using K = backends::AcceleratorKind;
  const std::string order = "cuda,hpu,npu,xpu,cpu";
  EXPECT_EQ(detect(order, {{K::kCuda, 2}, {K::kNpu, 8}}).kind(), K::kCuda);
  EXPECT_EQ(detect(order, {{K::kHpu, 1}, {K::kNpu, 8}, {K::kXpu, 1}}).kind(), K::kHpu);
  EXPECT_EQ(detect(order, {{K::kNpu, 8}, {K::kXpu, 1}}).kind(), K::kNpu);
  EXPECT_EQ(detect(order, {{K::kXpu, 1}}).kind(), K::kXpu);
  const backends::DeviceManager cpu = detect(order, {});
  EXPECT_EQ(cpu.kind(), K::kCpu);
  EXPECT_EQ(cpu.device_count(), 1);
  EXPECT_EQ(cpu.platform(), "CPU");
}

TEST(DeviceManagerTest, ConfiguredOrderCanPreferNpu) {
  using K = backends::AcceleratorKind;
  backends::DeviceManager npu = detect("npu,cuda", {{K::kCuda, 2}, {K::kNpu, 8}});
  EXPECT_EQ(npu.kind(), K::kNpu);
  EXPECT_EQ(npu.device_type(), c10::DeviceType::PrivateUse1);
  EXPECT_EQ(npu.device_count(), 8);
  EXPECT_EQ(npu.platform(), "Ascend NPU");
  EXPECT_EQ(npu.device_names()[7], "npu-card-7");
  EXPECT_EQ(detect("npu", {{K::kCuda, 2}}).kind(), K::kCpu) << "cpu is always the last resort";
}

TEST(DeviceManagerTest, RocmIsReportedAsSuchAndTheInterfaceForwards) {
  using K = backends::AcceleratorKind;
  backends::DeviceManager rocm = detect("cuda", {{K::kCuda, 2}}, /*rocm=*/true);
  EXPECT_EQ(rocm.platform(), "ROCm");
  EXPECT_EQ(rocm.memory(1).reserved_bytes, 400u);
  EXPECT_TRUE(rocm.empty_cache());
  EXPECT_TRUE(rocm.synchronize(0));
}

TEST(DeviceManagerTest, BadOrdersAndLibrariesAreRefusedClearly) {
  EXPECT_THAT(message_of(backends::parse_device_order("cuda,tpu").status()),
              HasSubstr("\"tpu\" is not a device kind"));
  EXPECT_THAT(message_of(backends::parse_device_order("cuda,cuda").status()),
              HasSubstr("appears twice"));
  backends::DeviceManagerOptions options;
  options.npu_library = "/nonexistent/libtorch_npu.so";
  absl::Status status =
      backends::DeviceManager::detect(options, backends::libtorch_runtime()).status();
  EXPECT_THAT(message_of(status),
              HasSubstr("devices.npu_library = \"/nonexistent/libtorch_npu.so\""));
}

TEST(DeviceManagerTest, ThisHostThroughLibTorch) {
  // CI and the development machines have no accelerator and a CPU LibTorch.
  absl::StatusOr<backends::DeviceManager> manager =
      backends::DeviceManager::detect({}, backends::libtorch_runtime());
  ASSERT_TRUE(manager.ok());
  if (manager->kind() != backends::AcceleratorKind::kCpu) {
    GTEST_SKIP() << "this host has " << manager->platform() << " devices";
  }
  EXPECT_EQ(manager->device_count(), 1);
}

// ---- statistics ----

TEST(StatsTest, RatiosAndMergeAcrossLayers) {
  CallStats layer1;
  CallStats layer2;
  layer1.record_attempt("vbd://a", TargetKind::kRemote, "", 100, 10, 20, 1, false);
  layer1.record_call(true);
  layer1.record_attempt("vbd://a", TargetKind::kRemote, "UNAVAILABLE: down", 50, 0, 0, 0, false);
  layer1.record_attempt("local", TargetKind::kLocal, "", 10, 0, 0, 0, true);
  layer1.record_call(true);
  layer2.record_skip("vbd://a", TargetKind::kRemote);
  layer2.record_attempt("local", TargetKind::kLocal, "", 10, 0, 0, 0, true);
  layer2.record_call(true);
  StatsSnapshot total = layer1.snapshot();
  total.merge(layer2.snapshot());
  EXPECT_EQ(total.calls, 3u);
  EXPECT_EQ(total.remote_calls(), 1u);
  EXPECT_EQ(total.local_calls(), 2u);
  EXPECT_EQ(total.fallbacks(), 2u);
  EXPECT_NEAR(total.remote_ratio(), 1.0 / 3, 1e-12);
  EXPECT_NEAR(total.local_ratio(), 2.0 / 3, 1e-12);
  EXPECT_EQ(total.cloud_ratio(), 0.0);
  EXPECT_EQ(total.targets["vbd://a"].failures, 1u);
  EXPECT_EQ(total.targets["vbd://a"].skipped, 1u);
  EXPECT_EQ(total.targets["vbd://a"].last_error, "UNAVAILABLE: down");
  const nlohmann::json json = nlohmann::json::parse(total.to_json());
  EXPECT_EQ(json["remote_calls"], 1);
  EXPECT_EQ(json["targets"]["vbd://a"]["bytes_received"], 20);
  EXPECT_THAT(total.to_table(), HasSubstr("remote_ratio 0.333"));
}

}  // namespace
}  // namespace vb
