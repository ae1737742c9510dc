// Read-only memory mapping of a whole file: the GGUF, safetensors and dump readers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ds4 {

struct MappedRegion {
  const uint8_t* base = nullptr;  // nullptr for an empty file
  size_t size = 0;
};

// Maps `path` read-only (MAP_PRIVATE); the descriptor is closed before returning (the mapping
// stays valid). Throws ds4::Error "<path>: cannot open: ...", "<path>: not a regular file",
// "<path>: cannot stat|mmap: ...". Release with unmap_file.
MappedRegion map_file_readonly(const std::string& path);
void unmap_file(const MappedRegion& region);

// Owns a mapping: unmapped when it goes out of scope.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : region_(map_file_readonly(path)) {}
  ~MappedFile() { unmap_file(region_); }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return region_.base; }
  size_t size() const { return region_.size; }

 private:
  MappedRegion region_;
};

}  // namespace ds4
