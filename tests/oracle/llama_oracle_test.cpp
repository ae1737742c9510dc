// llama.cpp as a second oracle: the same GGUF files run through llama.cpp's own deepseek4 graph
// (node-llama-cpp 3.22.1 = prebuilt CPU llama.cpp v0.5.0, installed by scripts/setup-llama-oracle
// into <build>/oracle-node) and through our CPU reference, and the logits must agree. A file that
// llama.cpp loads and that gives the same logits in both engines is the proof that our files are
// the real deepseek4 layout.
//
//   (a) HfTinyF32: the HF oracle model (tests/fixtures/hf-tiny) converted by ds4-convert to F32;
//       our plain profile (all gates exact) vs llama.cpp, 320 oracle tokens: max-abs <= 1e-4.
//   (b) SynthMix/<mix>: write_synth_model's tiny preset in the ds4, q8_0, f16 and f32 mixes;
//       agreement within the tier of the mix (kTiers below, with its derivation).
//   (c) both: 32 greedy tokens after the prompt agree, and so do the decode-step logits.
//
// llama.cpp runs with flash attention off and an F32 KV cache (scripts/oracle/llama_cpp_logits.mjs),
// where its batch and token-by-token logits agree within 2.4e-6 and reruns are bit-identical.
//
// Indexer top-k ties. ReLU makes exact-zero indexer scores common in the tiny models, so the
// top-k boundary often falls inside a group of equal scores. Which rows win is
// implementation-defined: ds4 (our default) keeps the lower index; llama.cpp's CPU ggml_top_k is
// std::partial_sort over the row ids with "score greater" (ggml-cpu/ops.cpp), and so is PyTorch's
// CPU topk when k * 64 <= n. Our TopkTies::TorchCpu with a queue of 64 * k entries runs that same
// libstdc++ heap selection (-inf padding after the real rows never enters the heap, so it does not
// change the selected set), which is how these tests reproduce llama.cpp's choice; the lower-index
// rule is checked to differ only at positions with a tie at the boundary.
//
// Run: scripts/setup-llama-oracle && ctest --test-dir build -R LlamaOracle --output-on-failure
// (without the install every test skips, naming what is missing).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../support/hf_fixture.h"
#include "../support/tiny_models.h"
#include "ds4/engine.h"
#include "ds4/gguf.h"
#include "ds4/json.h"

