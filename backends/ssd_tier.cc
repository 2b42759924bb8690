#include "backends/ssd_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "backends/arena.h"
#include "backends/tier_memory.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace vb::backends {
namespace {

constexpr uint64_t kBlock = kTierAlignment;
constexpr char kMagic[8] = {'V', 'B', 'T', 'I', 'E', 'R', '\0', '\1'};
constexpr uint32_t kVersion = 1;
constexpr char kSuffix[] = ".vbt";
constexpr char kTempSuffix[] = ".tmp";

// Header fields at fixed little-endian offsets inside the first 4 KiB block.
constexpr size_t kOffVersion = 8;
constexpr size_t kOffChunkCount = 12;
constexpr size_t kOffByteSize = 16;
constexpr size_t kOffChunkBytes = 24;
constexpr size_t kOffDigest = 32;
constexpr size_t kDigestChars = 64;
constexpr size_t kOffHashes = kOffDigest + kDigestChars;
constexpr size_t kOffHeaderHash = kBlock - 8;
constexpr uint64_t kMaxChunks = (kOffHeaderHash - kOffHashes) / 8;

template <typename T>
void put(char* block, size_t offset, T value) {
  std::memcpy(block + offset, &value, sizeof(T));
}
template <typename T>
T get(const char* block, size_t offset) {
  T value;
  std::memcpy(&value, block + offset, sizeof(T));
  return value;
}

absl::Status errno_status(const std::string& what) {
  const int error = errno;
  const std::string message = absl::StrCat(what, ": ", std::strerror(error));
  if (error == ENOSPC || error == EDQUOT) return absl::ResourceExhaustedError(message);
  if (error == ENOENT) return absl::DataLossError(message);
  return absl::InternalError(message);
}

// A 4 KiB aligned block for headers (direct I/O needs aligned buffers for every transfer).
struct AlignedBlock {
  AlignedBlock() : data(static_cast<char*>(std::aligned_alloc(kBlock, kBlock))) {
    std::memset(data, 0, kBlock);
  }
  ~AlignedBlock() { std::free(data); }
  AlignedBlock(const AlignedBlock&) = delete;
  AlignedBlock& operator=(const AlignedBlock&) = delete;
  char* data;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status pread_all(int fd, void* data, size_t bytes, uint64_t offset, const std::string& path) {
  char* out = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, out, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status(absl::StrCat("reading ", path));
    if (n == 0) return absl::DataLossError(absl::StrCat(path, " ends early (truncated)"));
    out += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status pwrite_all(int fd, const void* data, size_t bytes, uint64_t offset,
                        const std::string& path) {
  const char* in = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd, in, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status(absl::StrCat("writing ", path));
    in += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

uint64_t chunk_bytes_for(uint64_t byte_size, uint64_t preferred) {
  uint64_t chunk = Arena::round_up(std::max<uint64_t>(preferred, kBlock), kBlock);
  while ((byte_size + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

// The header's fields when the block is a well-formed header naming `expected_digest`
// (empty: any digest); otherwise DATA_LOSS saying what is wrong.
struct HeaderFields {
  std::string digest;
  uint64_t byte_size = 0;
  uint64_t chunk_bytes = 0;
  uint32_t chunk_count = 0;
};

absl::StatusOr<HeaderFields> parse_header(const char* block, const std::string& path) {
  if (std::memcmp(block, kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(path, " is not a tier file (bad magic)"));
  }
  if (get<uint64_t>(block, kOffHeaderHash) != XXH3_64bits(block, kOffHeaderHash)) {
    return absl::DataLossError(absl::StrCat(path, ": header checksum mismatch"));
  }
  if (get<uint32_t>(block, kOffVersion) != kVersion) {
    return absl::DataLossError(absl::StrCat(
        path, ": tier file version ", get<uint32_t>(block, kOffVersion), ", expected ", kVersion));
  }
  HeaderFields fields;
  fields.digest.assign(block + kOffDigest, kDigestChars);
  fields.byte_size = get<uint64_t>(block, kOffByteSize);
  fields.chunk_bytes = get<uint64_t>(block, kOffChunkBytes);
  fields.chunk_count = get<uint32_t>(block, kOffChunkCount);
  if (fields.chunk_bytes == 0 || fields.chunk_bytes % kBlock != 0 ||
      fields.chunk_count != (fields.byte_size + fields.chunk_bytes - 1) / fields.chunk_bytes ||
      fields.chunk_count > kMaxChunks) {
    return absl::DataLossError(absl::StrCat(path, ": inconsistent header (", fields.byte_size,
                                            " bytes in ", fields.chunk_count, " chunks of ",
                                            fields.chunk_bytes, ")"));
  }
  return fields;
}

}  // namespace

// Runs the chunks of one read or write on a few threads, so that several requests are in
// flight at the device at once, and checksums are computed in parallel too.
class SsdTier::IoPool {
 public:
  explicit IoPool(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { work(); });
  }
  ~IoPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }

  // Runs every task; the first failure (by task order) is the answer.
  absl::Status run_all(std::vector<std::function<absl::Status()>> tasks) {
    std::vector<absl::Status> results(tasks.size());
    std::mutex done_mutex;
    std::condition_variable done;
    size_t remaining = tasks.size();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < tasks.size(); ++i) {
        queue_.push_back([&, i, task = std::move(tasks[i])] {
          absl::Status status = task();
          std::lock_guard<std::mutex> done_lock(done_mutex);
          results[i] = std::move(status);
          if (--remaining == 0) done.notify_all();
        });
      }
    }
    wake_.notify_all();
    std::unique_lock<std::mutex> done_lock(done_mutex);
    done.wait(done_lock, [&] { return remaining == 0; });
    for (absl::Status& status : results) {
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

SsdTier::SsdTier(const SsdTierOptions& options)
    : options_(options), pool_(std::make_unique<IoPool>(options.io_threads)) {}

SsdTier::~SsdTier() = default;

uint64_t SsdTier::file_bytes(uint64_t byte_size) {
  return kBlock + Arena::round_up(byte_size, kBlock);
}

std::string SsdTier::path_of(const std::string& digest) const {
  return absl::StrCat(options_.directory, "/", digest, kSuffix);
}

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::open(const SsdTierOptions& options,
                                                       OpenReport* report) {
  if (options.directory.empty()) {
    return absl::InvalidArgumentError("store.ssd_dir is empty: the SSD tier needs a directory");
  }
  if (options.chunk_bytes == 0 || options.chunk_bytes % kBlock != 0) {
    return absl::InvalidArgumentError(absl::StrCat("store.io_chunk_bytes = ", options.chunk_bytes,
                                                   ": expected a positive multiple of 4096"));
  }
  std::unique_ptr<SsdTier> tier(new SsdTier(options));
  const std::string& dir = options.directory;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return errno_status(absl::StrCat("creating the SSD tier directory ", dir));
  }
  struct stat info {};
  if (::stat(dir.c_str(), &info) != 0) return errno_status(absl::StrCat("stat ", dir));
  if (!S_ISDIR(info.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store.ssd_dir = \"", dir, "\" is not a directory"));
  }
  if ((info.st_mode & 0077) != 0) {
    // Tier files hold model weights: nobody but the daemon's user may list or read them.
    VB_LOG_WARNING("SSD tier directory ", dir, " was open to others (mode ",
                   absl::StrFormat("%04o", info.st_mode & 07777), "); set to 0700");
    if (::chmod(dir.c_str(), 0700) != 0) return errno_status(absl::StrCat("chmod 0700 ", dir));
  }

  // Direct I/O where the file system takes it (ext4, xfs); tmpfs answers EINVAL.
  const std::string probe = absl::StrCat(dir, "/.direct-io-probe");
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EINVAL) {
    tier->direct_io_ = false;
    VB_LOG_WARNING("SSD tier directory ", dir,
                   " does not support O_DIRECT; tier files go through the page cache");
  } else if (fd < 0) {
    return errno_status(absl::StrCat("creating a file in the SSD tier directory ", dir));
  } else {
    ::close(fd);
  }
  ::unlink(probe.c_str());

  DIR* listing = ::opendir(dir.c_str());
  if (listing == nullptr) return errno_status(absl::StrCat("listing ", dir));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(listing)) names.emplace_back(entry->d_name);
  ::closedir(listing);
  AlignedBlock block;
  for (const std::string& name : names) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (absl::EndsWith(name, kTempSuffix)) {
      // A write the previous run did not finish.
      ::unlink(path.c_str());
      ++report->removed;
      continue;
    }
    if (!absl::EndsWith(name, kSuffix)) continue;  // not ours: leave it alone
    const std::string digest = name.substr(0, name.size() - (sizeof(kSuffix) - 1));
    absl::Status valid = check_digest_format(digest, "tier file name");
    absl::StatusOr<HeaderFields> fields = absl::DataLossError("unread");
    if (valid.ok()) {
      Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      struct stat file_info {};
      if (file.get() < 0 || ::fstat(file.get(), &file_info) != 0) {
        valid = errno_status(absl::StrCat("opening ", path));
      } else if (valid = pread_all(file.get(), block.data, kBlock, 0, path); valid.ok()) {
        fields = parse_header(block.data, path);
        valid = fields.status();
        if (valid.ok() && fields->digest != digest) {
          valid = absl::DataLossError(absl::StrCat(path, " holds ", fields->digest));
        } else if (valid.ok() &&
                   static_cast<uint64_t>(file_info.st_size) != file_bytes(fields->byte_size)) {
          valid = absl::DataLossError(absl::StrCat(
              path, " is ", file_info.st_size, " bytes, expected ", file_bytes(fields->byte_size)));
        }
      }
    }
    if (!valid.ok()) {
      VB_LOG_WARNING("removing a damaged SSD tier file: ", valid.message());
      ::unlink(path.c_str());
      ++report->removed;
      continue;
    }
    report->files.push_back({digest, fields->byte_size});
  }
  return tier;
}

