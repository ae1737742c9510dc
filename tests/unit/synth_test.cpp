// Tests for the synthetic model generator (ds4/synth.h): preset hyperparameters, a tiny model
// written and reloaded through GgufFile + HParams::from_gguf with every expected tensor at its
// shape and type (ds4 and f32 mixes), weight statistics, byte-for-byte determinism, and the
// mix/shape mismatch error.
#include "ds4/synth.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/quant.h"
#include "../support/scratch.h"
#include "../support/errors.h"

namespace {

using ds4::testing::error_of;

namespace fs = std::filesystem;
using ds4::HParams;
using ds4::QType;
using ds4::SynthOptions;

fs::path temp_dir() { return ds4::testing::program_scratch_dir("synth"); }

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void expect_same_hparams(const HParams& a, const HParams& b) {
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_vocab, b.n_vocab);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.n_rot, b.n_rot);
  EXPECT_EQ(a.q_lora, b.q_lora);
  EXPECT_EQ(a.o_lora, b.o_lora);
  EXPECT_EQ(a.o_groups, b.o_groups);
  EXPECT_EQ(a.window, b.window);
  EXPECT_EQ(a.eps, b.eps);
  EXPECT_EQ(a.ratios, b.ratios);
  EXPECT_EQ(a.compress_rope_base, b.compress_rope_base);
  EXPECT_EQ(a.n_idx_head, b.n_idx_head);
  EXPECT_EQ(a.idx_head_dim, b.idx_head_dim);
  EXPECT_EQ(a.idx_top_k, b.idx_top_k);
  EXPECT_EQ(a.n_expert, b.n_expert);
  EXPECT_EQ(a.n_expert_used, b.n_expert_used);
  EXPECT_EQ(a.n_expert_shared, b.n_expert_shared);
  EXPECT_EQ(a.n_ff_exp, b.n_ff_exp);
  EXPECT_EQ(a.expert_scale, b.expert_scale);
  EXPECT_EQ(a.expert_norm, b.expert_norm);
  EXPECT_EQ(a.gating_func, b.gating_func);
  EXPECT_EQ(a.n_hash_layer, b.n_hash_layer);
  EXPECT_EQ(a.clamp_exp, b.clamp_exp);
  EXPECT_EQ(a.clamp_shexp, b.clamp_shexp);
  EXPECT_EQ(a.n_hc, b.n_hc);
  EXPECT_EQ(a.sinkhorn_iters, b.sinkhorn_iters);
  EXPECT_EQ(a.hc_eps, b.hc_eps);
  EXPECT_EQ(a.rope_base, b.rope_base);
  EXPECT_EQ(a.yarn_factor, b.yarn_factor);
  EXPECT_EQ(a.yarn_orig_ctx, b.yarn_orig_ctx);
  EXPECT_EQ(a.yarn_beta_fast, b.yarn_beta_fast);
  EXPECT_EQ(a.yarn_beta_slow, b.yarn_beta_slow);
  EXPECT_EQ(a.n_ctx_train, b.n_ctx_train);
  EXPECT_EQ(a.n_mtp, b.n_mtp);
}

