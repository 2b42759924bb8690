// The VGPU stack: every weight the daemon holds lives in the tiers, each with a byte
// budget: device memory (where compute reads it), host memory (pinned on a GPU node), and
// files on an SSD. Compute acquires a tensor, which makes it resident on the device and
// pins it there until the lease goes; when a tier needs room, a tensor moves down a tier;
// nothing is dropped.
//
// The lowest tier present (the SSD tier, else host memory) keeps room for every tensor
// held: a tensor is admitted only if its file (or slot) would fit there, so moving down
// can never fail for want of room, and a store that is full says so at upload, with
// RESOURCE_EXHAUSTED naming the budgets and sizes, never later by losing a tensor. The
// tiers above are caches of it: the store holds as much as its lowest tier.
//
// Copies are kept where they cost nothing: a tensor promoted from the SSD keeps its file,
// and one promoted from host memory keeps its host slot, until that tier needs the room.
// Weights are immutable (content-addressed), so such a copy is never stale, and moving the
// tensor down again is free. A tensor written to the SSD tier is written once.
//
// Which tensor moves down is the eviction policy's choice: least recently used, or the one
// whose next use is furthest away in the access order the store has learned (see
// access_predictor.h), which keeps its hit rate where LRU's falls to zero on a cycle longer
// than the tier. With the order known, a background thread prefetches the next tensors up
// to the device while the current one computes.
//
// Locking: `mutex_` guards the metadata and is held only briefly; `move_mutex_` lets one
// mover at a time place, promote or demote tensors, and is released by nobody while it
// copies. A compute call whose tensor is already on the device takes only `mutex_`.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/access_predictor.h"
#include "backends/arena.h"
#include "backends/ssd_tier.h"
#include "backends/tier_memory.h"

namespace vb::backends {

enum class Tier : int { kDevice = 0, kHost = 1, kSsd = 2 };
inline constexpr int kTierCount = 3;
const char* tier_name(Tier tier);

enum class EvictionPolicy { kLru, kNextUse };
const char* policy_name(EvictionPolicy policy);
// "lru" or "next-use"; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<EvictionPolicy> parse_eviction_policy(absl::string_view text,
                                                     absl::string_view field);

struct TierStoreOptions {
  uint64_t device_bytes = uint64_t{1} << 30;  // must hold the largest tensor
  uint64_t host_bytes = uint64_t{1} << 30;    // 0: no host tier (then no SSD tier either)
  uint64_t ssd_bytes = 0;                     // 0: no SSD tier
  std::string ssd_directory;                  // required when ssd_bytes > 0
  bool ssd_recover = true;                    // re-index whole files at start, else delete
  EvictionPolicy policy = EvictionPolicy::kNextUse;
  int prefetch_depth = 2;  // tensors brought up ahead of use; 0: no prefetch
  int io_threads = 4;
  uint64_t io_chunk_bytes = uint64_t{8} << 20;
};

struct TierCounters {
  uint64_t budget_bytes = 0;
  uint64_t held_bytes = 0;  // slots (device, host) or files (SSD), padding included
  uint64_t tensors = 0;     // copies held in this tier
  uint64_t hits = 0;        // acquires served from this tier (the highest holding a copy)
  uint64_t misses = 0;      // acquires that had to look further down
  uint64_t promotions = 0;  // copies made into this tier from the one below
  uint64_t demotions = 0;   // tensors moved out of this tier to make room
  uint64_t bytes_in = 0;    // copied into this tier (promotions, demotions from above, uploads)
  uint64_t bytes_out = 0;   // copied out of this tier
  double move_seconds = 0;  // time spent copying into or out of this tier
};

struct TierStoreStats {
  std::array<TierCounters, kTierCount> tiers;
  uint64_t tensors = 0;  // distinct tensors held
  // What the store as a whole can hold (its lowest tier's budget) and has promised away.
  uint64_t capacity_bytes = 0;
  uint64_t committed_bytes = 0;
  uint64_t uploads = 0;
  uint64_t prefetches = 0;     // tensors brought to the device ahead of use
  uint64_t prefetch_hits = 0;  // acquires that found a prefetched tensor waiting
  uint64_t checksum_failures = 0;
  uint64_t recovered_files = 0;  // SSD files re-indexed at start
  uint64_t removed_files = 0;    // leftovers removed at start
  EvictionPolicy policy = EvictionPolicy::kNextUse;
  uint64_t cycle_length = 0;  // the access order learned or hinted; 0 while learning
  bool cycle_hinted = false;
  bool ssd_direct_io = false;
};

class TierStore {
  struct Entry;

 public:
  // Pins a tensor on the device while it exists.
  class Lease {
   public:
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    const void* data() const { return data_; }
    uint64_t size() const { return size_; }

