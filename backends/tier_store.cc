#include "backends/tier_store.h"

#include <chrono>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace vb::backends {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

const char* tier_name(Tier tier) {
  switch (tier) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
    case Tier::kSsd:
      return "ssd";
  }
  return "?";
}

const char* policy_name(EvictionPolicy policy) {
  return policy == EvictionPolicy::kLru ? "lru" : "next-use";
}

absl::StatusOr<EvictionPolicy> parse_eviction_policy(absl::string_view text,
                                                     absl::string_view field) {
  if (text == "lru") return EvictionPolicy::kLru;
  if (text == "next-use") return EvictionPolicy::kNextUse;
  return absl::InvalidArgumentError(
      absl::StrCat(field, " = \"", text, "\": expected \"lru\" or \"next-use\""));
}

struct TierStore::Entry {
  uint64_t size = 0;
  uint64_t lineage = 0;
  std::optional<uint64_t> device_slot;
  std::optional<uint64_t> host_slot;
  bool on_ssd = false;
  int pins = 0;          // leases on the device copy
  bool moving = false;   // the mover works on it: never chosen to make room
  bool leaving = false;  // its device copy is being evicted: no new leases on it
  bool prefetched = false;
  uint64_t last_use = 0;
};

TierStore::Lease::~Lease() { store_->unpin(*entry_); }

TierStore::TierStore(const TierStoreOptions& options, std::unique_ptr<TierMemory> memory)
    : options_(options),
      memory_(std::move(memory)),
      device_arena_(options.device_bytes, kTierAlignment),
      host_arena_(options.host_bytes, kTierAlignment) {
  stats_.policy = options.policy;
}

absl::StatusOr<std::unique_ptr<TierStore>> TierStore::create(const TierStoreOptions& options,
                                                             std::unique_ptr<TierMemory> memory) {
  if (options.device_bytes < kTierAlignment) {
    return absl::InvalidArgumentError(absl::StrCat("store.device_bytes = ", options.device_bytes,
                                                   ": the device tier needs at least ",
                                                   kTierAlignment, " bytes"));
  }
  if (options.ssd_bytes > 0 && options.host_bytes < kTierAlignment) {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.host_bytes = ", options.host_bytes, " with store.ssd_bytes = ", options.ssd_bytes,
        ": tensors reach the SSD tier through host memory, so the host tier needs a budget"));
  }
  if (options.prefetch_depth < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.prefetch_depth = ", options.prefetch_depth, ": expected 0 or more"));
  }
  std::unique_ptr<TierStore> store(new TierStore(options, std::move(memory)));
  VB_RETURN_IF_ERROR(store->open());
  return store;
}

absl::Status TierStore::open() {
  VB_ASSIGN_OR_RETURN(device_region_, memory_->allocate_device(device_arena_.capacity()));
  if (host_arena_.capacity() > 0) {
    VB_ASSIGN_OR_RETURN(host_region_, memory_->allocate_host(host_arena_.capacity()));
  }
  if (options_.ssd_bytes > 0) {
    SsdTierOptions ssd_options;
    ssd_options.directory = options_.ssd_directory;
    ssd_options.io_threads = options_.io_threads;
    ssd_options.chunk_bytes = options_.io_chunk_bytes;
    SsdTier::OpenReport report;
    VB_ASSIGN_OR_RETURN(ssd_, SsdTier::open(ssd_options, &report));
    stats_.removed_files = report.removed;
    for (const SsdTier::Recovered& file : report.files) {
      const uint64_t file_bytes = SsdTier::file_bytes(file.byte_size);
      if (!options_.ssd_recover || committed_ + file_bytes > options_.ssd_bytes) {
        ssd_->remove(file.digest);
        ++stats_.removed_files;
        continue;
      }
      auto entry = std::make_shared<Entry>();
      entry->size = file.byte_size;
      entry->on_ssd = true;
      entry->lineage = next_lineage_++;
      digest_of_lineage_[entry->lineage] = file.digest;
      entries_.emplace(file.digest, std::move(entry));
      ssd_used_ += file_bytes;
      committed_ += file_bytes;
      ++stats_.recovered_files;
    }
    if (stats_.recovered_files + stats_.removed_files > 0) {
      VB_LOG_INFO("SSD tier ", options_.ssd_directory, ": ", stats_.recovered_files,
                  " tensor file(s) re-indexed (checked again on every read), ",
                  stats_.removed_files, " leftover(s) removed");
    }
  }
  if (options_.prefetch_depth > 0) prefetcher_ = std::thread([this] { prefetch_loop(); });
  return absl::OkStatus();
}

