// Read-only memory mapping of a whole file, shared by the GGUF and safetensors readers.
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

}  // namespace ds4
