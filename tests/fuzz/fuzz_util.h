// Shared helpers for the libFuzzer targets in tests/fuzz (see tests/fuzz/README.md).
//
// The contract every target checks, for any input bytes:
//   * the reader either succeeds or throws ds4::Error (what the tools turn into "exit 2");
//     any other exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash;
//   * the error message is one line (no '\n' or '\r'): tools print it as is;
//   * ASan/UBSan see no memory error, leak or undefined behaviour, and no input makes the
//     reader allocate more than libFuzzer's -malloc_limit_mb.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ds4/error.h"

namespace ds4::fuzz {

// Aborts (a libFuzzer crash with this input) when `ok` is false.
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// An error message must be a single line: the tools print "<tool>: <message>" and exit 2.
inline void check_one_line(const ds4::Error& e) {
  const std::string_view m = e.what();
  if (m.empty() || m.find('\n') != std::string_view::npos ||
      m.find('\r') != std::string_view::npos) {
    std::fprintf(stderr, "fuzz invariant violated: error message is not one line: [%s]\n",
                 e.what());
    std::abort();
  }
}

// Runs f; a ds4::Error is an accepted outcome as long as its message is one line.
template <class F>
void guarded(F&& f) {
  try {
    f();
  } catch (const ds4::Error& e) {
    check_one_line(e);
  }
}

// A per-process scratch file for readers that take a path. It lives in /dev/shm when present
// (tmpfs: no disk traffic), else $TMPDIR or /tmp, and is removed at exit.
class ScratchFile {
 public:
  explicit ScratchFile(const char* suffix) {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    path_ = std::string(dir) + "/ds4-fuzz-" + std::to_string(::getpid()) + suffix;
  }
  ~ScratchFile() { ::unlink(path_.c_str()); }
  // Replaces the file's contents with the input bytes; returns the path.
  const std::string& write(const uint8_t* data, size_t size) {
    ::unlink(path_.c_str());  // a fresh inode each time (HDF5 identifies open files by inode)
    FILE* f = std::fopen(path_.c_str(), "wb");
    check(f != nullptr, "cannot create the scratch file");
    check(size == 0 || std::fwrite(data, 1, size, f) == size, "cannot write the scratch file");
    check(std::fclose(f) == 0, "cannot close the scratch file");
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Keeps a value alive so the reads that produced it are not optimised away.
template <class T>
inline void escape(const T& v) {
  asm volatile("" : : "r"(&v) : "memory");
}

// Splits the input into fields at '\n' (the string parsers take several fields). A NUL byte is
// kept: std::string handles it, and a C string from argv/environ would end there anyway.
inline std::vector<std::string> split_lines(const uint8_t* data, size_t size, size_t max_fields) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n' && out.size() < max_fields) out.emplace_back();
    else out.back() += static_cast<char>(data[i]);
  }
  return out;
}

}  // namespace ds4::fuzz
