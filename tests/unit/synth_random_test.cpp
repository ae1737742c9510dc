// `ds4-synth --values random`: the published layout with values, written by filling each quant
// block's fields directly (no quantiser) straight into the output. Checked on a reduced variant of
// the published preset (every per-layer dimension of Flash, the published types, ratios 0, 0, 4,
// 128; few experts, a small vocabulary):
//   * every tensor's blocks dequantise to finite values of the tensor's scale (rows sampled at the
//     start, middle and end of each tensor), the hash table holds distinct experts per token;
//   * the bytes do not depend on the thread count (nor on the 32 MiB pieces write() fills);
//   * a 2-token forward, with the default (fast) gates and with every gate exact, gives finite,
//     non-constant logits of a sane size, and the sidecar with values pairs and drafts;
//   * the quantised values of the other presets are unchanged (same name, same bytes as before).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/quant.h"
#include "ds4/synth.h"
#include "../support/errors.h"
#include "../support/scratch.h"

namespace {

namespace fs = std::filesystem;
using ds4::QType;
using ds4::testing::error_of;

fs::path scratch() { return ds4::testing::program_scratch_dir("synth_random"); }

// The published preset cut down: 4 layers (ratios 0, 0, 4, 128: dense, compressed and indexed
// attention), 8 experts of width 256, vocabulary 1024. About 0.5 GiB.
ds4::SynthOptions small_published(unsigned threads) {
  ds4::SynthOptions o;
  o.preset = "published";
  o.values = "random";
  o.n_layer = 4;
  o.n_expert = 8;
  o.n_ff_exp = 256;
  o.n_vocab = 1024;
  o.n_threads = threads;
  return o;
}

const std::string& small_model() {
  static const std::string path = [] {
    const std::string p = (scratch() / "published-small.gguf").string();
    ds4::write_synth_model(small_published(2), p);
    return p;
  }();
  return path;
}

bool same_bytes(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  while (fa && fb) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    if (fa.gcount() != fb.gcount() || std::memcmp(ba.data(), bb.data(), static_cast<size_t>(fa.gcount())) != 0)
      return false;
  }
  return !fa && !fb;
}

TEST(SynthRandom, EveryTensorsBlocksAreValid) {
  const auto f = ds4::GgufFile::open(small_model());
  const ds4::HParams hp = ds4::HParams::from_gguf(*f);
  EXPECT_EQ(hp.n_layer, 4u);
  std::set<QType> seen;
  for (const ds4::GgufTensor& t : f->tensors()) {
    SCOPED_TRACE(t.name + " " + ds4::qtype_name(t.type));
    seen.insert(t.type);
    const int64_t ne0 = t.ne[0];
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    const size_t row_bytes = ds4::qtype_row_bytes(t.type, ne0);
    ASSERT_EQ(row_bytes * static_cast<size_t>(rows), t.nbytes);
    std::vector<float> x(static_cast<size_t>(ne0));
    double ss = 0;
    int64_t n = 0;
    for (int64_t r : {int64_t{0}, rows / 2, rows - 1}) {
      const auto* row = static_cast<const uint8_t*>(t.data) + row_bytes * static_cast<size_t>(r);
      if (t.type == QType::I32) {  // the hash table: n_used distinct experts per token
        std::vector<int32_t> ids(static_cast<size_t>(ne0));
        std::memcpy(ids.data(), row, row_bytes);
        std::set<int32_t> distinct(ids.begin(), ids.end());
        EXPECT_EQ(distinct.size(), ids.size());
        for (int32_t e : ids) EXPECT_TRUE(e >= 0 && e < static_cast<int32_t>(hp.n_expert)) << e;
        continue;
      }
      ds4::dequantize_row(t.type, row, x.data(), ne0);
      for (float v : x) {
        ASSERT_TRUE(std::isfinite(v)) << "row " << r;
        ASSERT_LT(std::fabs(v), 8.0f) << "row " << r;
        ss += static_cast<double>(v) * v;
        ++n;
      }
    }
    if (t.type == QType::I32) continue;
    // Every tensor has values (no hole, no zero scale), at most those of a unit-scale tensor
    // (embedding, sinks, norms near 1), at least those of the widest projection (1/sqrt(8192)).
    const double rms = std::sqrt(ss / static_cast<double>(n));
    EXPECT_GT(rms, 0.005);
    EXPECT_LT(rms, 1.5);
  }
  // The published types, all of them.
  for (QType q : {QType::F32, QType::F16, QType::Q8_0, QType::Q2_K, QType::IQ2_XXS, QType::I32})
    EXPECT_TRUE(seen.count(q)) << ds4::qtype_name(q);
}