   private:
    friend class TierStore;
    Lease(TierStore* store, std::shared_ptr<Entry> entry, const void* data, uint64_t size)
        : store_(store), entry_(std::move(entry)), data_(data), size_(size) {}
    TierStore* store_;
    std::shared_ptr<Entry> entry_;
    const void* data_;
    uint64_t size_;
  };

  static absl::StatusOr<std::unique_ptr<TierStore>> create(const TierStoreOptions& options,
                                                           std::unique_ptr<TierMemory> memory);
  ~TierStore();
  TierStore(const TierStore&) = delete;
  TierStore& operator=(const TierStore&) = delete;

  // RESOURCE_EXHAUSTED when a tensor of `byte_size` could never be held (larger than a
  // tier it must pass through), naming the budget.
  absl::Status check_fits(uint64_t byte_size) const;
  // Stores `byte_size` bytes from ordinary host memory under `digest` (already verified),
  // on the device tier if room can be made there. `replaces`, when held, is the previous
  // version of the same weight: it is released, and the new one takes its place in the
  // learned access order.
  absl::Status put(const std::string& digest, const void* data, uint64_t byte_size,
                   const std::string& replaces = "");
  // Drops `digest` from every tier (its file too); false when it was not held. A lease
  // taken before keeps its bytes until it is gone, and their room comes back then.
  bool remove(const std::string& digest);
  bool contains(const std::string& digest) const;
  std::optional<uint64_t> size_of(const std::string& digest) const;

  // The tensor resident on the device, pinned until the lease is gone. NOT_FOUND when it is
  // not held or its SSD copy failed verification (it is then forgotten, so the client
  // uploads it again); RESOURCE_EXHAUSTED when no room can be made on the device.
  absl::StatusOr<std::shared_ptr<Lease>> acquire(const std::string& digest);

  // The client's word on the order the next calls will use; held digests only.
  void hint(const std::vector<std::string>& order);

  TierStoreStats stats() const;
  const TierMemory& memory() const { return *memory_; }
  std::string ssd_path_of(const std::string& digest) const;

 private:
  using EntryPtr = std::shared_ptr<Entry>;
  using Lock = std::unique_lock<std::mutex>;

  TierStore(const TierStoreOptions& options, std::unique_ptr<TierMemory> memory);
  absl::Status open();

  // All of these run with move_mutex_ held and `lock` (on mutex_) locked; they unlock it
  // around copies.
  absl::StatusOr<uint64_t> make_room(Tier tier, uint64_t bytes, std::optional<uint64_t> limit,
                                     Lock& lock);
  absl::Status demote(Tier tier, const std::string& digest, Entry& victim, Lock& lock);
  absl::Status promote(const std::string& digest, const EntryPtr& entry,
                       std::optional<uint64_t> limit, Lock& lock);
  void drop_copy(Tier tier, const std::string& digest, Entry& entry);
  void release(const std::string& digest);
  // Takes the entry out of the index and gives back its room in the bottom tier.
  void forget(const std::string& digest, const Entry& entry);
  void reap();
  absl::Status no_room(Tier tier, uint64_t bytes) const;
  absl::Status store_full(uint64_t bytes) const;
  // The lowest tier, which keeps room for every tensor held; what a tensor takes there.
  Tier bottom() const;
  uint64_t footprint(uint64_t byte_size) const;
  uint64_t bottom_capacity() const;

  std::optional<uint64_t> next_use(const Entry& entry) const;
  std::shared_ptr<Lease> lease(const EntryPtr& entry);
  void unpin(Entry& entry);
  void schedule_prefetch();
  void prefetch_loop();
  char* region(Tier tier) const;

  const TierStoreOptions options_;
  const std::unique_ptr<TierMemory> memory_;
  void* device_region_ = nullptr;
  void* host_region_ = nullptr;
  std::unique_ptr<SsdTier> ssd_;

  mutable std::mutex mutex_;
  std::mutex move_mutex_;
  std::unordered_map<std::string, EntryPtr> entries_;
  std::unordered_map<uint64_t, std::string> digest_of_lineage_;
  std::vector<std::pair<std::string, EntryPtr>> released_;  // still pinned when released
  Arena device_arena_;
  Arena host_arena_;
  uint64_t ssd_used_ = 0;   // files present
  uint64_t committed_ = 0;  // room in the bottom tier promised to the tensors held
  uint64_t next_lineage_ = 1;
  uint64_t clock_ = 0;
  AccessPredictor predictor_;
  TierStoreStats stats_;

  std::condition_variable prefetch_wake_;
  std::deque<std::string> prefetch_queue_;
  std::unordered_set<std::string> prefetch_queued_;
  bool stopping_ = false;
  std::thread prefetcher_;
};

}  // namespace vb::backends