namespace {

namespace fs = std::filesystem;

const std::string kSource = DS4_SOURCE_DIR;
const std::string kBinary = DS4_BINARY_DIR;
const std::string kModules = kBinary + "/oracle-node";  // where scripts/setup-llama-oracle installs
const std::string kScript = kSource + "/scripts/oracle/llama_cpp_logits.mjs";
constexpr int kGreedy = 32;

// ---- running llama.cpp ----

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Why the oracle cannot run here, or nothing. node is looked up on PATH by the shell.
std::optional<std::string> oracle_missing() {
  if (std::system("command -v node >/dev/null 2>&1") != 0)
    return "node is not on PATH (scripts/setup-llama-oracle installs nodejs and the oracle)";
  for (const char* pkg : {"node-llama-cpp", "@node-llama-cpp/linux-x64"})
    if (!fs::exists(kModules + "/node_modules/" + pkg + "/package.json"))
      return std::string(pkg) + " is not installed in " + kModules + " (run scripts/setup-llama-oracle)";
  return std::nullopt;
}

struct LlamaRun {
  int64_t n_vocab = 0;
  std::vector<float> logits;       // [T, V]: prompt positions
  std::vector<float> step_logits;  // [kGreedy - 1, V]: decode of greedy token k (chooses k + 1)
  std::vector<int32_t> greedy;     // kGreedy tokens
};

LlamaRun run_llama(const std::string& gguf, const std::vector<int32_t>& tokens) {
  std::string ids;
  for (size_t i = 0; i < tokens.size(); ++i) ids += (i ? "," : "") + std::to_string(tokens[i]);
  const std::string err = gguf + ".llama-stderr.txt";
  const std::string cmd = "node " + shell_quote(kScript) + " " + shell_quote("--modules=" + kModules) +
                          " " + shell_quote(gguf) + " " + ids + " " + std::to_string(kGreedy) +
                          " 2>" + shell_quote(err);
  LlamaRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return r;
  }
  std::string out;
  char buf[1 << 16];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = pclose(p);
  std::stringstream es;
  es << std::ifstream(err).rdbuf();
  if (status != 0) {
    ADD_FAILURE() << "llama.cpp failed on " << gguf << " (exit status " << status << ")\n"
                  << es.str().substr(0, 4000);
    return r;
  }
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    const ds4::Json j = ds4::Json::parse(line, "llama_cpp_logits.mjs output");
    if (const ds4::Json* g = j.find("greedy")) {
      for (const auto& t : g->as_array()) r.greedy.push_back(static_cast<int32_t>(t.as_int()));
      continue;
    }
    const auto& l = j.at("logits").as_array();
    r.n_vocab = static_cast<int64_t>(l.size());
    auto& dst = j.find("step") ? r.step_logits : r.logits;
    // Each value is a float32 printed as the shortest round-tripping double: exact bits back.
    for (const auto& v : l) dst.push_back(static_cast<float>(v.as_number()));
  }
  EXPECT_EQ(r.logits.size(), tokens.size() * static_cast<size_t>(r.n_vocab));
  EXPECT_EQ(r.greedy.size(), static_cast<size_t>(kGreedy));
  EXPECT_EQ(r.step_logits.size(), static_cast<size_t>(kGreedy - 1) * r.n_vocab);
  return r;
}

// ---- running our engine ----

// Margins of our discrete choices per position, to tell a flipped choice from a numerical
// disagreement: the learned router's top-k boundary (selection score = prob + bias, minimum over
// the non-hash layers) and whether the indexer's top-k boundary falls inside a group of equal
// scores.
class ChoiceMargins : public ds4::TapSink {
 public:
  explicit ChoiceMargins(const ds4::Model& m) : hp_(m.hparams()) {
    bias_.resize(hp_.n_layer);
    for (uint32_t il = hp_.n_hash_layer; il < hp_.n_layer; ++il) {
      const ds4::GgufTensor& t = m.file().tensor("blk." + std::to_string(il) + ".exp_probs_b.bias");
      const float* f = reinterpret_cast<const float*>(t.data);
      bias_[il].assign(f, f + t.nelements());
    }
  }
  std::map<int64_t, double> router;  // position -> smallest router margin
  std::set<int64_t> indexer_ties;    // positions with a tie at the indexer top-k boundary

  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n, const char*) override {
    if (std::strcmp(name, "ffn_moe_probs") == 0 && layer >= static_cast<int>(hp_.n_hash_layer) &&
        layer < static_cast<int>(hp_.n_layer)) {
      std::vector<float> s(data, data + n);
      for (size_t e = 0; e < n; ++e) s[e] += bias_[layer][e];
      std::sort(s.begin(), s.end(), std::greater<float>());
      const double m = s[hp_.n_expert_used - 1] - s[hp_.n_expert_used];
      auto [it, fresh] = router.emplace(pos, m);
      if (!fresh) it->second = std::min(it->second, m);
    } else if (std::strcmp(name, "lid_score") == 0 && n > hp_.idx_top_k) {
      std::vector<float> s(data, data + n);
      std::sort(s.begin(), s.end(), std::greater<float>());
      if (s[hp_.idx_top_k - 1] == s[hp_.idx_top_k]) indexer_ties.insert(pos);
    }
  }

 private:
  const ds4::HParams& hp_;
  std::vector<std::vector<float>> bias_;
};

struct OurRun {
  std::vector<float> logits, step_logits;  // as LlamaRun
  std::vector<int32_t> greedy;
  std::map<int64_t, double> router_margin;
  std::set<int64_t> indexer_ties;
};