// Each quant type's random blocks give the tensor the RMS its distribution asks for.
TEST(SynthRandom, BlockScalesMatchTheDistribution) {
  const auto f = ds4::GgufFile::open(small_model());
  auto rms_of = [&](const std::string& name) {
    const ds4::GgufTensor* t = f->find_tensor(name);
    EXPECT_NE(t, nullptr) << name;
    if (!t) return 0.0;
    const int64_t ne0 = t->ne[0];
    std::vector<float> x(static_cast<size_t>(ne0));
    double ss = 0;
    const size_t row_bytes = ds4::qtype_row_bytes(t->type, ne0);
    for (int r = 0; r < 64; ++r) {
      ds4::dequantize_row(t->type, static_cast<const uint8_t*>(t->data) + row_bytes * r, x.data(), ne0);
      for (float v : x) ss += static_cast<double>(v) * v;
    }
    return std::sqrt(ss / (64.0 * static_cast<double>(ne0)));
  };
  // dist_for: projections 1/sqrt(in), expert and shared gate/up 5/sqrt(in), embedding 1.
  EXPECT_NEAR(rms_of("blk.0.attn_q_a.weight") * std::sqrt(4096.0), 1.0, 0.1);             // Q8_0
  EXPECT_NEAR(rms_of("blk.0.ffn_gate_exps.weight") * std::sqrt(4096.0) / 5, 1.0, 0.15);   // IQ2_XXS
  EXPECT_NEAR(rms_of("blk.0.ffn_down_exps.weight") * std::sqrt(256.0), 1.0, 0.15);        // Q2_K
  EXPECT_NEAR(rms_of("token_embd.weight"), 1.0, 0.05);                                    // F16
  // Q4_K: the sidecar's experts.
  const std::string side = (scratch() / "published-small-mtp.gguf").string();
  ds4::SynthOptions o = small_published(2);
  o.preset = "published-mtp";
  ds4::write_synth_model(o, side);
  const auto fs_ = ds4::GgufFile::open(side);
  const ds4::GgufTensor* t = fs_->find_tensor("mtp.0.ffn_down_exps.weight");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->type, QType::Q4_K);
  std::vector<float> x(static_cast<size_t>(t->ne[0]));
  double ss = 0;
  for (int r = 0; r < 64; ++r) {
    ds4::dequantize_row(t->type, static_cast<const uint8_t*>(t->data) + ds4::qtype_row_bytes(t->type, t->ne[0]) * r,
                        x.data(), t->ne[0]);
    for (float v : x) ss += static_cast<double>(v) * v;
  }
  EXPECT_NEAR(std::sqrt(ss / (64.0 * static_cast<double>(x.size()))) * std::sqrt(256.0), 1.0, 0.15);
}

TEST(SynthRandom, SameBytesWithAnyThreadCount) {
  // q_b and the output projections are larger than write()'s 32 MiB pieces, so piece boundaries
  // fall inside tensors as well.
  const std::string one = (scratch() / "threads1.gguf").string();
  ds4::write_synth_model(small_published(1), one);
  EXPECT_TRUE(same_bytes(one, small_model())) << "1 thread vs 2";
  fs::remove(one);
  const std::string three = (scratch() / "threads3.gguf").string();
  ds4::write_synth_model(small_published(3), three);
  EXPECT_TRUE(same_bytes(three, small_model())) << "3 threads vs 2";
  fs::remove(three);
  // Another seed, other bytes.
  ds4::SynthOptions o = small_published(2);
  o.seed = 99;
  const std::string other = (scratch() / "seed99.gguf").string();
  ds4::write_synth_model(o, other);
  EXPECT_FALSE(same_bytes(other, small_model()));
  fs::remove(other);
}