TEST(Synth, Presets) {
  EXPECT_EQ(ds4::synth_presets(), (std::vector<std::string>{"tiny", "flash-shape", "published", "published-mtp"}));

  const HParams t = ds4::synth_hparams(SynthOptions{});
  EXPECT_EQ(t.n_layer, 4u);
  EXPECT_EQ(t.n_vocab, 512u);
  EXPECT_EQ(t.n_embd, 256u);
  EXPECT_EQ(t.n_head, 8u);
  EXPECT_EQ(t.head_dim, 128u);
  EXPECT_EQ(t.n_rot, 64u);
  EXPECT_EQ(t.q_lora, 128u);
  EXPECT_EQ(t.o_groups, 4u);
  EXPECT_EQ(t.o_lora, 64u);
  EXPECT_EQ(t.ratios, (std::vector<uint32_t>{0, 0, 4, 128}));
  EXPECT_EQ(t.n_expert, 8u);
  EXPECT_EQ(t.n_expert_used, 2u);
  EXPECT_EQ(t.n_expert_shared, 1u);
  EXPECT_EQ(t.n_ff_exp, 256u);  // HF oracle: 64; see ds4/synth.h
  EXPECT_EQ(t.n_hash_layer, 3u);
  EXPECT_EQ(t.n_idx_head, 4u);
  EXPECT_EQ(t.idx_head_dim, 128u);
  EXPECT_EQ(t.idx_top_k, 16u);
  EXPECT_EQ(t.window, 128u);
  EXPECT_EQ(t.n_hc, 4u);
  EXPECT_EQ(t.sinkhorn_iters, 20u);
  EXPECT_FLOAT_EQ(t.eps, 1e-6f);
  EXPECT_FLOAT_EQ(t.hc_eps, 1e-6f);
  EXPECT_EQ(t.rope_base, 10000.f);
  EXPECT_EQ(t.compress_rope_base, 160000.f);
  EXPECT_EQ(t.yarn_factor, 16.f);
  EXPECT_EQ(t.yarn_orig_ctx, 65536u);
  EXPECT_EQ(t.yarn_beta_fast, 32.f);
  EXPECT_EQ(t.yarn_beta_slow, 1.f);
  EXPECT_EQ(t.expert_scale, 1.5f);
  EXPECT_EQ(t.clamp_exp, std::vector<float>(4, 10.f));
  EXPECT_EQ(t.n_mtp, 0u);

  SynthOptions f;
  f.preset = "flash-shape";
  const HParams fs_hp = ds4::synth_hparams(f);
  EXPECT_EQ(fs_hp.n_layer, 4u);
  EXPECT_EQ(fs_hp.n_vocab, 129280u);
  EXPECT_EQ(fs_hp.n_embd, 4096u);
  EXPECT_EQ(fs_hp.n_head, 64u);
  EXPECT_EQ(fs_hp.head_dim, 512u);
  EXPECT_EQ(fs_hp.n_rot, 64u);
  EXPECT_EQ(fs_hp.q_lora, 1024u);
  EXPECT_EQ(fs_hp.o_groups, 8u);
  EXPECT_EQ(fs_hp.o_lora, 1024u);
  EXPECT_EQ(fs_hp.n_idx_head, 64u);
  EXPECT_EQ(fs_hp.idx_head_dim, 128u);
  EXPECT_EQ(fs_hp.idx_top_k, 512u);
  EXPECT_EQ(fs_hp.n_expert, 16u);
  EXPECT_EQ(fs_hp.n_expert_used, 6u);
  EXPECT_EQ(fs_hp.n_ff_exp, 2048u);
  EXPECT_EQ(fs_hp.n_hash_layer, 3u);
  EXPECT_EQ(fs_hp.ratios, (std::vector<uint32_t>{0, 0, 4, 128}));

  // Overrides: more layers follow the real schedule; fewer experts cap top-k.
  SynthOptions o;
  o.n_layer = 7;
  o.n_expert = 2;
  o.n_vocab = 1000;
  o.mtp = true;
  const HParams ov = ds4::synth_hparams(o);
  EXPECT_EQ(ov.ratios, (std::vector<uint32_t>{0, 0, 4, 128, 4, 128, 4}));
  EXPECT_EQ(ov.n_expert, 2u);
  EXPECT_EQ(ov.n_expert_used, 2u);
  EXPECT_EQ(ov.n_vocab, 1000u);
  EXPECT_EQ(ov.clamp_exp.size(), 7u);
  EXPECT_EQ(ov.n_mtp, 1u);
  o.n_layer = 2;
  EXPECT_EQ(ds4::synth_hparams(o).n_hash_layer, 2u);

  SynthOptions bad;
  bad.preset = "huge";
  EXPECT_NE(error_of([&] { ds4::synth_hparams(bad); }).find("unknown synth preset 'huge'"),
            std::string::npos);
}

TEST(Synth, RngIsStandardNormal) {
  ds4::SynthRng rng(42);
  const int n = 200000;
  double s1 = 0, s2 = 0, s4 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = rng.normal();
    s1 += z;
    s2 += z * z;
    s4 += z * z * z * z;
  }
  EXPECT_NEAR(s1 / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.015);
  EXPECT_NEAR(s4 / n, 3.0, 0.08);  // Gaussian kurtosis
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 70000; ++i) ++hist[rng.below(7)];
  for (int h : hist) EXPECT_NEAR(h, 10000, 400);
  // Same seed, same stream; the first values are pinned so a change of algorithm (or a platform
  // that computes them differently) is noticed.
  ds4::SynthRng a(7), b(7);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.normal(), b.normal());
  ds4::SynthRng p(7);
  EXPECT_EQ(p.normal(), 1.5913998756469563);
  EXPECT_EQ(p.normal(), -0.5248132351294954);
  EXPECT_EQ(p.normal(), 0.3889032347053572);
  EXPECT_EQ(ds4::synth_stream_seed(1234, "token_embd.weight", 0), 5755520395443793100ull);
  EXPECT_NE(ds4::synth_stream_seed(1, "x", 0), ds4::synth_stream_seed(1, "x", 1));
  EXPECT_NE(ds4::synth_stream_seed(1, "x", 0), ds4::synth_stream_seed(1, "y", 0));
  EXPECT_NE(ds4::synth_stream_seed(1, "x", 0), ds4::synth_stream_seed(2, "x", 0));
}

