// Test helper: a TapSink that keeps every tap's floats and variant by (layer, name, position),
// and fails the test when a tap is written twice (a batched forward or a run of decodes writes
// each once). Used by the forward, gate and CUDA forward tests and the HF oracle on CUDA.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "ds4/engine.h"

namespace ds4::testing {

class RecordingSink : public ds4::TapSink {
 public:
  using Key = std::tuple<int, std::string, int64_t>;
  std::map<Key, std::vector<float>> taps;
  std::map<Key, std::string> variants;
  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n, const char* variant) override {
    const Key k{layer, name, pos};
    auto& v = taps[k];
    EXPECT_TRUE(v.empty()) << "tap written twice: " << layer << " " << name << " " << pos;
    v.assign(data, data + n);
    variants[k] = variant ? variant : "";
  }
  bool used_variant(const std::string& v) const {
    for (const auto& [k, s] : variants)
      if (s == v) return true;
    return false;
  }
};

}  // namespace ds4::testing