void expect_sane_logits(const std::vector<float>& logits, size_t n_vocab, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(logits.size() % n_vocab, 0u);
  for (size_t row = 0; row < logits.size() / n_vocab; ++row) {
    double sum = 0, ss = 0, amax = 0;
    for (size_t i = 0; i < n_vocab; ++i) {
      const float v = logits[row * n_vocab + i];
      ASSERT_TRUE(std::isfinite(v)) << "row " << row << " logit " << i;
      sum += v;
      ss += static_cast<double>(v) * v;
      amax = std::max(amax, static_cast<double>(std::fabs(v)));
    }
    const double mean = sum / n_vocab, sd = std::sqrt(std::max(0.0, ss / n_vocab - mean * mean));
    EXPECT_GT(sd, 0.05) << "row " << row << ": logits nearly constant";
    EXPECT_LT(amax, 1e3) << "row " << row;
  }
}

TEST(SynthRandom, ForwardIsFiniteAndNotConstant) {
  const auto model = ds4::Model::load(small_model());
  const size_t V = model->hparams().n_vocab;
  const int32_t toks[2] = {1, 2};
  for (bool exact : {false, true}) {
    ds4::SessionOptions so;
    so.n_threads = 2;
    so.max_ctx = 64;
    if (exact) so.gates = ds4::GateSet::all_exact();
    ds4::Session s(model, so);
    const std::vector<float> logits = s.forward(toks);
    expect_sane_logits(logits, V, exact ? "strict (all exact)" : "default gates");
    // The two positions see different inputs: different logits.
    EXPECT_NE(std::memcmp(logits.data(), logits.data() + V, V * sizeof(float)), 0);
  }
}

TEST(SynthRandom, SidecarWithValuesPairsAndDrafts) {
  const std::string side = (scratch() / "published-small-mtp-pair.gguf").string();
  ds4::SynthOptions o = small_published(2);
  o.preset = "published-mtp";
  ds4::write_synth_model(o, side);
  const auto model = ds4::Model::load(small_model(), side);
  ASSERT_TRUE(model->has_mtp());
  ds4::SessionOptions so;
  so.n_threads = 2;
  so.max_ctx = 64;
  ds4::Session s(model, so);
  const int32_t toks[2] = {1, 2};
  s.forward(toks);
  expect_sane_logits(s.mtp_draft(3), model->hparams().n_vocab, "MTP draft");
}

TEST(SynthRandom, ValuesOption) {
  ds4::SynthOptions o;
  EXPECT_EQ(ds4::synth_values(o), "quantised");
  o.preset = "published";
  EXPECT_EQ(ds4::synth_values(o), "zero");
  o.values = "random";
  EXPECT_EQ(ds4::synth_values(o), "random");
  EXPECT_EQ(ds4::synth_model_name(o), "ds4-synth-published-ds4-random-seed1234");
  o.values = "zero";
  EXPECT_EQ(ds4::synth_model_name(o), "ds4-synth-published-ds4-seed1234");  // the preset's own
  o.values = "noise";
  const std::string err = error_of([&] { ds4::synth_values(o); });
  EXPECT_NE(err.find("'noise'"), std::string::npos) << err;
  EXPECT_NE(err.find("quantised, random, zero"), std::string::npos) << err;
  // tiny's own values keep the tiny model's name (and so its cache path).
  ds4::SynthOptions t;
  t.values = "quantised";
  EXPECT_EQ(ds4::synth_model_name(t), "ds4-synth-tiny-ds4-seed1234");
}

// Random values apply to any preset: tiny with random values loads and runs.
TEST(SynthRandom, TinyWithRandomValuesRuns) {
  ds4::SynthOptions o;
  o.values = "random";
  o.mtp = true;
  const std::string p = (scratch() / "tiny-random.gguf").string();
  ds4::write_synth_model(o, p);
  const auto model = ds4::Model::load(p);
  ds4::SessionOptions so;
  so.n_threads = 2;
  ds4::Session s(model, so);
  const int32_t toks[4] = {5, 6, 7, 8};
  expect_sane_logits(s.forward(toks), model->hparams().n_vocab, "tiny");
  expect_sane_logits(s.mtp_draft(9), model->hparams().n_vocab, "tiny MTP");
}

}  // namespace
