// Test helper: synthetic tiny models generated once per build folder (shared by test programs).
#pragma once
#include <filesystem>
#include <string>

#include "ds4/synth.h"

namespace ds4::testing {

inline std::string tiny_model_path(const std::string& mix, bool mtp = false) {
  const std::string dir = std::string(DS4_BINARY_DIR) + "/test-models";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/tiny-" + mix + (mtp ? "-mtp" : "") + ".gguf";
  if (!std::filesystem::exists(path)) {
    SynthOptions o;
    o.quant_mix = mix;
    o.mtp = mtp;
    write_synth_model(o, path);  // a private temporary renamed into place: concurrent first
                                     // uses by several test programs each write a whole file
  }
  return path;
}

inline std::vector<int32_t> pseudo_tokens(int n, int vocab, uint64_t seed = 42) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    t[i] = static_cast<int32_t>((seed >> 33) % vocab);
  }
  return t;
}

}  // namespace ds4::testing