TierStore::~TierStore() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  prefetch_wake_.notify_all();
  if (prefetcher_.joinable()) prefetcher_.join();
  if (device_region_ != nullptr) memory_->free_device(device_region_);
  if (host_region_ != nullptr) memory_->free_host(host_region_);
}

char* TierStore::region(Tier tier) const {
  return static_cast<char*>(tier == Tier::kDevice ? device_region_ : host_region_);
}

Tier TierStore::bottom() const {
  if (ssd_ != nullptr) return Tier::kSsd;
  return host_arena_.capacity() > 0 ? Tier::kHost : Tier::kDevice;
}

uint64_t TierStore::footprint(uint64_t byte_size) const {
  return bottom() == Tier::kSsd ? SsdTier::file_bytes(byte_size)
                                : Arena::round_up(byte_size, kTierAlignment);
}

uint64_t TierStore::bottom_capacity() const {
  switch (bottom()) {
    case Tier::kSsd:
      return options_.ssd_bytes;
    case Tier::kHost:
      return host_arena_.capacity();
    case Tier::kDevice:
      return device_arena_.capacity();
  }
  return 0;
}

std::string TierStore::ssd_path_of(const std::string& digest) const {
  return ssd_ == nullptr ? std::string() : ssd_->path_of(digest);
}

absl::Status TierStore::check_fits(uint64_t byte_size) const {
  const uint64_t slot = Arena::round_up(byte_size, kTierAlignment);
  if (slot > device_arena_.capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a tensor of ", byte_size, " bytes is larger than the device tier's budget of ",
        device_arena_.capacity(), " bytes (store.device_bytes)"));
  }
  if (ssd_ != nullptr && 2 * slot > host_arena_.capacity()) {
    // One tensor on its way up and one on its way down meet in host memory.
    return absl::ResourceExhaustedError(absl::StrCat(
        "a tensor of ", byte_size, " bytes needs a host tier of at least twice its size, ",
        2 * slot, " bytes, to pass to and from the SSD tier; store.host_bytes is ",
        host_arena_.capacity()));
  }
  if (ssd_ != nullptr && SsdTier::file_bytes(byte_size) > options_.ssd_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a tensor of ", byte_size, " bytes is larger than the SSD tier's budget of ",
                     options_.ssd_bytes, " bytes (store.ssd_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status TierStore::store_full(uint64_t bytes) const {
  const Tier last = bottom();
  const char* key = last == Tier::kSsd    ? "store.ssd_bytes"
                    : last == Tier::kHost ? "store.host_bytes"
                                          : "store.device_bytes";
  return absl::ResourceExhaustedError(absl::StrCat(
      "the tier store is full: a tensor of ", bytes, " bytes needs ", footprint(bytes),
      " bytes of the ", tier_name(last), " tier, which keeps room for every tensor held, and ",
      committed_, " of its ", bottom_capacity(), " bytes (", key, ") are taken by ",
      entries_.size(), " tensor(s); device tier holds ", device_arena_.used(), " of ",
      device_arena_.capacity(), " bytes, host tier ", host_arena_.used(), " of ",
      host_arena_.capacity(), ", SSD tier ", ssd_used_, " of ", options_.ssd_bytes));
}

absl::Status TierStore::no_room(Tier tier, uint64_t bytes) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "no room for a tensor of ", bytes, " bytes in the ", tier_name(tier),
      " tier: device tier holds ", device_arena_.used(), " of ", device_arena_.capacity(),
      " bytes, host tier ", host_arena_.used(), " of ", host_arena_.capacity(), " bytes, SSD tier ",
      ssd_used_, " of ", options_.ssd_bytes,
      " bytes (store.device_bytes, store.host_bytes, store.ssd_bytes); tensors in use cannot "
      "move"));
}

bool TierStore::contains(const std::string& digest) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.count(digest) > 0;
}

std::optional<uint64_t> TierStore::size_of(const std::string& digest) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(digest);
  if (it == entries_.end()) return std::nullopt;
  return it->second->size;
}

std::optional<uint64_t> TierStore::next_use(const Entry& entry) const {
  return predictor_.distance_to_next_use(entry.lineage);
}

