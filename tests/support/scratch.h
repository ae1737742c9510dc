// Test helper: scratch folders under the system temp dir, removed when done.
//   TempDir d;  d.file("x.gguf")        a fresh folder per test, removed at scope exit
//   program_scratch_dir("synth")         one folder per test program, removed when it ends
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <iterator>
#include <stdexcept>
#include <string>

namespace ds4::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& tag = "ds4_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (tag + "_XXXXXX")).string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  size_t entries() const {
    return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(path_), {}));
  }

 private:
  std::filesystem::path path_;
};

// <base>/<pid>, created now and removed with its contents at exit. CTest runs every test case as
// its own process, in parallel: a folder per process keeps their files apart.
class ProcessDir {
 public:
  explicit ProcessDir(const std::string& base) : path_(base + "/" + std::to_string(::getpid())) {
    std::filesystem::create_directories(path_);
  }
  ~ProcessDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ProcessDir(const ProcessDir&) = delete;
  ProcessDir& operator=(const ProcessDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One folder for the whole test program (named by `tag` and the pid), removed by a gtest
// environment when the program ends.
inline std::filesystem::path program_scratch_dir(const std::string& tag) {
  struct Remove : ::testing::Environment {
    std::filesystem::path dir;
    explicit Remove(std::filesystem::path d) : dir(std::move(d)) {}
    void TearDown() override {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static const std::filesystem::path dir = [&] {
    std::filesystem::path d =
        std::filesystem::temp_directory_path() / ("ds4_" + tag + "_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    ::testing::AddGlobalTestEnvironment(new Remove(d));
    return d;
  }();
  return dir;
}

}  // namespace ds4::testing
