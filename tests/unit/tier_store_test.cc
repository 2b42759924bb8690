// The VGPU stack's parts on their own: the slot arena, the access predictor, the SSD tier's
// files, and the tier store's placement, eviction policies and prefetch, on real files in a
// temporary directory.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/access_predictor.h"
#include "backends/arena.h"
#include "backends/ssd_tier.h"
#include "backends/tier_store.h"
#include "common/digest.h"
#include "tests/support/temp_dir.h"

namespace vb::backends {
namespace {

using testing::TempDir;

using ::testing::HasSubstr;

constexpr uint64_t kSlot = kTierAlignment;

std::string message_of(const absl::Status& status) { return std::string(status.message()); }

// Distinct random bytes for tensor `seed`, and their digest.
struct Blob {
  std::vector<char> bytes;
  std::string digest;
};
Blob make_blob(uint64_t size, uint32_t seed) {
  Blob blob;
  blob.bytes.resize(size);
  std::mt19937 random(seed);
  for (char& b : blob.bytes) b = static_cast<char>(random());
  blob.digest = sha256_hex(blob.bytes.data(), blob.bytes.size());
  return blob;
}

std::unique_ptr<TierStore> make_store(const TierStoreOptions& options) {
  absl::StatusOr<std::unique_ptr<TierStore>> store =
      TierStore::create(options, make_host_tier_memory());
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// Acquires `blob` and checks that the device copy holds exactly its bytes.
void expect_served(TierStore& store, const Blob& blob) {
  absl::StatusOr<std::shared_ptr<TierStore::Lease>> lease = store.acquire(blob.digest);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ((*lease)->size(), blob.bytes.size());
  EXPECT_EQ(std::memcmp((*lease)->data(), blob.bytes.data(), blob.bytes.size()), 0)
      << "the bytes served differ from those stored";
}

// ---- arena ----

TEST(ArenaTest, FirstFitAndMergesNeighboursOnFree) {
  Arena arena(10 * kSlot, kSlot);
  const uint64_t a = *arena.allocate(3 * kSlot);
  const uint64_t b = *arena.allocate(1);  // rounds up to one slot
  const uint64_t c = *arena.allocate(6 * kSlot);
  EXPECT_EQ(a, 0u);
  EXPECT_EQ(b, 3 * kSlot);
  EXPECT_EQ(c, 4 * kSlot);
  EXPECT_FALSE(arena.allocate(1).has_value()) << "full";
  arena.free(a);
  arena.free(c);
  EXPECT_EQ(arena.largest_free(), 6 * kSlot) << "a and c are not adjacent";
  EXPECT_FALSE(arena.allocate(7 * kSlot).has_value());
  arena.free(b);
  EXPECT_EQ(arena.largest_free(), 10 * kSlot) << "b's return merges all three runs";
  EXPECT_EQ(arena.used(), 0u);
}

// ---- access predictor ----

TEST(AccessPredictorTest, LearnsForwardBackwardCycleAndPredictsNextUse) {
  AccessPredictor predictor;
  // Forward 1..4, backward 4..2 (layer 1 needs no input gradient): period 7.
  const std::vector<uint64_t> step = {1, 2, 3, 4, 4, 3, 2};
  for (uint64_t key : step) predictor.observe(key);
  EXPECT_FALSE(predictor.following()) << "one step is not yet a repeat";
  for (int i = 0; i < 4; ++i) predictor.observe(step[i]);
  ASSERT_TRUE(predictor.following());
  EXPECT_EQ(predictor.stats().cycle_length, 7u);
  // Just accessed: the 4 of the forward pass; next comes 4 (backward), then 3, 2, 1, 2, ...
  EXPECT_EQ(predictor.distance_to_next_use(4), 1u);
  EXPECT_EQ(predictor.distance_to_next_use(3), 2u);
  EXPECT_EQ(predictor.distance_to_next_use(1), 4u);
  EXPECT_FALSE(predictor.distance_to_next_use(9).has_value()) << "never used";
  EXPECT_EQ(predictor.upcoming(3), (std::vector<uint64_t>{4, 3, 2}));
  predictor.observe(4);
  predictor.observe(7);  // diverges
  EXPECT_FALSE(predictor.following());
  EXPECT_EQ(predictor.stats().divergences, 1u);
  predictor.hint({5, 6});
  EXPECT_TRUE(predictor.following());
  EXPECT_TRUE(predictor.stats().hinted);
  EXPECT_EQ(predictor.distance_to_next_use(5), 1u);
  EXPECT_EQ(predictor.distance_to_next_use(6), 2u);
}

TEST(AccessPredictorTest, OneKeyTwiceInARowIsNotACycle) {
  AccessPredictor predictor;
  predictor.observe(3);
  predictor.observe(3);
  EXPECT_FALSE(predictor.following());
}

// ---- tier store: policies on a cycle longer than the device tier ----

struct CycleCase {
  EvictionPolicy policy;
  int tensors;       // N, cycled over
  int device_slots;  // C < N
};

class CyclicAccessTest : public ::testing::TestWithParam<CycleCase> {};

TEST_P(CyclicAccessTest, DeviceHitRateMatchesTheAnalyticalValue) {
  const CycleCase c = GetParam();
  TierStoreOptions options;
  options.device_bytes = c.device_slots * kSlot;
  options.host_bytes = 64 * kSlot;
  options.policy = c.policy;
  options.prefetch_depth = 0;  // the policy alone
  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < c.tensors; ++i) {
    blobs.push_back(make_blob(kSlot, i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), kSlot).ok());
  }
  auto cycle = [&] {
    for (const Blob& blob : blobs) {
      absl::StatusOr<std::shared_ptr<TierStore::Lease>> lease = store->acquire(blob.digest);
      ASSERT_TRUE(lease.ok()) << lease.status();
    }
  };
  for (int i = 0; i < 3; ++i) cycle();  // the predictor learns the order
  const TierCounters before = store->stats().tiers[0];
  const int measured_cycles = 4 * (c.tensors - 1);  // a whole number of OPT's own period
  for (int i = 0; i < measured_cycles; ++i) cycle();
  const TierCounters after = store->stats().tiers[0];
  const double accesses = static_cast<double>(measured_cycles) * c.tensors;
  const double hit_rate = static_cast<double>(after.hits - before.hits) / accesses;
  // LRU on a cycle longer than the tier always evicts the tensor needed next: no hits. The
  // furthest-next-use choice is Belady's optimum; on a cycle of N through C slots it hits
  // C - 1 of every N - 1 accesses.
  const double expected = c.policy == EvictionPolicy::kLru
                              ? 0.0
                              : static_cast<double>(c.device_slots - 1) / (c.tensors - 1);
  std::printf("policy %-8s N=%d C=%d: device hit rate %.4f (analytical %.4f)\n",
              policy_name(c.policy), c.tensors, c.device_slots, hit_rate, expected);
  EXPECT_NEAR(hit_rate, expected, 1e-9);
  EXPECT_EQ(after.hits + after.misses - before.hits - before.misses,
            static_cast<uint64_t>(accesses));
  for (const Blob& blob : blobs) expect_served(*store, blob);
}

INSTANTIATE_TEST_SUITE_P(Policies, CyclicAccessTest,
                         ::testing::Values(CycleCase{EvictionPolicy::kLru, 8, 3},
                                           CycleCase{EvictionPolicy::kNextUse, 8, 3},
                                           CycleCase{EvictionPolicy::kLru, 12, 9},
                                           CycleCase{EvictionPolicy::kNextUse, 12, 9}));

// ---- tier store: placement down to the SSD and back ----

TierStoreOptions three_tiers(const TempDir& dir, uint64_t device_slots, uint64_t host_slots,
                             uint64_t ssd_files, uint64_t tensor_bytes) {
  TierStoreOptions options;
  options.device_bytes = device_slots * Arena::round_up(tensor_bytes, kSlot);
  options.host_bytes = host_slots * Arena::round_up(tensor_bytes, kSlot);
  options.ssd_bytes = ssd_files * SsdTier::file_bytes(tensor_bytes);
  options.ssd_directory = dir.sub("tiers");
  options.prefetch_depth = 0;
  options.io_chunk_bytes = 2 * kSlot;  // several chunks per tensor: the parallel path
  return options;
}

TEST(TierStoreTest, MovesDownTiersAndServesEveryTensorIntact) {
  TempDir dir;
  const uint64_t size = 3 * kSlot + 100;  // not a whole number of blocks
  std::unique_ptr<TierStore> store = make_store(three_tiers(dir, 2, 2, 12, size));
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < 10; ++i) {
    blobs.push_back(make_blob(size, 100 + i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok()) << i;
  }
  TierStoreStats stats = store->stats();
  EXPECT_EQ(stats.tensors, 10u) << "nothing is dropped";
  EXPECT_EQ(stats.tiers[0].tensors, 2u);
  EXPECT_GE(stats.tiers[2].tensors, 6u);
  EXPECT_GT(stats.tiers[2].bytes_in, 0u);
  // Every file private to the daemon's user, in a private directory.
  struct stat info {};
  ASSERT_EQ(::stat(dir.sub("tiers").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat(store->ssd_path_of(blobs[0].digest).c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  for (const Blob& blob : blobs) expect_served(*store, blob);
  stats = store->stats();
  EXPECT_GT(stats.tiers[2].hits, 0u);
  EXPECT_GT(stats.tiers[1].promotions, 0u);
  EXPECT_EQ(stats.checksum_failures, 0u);
  EXPECT_TRUE(stats.ssd_direct_io) << "ext4 takes O_DIRECT; tmpfs would not";
}

TEST(TierStoreTest, FullStoreRefusesWithBudgetsAndKeepsWhatItHolds) {
  TempDir dir;
  const uint64_t size = 2 * kSlot;
  // The SSD tier keeps room for every tensor: three files' worth holds three tensors.
  std::unique_ptr<TierStore> store = make_store(three_tiers(dir, 1, 2, 3, size));
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < 3; ++i) {
    blobs.push_back(make_blob(size, 200 + i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok()) << i;
  }
  const Blob extra = make_blob(size, 299);
  const absl::Status full = store->put(extra.digest, extra.bytes.data(), size);
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_THAT(message_of(full), HasSubstr("the tier store is full: a tensor of 8192 bytes needs "
                                          "12288 bytes of the ssd tier"));
  EXPECT_THAT(message_of(full), HasSubstr("36864 of its 36864 bytes (store.ssd_bytes)"));
  EXPECT_FALSE(store->contains(extra.digest));
  EXPECT_THAT(message_of(store->check_fits(3 * size)),
              HasSubstr("larger than the device tier's budget of 8192"));
  // Served again and again, in an order that moves every one of them through every tier.
  for (int round = 0; round < 3; ++round) {
    for (const Blob& blob : blobs) expect_served(*store, blob);
  }
}

TEST(TierStoreTest, TensorsInUseStayPut) {
  TierStoreOptions options;
  options.device_bytes = 2 * kSlot;
  options.host_bytes = 3 * kSlot;
  options.prefetch_depth = 0;
  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  const Blob a = make_blob(kSlot, 1);
  const Blob b = make_blob(kSlot, 2);
  const Blob c = make_blob(kSlot, 3);
  ASSERT_TRUE(store->put(a.digest, a.bytes.data(), kSlot).ok());
  ASSERT_TRUE(store->put(b.digest, b.bytes.data(), kSlot).ok());
  {
    absl::StatusOr<std::shared_ptr<TierStore::Lease>> lease_a = store->acquire(a.digest);
    absl::StatusOr<std::shared_ptr<TierStore::Lease>> lease_b = store->acquire(b.digest);
    ASSERT_TRUE(lease_a.ok() && lease_b.ok());
    ASSERT_TRUE(store->put(c.digest, c.bytes.data(), kSlot).ok()) << "placed in host memory";
    const absl::StatusOr<std::shared_ptr<TierStore::Lease>> refused = store->acquire(c.digest);
    EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
    EXPECT_THAT(message_of(refused.status()), HasSubstr("tensors in use cannot move"));
    EXPECT_EQ(std::memcmp((*lease_a)->data(), a.bytes.data(), kSlot), 0);
  }
  expect_served(*store, c);
  expect_served(*store, a);
}

TEST(TierStoreTest, CorruptOrMissingFileIsRefusedAndForgotten) {
  TempDir dir;
  const uint64_t size = 4 * kSlot;
  std::unique_ptr<TierStore> store = make_store(three_tiers(dir, 1, 2, 8, size));
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < 5; ++i) {
    blobs.push_back(make_blob(size, 300 + i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok());
  }
  // blobs[0] and [1] went down to the SSD tier (the device holds one, host memory two).
  const std::string flipped = store->ssd_path_of(blobs[0].digest);
  {
    std::fstream file(flipped, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(file.good()) << flipped;
    file.seekp(static_cast<std::streamoff>(kTierAlignment + 5000));
    file.put('\x5a').put('\xa5');
  }
  ASSERT_EQ(std::remove(store->ssd_path_of(blobs[1].digest).c_str()), 0);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::shared_ptr<TierStore::Lease>> lease = store->acquire(blobs[i].digest);
    EXPECT_TRUE(absl::IsNotFound(lease.status())) << lease.status();
    EXPECT_THAT(message_of(lease.status()), HasSubstr("failed verification"));
    EXPECT_THAT(message_of(lease.status()), HasSubstr("upload it again"));
    EXPECT_FALSE(store->contains(blobs[i].digest));
  }
  EXPECT_EQ(store->stats().checksum_failures, 2u);
  // Uploaded again, it is served whole.
  ASSERT_TRUE(store->put(blobs[0].digest, blobs[0].bytes.data(), size).ok());
  for (const Blob& blob : {blobs[0], blobs[2], blobs[3], blobs[4]}) expect_served(*store, blob);
}

TEST(TierStoreTest, RestartReindexesWholeFilesAndRemovesLeftovers) {
  TempDir dir;
  const uint64_t size = 3 * kSlot;
  const TierStoreOptions options = three_tiers(dir, 1, 2, 8, size);
  std::vector<Blob> blobs;
  std::vector<std::string> on_ssd;
  {
    std::unique_ptr<TierStore> store = make_store(options);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 6; ++i) {
      blobs.push_back(make_blob(size, 400 + i));
      ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok());
    }
    for (const Blob& blob : blobs) {
      if (testing::file_exists(store->ssd_path_of(blob.digest))) on_ssd.push_back(blob.digest);
    }
    ASSERT_GE(on_ssd.size(), 3u);
  }  // a crash leaves the same files: tier files are whole from the moment they are named
  // What a crash mid-write leaves, and a file cut short.
  const std::string tiers = options.ssd_directory;
  std::ofstream(tiers + "/" + std::string(64, 'a') + ".tmp") << "half a tensor";
  const std::string cut = tiers + "/" + on_ssd[0] + ".vbt";
  ASSERT_TRUE(testing::resize_file(cut, testing::file_size(cut) - kSlot));
  std::ofstream(tiers + "/" + std::string(64, 'b') + ".vbt") << "not a tier file";

  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  const TierStoreStats stats = store->stats();
  EXPECT_EQ(stats.recovered_files, on_ssd.size() - 1);
  EXPECT_EQ(stats.removed_files, 3u);
  EXPECT_FALSE(store->contains(on_ssd[0])) << "a truncated file is not a tensor";
  EXPECT_FALSE(testing::file_exists(cut));
  for (const Blob& blob : blobs) {
    if (blob.digest == on_ssd[0]) continue;
    if (!store->contains(blob.digest)) continue;  // it lived only in memory
    expect_served(*store, blob);
  }
}

TEST(TierStoreTest, PrefetchesAlongTheLearnedOrder) {
  TempDir dir;
  const uint64_t size = 2 * kSlot;
  TierStoreOptions options = three_tiers(dir, 3, 2, 16, size);
  options.prefetch_depth = 2;
  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < 6; ++i) {
    blobs.push_back(make_blob(size, 500 + i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok());
  }
  for (int step = 0; step < 8; ++step) {
    for (const Blob& blob : blobs) {
      expect_served(*store, blob);
      // Compute would run here; give the prefetcher the time it would have.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  const TierStoreStats stats = store->stats();
  EXPECT_EQ(stats.cycle_length, 6u);
  EXPECT_FALSE(stats.cycle_hinted);
  EXPECT_GT(stats.prefetches, 0u);
  EXPECT_GT(stats.prefetch_hits, 0u);
  std::printf("observed order: %lu prefetches, %lu used, device hits %lu of %lu\n",
              static_cast<unsigned long>(stats.prefetches),
              static_cast<unsigned long>(stats.prefetch_hits),
              static_cast<unsigned long>(stats.tiers[0].hits),
              static_cast<unsigned long>(stats.tiers[0].hits + stats.tiers[0].misses));
}

TEST(TierStoreTest, PrefetchesAlongAHintedOrder) {
  TempDir dir;
  const uint64_t size = 2 * kSlot;
  TierStoreOptions options = three_tiers(dir, 2, 2, 16, size);
  options.prefetch_depth = 2;
  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  std::vector<std::string> order;
  for (int i = 0; i < 5; ++i) {
    blobs.push_back(make_blob(size, 600 + i));
    ASSERT_TRUE(store->put(blobs[i].digest, blobs[i].bytes.data(), size).ok());
    order.push_back(blobs[i].digest);
  }
  // The first tensors went down to the SSD tier; the hint brings the first two back up.
  store->hint(order);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (store->stats().prefetches < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  TierStoreStats stats = store->stats();
  EXPECT_TRUE(stats.cycle_hinted);
  EXPECT_EQ(stats.prefetches, 2u);
  expect_served(*store, blobs[0]);
  expect_served(*store, blobs[1]);
  stats = store->stats();
  EXPECT_EQ(stats.prefetch_hits, 2u);
  EXPECT_EQ(stats.tiers[0].hits, 2u) << "both were waiting on the device";
}

TEST(TierStoreTest, NewVersionReleasesTheOldAndTakesItsPlaceInTheOrder) {
  TierStoreOptions options;
  options.device_bytes = 4 * kSlot;
  options.host_bytes = 4 * kSlot;
  options.prefetch_depth = 0;
  std::unique_ptr<TierStore> store = make_store(options);
  ASSERT_NE(store, nullptr);
  const Blob v1 = make_blob(kSlot, 700);
  const Blob v2 = make_blob(kSlot, 701);
  ASSERT_TRUE(store->put(v1.digest, v1.bytes.data(), kSlot).ok());
  {
    absl::StatusOr<std::shared_ptr<TierStore::Lease>> in_use = store->acquire(v1.digest);
    ASSERT_TRUE(in_use.ok());
    ASSERT_TRUE(store->put(v2.digest, v2.bytes.data(), kSlot, v1.digest).ok());
    EXPECT_FALSE(store->contains(v1.digest));
    EXPECT_EQ(std::memcmp((*in_use)->data(), v1.bytes.data(), kSlot), 0)
        << "a call still using the old version keeps its bytes";
  }
  EXPECT_EQ(store->stats().tensors, 1u);
  expect_served(*store, v2);
  EXPECT_EQ(store->stats().tiers[0].held_bytes, kSlot) << "the old version's slot came back";
}

// remove() takes a tensor out of every tier it is on, file included, and gives its room
// back; a lease taken before keeps its bytes until it is gone; the rest stays intact.
TEST(TierStoreTest, RemoveDropsEveryCopyAndKeepsWhatIsInUse) {
  TempDir dir;
  const uint64_t size = 2 * kSlot;
  // One device slot, two host slots, four files (room for four tensors): the first of four
  // ends up on the SSD.
  std::unique_ptr<TierStore> store = make_store(three_tiers(dir, 1, 2, 4, size));
  ASSERT_NE(store, nullptr);
  std::vector<Blob> blobs;
  for (int i = 0; i < 4; ++i) {
    blobs.push_back(make_blob(size, 800 + i));
    const absl::Status put = store->put(blobs[i].digest, blobs[i].bytes.data(), size);
    ASSERT_TRUE(put.ok()) << i << ": " << put;
  }
  const std::string file = store->ssd_path_of(blobs[0].digest);
  struct stat info {};
  ASSERT_EQ(::stat(file.c_str(), &info), 0) << "the oldest tensor went down to the SSD";
  const uint64_t committed = store->stats().committed_bytes;

  EXPECT_TRUE(store->remove(blobs[0].digest));
  EXPECT_FALSE(store->contains(blobs[0].digest));
  EXPECT_NE(::stat(file.c_str(), &info), 0) << "its file is gone";
  EXPECT_FALSE(store->remove(blobs[0].digest)) << "not held any more";
  EXPECT_FALSE(store->remove(make_blob(size, 899).digest)) << "never held";
  TierStoreStats stats = store->stats();
  EXPECT_EQ(stats.tensors, 3u);
  EXPECT_LT(stats.committed_bytes, committed) << "its room is promised to nobody now";
  const absl::StatusOr<std::shared_ptr<TierStore::Lease>> gone = store->acquire(blobs[0].digest);
  EXPECT_TRUE(absl::IsNotFound(gone.status())) << gone.status();

  {
    absl::StatusOr<std::shared_ptr<TierStore::Lease>> in_use = store->acquire(blobs[1].digest);
    ASSERT_TRUE(in_use.ok()) << in_use.status();
    EXPECT_TRUE(store->remove(blobs[1].digest));
    EXPECT_FALSE(store->contains(blobs[1].digest));
    EXPECT_EQ(std::memcmp((*in_use)->data(), blobs[1].bytes.data(), size), 0)
        << "a call still using it keeps its bytes";
  }
  expect_served(*store, blobs[2]);
  // Both removed tensors' room is back: two new ones fit beside the two left (the store was
  // full).
  for (int i = 4; i < 6; ++i) {
    blobs.push_back(make_blob(size, 800 + i));
    const absl::Status put = store->put(blobs[i].digest, blobs[i].bytes.data(), size);
    ASSERT_TRUE(put.ok()) << i << ": " << put;
  }
  for (int i : {2, 3, 4, 5}) expect_served(*store, blobs[i]);
  EXPECT_EQ(store->stats().tensors, 4u);
}

TEST(TierStoreTest, RefusesImpossibleBudgets) {
  TierStoreOptions options;
  options.device_bytes = 0;
  EXPECT_THAT(message_of(TierStore::create(options, make_host_tier_memory()).status()),
              HasSubstr("store.device_bytes = 0"));
  options.device_bytes = kSlot;
  options.host_bytes = 0;
  options.ssd_bytes = kSlot * 4;
  options.ssd_directory = "/nonexistent";
  EXPECT_THAT(message_of(TierStore::create(options, make_host_tier_memory()).status()),
              HasSubstr("the host tier needs a budget"));
  TempDir dir;
  std::unique_ptr<TierStore> store = make_store(three_tiers(dir, 4, 2, 4, kSlot));
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->check_fits(kSlot).ok());
  EXPECT_THAT(message_of(store->check_fits(kSlot + 1)),
              HasSubstr("needs a host tier of at least twice its size, 16384 bytes"));
}

}  // namespace
}  // namespace vb::backends