absl::Status TierStore::put(const std::string& digest, const void* data, uint64_t byte_size,
                            const std::string& replaces) {
  VB_RETURN_IF_ERROR(check_fits(byte_size));
  std::lock_guard<std::mutex> move(move_mutex_);
  Lock lock(mutex_);
  reap();
  EntryPtr entry;
  if (auto it = entries_.find(digest); it != entries_.end()) {
    it->second->last_use = ++clock_;
    return absl::OkStatus();
  }
  for (auto it = released_.begin(); it != released_.end(); ++it) {
    if (it->first == digest) {  // released while in use, and wanted again: the same bytes
      entry = it->second;
      released_.erase(it);
      break;
    }
  }
  if (committed_ + footprint(byte_size) > bottom_capacity()) return store_full(byte_size);
  if (entry == nullptr) {
    entry = std::make_shared<Entry>();
    entry->size = byte_size;
    entry->moving = true;
    Tier placed = Tier::kDevice;
    absl::StatusOr<uint64_t> slot = make_room(Tier::kDevice, byte_size, std::nullopt, lock);
    if (!slot.ok() && host_arena_.capacity() > 0) {
      absl::StatusOr<uint64_t> host_slot = make_room(Tier::kHost, byte_size, std::nullopt, lock);
      if (host_slot.ok()) {
        slot = host_slot;
        placed = Tier::kHost;
      }
    }
    if (!slot.ok()) return slot.status();
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    absl::Status copied = absl::OkStatus();
    if (placed == Tier::kDevice) {
      copied = memory_->to_device(region(Tier::kDevice) + *slot, data, byte_size);
    } else {
      std::memcpy(region(Tier::kHost) + *slot, data, byte_size);
    }
    const double elapsed = seconds_since(started);
    lock.lock();
    Arena& arena = placed == Tier::kDevice ? device_arena_ : host_arena_;
    if (!copied.ok()) {
      arena.free(*slot);
      return copied;
    }
    (placed == Tier::kDevice ? entry->device_slot : entry->host_slot) = *slot;
    TierCounters& counters = stats_.tiers[static_cast<int>(placed)];
    counters.bytes_in += byte_size;
    counters.move_seconds += elapsed;
    ++stats_.uploads;
    entry->moving = false;
  }
  entry->lineage = 0;
  if (!replaces.empty() && replaces != digest) {
    if (auto old = entries_.find(replaces); old != entries_.end()) {
      entry->lineage = old->second->lineage;  // the new version inherits the old one's place
      release(replaces);
    }
  }
  if (entry->lineage == 0) entry->lineage = next_lineage_++;
  digest_of_lineage_[entry->lineage] = digest;
  entry->last_use = ++clock_;
  committed_ += footprint(byte_size);
  entries_.emplace(digest, std::move(entry));
  return absl::OkStatus();
}

bool TierStore::remove(const std::string& digest) {
  // move_mutex_ first, as put() does: a copy of this tensor in flight ends before it goes.
  std::lock_guard<std::mutex> move(move_mutex_);
  Lock lock(mutex_);
  if (entries_.find(digest) == entries_.end()) return false;
  release(digest);
  return true;
}

void TierStore::release(const std::string& digest) {
  auto it = entries_.find(digest);
  if (it == entries_.end()) return;
  EntryPtr entry = it->second;
  forget(digest, *entry);
  released_.emplace_back(digest, std::move(entry));
  reap();
}

void TierStore::forget(const std::string& digest, const Entry& entry) {
  entries_.erase(digest);
  committed_ -= footprint(entry.size);
  if (auto lineage = digest_of_lineage_.find(entry.lineage);
      lineage != digest_of_lineage_.end() && lineage->second == digest) {
    digest_of_lineage_.erase(lineage);
  }
}

void TierStore::reap() {
  for (auto it = released_.begin(); it != released_.end();) {
    Entry& entry = *it->second;
    if (entry.pins > 0 || entry.moving) {
      ++it;
      continue;
    }
    for (Tier tier : {Tier::kDevice, Tier::kHost, Tier::kSsd}) drop_copy(tier, it->first, entry);
    it = released_.erase(it);
  }
}

void TierStore::drop_copy(Tier tier, const std::string& digest, Entry& entry) {
  switch (tier) {
    case Tier::kDevice:
      if (entry.device_slot) device_arena_.free(*entry.device_slot);
      entry.device_slot.reset();
      break;
    case Tier::kHost:
      if (entry.host_slot) host_arena_.free(*entry.host_slot);
      entry.host_slot.reset();
      break;
    case Tier::kSsd:
      if (entry.on_ssd) {
        ssd_->remove(digest);
        ssd_used_ -= SsdTier::file_bytes(entry.size);
      }
      entry.on_ssd = false;
      break;
  }
}