ds4::SessionOptions session_options(ds4::Profile profile, ds4::TopkTies ties, uint32_t top_k) {
  ds4::SessionOptions so;
  so.profile = profile;
  so.gates = ds4::GateSet::all_exact();
  so.topk_ties = ties;
  // 64 * k: PyTorch's partial_sort branch, the same selection as llama.cpp's ggml_top_k (above).
  so.torch_queue_len = 64 * static_cast<int64_t>(top_k);
  return so;
}

// One batched forward over the prompt, then greedy decodes (ds4::argmax) to kGreedy tokens.
OurRun run_ours(const std::shared_ptr<ds4::Model>& model, const std::vector<int32_t>& tokens,
                const ds4::SessionOptions& so) {
  const int64_t V = model->hparams().n_vocab;
  ds4::Session s(model, so);
  ChoiceMargins margins(*model);
  s.set_tap_sink(&margins);
  OurRun o;
  o.logits = s.forward(tokens);
  std::vector<float> last(o.logits.end() - V, o.logits.end());
  for (int k = 0; k < kGreedy; ++k) {
    o.greedy.push_back(ds4::argmax(last));
    if (k + 1 == kGreedy) break;
    last = s.decode(o.greedy.back());
    o.step_logits.insert(o.step_logits.end(), last.begin(), last.end());
  }
  o.router_margin = std::move(margins.router);
  o.indexer_ties = std::move(margins.indexer_ties);
  return o;
}

// ---- comparing ----

std::vector<double> max_abs_per_row(const std::vector<float>& a, const std::vector<float>& b, int64_t V) {
  std::vector<double> out(b.size() / V, 0.0);
  for (size_t t = 0; t < out.size(); ++t)
    for (int64_t v = 0; v < V; ++v)
      out[t] = std::max(out[t], std::fabs(static_cast<double>(a[t * V + v]) - b[t * V + v]));
  return out;
}

int32_t row_argmax(const std::vector<float>& l, size_t t, int64_t V) {
  return ds4::argmax(std::span<const float>(l.data() + t * V, static_cast<size_t>(V)));
}

double top2_margin(const std::vector<float>& l, size_t t, int64_t V) {
  std::vector<float> r(l.begin() + t * V, l.begin() + (t + 1) * V);
  std::partial_sort(r.begin(), r.begin() + 2, r.end(), std::greater<float>());
  return r[0] - r[1];
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}

using ds4::testing::read_binary;

