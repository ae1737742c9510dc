// Test helpers: the HF transformers oracle fixture (tests/fixtures/hf-tiny, see its README.md),
// shared by tests/oracle/hf_oracle_test.cpp (CPU reference), hf_oracle_cuda_test.cpp (CUDA) and
// llama_oracle_test.cpp (the same model through llama.cpp).
//   tokens.i32           (320) int32 token ids
//   logits_cpu_fp64.f64  (320, 512) f64: HF eager on CPU, one prefill
//   logits_step.f32      (320, 512) f32: HF's decode path, one token per forward
// and the strict batched-vs-decodes check the CUDA tests share (their tap recorder:
// recording_sink.h).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "ds4/convert.h"
#include "ds4/engine.h"
#include "recording_sink.h"

namespace ds4::testing {

inline const std::string kHfFixture = std::string(DS4_SOURCE_DIR) + "/tests/fixtures/hf-tiny";

template <typename T>
std::vector<T> read_binary(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  f.seekg(0, std::ios::end);
  const size_t n = static_cast<size_t>(f.tellg());
  f.seekg(0);
  std::vector<T> v(n / sizeof(T));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  return v;
}

// The fixture's upstream safetensors through ds4-convert to an F32 GGUF (every tensor F32, the
// routed experts included); returns its path. The writer renames a private temporary into place,
// so test programs converting concurrently each see a whole file.
inline std::string hf_tiny_f32_path() {
  const std::string out = std::string(DS4_BINARY_DIR) + "/test-models/hf-tiny-f32.gguf";
  std::filesystem::create_directories(std::filesystem::path(out).parent_path());
  ds4::ConvertOptions o;
  o.input = kHfFixture + "/model.safetensors";
  o.config = kHfFixture + "/config.json";
  o.quant_mix = "f32";
  o.output = out;
  ds4::convert_hf_to_gguf(o);
  return out;
}

inline std::shared_ptr<ds4::Model> hf_tiny_f32_model() { return ds4::Model::load(hf_tiny_f32_path()); }

// Logits of T positions (T, V) against a reference (T, V): max-abs (fp64) with its position, and
// the positions whose argmax (first maximum) differs.
struct HfComparison {
  double max_abs = 0;
  int64_t argmax_mismatch = 0;
  int64_t worst_pos = -1;
};

template <typename Ref>
HfComparison compare_logits(const std::vector<float>& ours, const std::vector<Ref>& ref, int64_t V) {
  HfComparison c;
  const int64_t T = static_cast<int64_t>(ref.size()) / V;
  for (int64_t t = 0; t < T; ++t) {
    int64_t a = 0, b = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double d = std::fabs(static_cast<double>(ours[t * V + v]) - static_cast<double>(ref[t * V + v]));
      if (d > c.max_abs) {
        c.max_abs = d;
        c.worst_pos = t;
      }
      if (ours[t * V + v] > ours[t * V + a]) a = v;
      if (ref[t * V + v] > ref[t * V + b]) b = v;
    }
    c.argmax_mismatch += (a != b);
  }
  return c;
}

inline void report_hf(const char* what, const HfComparison& c, int64_t T = 320) {
  std::printf("[oracle] %s: max-abs %.3g (position %lld), argmax mismatches %lld/%lld\n", what, c.max_abs,
              static_cast<long long>(c.worst_pos), static_cast<long long>(c.argmax_mismatch),
              static_cast<long long>(T));
}

inline bool bytes_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// Strict (all gates exact) batched forward == N GPU decodes, bit for bit: logits, every tap and
// the state, for each (prefix decodes, N) case over tokens[prefix, prefix + N). Shared by
// tests/unit/cuda_forward_test.cpp (ds4 and F32 mixes) and tests/oracle/hf_oracle_cuda_test.cpp.
struct StrictCase {
  int prefix, n;
};
inline void expect_strict_batched_equals_decodes(const std::shared_ptr<ds4::Model>& model, ds4::SessionOptions o,
                                                 const std::vector<int32_t>& tokens,
                                                 std::initializer_list<StrictCase> cases, const char* label) {
  o.backend = ds4::Backend::Cuda;
  o.gates = ds4::GateSet::all_exact();
  for (const StrictCase c : cases) {
    ds4::Session a(model, o), b(model, o);
    for (int i = 0; i < c.prefix; ++i) {
      a.decode(tokens[i]);
      b.decode(tokens[i]);
    }
    RecordingSink sa, sb;
    a.set_tap_sink(&sa);
    b.set_tap_sink(&sb);
    const std::span<const int32_t> t(tokens.data() + c.prefix, c.n);
    const auto la = a.forward(t);
    std::vector<float> lb;
    for (int32_t x : t) {
      const auto l = b.decode(x);
      lb.insert(lb.end(), l.begin(), l.end());
    }
    int tap_diff = 0;
    for (const auto& [k, v] : sb.taps) {
      auto it = sa.taps.find(k);
      if (it == sa.taps.end() || !bytes_equal(v, it->second)) {
        if (tap_diff++ < 5)
          ADD_FAILURE() << label << " N=" << c.n << " tap differs: " << std::get<0>(k) << " " << std::get<1>(k)
                        << " pos " << std::get<2>(k);
      }
    }
    const bool logits_eq = bytes_equal(la, lb);
    const bool state_eq = ds4::Session::states_equal(*a.snapshot(), *b.snapshot());
    bool indexed = false;
    for (const auto& [k, v] : sb.taps) indexed |= std::get<1>(k) == "attn_dispatch" && v[0] == 1.0f;
    std::printf("%s strict N=%d (prefix %d): logits %s, taps %zu (%d differ), state %s, indexed attention %s\n", label,
                c.n, c.prefix, logits_eq ? "EQUAL" : "DIFF", sb.taps.size(), tap_diff, state_eq ? "EQUAL" : "DIFF",
                indexed ? "active" : "inactive");
    EXPECT_EQ(sa.taps.size(), sb.taps.size());
    EXPECT_TRUE(logits_eq) << label << " N=" << c.n << " max_abs " << max_abs_diff(la, lb);
    EXPECT_TRUE(state_eq) << label << " N=" << c.n;
  }
}

}  // namespace ds4::testing