absl::StatusOr<uint64_t> TierStore::make_room(Tier tier, uint64_t bytes,
                                              std::optional<uint64_t> limit, Lock& lock) {
  std::unordered_set<const Entry*> tried;
  const bool by_next_use = options_.policy == EvictionPolicy::kNextUse && predictor_.following();
  for (;;) {
    reap();
    if (tier == Tier::kSsd) {
      if (ssd_ == nullptr) return no_room(tier, bytes);
      // Every tensor held was admitted with room for its file (committed_), so the file of
      // one in memory always fits.
      ssd_used_ += SsdTier::file_bytes(bytes);  // given back if the write fails
      return 0;
    } else {
      Arena& arena = tier == Tier::kDevice ? device_arena_ : host_arena_;
      if (std::optional<uint64_t> slot = arena.allocate(bytes)) return *slot;
    }
    // Which tensor moves down: the one used furthest ahead (or never again), else the least
    // recently used.
    std::string victim_digest;
    EntryPtr victim;
    std::pair<uint64_t, uint64_t> victim_score{0, 0};
    for (const auto& [digest, entry] : entries_) {
      const Entry& e = *entry;
      if (e.moving || tried.count(&e)) continue;
      bool candidate = false;
      switch (tier) {
        case Tier::kDevice:
          candidate = e.device_slot && e.pins == 0;
          break;
        case Tier::kHost:  // a sole copy may go only where an SSD tier can take it
          candidate = e.host_slot && (e.device_slot || e.on_ssd || ssd_ != nullptr);
          break;
        case Tier::kSsd:  // never asked: see above
          break;
      }
      if (!candidate) continue;
      const std::optional<uint64_t> distance = by_next_use || limit ? next_use(e) : std::nullopt;
      // A prefetch never pushes out a tensor needed before the one it brings.
      if (limit && distance && *distance <= *limit) continue;
      const std::pair<uint64_t, uint64_t> score{
          by_next_use ? distance.value_or(std::numeric_limits<uint64_t>::max()) : 0,
          std::numeric_limits<uint64_t>::max() - e.last_use};
      if (victim == nullptr || score > victim_score) {
        victim = entry;
        victim_digest = digest;
        victim_score = score;
      }
    }
    if (victim == nullptr) return no_room(tier, bytes);
    tried.insert(victim.get());
    absl::Status demoted = demote(tier, victim_digest, *victim, lock);
    if (!demoted.ok() && !absl::IsResourceExhausted(demoted)) return demoted;
  }
}

absl::Status TierStore::demote(Tier tier, const std::string& digest, Entry& victim, Lock& lock) {
  victim.moving = true;
  victim.leaving = tier == Tier::kDevice;
  const uint64_t size = victim.size;
  absl::Status result = absl::OkStatus();
  TierCounters& from = stats_.tiers[static_cast<int>(tier)];
  if (tier == Tier::kDevice && !victim.host_slot && !victim.on_ssd) {
    // Its only copy: down to host memory first.
    absl::StatusOr<uint64_t> slot = host_arena_.capacity() > 0
                                        ? make_room(Tier::kHost, size, std::nullopt, lock)
                                        : absl::StatusOr<uint64_t>(no_room(Tier::kHost, size));
    if (slot.ok()) {
      lock.unlock();
      const auto started = std::chrono::steady_clock::now();
      result = memory_->to_host(region(Tier::kHost) + *slot,
                                region(Tier::kDevice) + *victim.device_slot, size);
      const double elapsed = seconds_since(started);
      lock.lock();
      if (result.ok()) {
        victim.host_slot = *slot;
        TierCounters& to = stats_.tiers[static_cast<int>(Tier::kHost)];
        to.bytes_in += size;
        to.move_seconds += elapsed;
        from.bytes_out += size;
        from.move_seconds += elapsed;
      } else {
        host_arena_.free(*slot);
      }
    } else {
      result = slot.status();
    }
  } else if (tier == Tier::kHost && !victim.device_slot && !victim.on_ssd) {
    // Its only copy: write it to the SSD tier.
    absl::StatusOr<uint64_t> reserved = make_room(Tier::kSsd, size, std::nullopt, lock);
    if (reserved.ok()) {
      lock.unlock();
      const auto started = std::chrono::steady_clock::now();
      result = ssd_->write(digest, region(Tier::kHost) + *victim.host_slot, size);
      const double elapsed = seconds_since(started);
      lock.lock();
      if (result.ok()) {
        victim.on_ssd = true;
        TierCounters& to = stats_.tiers[static_cast<int>(Tier::kSsd)];
        to.bytes_in += size;
        to.move_seconds += elapsed;
        from.bytes_out += size;
        from.move_seconds += elapsed;
      } else {
        ssd_used_ -= SsdTier::file_bytes(size);
        VB_LOG_WARNING("SSD tier write failed: ", result.message());
      }
    } else {
      result = reserved.status();
    }
  }
  if (result.ok()) {
    drop_copy(tier, digest, victim);
    ++from.demotions;
  }
  victim.moving = false;
  victim.leaving = false;
  return result;
}

