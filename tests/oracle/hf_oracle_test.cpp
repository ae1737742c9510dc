// The HF transformers oracle (tests/fixtures/hf-tiny, made by shared/oracles/hf_tiny_dsv4.py,
// seed 1234): its upstream safetensors go through ds4-convert to an F32 GGUF, the CPU reference
// runs it in the plain profile (HF simulates no FP8/FP4 rounding), and the logits of all 320
// positions must be within 1e-4 of HF's fp64 logits with the same argmax, both by one batched
// forward and by 320 decodes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ds4/convert.h"
#include "ds4/engine.h"

namespace {

const std::string kFixture = std::string(DS4_SOURCE_DIR) + "/tests/fixtures/hf-tiny";

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

std::shared_ptr<ds4::Model> converted_model() {
  const std::string out = std::string(DS4_BINARY_DIR) + "/test-models/hf-tiny-f32.gguf";
  std::filesystem::create_directories(std::filesystem::path(out).parent_path());
  ds4::ConvertOptions o;
  o.input = kFixture + "/model.safetensors";
  o.config = kFixture + "/config.json";
  o.quant_mix = "f32";
  o.output = out;
  ds4::convert_hf_to_gguf(o);
  return ds4::Model::load(out);
}

struct Comparison {
  double max_abs = 0;
  int64_t argmax_mismatch = 0;
  int64_t worst_pos = -1;
};

Comparison compare(const std::vector<float>& ours, const std::vector<double>& ref, int64_t V) {
  Comparison c;
  const int64_t T = static_cast<int64_t>(ref.size()) / V;
  for (int64_t t = 0; t < T; ++t) {
    int64_t a = 0, b = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double d = std::fabs(static_cast<double>(ours[t * V + v]) - ref[t * V + v]);
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

TEST(HfOracle, PlainProfileMatchesFp64Logits) {
  auto model = converted_model();
  const auto tokens = read_binary<int32_t>(kFixture + "/tokens.i32");
  const auto ref = read_binary<double>(kFixture + "/logits_cpu_fp64.f64");
  const int64_t V = model->hparams().n_vocab;
  ASSERT_EQ(tokens.size(), 320u);
  ASSERT_EQ(ref.size(), tokens.size() * static_cast<size_t>(V));

  ds4::SessionOptions so;
  so.profile = ds4::Profile::Plain;
  ds4::Session batched(model, so);
  const auto logits = batched.forward(tokens);
  const Comparison cb = compare(logits, ref, V);
  std::printf("[oracle] batched forward vs HF fp64: max-abs %.3g (position %lld), argmax mismatches %lld/320\n",
              cb.max_abs, static_cast<long long>(cb.worst_pos), static_cast<long long>(cb.argmax_mismatch));
  EXPECT_LE(cb.max_abs, 1e-4);
  EXPECT_EQ(cb.argmax_mismatch, 0);

  ds4::Session step(model, so);
  std::vector<float> decoded;
  for (int32_t t : tokens) {
    const auto l = step.decode(t);
    decoded.insert(decoded.end(), l.begin(), l.end());
  }
  const Comparison cd = compare(decoded, ref, V);
  std::printf("[oracle] 320 decodes vs HF fp64: max-abs %.3g, argmax mismatches %lld/320\n", cd.max_abs,
              static_cast<long long>(cd.argmax_mismatch));
  EXPECT_LE(cd.max_abs, 1e-4);
  EXPECT_EQ(cd.argmax_mismatch, 0);
  EXPECT_EQ(std::memcmp(decoded.data(), logits.data(), logits.size() * sizeof(float)), 0)
      << "the reference's batched forward must be bit-equal to its decodes";
}

}  // namespace