// ---- tolerance tiers ----
//
// Both engines dequantise the same weights; what differs is the activations. Our plain profile
// keeps F32 activations against dequantised weights; llama.cpp's CPU rounds each matmul's input to
// the weight's vec_dot_type first: F16 for F16 weights, Q8_0 (32-blocks, int8 with an F16 scale)
// for Q8_0, Q8_K (256-blocks) for IQ2_XXS / Q2_K. Our ds4 profile also quantises activations
// (Q8_0 with an F32 scale, Q8_K), but only before Q8_0 / K-quant dots (F16 weights see F32
// activations, as in ds4), and it adds FP8 KV and FP4 indexer rounding that llama.cpp does not
// do: its rounding is a second, mostly independent noise source rather than the same one.
// Measured (tiny preset, median over positions of the per-position max-abs): q8_0 mix plain
// 0.083 vs ds4-profile 0.108; ds4 mix 0.097 vs 0.122; f16 mix 0.0028 vs 0.035; f32 8.4e-6 vs
// 0.035. So plain is the closer comparison for every mix, and the tiers are for plain.
//
// Noise scale s = rms relative error of llama.cpp's activation rounding:
//   F16:  relative error uniform in +-2^-11               -> s = 2^-11 / sqrt(3)      = 2.8e-4
//   Q8_0: abs error uniform in +-d/2, d = amax/127, amax ~ 2.3 sigma for a 32-block
//                                                          -> s = 2.3 / (127 sqrt 12) = 5.2e-3
//   Q8_K: the same with 256-blocks, amax ~ 3.0 sigma       -> s = 6.8e-3 (ds4 mix: experts)
// Sensitivity of the tiny model (logit rms 1.0): per-position max-abs over the 512 logits is 10x
// to 30x s (f16 mix: median 2.8e-3 = 10 s, max 5.3e-3 = 19 s; q8_0: median 16 s, largest
// unflipped position 27 s). The tier allows 2x over that:
//   every position: max-abs <= 60 s, unless the position is a router flip (below);
//   median over positions of max-abs <= 30 s.
// Router flips: the learned layer's top-k expert choice turns on score differences that this
// noise can cross; a flipped expert moves logits by O(1) (up to 1.8 measured). Router scores
// sqrt(softplus) + bias are O(1) and carry roughly the logits' relative noise (a few times s), so
// a choice whose margin is below 10 s may flip: a position over 60 s must have a router margin
// below 10 s, at most 8% of positions may be such flips, and they stay below 4 (sanity: 4x the
// logit rms). Measured: q8_0 8 flips, ds4 7, all with margins < 0.024; f16 and f32 none.
// Argmax: equal wherever llama.cpp's top-2 margin exceeds 2 x 60 s and the position is no flip.
// F32: s is F32 summation order only; the 1e-4 applies (measured 8.4e-6).
struct Tier {
  const char* mix;
  double s;  // rms relative activation rounding of llama.cpp for this mix (0 = F32)
  double max_abs() const { return s > 0 ? 60 * s : 1e-4; }
  double median() const { return s > 0 ? 30 * s : 1e-4; }
  double router_flip_margin() const { return 10 * s; }
};
constexpr double kF16Noise = 2.8e-4, kQ80Noise = 5.2e-3, kQ8KNoise = 6.8e-3;
constexpr double kFlipShare = 0.08, kFlipBound = 4.0;
const Tier kTiers[] = {
    {"ds4", kQ8KNoise},   // IQ2_XXS / Q2_K experts (Q8_K activations), Q8_0 attention, F16 small
    {"q8_0", kQ80Noise},  // everything Q8_0
    {"f16", kF16Noise},   // everything F16
    {"f32", 0.0},         // the exact tier
};

// gtest prints the parameter into CTest's test names: the mix, not the struct's bytes.
void PrintTo(const Tier& t, std::ostream* os) { *os << t.mix; }

const Tier& tier_of(const std::string& mix) {
  for (const Tier& t : kTiers)
    if (mix == t.mix) return t;
  throw std::runtime_error("no tier for mix " + mix);
}

struct Agreement {
  double max_abs = 0, median = 0, max_abs_unflipped = 0;
  int64_t flips = 0, argmax_mismatch = 0;
  int greedy_common = 0;
  double step_max_abs = 0;  // decode-step logits while both greedy sequences agree
};

