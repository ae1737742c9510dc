#include "ds4/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ds4/error.h"

namespace ds4 {

MappedRegion map_file_readonly(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path + ": not a regular file");
  }
  MappedRegion r;
  r.size = static_cast<size_t>(st.st_size);
  if (r.size > 0) {
    void* p = mmap(nullptr, r.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(path + ": cannot mmap: " + std::strerror(err));
    }
    r.base = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return r;
}

void unmap_file(const MappedRegion& region) {
  if (region.base) munmap(const_cast<uint8_t*>(region.base), region.size);
}

}  // namespace ds4
