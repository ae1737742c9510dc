// Test helpers: the message of the ds4::Error a call throws, and a whole text file.
#pragma once
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "ds4/error.h"

namespace ds4::testing {

// The message of the ds4::Error thrown by fn ("" when it throws nothing).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace ds4::testing