absl::Status TierStore::promote(const std::string& digest, const EntryPtr& entry,
                                std::optional<uint64_t> limit, Lock& lock) {
  Entry& e = *entry;
  const uint64_t size = e.size;
  const bool on_demand = !limit.has_value();  // prefetches do not count as hits or misses
  TierCounters& host = stats_.tiers[static_cast<int>(Tier::kHost)];
  TierCounters& ssd = stats_.tiers[static_cast<int>(Tier::kSsd)];
  if (e.host_slot) {
    if (on_demand) ++host.hits;
  } else if (!e.on_ssd || ssd_ == nullptr) {
    return absl::InternalError(absl::StrCat("tier store: ", digest, " has no copy to promote"));
  } else {
    if (on_demand) ++host.misses;
    VB_ASSIGN_OR_RETURN(uint64_t slot, make_room(Tier::kHost, size, limit, lock));
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    absl::Status read = ssd_->read(digest, region(Tier::kHost) + slot, size);
    const double elapsed = seconds_since(started);
    lock.lock();
    if (!read.ok()) {
      host_arena_.free(slot);
      if (!absl::IsDataLoss(read)) return read;
      // Never serve what failed verification: forget the tensor so its owner uploads it again.
      ++stats_.checksum_failures;
      if (on_demand) ++ssd.misses;
      VB_LOG_WARNING("SSD tier copy of ", digest, " refused: ", read.message());
      drop_copy(Tier::kSsd, digest, e);
      if (!e.device_slot && !e.host_slot) forget(digest, e);
      return absl::NotFoundError(absl::StrCat("weight ", digest,
                                              " was held on the SSD tier but its file failed "
                                              "verification (",
                                              read.message(), "); upload it again"));
    }
    e.host_slot = slot;
    if (on_demand) ++ssd.hits;
    ++host.promotions;
    host.bytes_in += size;
    host.move_seconds += elapsed;
    ssd.bytes_out += size;
    ssd.move_seconds += elapsed;
  }
  VB_ASSIGN_OR_RETURN(uint64_t slot, make_room(Tier::kDevice, size, limit, lock));
  lock.unlock();
  const auto started = std::chrono::steady_clock::now();
  absl::Status copied =
      memory_->to_device(region(Tier::kDevice) + slot, region(Tier::kHost) + *e.host_slot, size);
  const double elapsed = seconds_since(started);
  lock.lock();
  if (!copied.ok()) {
    device_arena_.free(slot);
    return copied;
  }
  e.device_slot = slot;
  TierCounters& device = stats_.tiers[static_cast<int>(Tier::kDevice)];
  ++device.promotions;
  device.bytes_in += size;
  device.move_seconds += elapsed;
  host.bytes_out += size;
  host.move_seconds += elapsed;
  return absl::OkStatus();
}

std::shared_ptr<TierStore::Lease> TierStore::lease(const EntryPtr& entry) {
  ++entry->pins;
  return std::shared_ptr<Lease>(
      new Lease(this, entry, region(Tier::kDevice) + *entry->device_slot, entry->size));
}

void TierStore::unpin(Entry& entry) {
  std::lock_guard<std::mutex> lock(mutex_);
  // A version released while in use goes as soon as its last call is done. Safe without the
  // move lock: released entries are no mover's business, and their slots change under
  // mutex_ like every other slot.
  if (--entry.pins == 0 && !released_.empty()) reap();
}