absl::Status SsdTier::write(const std::string& digest, const void* data, uint64_t byte_size) {
  const std::string final_path = path_of(digest);
  const std::string temp_path = absl::StrCat(options_.directory, "/", digest, kTempSuffix);
  const int flags = O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0);
  Fd file(::open(temp_path.c_str(), flags, 0600));
  if (file.get() < 0) return errno_status(absl::StrCat("creating ", temp_path));
  const uint64_t chunk = chunk_bytes_for(byte_size, options_.chunk_bytes);
  const uint32_t chunks = static_cast<uint32_t>((byte_size + chunk - 1) / chunk);
  AlignedBlock header;
  std::memcpy(header.data, kMagic, sizeof(kMagic));
  put<uint32_t>(header.data, kOffVersion, kVersion);
  put<uint32_t>(header.data, kOffChunkCount, chunks);
  put<uint64_t>(header.data, kOffByteSize, byte_size);
  put<uint64_t>(header.data, kOffChunkBytes, chunk);
  std::memcpy(header.data + kOffDigest, digest.data(), std::min(digest.size(), kDigestChars));

  std::vector<std::function<absl::Status()>> tasks;
  for (uint32_t i = 0; i < chunks; ++i) {
    tasks.push_back([&, i]() -> absl::Status {
      const uint64_t offset = uint64_t{i} * chunk;
      const uint64_t length = std::min(chunk, byte_size - offset);
      const char* source = static_cast<const char*>(data) + offset;
      put<uint64_t>(header.data, kOffHashes + 8 * i, XXH3_64bits(source, length));
      return pwrite_all(file.get(), source, Arena::round_up(length, kBlock), kBlock + offset,
                        temp_path);
    });
  }
  absl::Status written = pool_->run_all(std::move(tasks));
  if (written.ok()) {
    put<uint64_t>(header.data, kOffHeaderHash, XXH3_64bits(header.data, kOffHeaderHash));
    written = pwrite_all(file.get(), header.data, kBlock, 0, temp_path);
  }
  if (written.ok() && ::rename(temp_path.c_str(), final_path.c_str()) != 0) {
    written = errno_status(absl::StrCat("renaming ", temp_path));
  }
  if (!written.ok()) ::unlink(temp_path.c_str());
  return written;
}

