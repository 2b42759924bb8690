// GPU figures, each against a baseline measured in the same run:
//  1. host<->device bandwidth of the daemon's copy engine vs plain cudaMemcpy from pinned;
//  2. Linear forward and backward in the CUDA backend (host tensors in, host tensors out,
//     weight resident) vs LibTorch doing the same work in this process, bf16;
//  3. remote Linear over loopback to a CUDA vbd vs the bound max(bytes / memcpy rate,
//     device compute time).
#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "backends/attention_op.h"
#include "backends/cuda/copy_engine.h"
#include "backends/cuda/cuda_backend.h"
#include "bench/timing.h"
#include "client/daemon_client.h"
#include "common/digest.h"
#include "tests/support/daemon_process.h"

namespace {

using vb::bench::median_ms;

using vb::bench::check;

void check_cuda(cudaError_t error, const char* what) {
  check(vb::backends::cuda::cuda_status(error, what), what);
}

// Medians of `a` and `b` timed alternately, so clock or thermal drift during the run
// weighs on both alike.
std::pair<double, double> paired_median_ms(int repetitions, const std::function<void()>& a,
                                           const std::function<void()>& b) {
  for (int i = 0; i < 2; ++i) {
    a();
    b();
  }
  std::vector<double> ta, tb;
  for (int i = 0; i < repetitions; ++i) {
    for (auto [run, times] : {std::pair{&a, &ta}, std::pair{&b, &tb}}) {
      const auto start = std::chrono::steady_clock::now();
      (*run)();
      times->push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

double gbps(size_t bytes, double ms) { return bytes / (ms / 1e3) / 1e9; }

void copy_bandwidth() {
  constexpr size_t kBytes = size_t{256} << 20;
  void* pinned = nullptr;
  void* device = nullptr;
  check_cuda(cudaMallocHost(&pinned, kBytes), "cudaMallocHost");
  check_cuda(cudaMalloc(&device, kBytes), "cudaMalloc");
  std::vector<char> pageable(kBytes, 1);
  std::memset(pinned, 1, kBytes);
  auto engine = vb::backends::cuda::CopyEngine::create(0);
  check(engine.status(), "copy engine");
  const double h2d_plain = median_ms(10, [&] {
    check_cuda(cudaMemcpy(device, pinned, kBytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  });
  const double d2h_plain = median_ms(10, [&] {
    check_cuda(cudaMemcpy(pinned, device, kBytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  });
  const double h2d_engine = median_ms(10, [&] {
    check((*engine)->to_device(device, pinned, kBytes, nullptr), "to_device");
    check_cuda(cudaDeviceSynchronize(), "sync");
  });
  const double d2h_engine =
      median_ms(10, [&] { check((*engine)->to_host(pinned, device, kBytes, nullptr), "to_host"); });
  const double h2d_staged = median_ms(10, [&] {
    check((*engine)->to_device(device, pageable.data(), kBytes, nullptr), "to_device");
    check_cuda(cudaDeviceSynchronize(), "sync");
  });
  const double d2h_staged = median_ms(
      10, [&] { check((*engine)->to_host(pageable.data(), device, kBytes, nullptr), "to_host"); });
  std::printf("\n1. copy bandwidth, 256 MiB, median of 10 (GB/s; ratio vs cudaMemcpy pinned)\n");
  std::printf("   %-34s %8s %8s\n", "", "H2D", "D2H");
  std::printf("   %-34s %8.1f %8.1f\n", "cudaMemcpy from/to pinned", gbps(kBytes, h2d_plain),
              gbps(kBytes, d2h_plain));
  std::printf("   %-34s %8.1f %8.1f   ratio %.2f / %.2f\n", "copy engine, pinned",
              gbps(kBytes, h2d_engine), gbps(kBytes, d2h_engine), h2d_plain / h2d_engine,
              d2h_plain / d2h_engine);
  std::printf("   %-34s %8.1f %8.1f   ratio %.2f / %.2f\n", "copy engine, pageable (staged)",
              gbps(kBytes, h2d_staged), gbps(kBytes, d2h_staged), h2d_plain / h2d_staged,
              d2h_plain / d2h_staged);
  cudaFree(device);
  cudaFreeHost(pinned);
}

double device_linear_ms(int64_t n) {
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const at::Tensor x = torch::randn({n, n}, opts);
  const at::Tensor w = torch::randn({n, n}, opts);
  return median_ms(20, [&] {
    at::linear(x, w);
    torch::cuda::synchronize();
  });
}

void compute_in_backend() {
  auto backend = vb::backends::cuda::create_cuda_backend({});
  check(backend.status(), "cuda backend");
  std::printf(
      "\n2. Linear in the CUDA backend vs LibTorch in this process, bf16, host in/out,\n"
      "   weight resident; median ms (ratio = LibTorch / backend, goal >= 0.95)\n");
  std::printf("   %-8s %-9s %10s %10s %8s %14s\n", "size", "pass", "LibTorch", "backend", "ratio",
              "device-only");
  for (int64_t n : {4096, 8192}) {
    const auto pinned = torch::TensorOptions().dtype(torch::kBFloat16).pinned_memory(true);
    const at::Tensor x = torch::randn({n, n}).to(torch::kBFloat16).pin_memory();
    const at::Tensor g = torch::randn({n, n}).to(torch::kBFloat16).pin_memory();
    const at::Tensor w = torch::randn({n, n}).to(torch::kBFloat16);
    const at::Tensor w_dev = w.to(torch::kCUDA);
    const std::string key = "bench-" + std::to_string(n);
    // The daemon's tier store hands the backend weights already resident on the GPU.
    vb::backends::LinearForwardArgs fwd;
    fwd.input = x;
    fwd.weight = w_dev;
    fwd.placement = {0, key};
    vb::backends::LinearBackwardArgs bwd;
    bwd.grad_output = g;
    bwd.input = x;
    bwd.weight = w_dev;
    bwd.need_grad_bias = false;
    bwd.placement = {0, key};
    const auto [torch_f, ours_f] = paired_median_ms(
        20,
        [&] {
          const at::Tensor y = at::linear(x.to(torch::kCUDA, true), w_dev);
          at::Tensor out = at::empty(y.sizes(), pinned);
          out.copy_(y);
        },
        [&] { check((*backend)->linear_forward(fwd).status(), "fwd"); });
    const auto [torch_b, ours_b] = paired_median_ms(
        20,
        [&] {
          const at::Tensor gd = g.to(torch::kCUDA, true);
          const at::Tensor xd = x.to(torch::kCUDA, true);
          at::Tensor gi = at::empty({n, n}, pinned);
          at::Tensor gw = at::empty({n, n}, pinned);
          gi.copy_(gd.mm(w_dev));
          gw.copy_(gd.t().mm(xd));
        },
        [&] { check((*backend)->linear_backward(bwd).status(), "bwd"); });
    const double device_only = device_linear_ms(n);
    std::printf("   %-8ld %-9s %10.3f %10.3f %8.3f %14.3f\n", static_cast<long>(n), "forward",
                torch_f, ours_f, torch_f / ours_f, device_only);
    std::printf("   %-8ld %-9s %10.3f %10.3f %8.3f\n", static_cast<long>(n), "backward", torch_b,
                ours_b, torch_b / ours_b);
  }
}

void end_to_end() {
  constexpr size_t kBytes = size_t{256} << 20;
  std::vector<char> a(kBytes, 1), b(kBytes, 2);
  const double memcpy_ms = median_ms(10, [&] { std::memcpy(b.data(), a.data(), kBytes); });
  const double memcpy_gbps = gbps(kBytes, memcpy_ms);
  vb::testing::DaemonProcess daemon;
  vb::ClientOptions options;
  options.call_timeout = std::chrono::minutes(5);
  vb::DaemonClient client(daemon.address(), options);
  std::printf(
      "\n3. remote Linear over loopback to a CUDA vbd, bf16, weight held; host memcpy "
      "%.1f GB/s\n   (bound = max(bytes moved / memcpy rate, device compute))\n",
      memcpy_gbps);
  std::printf("   %-24s %10s %10s %10s %8s\n", "x[B,K] W[N,K]", "remote ms", "bound ms",
              "compute ms", "ratio");
  struct Size {
    int64_t batch, in, out;
  };
  for (const Size& s : {Size{1, 768, 768}, Size{64, 4096, 4096}, Size{4096, 4096, 4096}}) {
    const at::Tensor x = torch::randn({s.batch, s.in}).to(torch::kBFloat16);
    const at::Tensor w = torch::randn({s.out, s.in}).to(torch::kBFloat16);
    const vb::WeightRef ref{vb::sha256_hex(w.data_ptr(), w.numel() * 2), w};
    vb::TransferCount transfer;
    check(client.upload_weight(ref, &transfer).status(), "upload");
    const double remote = median_ms(s.batch == 1 ? 200 : 20, [&] {
      check(client.linear_forward(x, ref, {}, &transfer).status(), "remote");
    });
    const at::Tensor xd = x.to(torch::kCUDA);
    const at::Tensor wd = w.to(torch::kCUDA);
    const double compute = median_ms(50, [&] {
      at::linear(xd, wd);
      torch::cuda::synchronize();
    });
    const double bytes = 2.0 * (s.batch * s.in + s.batch * s.out);
    const double bound = std::max(bytes / (memcpy_gbps * 1e9) * 1e3, compute);
    char label[64];
    std::snprintf(label, sizeof(label), "%ldx%ld by %ldx%ld", static_cast<long>(s.batch),
                  static_cast<long>(s.in), static_cast<long>(s.out), static_cast<long>(s.in));
    std::printf("   %-24s %10.3f %10.3f %10.3f %8.2f\n", label, remote, bound, compute,
                remote / bound);
  }
}

void attention_in_backend() {
  auto backend = vb::backends::cuda::create_cuda_backend({});
  check(backend.status(), "cuda backend");
  std::printf(
      "\n4. attention in the CUDA backend (RunOp, %s) vs LibTorch's scaled_dot_product_attention\n"
      "   in this process, bf16, host in/out; median ms (ratio = LibTorch / backend, goal >= "
      "0.95)\n",
      vb::backends::attention_implementation());
  std::printf("   %-26s %-9s %10s %10s %8s\n", "q,k,v [B,H,L,E]", "pass", "LibTorch", "backend",
              "ratio");
  const auto pinned = torch::TensorOptions().dtype(torch::kBFloat16).pinned_memory(true);
  for (bool causal : {false, true}) {
    const int64_t b = 4, h = 16, l = 2048, e = 64;
    auto make = [&] { return torch::randn({b, h, l, e}).to(torch::kBFloat16).pin_memory(); };
    const at::Tensor q = make(), k = make(), v = make(), g = make();
    vb::backends::OpArgs fwd;
    fwd.op = "attention.forward";
    fwd.inputs = {{"query", q}, {"key", k}, {"value", v}};
    fwd.attributes = {{"is_causal", causal ? 1.0 : 0.0}};
    vb::backends::OpArgs bwd = fwd;
    bwd.op = "attention.backward";
    bwd.inputs.push_back({"grad_output", g});
    const auto [torch_f, ours_f] = paired_median_ms(
        20,
        [&] {
          const at::Tensor out =
              at::scaled_dot_product_attention(q.to(torch::kCUDA, true), k.to(torch::kCUDA, true),
                                               v.to(torch::kCUDA, true), {}, 0.0, causal);
          at::Tensor host = at::empty(out.sizes(), pinned);
          host.copy_(out);
        },
        [&] { check((*backend)->run_op(fwd).status(), "attention forward"); });
    const auto [torch_b, ours_b] = paired_median_ms(
        20,
        [&] {
          const at::Tensor qd = q.to(torch::kCUDA, true).requires_grad_(true);
          const at::Tensor kd = k.to(torch::kCUDA, true).requires_grad_(true);
          const at::Tensor vd = v.to(torch::kCUDA, true).requires_grad_(true);
          const at::Tensor out = at::scaled_dot_product_attention(qd, kd, vd, {}, 0.0, causal);
          const auto grads = torch::autograd::grad({out}, {qd, kd, vd}, {g.to(torch::kCUDA, true)});
          for (const at::Tensor& grad : grads) {
            at::Tensor host = at::empty(grad.sizes(), pinned);
            host.copy_(grad);
          }
        },
        [&] { check((*backend)->run_op(bwd).status(), "attention backward"); });
    char label[64];
    std::snprintf(label, sizeof(label), "[%ld,%ld,%ld,%ld]%s", static_cast<long>(b),
                  static_cast<long>(h), static_cast<long>(l), static_cast<long>(e),
                  causal ? " causal" : "");
    std::printf("   %-26s %-9s %10.3f %10.3f %8.3f\n", label, "forward", torch_f, ours_f,
                torch_f / ours_f);
    std::printf("   %-26s %-9s %10.3f %10.3f %8.3f\n", label, "backward", torch_b, ours_b,
                torch_b / ours_b);
  }
}

}  // namespace

int main() {
  cudaDeviceProp properties{};
  check_cuda(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  std::printf("GPU: %s (sm %d.%d), %d device(s); LibTorch %s\n", properties.name, properties.major,
              properties.minor, vb::backends::cuda::visible_devices(), TORCH_VERSION);
  copy_bandwidth();
  compute_in_backend();
  end_to_end();
  attention_in_backend();
  return 0;
}
