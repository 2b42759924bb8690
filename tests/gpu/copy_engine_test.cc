// The copy engine on a real GPU: bytes survive host -> device -> host, from pinned and from
// pageable memory, at sizes that do and do not divide into chunks. Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <vector>

#include "backends/cuda/copy_engine.h"

namespace vb::backends::cuda {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (visible_devices() == 0) GTEST_SKIP() << "no CUDA device visible: GPU test skipped"

std::vector<unsigned char> random_bytes(size_t n, unsigned seed) {
  std::vector<unsigned char> bytes(n);
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  return bytes;
}

TEST(CopyEngineTest, RoundTripsPageableAndPinned) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<std::unique_ptr<CopyEngine>> engine = CopyEngine::create(0);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Below one chunk, several chunks, several staging buffers with a ragged end.
  for (size_t size : {size_t{1000}, (size_t{20} << 20) + 3, (size_t{70} << 20) + 12345}) {
    const std::vector<unsigned char> source = random_bytes(size, static_cast<unsigned>(size));
    void* device = nullptr;
    ASSERT_EQ(cudaMalloc(&device, size), cudaSuccess);
    ASSERT_TRUE((*engine)->to_device(device, source.data(), size, nullptr).ok());
    std::vector<unsigned char> back(size, 0);
    ASSERT_TRUE((*engine)->to_host(back.data(), device, size, nullptr).ok());
    EXPECT_EQ(back, source) << "pageable, " << size << " bytes";

    void* pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, size), cudaSuccess);
    EXPECT_TRUE(CopyEngine::is_pinned(pinned));
    EXPECT_FALSE(CopyEngine::is_pinned(source.data()));
    std::memset(pinned, 0, size);
    ASSERT_TRUE((*engine)->to_host(pinned, device, size, nullptr).ok());
    EXPECT_EQ(std::memcmp(pinned, source.data(), size), 0) << "pinned, " << size << " bytes";
    cudaFreeHost(pinned);
    cudaFree(device);
  }
}

TEST(CopyEngineTest, RefusesChunksBelowFourMiB) {
  CopyEngine::Options options;
  options.chunk_bytes = size_t{1} << 20;
  EXPECT_TRUE(absl::IsInvalidArgument(CopyEngine::create(0, options).status()));
}

}  // namespace
}  // namespace vb::backends::cuda