// Checks prompt logits, decode-step logits and the greedy tokens of ours against llama.cpp's
// within `tier`; prints the measurements.
Agreement check_agreement(const char* what, const OurRun& ours, const LlamaRun& L, const Tier& tier) {
  Agreement a;
  const int64_t V = L.n_vocab;
  const auto per_pos = max_abs_per_row(ours.logits, L.logits, V);
  a.median = percentile(per_pos, 0.5);
  auto router_margin = [&](int64_t pos) {
    auto it = ours.router_margin.find(pos);
    return it == ours.router_margin.end() ? INFINITY : it->second;
  };
  auto is_flip = [&](int64_t pos, double d) {
    return tier.s > 0 && d > tier.max_abs() && router_margin(pos) < tier.router_flip_margin();
  };
  for (size_t t = 0; t < per_pos.size(); ++t) {
    const double d = per_pos[t];
    a.max_abs = std::max(a.max_abs, d);
    if (is_flip(static_cast<int64_t>(t), d)) {
      ++a.flips;
      EXPECT_LE(d, kFlipBound) << what << ": router flip at position " << t;
      continue;
    }
    a.max_abs_unflipped = std::max(a.max_abs_unflipped, d);
    EXPECT_LE(d, tier.max_abs()) << what << ": position " << t << " (router margin "
                                 << router_margin(static_cast<int64_t>(t)) << ")";
    if (row_argmax(ours.logits, t, V) != row_argmax(L.logits, t, V)) {
      ++a.argmax_mismatch;
      EXPECT_LT(top2_margin(L.logits, t, V), 2 * tier.max_abs())
          << what << ": argmax differs at position " << t << " where llama.cpp's choice is clear";
    }
  }
  EXPECT_LE(a.median, tier.median()) << what;
  EXPECT_LE(a.flips, static_cast<int64_t>(kFlipShare * per_pos.size())) << what;

  // Greedy: equal tokens until the first divergence, which must sit on a near-tie of llama.cpp's
  // logits for that step (same context on both sides up to there) or on a router flip.
  const int64_t T = static_cast<int64_t>(per_pos.size());
  while (a.greedy_common < kGreedy && ours.greedy[a.greedy_common] == L.greedy[a.greedy_common])
    ++a.greedy_common;
  for (int k = 0; k < std::min(a.greedy_common, kGreedy - 1); ++k) {  // decode of token k: same context
    const auto d = max_abs_per_row(std::vector<float>(ours.step_logits.begin() + k * V,
                                                      ours.step_logits.begin() + (k + 1) * V),
                                   std::vector<float>(L.step_logits.begin() + k * V,
                                                      L.step_logits.begin() + (k + 1) * V), V)[0];
    if (is_flip(T + k, d)) continue;
    a.step_max_abs = std::max(a.step_max_abs, d);
    EXPECT_LE(d, tier.max_abs()) << what << ": decode step " << k;
  }
  if (a.greedy_common < kGreedy) {
    const int k = a.greedy_common;  // token k was chosen by the logits of prompt end (k = 0) or step k - 1
    const double m = k == 0 ? top2_margin(L.logits, T - 1, V) : top2_margin(L.step_logits, k - 1, V);
    const double rm = router_margin(T - 1 + k);
    EXPECT_TRUE(m < 2 * tier.max_abs() || rm < tier.router_flip_margin())
        << what << ": greedy token " << k << " differs (ours " << ours.greedy[k] << ", llama.cpp "
        << L.greedy[k] << ") with llama.cpp's top-2 margin " << m << " and router margin " << rm;
  }
  std::printf("[llama-oracle] %s: max-abs %.3g (unflipped %.3g, median %.3g; tier %.3g / median %.3g), "
              "router flips %lld, argmax mismatches %lld/%lld, greedy %d/%d equal, decode-step max-abs %.3g\n",
              what, a.max_abs, a.max_abs_unflipped, a.median, tier.max_abs(), tier.median(),
              static_cast<long long>(a.flips), static_cast<long long>(a.argmax_mismatch),
              static_cast<long long>(T), a.greedy_common, kGreedy, a.step_max_abs);
  return a;
}

// ---- (a) + (c): the HF oracle model, converted to F32 ----