// Writes tiny in `mix` and checks it reloads with every expected tensor at shape and type.
void check_tiny_roundtrip(const std::string& mix, bool mtp) {
  SynthOptions opt;
  opt.quant_mix = mix;
  opt.mtp = mtp;
  const fs::path path = temp_dir() / ("tiny-" + mix + (mtp ? "-mtp" : "") + ".gguf");
  ds4::write_synth_model(opt, path.string());

  auto file = ds4::GgufFile::open(path.string());
  const HParams hp = HParams::from_gguf(*file);
  expect_same_hparams(hp, ds4::synth_hparams(opt));
  EXPECT_EQ(file->get_str("general.name"), "ds4-synth-tiny-" + mix + "-seed1234");
  EXPECT_EQ(file->get_str_array("tokenizer.ggml.tokens").size(), hp.n_vocab);

  const ds4::QuantMix qm = ds4::QuantMix::by_name(mix);
  const auto specs = ds4::expected_tensors(hp);
  EXPECT_EQ(file->tensors().size(), specs.size());
  for (const auto& spec : specs) {
    const ds4::GgufTensor* t = file->find_tensor(spec.name);
    ASSERT_NE(t, nullptr) << spec.name;
    EXPECT_TRUE(t->ne == spec.ne || (!spec.alt_ne.empty() && t->ne == spec.alt_ne)) << spec.name;
    EXPECT_EQ(t->type, qm.type_for(spec.role)) << spec.name;
  }
  if (mtp) EXPECT_NE(file->find_tensor("blk.4.nextn.eh_proj.weight"), nullptr);
  // llama.cpp's layout for the grouped output LoRA.
  EXPECT_EQ(file->tensor("blk.0.attn_output_a.weight").ne, (std::vector<int64_t>{256, 64, 4}));
}

TEST(Synth, TinyRoundTripDs4) { check_tiny_roundtrip("ds4", false); }
TEST(Synth, TinyRoundTripF32) { check_tiny_roundtrip("f32", false); }
TEST(Synth, TinyRoundTripMtpQ8) { check_tiny_roundtrip("q8_0", true); }

std::vector<float> values(const ds4::GgufTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.nelements()));
  std::memcpy(v.data(), t.data, v.size() * sizeof(float));
  return v;
}

void mean_std(const std::vector<float>& v, double* mean, double* sd) {
  double s1 = 0, s2 = 0;
  for (float x : v) {
    s1 += x;
    s2 += double(x) * x;
  }
  *mean = s1 / v.size();
  *sd = std::sqrt(s2 / v.size() - *mean * *mean);
}

TEST(Synth, WeightDistributions) {
  SynthOptions opt;
  opt.quant_mix = "f32";
  const fs::path path = temp_dir() / "tiny-f32-stats.gguf";
  ds4::write_synth_model(opt, path.string());
  auto file = ds4::GgufFile::open(path.string());
  struct Want {
    const char* name;
    double mean, sd;
  };
  const Want wants[] = {
      {"token_embd.weight", 0, 1},
      {"blk.0.ffn_gate_exps.weight", 0, 5 / 16.0},
      {"blk.0.ffn_down_exps.weight", 0, 1 / 16.0},
      {"blk.0.attn_q_b.weight", 0, 1 / std::sqrt(128.0)},
      {"blk.1.hc_attn_fn.weight", 0, 1 / 32.0},
      {"blk.2.attn_compressor_ape.weight", 0, 0.5},
      {"output.weight", 0, 1 / 16.0},
  };
  for (const Want& w : wants) {
    double m = 0, s = 0;
    mean_std(values(file->tensor(w.name)), &m, &s);
    EXPECT_NEAR(m, w.mean, 0.05 * w.sd + 0.01) << w.name;
    EXPECT_NEAR(s, w.sd, 0.05 * w.sd) << w.name;
  }
  // Small vectors: check they sit around their centre (1 for norms and HC scales).
  for (const char* name :
       {"blk.0.attn_norm.weight", "output_norm.weight", "blk.3.ffn_norm.weight"}) {
    double m = 0, s = 0;
    mean_std(values(file->tensor(name)), &m, &s);
    EXPECT_NEAR(m, 1.0, 0.03) << name;
    EXPECT_NEAR(s, 0.1, 0.03) << name;
  }
  for (float v : values(file->tensor("blk.0.hc_attn_scale.weight"))) EXPECT_NEAR(v, 1.0, 1.0);
  // Hash table: I32 [n_used, vocab], each token's experts distinct and in range.
  const ds4::GgufTensor& tid = file->tensor("blk.0.ffn_gate_tid2eid.weight");
  ASSERT_EQ(tid.type, QType::I32);
  ASSERT_EQ(tid.ne, (std::vector<int64_t>{2, 512}));
  const int32_t* ids = reinterpret_cast<const int32_t*>(tid.data);
  std::set<std::pair<int, int>> pairs;
  for (int t = 0; t < 512; ++t) {
    EXPECT_GE(ids[2 * t], 0);
    EXPECT_LT(ids[2 * t], 8);
    EXPECT_GE(ids[2 * t + 1], 0);
    EXPECT_LT(ids[2 * t + 1], 8);
    EXPECT_NE(ids[2 * t], ids[2 * t + 1]) << "token " << t;
    pairs.insert({ids[2 * t], ids[2 * t + 1]});
  }
  EXPECT_GT(pairs.size(), 40u);  // 56 ordered pairs exist; random tables use most of them
  // Layers have their own tables.
  EXPECT_NE(std::memcmp(tid.data, file->tensor("blk.1.ffn_gate_tid2eid.weight").data, tid.nbytes),
            0);
}

