// ScratchFile (ds4/scratch_file.h).
#include "ds4/scratch_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace ds4 {

ScratchFile::~ScratchFile() {
  if (fd_ >= 0) ::close(fd_);
}

bool ScratchFile::open(const std::string& folder_in, std::string* why) {
  const std::string folder = folder_in.empty() ? "." : folder_in;
  fd_ = ::open(folder.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd_ < 0 && errno != ENOSPC && errno != EACCES && errno != ENOENT) {
    // No O_TMPFILE on this file system: a private name, unlinked before any data is written.
    static std::atomic<unsigned> counter{0};
    const std::string name = folder + "/.ds4-scratch." + std::to_string(::getpid()) + "." +
                             std::to_string(counter++);
    fd_ = ::open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd_ >= 0) ::unlink(name.c_str());
  }
  if (fd_ < 0) {
    *why = std::strerror(errno);
    return false;
  }
  end_ = 0;
  return true;
}

bool ScratchFile::append(const void* data, size_t n, uint64_t* at, std::string* why) {
  *at = end_;
  const char* b = static_cast<const char*>(data);
  uint64_t off = end_;
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, b, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      *why = w < 0 ? std::strerror(errno) : "short write";
      return false;
    }
    b += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  end_ = off;
  return true;
}

bool ScratchFile::read(uint64_t at, void* data, size_t n, std::string* why) const {
  char* b = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd_, b, n, static_cast<off_t>(at));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      *why = r < 0 ? std::strerror(errno) : "unexpected end of the scratch file";
      return false;
    }
    b += r;
    n -= static_cast<size_t>(r);
    at += static_cast<uint64_t>(r);
  }
  return true;
}

}  // namespace ds4
