// The bottom tier: one file per tensor in a directory of its own (the systemd unit's state
// directory when installed), read and written with direct I/O (O_DIRECT) straight from and
// into the host tier's aligned slots, several chunks in flight on a pool of I/O threads.
//
// File layout: a 4 KiB header (magic, version, byte size, chunk size, the tensor's digest,
// an XXH3-64 checksum of every chunk of the data, and a checksum of the header itself),
// then the data padded to 4 KiB. A file is written under a temporary name and renamed into
// place, so a crash of the daemon leaves either a whole file or a temporary one that the next
// start removes. Every read verifies the header and every chunk: a corrupt or missing file is
// reported as DATA_LOSS and never returned as a tensor.
//
// Nothing is fsync'ed, on purpose: a tier file is a cache of a tensor its owner can upload
// again, and a flush of the disk's write cache on every spill would put milliseconds on the
// eviction path. So a power loss may leave a renamed file whose data never reached the disk;
// its checksums then fail, the tier store forgets the tensor and asks for it again (NOT_FOUND,
// "upload it again"), and nothing wrong is ever served.
//
// The directory is created 0700 and files 0600. Where the file system refuses O_DIRECT
// (tmpfs), I/O falls back to the page cache and direct_io() says so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vb::backends {

struct SsdTierOptions {
  std::string directory;
  int io_threads = 4;                        // chunks in flight per read or write
  uint64_t chunk_bytes = uint64_t{8} << 20;  // one pread/pwrite; a multiple of 4 KiB
};

class SsdTier {
 public:
  struct Recovered {
    std::string digest;
    uint64_t byte_size = 0;
  };
  struct OpenReport {
    std::vector<Recovered> files;  // whole files found, by header (data checked on read)
    uint64_t removed = 0;          // temporary and damaged tier files deleted (others are left)
  };

  // Creates the directory (0700) if needed, then removes leftovers of a crashed run and
  // lists the whole tier files it finds.
  static absl::StatusOr<std::unique_ptr<SsdTier>> open(const SsdTierOptions& options,
                                                       OpenReport* report);
  ~SsdTier();

  // Bytes a tensor of `byte_size` takes on disk (header plus padded data).
  static uint64_t file_bytes(uint64_t byte_size);

  // `data` must be 4 KiB aligned with file_bytes(byte_size) - 4096 bytes readable.
  absl::Status write(const std::string& digest, const void* data, uint64_t byte_size);
  // `data` must be 4 KiB aligned with room for file_bytes(byte_size) - 4096 bytes. DATA_LOSS
  // when the file is missing, truncated, or fails a checksum.
  absl::Status read(const std::string& digest, void* data, uint64_t byte_size);
  void remove(const std::string& digest);

  std::string path_of(const std::string& digest) const;
  const std::string& directory() const { return options_.directory; }
  bool direct_io() const { return direct_io_; }

 private:
  class IoPool;
  explicit SsdTier(const SsdTierOptions& options);

  const SsdTierOptions options_;
  bool direct_io_ = true;
  std::unique_ptr<IoPool> pool_;
};

}  // namespace vb::backends