absl::StatusOr<std::shared_ptr<TierStore::Lease>> TierStore::acquire(const std::string& digest) {
  const auto not_held = [&] {
    return absl::NotFoundError(
        absl::StrCat("weight ", digest, ": this daemon does not hold it; upload it"));
  };
  {
    Lock lock(mutex_);
    auto it = entries_.find(digest);
    if (it == entries_.end()) return not_held();
    Entry& e = *it->second;
    predictor_.observe(e.lineage);
    e.last_use = ++clock_;
    TierCounters& device = stats_.tiers[static_cast<int>(Tier::kDevice)];
    if (e.device_slot && !e.leaving) {
      ++device.hits;
      if (e.prefetched) ++stats_.prefetch_hits;
      e.prefetched = false;
      std::shared_ptr<Lease> held = lease(it->second);
      schedule_prefetch();
      return held;
    }
    ++device.misses;
  }
  std::lock_guard<std::mutex> move(move_mutex_);
  Lock lock(mutex_);
  auto it = entries_.find(digest);
  if (it == entries_.end()) return not_held();
  EntryPtr entry = it->second;
  if (!entry->device_slot) {
    entry->moving = true;
    absl::Status promoted = promote(digest, entry, std::nullopt, lock);
    entry->moving = false;
    VB_RETURN_IF_ERROR(promoted);
  }
  entry->prefetched = false;
  std::shared_ptr<Lease> held = lease(entry);
  schedule_prefetch();
  return held;
}

void TierStore::hint(const std::vector<std::string>& order) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint64_t> lineages;
  for (const std::string& digest : order) {
    auto it = entries_.find(digest);
    if (it != entries_.end()) lineages.push_back(it->second->lineage);
  }
  predictor_.hint(lineages);
  schedule_prefetch();
}

void TierStore::schedule_prefetch() {
  if (options_.prefetch_depth <= 0 || !predictor_.following()) return;
  bool queued = false;
  for (uint64_t lineage : predictor_.upcoming(static_cast<size_t>(options_.prefetch_depth))) {
    auto name = digest_of_lineage_.find(lineage);
    if (name == digest_of_lineage_.end()) continue;
    auto it = entries_.find(name->second);
    if (it == entries_.end() || it->second->device_slot) continue;
    if (prefetch_queued_.insert(name->second).second) {
      prefetch_queue_.push_back(name->second);
      queued = true;
    }
  }
  if (queued) prefetch_wake_.notify_one();
}

void TierStore::prefetch_loop() {
  for (;;) {
    std::string digest;
    {
      Lock lock(mutex_);
      prefetch_wake_.wait(lock, [this] { return stopping_ || !prefetch_queue_.empty(); });
      if (stopping_) return;
      digest = std::move(prefetch_queue_.front());
      prefetch_queue_.pop_front();
      prefetch_queued_.erase(digest);
    }
    std::lock_guard<std::mutex> move(move_mutex_);
    Lock lock(mutex_);
    if (stopping_) return;
    auto it = entries_.find(digest);
    if (it == entries_.end() || it->second->device_slot) continue;
    EntryPtr entry = it->second;
    const std::optional<uint64_t> distance = next_use(*entry);
    if (!distance) continue;  // the order changed since it was queued
    entry->moving = true;
    const absl::Status promoted = promote(digest, entry, distance, lock);
    entry->moving = false;
    if (promoted.ok()) {
      entry->prefetched = true;
      ++stats_.prefetches;
    }
  }
}

TierStoreStats TierStore::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  TierStoreStats stats = stats_;
  stats.tiers[0].budget_bytes = device_arena_.capacity();
  stats.tiers[0].held_bytes = device_arena_.used();
  stats.tiers[1].budget_bytes = host_arena_.capacity();
  stats.tiers[1].held_bytes = host_arena_.used();
  stats.tiers[2].budget_bytes = ssd_ == nullptr ? 0 : options_.ssd_bytes;
  stats.tiers[2].held_bytes = ssd_used_;
  for (const auto& [digest, entry] : entries_) {
    stats.tiers[0].tensors += entry->device_slot ? 1 : 0;
    stats.tiers[1].tensors += entry->host_slot ? 1 : 0;
    stats.tiers[2].tensors += entry->on_ssd ? 1 : 0;
  }
  stats.tensors = entries_.size();
  stats.capacity_bytes = bottom_capacity();
  stats.committed_bytes = committed_;
  const AccessPredictor::Stats order = predictor_.stats();
  stats.cycle_length = order.cycle_length;
  stats.cycle_hinted = order.hinted;
  stats.ssd_direct_io = ssd_ != nullptr && ssd_->direct_io();
  return stats;
}

}  // namespace vb::backends