absl::Status SsdTier::read(const std::string& digest, void* data, uint64_t byte_size) {
  const std::string path = path_of(digest);
  Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct_io_ ? O_DIRECT : 0)));
  if (file.get() < 0) {
    return absl::DataLossError(
        absl::StrCat("SSD tier file ", path, " cannot be opened: ", std::strerror(errno)));
  }
  AlignedBlock header;
  VB_RETURN_IF_ERROR(pread_all(file.get(), header.data, kBlock, 0, path));
  VB_ASSIGN_OR_RETURN(HeaderFields fields, parse_header(header.data, path));
  if (fields.digest != digest || fields.byte_size != byte_size) {
    return absl::DataLossError(absl::StrCat(path, " holds ", fields.byte_size, " bytes of ",
                                            fields.digest, ", expected ", byte_size, " bytes of ",
                                            digest));
  }
  std::vector<std::function<absl::Status()>> tasks;
  for (uint32_t i = 0; i < fields.chunk_count; ++i) {
    tasks.push_back([&, i]() -> absl::Status {
      const uint64_t offset = uint64_t{i} * fields.chunk_bytes;
      const uint64_t length = std::min(fields.chunk_bytes, byte_size - offset);
      char* target = static_cast<char*>(data) + offset;
      VB_RETURN_IF_ERROR(
          pread_all(file.get(), target, Arena::round_up(length, kBlock), kBlock + offset, path));
      if (XXH3_64bits(target, length) != get<uint64_t>(header.data, kOffHashes + 8 * i)) {
        return absl::DataLossError(
            absl::StrCat(path, ": chunk ", i, " of ", fields.chunk_count, " fails its checksum"));
      }
      return absl::OkStatus();
    });
  }
  return pool_->run_all(std::move(tasks));
}

void SsdTier::remove(const std::string& digest) { ::unlink(path_of(digest).c_str()); }

}  // namespace vb::backends
