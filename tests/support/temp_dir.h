// A fresh directory for one test or benchmark, removed with everything in it at the end, and
// the few file operations the tier store's tests need. POSIX calls only: std::filesystem
// crashed on the GPU machine's CUDA build (Ubuntu 24.04, g++ 13; the cause was not found).
#pragma once

#include <cstdint>
#include <string>

namespace vb::testing {

class TempDir {
 public:
  // Under $TMPDIR, else /tmp; std::runtime_error when neither takes a new directory.
  explicit TempDir(const std::string& prefix = "vb-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool file_exists(const std::string& path);
// -1 when there is no such file.
int64_t file_size(const std::string& path);
// Cuts (or extends with zeros) the file to `size` bytes; false when it cannot.
bool resize_file(const std::string& path, int64_t size);
// Removes `path` and, for a directory, everything below it.
void remove_tree(const std::string& path);

}  // namespace vb::testing