TEST(LlamaOracle, HfTinyF32MatchesPlainProfile) {
  if (auto why = oracle_missing()) GTEST_SKIP() << *why;
  const std::string gguf = ds4::testing::hf_tiny_f32_path();
  const auto tokens = read_binary<int32_t>(ds4::testing::kHfFixture + "/tokens.i32");
  ASSERT_EQ(tokens.size(), 320u);

  const LlamaRun L = run_llama(gguf, tokens);
  ASSERT_FALSE(L.logits.empty());
  auto model = ds4::Model::load(gguf);
  const int64_t V = model->hparams().n_vocab;
  ASSERT_EQ(L.n_vocab, V);

  // llama.cpp's tie order: every position within 1e-4, same argmax, same 32 greedy tokens.
  const OurRun ours = run_ours(model, tokens, session_options(ds4::Profile::Plain, ds4::TopkTies::TorchCpu,
                                                              model->hparams().idx_top_k));
  const Agreement a = check_agreement("hf-tiny f32, plain, llama.cpp tie order", ours, L, tier_of("f32"));
  EXPECT_LE(a.max_abs, 1e-4);
  EXPECT_EQ(a.argmax_mismatch, 0);
  EXPECT_EQ(a.greedy_common, kGreedy);
  EXPECT_LE(a.step_max_abs, 1e-4);

  // Our default (lower index wins, as ds4) departs from llama.cpp only where the indexer's top-k
  // boundary is inside a group of equal scores, by at most the 2.9e-3 that the HF oracle test
  // sees for the same ties, and the greedy tokens still agree.
  const OurRun lower = run_ours(model, tokens, session_options(ds4::Profile::Plain, ds4::TopkTies::LowerIndex,
                                                               model->hparams().idx_top_k));
  const auto per_pos = max_abs_per_row(lower.logits, L.logits, V);
  double worst_tie = 0, worst_other = 0;
  for (size_t t = 0; t < per_pos.size(); ++t) {
    double& worst = lower.indexer_ties.count(static_cast<int64_t>(t)) ? worst_tie : worst_other;
    worst = std::max(worst, per_pos[t]);
  }
  std::printf("[llama-oracle] hf-tiny f32, plain, lower-index ties: %zu tie positions (max-abs %.3g), "
              "elsewhere max-abs %.3g\n", lower.indexer_ties.size(), worst_tie, worst_other);
  EXPECT_LE(worst_other, 1e-4);
  EXPECT_LT(worst_tie, 1e-2);
  EXPECT_EQ(lower.greedy, L.greedy);
}

// ---- (b) + (c): synthetic tiny models in each quant mix ----

class LlamaOracleSynth : public ::testing::TestWithParam<Tier> {};

TEST_P(LlamaOracleSynth, PlainProfileWithinTier) {
  if (auto why = oracle_missing()) GTEST_SKIP() << *why;
  const Tier& tier = GetParam();
  const std::string gguf = ds4::testing::tiny_model_path(tier.mix);
  const auto tokens = read_binary<int32_t>(ds4::testing::kHfFixture + "/tokens.i32");  // tiny preset: same vocab
  const LlamaRun L = run_llama(gguf, tokens);
  ASSERT_FALSE(L.logits.empty());
  auto model = ds4::Model::load(gguf);
  ASSERT_EQ(L.n_vocab, static_cast<int64_t>(model->hparams().n_vocab));
  const uint32_t k = model->hparams().idx_top_k;

  const OurRun ours = run_ours(model, tokens, session_options(ds4::Profile::Plain, ds4::TopkTies::TorchCpu, k));
  const std::string what = std::string("tiny ") + tier.mix + ", plain";
  check_agreement(what.c_str(), ours, L, tier);

  // The profile choice above, checked: where llama.cpp quantises activations, the ds4 profile
  // (its own activation rounding plus FP8 KV and FP4 indexer rounding) is further from it.
  if (tier.s >= kQ80Noise) {
    const OurRun ds4p = run_ours(model, tokens, session_options(ds4::Profile::Ds4, ds4::TopkTies::TorchCpu, k));
    const double plain_median = percentile(max_abs_per_row(ours.logits, L.logits, L.n_vocab), 0.5);
    const double ds4_median = percentile(max_abs_per_row(ds4p.logits, L.logits, L.n_vocab), 0.5);
    std::printf("[llama-oracle] tiny %s: median max-abs plain %.3g, ds4 profile %.3g\n", tier.mix,
                plain_median, ds4_median);
    EXPECT_LT(plain_median, ds4_median);
  }
}

INSTANTIATE_TEST_SUITE_P(Mixes, LlamaOracleSynth, ::testing::ValuesIn(kTiers),
                         [](const ::testing::TestParamInfo<Tier>& info) {
                           std::string n = info.param.mix;
                           std::replace(n.begin(), n.end(), '.', '_');
                           return n;
                         });

}  // namespace
