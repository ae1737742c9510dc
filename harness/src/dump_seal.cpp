#include "dump_seal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ds4/dump.h"
#include "ds4/error.h"
#include "ds4/mapped_file.h"

namespace ds4 {

namespace {

constexpr char kMagic[16] = {'D', 'S', '4', 'P', 'A', 'R', 'I', 'T', 'Y', '-', 'D', 'U', 'M', 'P', 0, 0};
constexpr uint32_t kHeaderVersion = 1;

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void store_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

}  // namespace

uint64_t dump_seal_checksum(const uint8_t* data, size_t n) {
  constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL, P3 = 0x165667B19E3779F9ULL;
  uint64_t h = P3 ^ (static_cast<uint64_t>(n) * P1);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) h = rotl(h ^ (load_le64(data + i) * P2), 31) * P1;
  uint64_t tail = 0;
  for (size_t k = n; k > i; --k) tail = (tail << 8) | data[k - 1];
  h = rotl(h ^ (tail * P2), 27) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

void seal_dump(const std::string& path) {
  uint8_t header[kDumpSealBytes] = {};
  {
    const MappedFile m(path);
    if (m.size() < kDumpSealBytes) fail(path + ": cannot seal dump: file shorter than its header");
    static const uint8_t kHdf5[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (std::memcmp(m.data(), kHdf5, sizeof kHdf5) == 0)
      fail(path + ": cannot seal dump: the HDF5 superblock is at byte 0 (create the file with a " +
           std::to_string(kDumpSealBytes) + "-byte user block)");
    std::memcpy(header, kMagic, sizeof kMagic);
    header[16] = kHeaderVersion;
    store_le64(header + 24, m.size());
    store_le64(header + 32, dump_seal_checksum(m.data() + kDumpSealBytes, m.size() - kDumpSealBytes));
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail(path + ": cannot seal dump: " + std::strerror(errno));
  const bool written = ::pwrite(fd, header, sizeof header, 0) == static_cast<ssize_t>(sizeof header);
  const int err = written ? 0 : (errno ? errno : EIO);
  if (::close(fd) != 0 && written) fail(path + ": cannot seal dump: " + std::strerror(errno));
  if (!written) fail(path + ": cannot seal dump: " + std::strerror(err));
}

void verify_dump_seal(const std::string& path, const uint8_t* data, size_t size) {
  const std::string bad = path + ": not a readable HDF5 dump (";
  static const uint8_t kHdf5[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  if (size < sizeof kMagic || std::memcmp(data, kMagic, sizeof kMagic) != 0) {
    if (size >= sizeof kHdf5 && std::memcmp(data, kHdf5, sizeof kHdf5) == 0)
      fail(bad + "an HDF5 file without the DS4 dump header: written by another program, or a "
                 "dump from before the header; regenerate it with `ds4-parity run ...`)");
    fail(bad + "no DS4 dump header: not a file written by ds4-parity)");
  }
  if (size < kDumpSealBytes)
    fail(bad + "truncated: " + std::to_string(size) + " bytes, shorter than the DS4 header)");
  const uint32_t version = data[16] | data[17] << 8 | data[18] << 16 | uint32_t(data[19]) << 24;
  if (version != kHeaderVersion)
    fail(bad + "DS4 header version " + std::to_string(version) + ", this build reads " +
         std::to_string(kHeaderVersion) + ")");
  const uint64_t length = load_le64(data + 24);
  if (length != size)
    fail(bad + (size < length ? "truncated" : "extended") + ": the header says " +
         std::to_string(length) + " bytes, the file has " + std::to_string(size) + ")");
  const uint64_t want = load_le64(data + 32);
  if (dump_seal_checksum(data + kDumpSealBytes, size - kDumpSealBytes) != want)
    fail(bad + "checksum mismatch: the file was changed after it was written)");
}

void reseal_dump(const std::string& path) { seal_dump(path); }

}  // namespace ds4
