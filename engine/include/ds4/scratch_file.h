// ScratchFile: an append-only file for bulk data that a writer must hold until it can write its
// output in order (a dump's rows until finish(), a GGUF's tensors until the header is known), so
// that the data need not sit in memory. It lives in a given folder (the output's, so the same
// file system and free space the output needs anyway) but has no name: O_TMPFILE, or a private
// name unlinked at once where the file system lacks it. A killed process leaves nothing behind
// and closing gives the blocks back.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ds4 {

class ScratchFile {
 public:
  ScratchFile() = default;
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ~ScratchFile();

  // Creates the file in `folder` ("" = "."). On failure returns false and the errno text in *why.
  bool open(const std::string& folder, std::string* why);
  bool is_open() const { return fd_ >= 0; }
  // Appends n bytes; *at receives their offset. False and the reason (e.g. "No space left on
  // device") on a failed write; the file then keeps what it had.
  bool append(const void* data, size_t n, uint64_t* at, std::string* why);
  // Reads n bytes at offset `at` back.
  bool read(uint64_t at, void* data, size_t n, std::string* why) const;
  uint64_t size() const { return end_; }

 private:
  int fd_ = -1;
  uint64_t end_ = 0;
};

}  // namespace ds4