TEST(Synth, Deterministic) {
  SynthOptions opt;  // ds4 mix: also covers the quantisers' determinism
  opt.n_expert = 2;  // IQ2_XXS quantisation dominates the run time
  const fs::path a = temp_dir() / "det-a.gguf", b = temp_dir() / "det-b.gguf";
  opt.n_threads = 1;
  ds4::write_synth_model(opt, a.string());
  opt.n_threads = 3;  // thread count must not matter
  ds4::write_synth_model(opt, b.string());
  const std::string ba = read_bytes(a), bb = read_bytes(b);
  ASSERT_GT(ba.size(), 1000000u);
  EXPECT_TRUE(ba == bb) << "same seed gave different bytes";
  // A different seed changes the bytes (f32: fast), and the name.
  opt.quant_mix = "f32";
  const fs::path c = temp_dir() / "det-c.gguf", d = temp_dir() / "det-d.gguf";
  ds4::write_synth_model(opt, c.string());
  opt.seed = 1235;
  ds4::write_synth_model(opt, d.string());
  const std::string bc = read_bytes(c), bd = read_bytes(d);
  EXPECT_EQ(bc.size(), bd.size());
  EXPECT_FALSE(bc == bd) << "different seeds gave identical bytes";
  EXPECT_EQ(ds4::GgufFile::open(d.string())->get_str("general.name"),
            "ds4-synth-tiny-f32-seed1235");
  fs::remove(a);
  fs::remove(b);
  // Adding the MTP block leaves every trunk tensor unchanged (per-tensor streams).
  SynthOptions m;
  m.quant_mix = "f32";
  m.mtp = true;
  const fs::path pm = temp_dir() / "det-mtp.gguf", pf = temp_dir() / "det-f32.gguf";
  ds4::write_synth_model(m, pm.string());
  m.mtp = false;
  ds4::write_synth_model(m, pf.string());
  auto fm = ds4::GgufFile::open(pm.string()), ff = ds4::GgufFile::open(pf.string());
  for (const auto& t : ff->tensors()) {
    const ds4::GgufTensor& u = fm->tensor(t.name);
    ASSERT_EQ(t.nbytes, u.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(t.data, u.data, t.nbytes), 0) << t.name;
  }
}

TEST(Synth, MixShapeMismatch) {
  SynthOptions opt;
  opt.n_ff_exp = 64;  // the HF oracle's expert width: not a multiple of 256
  const fs::path path = temp_dir() / "mismatch.gguf";
  const std::string msg = error_of([&] { ds4::write_synth_model(opt, path.string()); });
  EXPECT_NE(msg.find("tensor 'blk.0.ffn_down_exps.weight' has ne0 = 64"), std::string::npos) << msg;
  EXPECT_NE(msg.find("q2_K"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_FALSE(fs::exists(path));
  // The same shape is fine in a mix without 256-blocks.
  opt.quant_mix = "q8_0";
  EXPECT_NO_THROW(ds4::write_synth_model(opt, path.string()));
  opt.quant_mix = "q3_k";
  EXPECT_NE(error_of([&] {
              ds4::write_synth_model(opt, path.string());
            }).find("unknown quant mix 'q3_k'"),
            std::string::npos);
}

}  // namespace
