// The dump seal: the first 512 bytes of every dump (an HDF5 user block, which HDF5 skips and
// h5py/h5dump ignore) hold a header with the file's length and a 64-bit checksum of everything
// after the header. DumpReader checks it before libhdf5 sees a byte: libhdf5 1.10 itself
// crashes, leaks or loops on some corrupt files (found by fuzzing, see tests/fuzz/README.md), so a
// truncated, bit-flipped or foreign file must be refused before it is parsed.
//
// Header layout (little-endian), dumps/SCHEMA.md:
//   0   16  magic "DS4PARITY-DUMP\0\0"
//   16  4   header version (1)
//   20  4   zero
//   24  8   file length in bytes, header included
//   32  8   checksum of bytes [512, length): dump_seal_checksum
//   40  472 zero
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ds4 {

inline constexpr size_t kDumpSealBytes = 512;  // the HDF5 user block size the writer reserves

// 64-bit checksum (multiply-rotate over 8-byte words, then the tail, then an avalanche). Detects
// corruption, not tampering: a file crafted to match is out of scope.
uint64_t dump_seal_checksum(const uint8_t* data, size_t n);

// Writes the header into the reserved user block of a finished (closed) HDF5 file. Throws
// ds4::Error "<path>: cannot seal dump: ...".
void seal_dump(const std::string& path);

// Throws ds4::Error naming the file and what is wrong (too short, no DS4 header, truncated or
// extended, checksum mismatch) unless the file's bytes (data, size; `path` only names it in
// messages) carry a valid seal.
void verify_dump_seal(const std::string& path, const uint8_t* data, size_t size);

}  // namespace ds4
