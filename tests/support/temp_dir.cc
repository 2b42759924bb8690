#include "tests/support/temp_dir.h"

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace vb::testing {
namespace {

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  ::remove(path);
  return 0;
}

}  // namespace

TempDir::TempDir(const std::string& prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  for (const std::string& base :
       {std::string(tmpdir != nullptr ? tmpdir : ""), std::string("/tmp")}) {
    if (base.empty()) continue;
    std::string pattern = base + "/" + prefix + "-XXXXXX";
    if (const char* made = ::mkdtemp(pattern.data())) {
      path_ = made;
      return;
    }
  }
  throw std::runtime_error(std::string("cannot create a temporary directory: ") +
                           std::strerror(errno));
}

TempDir::~TempDir() { remove_tree(path_); }

bool file_exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

int64_t file_size(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 ? static_cast<int64_t>(info.st_size) : -1;
}

bool resize_file(const std::string& path, int64_t size) {
  return ::truncate(path.c_str(), static_cast<off_t>(size)) == 0;
}

void remove_tree(const std::string& path) {
  // Children before their directory, and links as links.
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

}  // namespace vb::testing
