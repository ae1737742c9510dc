// Gates: the registry generated from gates.def, GateSet parsing and precedence, and the
// conformance of every CPU gate on the tiny model: alone fast, it makes some tap differ from the
// all-exact run; all exact, the batched forward equals N=1 decode bit for bit on every tap.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include "ds4/config.h"
#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/gates.h"
#include "../support/recording_sink.h"
#include "../support/tiny_models.h"

namespace {

TEST(Gates, RegistryRoundTripsNames) {
  ASSERT_EQ(static_cast<int>(ds4::all_gates().size()), ds4::kGateCount);
  std::set<std::string> ids;
  for (const auto& g : ds4::all_gates()) {
    EXPECT_EQ(ds4::gate_from_name(g.id), g.gate);
    EXPECT_STREQ(ds4::gate_name(g.gate), g.id);
    EXPECT_TRUE(ids.insert(g.id).second) << "duplicate gate id " << g.id;
    EXPECT_STRNE(g.fast_variant, g.exact_variant);
    EXPECT_TRUE(g.on_backend("cpu") || g.on_backend("cuda")) << g.id;
  }
  EXPECT_THROW(ds4::gate_from_name("q8_gem"), ds4::Error);
}

TEST(Gates, SetParsingAndCanonicalText) {
  EXPECT_EQ(ds4::GateSet::parse("all=fast"), ds4::GateSet::all_fast());
  EXPECT_EQ(ds4::GateSet::parse("all=exact"), ds4::GateSet::all_exact());
  const auto g = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  EXPECT_TRUE(g.fast(ds4::Gate::q8_gemm));
  EXPECT_TRUE(g.exact(ds4::Gate::moe_tiles));
  EXPECT_EQ(g.to_string(), "all=exact,q8_gemm=fast");
  EXPECT_EQ(ds4::GateSet::parse(g.to_string()), g);
  EXPECT_EQ(ds4::GateSet::parse("moe_tiles=exact").to_string(), "all=fast,moe_tiles=exact");
  for (const char* bad : {"q8_gemm", "q8_gemm=slow", "nosuch=fast", "=fast"}) {
    EXPECT_THROW(ds4::GateSet::parse(bad), ds4::Error) << bad;
  }
}

TEST(Gates, PrecedenceCliOverEnvironmentOverDefault) {
  ds4::EnvSettings env;
  EXPECT_EQ(ds4::resolve_gates(env, false, ""), ds4::GateSet::all_fast());
  env.strict = true;
  EXPECT_EQ(ds4::resolve_gates(env, false, ""), ds4::GateSet::all_exact());
  env.gates = "moe_tiles=fast";
  EXPECT_TRUE(ds4::resolve_gates(env, false, "").fast(ds4::Gate::moe_tiles));
  EXPECT_TRUE(ds4::resolve_gates(env, false, "moe_tiles=exact").exact(ds4::Gate::moe_tiles));
  EXPECT_TRUE(ds4::resolve_gates(env, true, "").exact(ds4::Gate::moe_tiles)) << "--strict beats DS4_GATES";
  env.gates = "bogus=fast";
  EXPECT_THROW(ds4::resolve_gates(env, false, ""), ds4::Error);
}


// The model each gate needs to have an effect on the CPU (the weight types it dispatches on).
struct GateCase {
  const char* mix;
  ds4::Profile profile;
};
const std::map<std::string, GateCase>& conformance_cases() {
  static const std::map<std::string, GateCase> cases = {
      {"q8_gemm", {"ds4", ds4::Profile::Ds4}},          {"f16_gemm", {"ds4", ds4::Profile::Ds4}},
      {"f32_gemm", {"f32", ds4::Profile::Plain}},       {"attn_out_a_gemm", {"ds4", ds4::Profile::Ds4}},
      {"q8_pair", {"ds4", ds4::Profile::Ds4}},          {"output_head_preq", {"ds4", ds4::Profile::Ds4}},
      {"indexer_wmma", {"ds4", ds4::Profile::Ds4}},     {"indexer_direct_one", {"ds4", ds4::Profile::Ds4}},
      {"topk_resort", {"ds4", ds4::Profile::Ds4}},      {"indexed_attn_online", {"ds4", ds4::Profile::Ds4}},
      {"dense_attn_ntokens", {"ds4", ds4::Profile::Ds4}}, {"moe_tiles", {"ds4", ds4::Profile::Ds4}},
      {"moe_atomic_down", {"ds4", ds4::Profile::Ds4}},  {"dispatch_batchwide", {"ds4", ds4::Profile::Ds4}},
  };
  return cases;
}

TEST(Gates, ReadmeTableIsGenerated) {
  std::ifstream f(std::string(DS4_SOURCE_DIR) + "/README.md");
  const std::string readme((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::string begin = "<!-- gates-table:begin -->\n", end = "<!-- gates-table:end -->";
  const size_t a = readme.find(begin), b = readme.find(end);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  EXPECT_EQ(readme.substr(a + begin.size(), b - a - begin.size()), ds4::gates_markdown_table())
      << "regenerate with: build/harness/ds4-parity gates --markdown";
}

TEST(Gates, EveryGateHasAConformanceCase) {
  for (const auto& g : ds4::all_gates()) EXPECT_TRUE(conformance_cases().count(g.id)) << g.id << " has no case";
}

struct GateRun {
  std::vector<float> logits;
  ds4::testing::RecordingSink taps;
};

// One batched forward of 200 tokens (crossing the ratio-128 window end and the indexer's top-k
// threshold inside the batch).
std::unique_ptr<GateRun> run_batched(const std::string& mix, ds4::Profile profile, const ds4::GateSet& gates) {
  auto model = ds4::Model::load(ds4::testing::tiny_model_path(mix));
  ds4::SessionOptions so;
  so.profile = profile;
  so.gates = gates;
  ds4::Session s(model, so);
  auto run = std::make_unique<GateRun>();
  s.set_tap_sink(&run->taps);
  run->logits = s.forward(ds4::testing::pseudo_tokens(200, static_cast<int>(model->hparams().n_vocab)));
  return run;
}

size_t differing_taps(const GateRun& a, const GateRun& b) {
  size_t n = 0;
  for (const auto& [k, v] : a.taps.taps) {
    const auto& w = b.taps.taps.at(k);
    n += v.size() != w.size() || std::memcmp(v.data(), w.data(), v.size() * sizeof(float)) != 0;
  }
  return n;
}

class GateConformance : public ::testing::TestWithParam<ds4::GateInfo> {};

TEST_P(GateConformance, AloneFastMakesSomeTapDiffer) {
  const ds4::GateInfo& g = GetParam();
  if (!g.on_backend("cpu")) GTEST_SKIP() << g.id << " has no CPU fast variant (backends: " << g.backends << ")";
  const GateCase& c = conformance_cases().at(g.id);
  ds4::GateSet only = ds4::GateSet::all_exact();
  only.set(g.gate, ds4::GateState::Fast);
  const auto exact = run_batched(c.mix, c.profile, ds4::GateSet::all_exact());
  const auto fast = run_batched(c.mix, c.profile, only);
  const size_t n = differing_taps(*exact, *fast);
  EXPECT_GT(n, 0u) << g.id << " alone fast changed nothing";
  // Provenance: the fast variant's name appears in the taps of the fast run only.
  EXPECT_FALSE(exact->taps.used_variant(g.fast_variant));
  EXPECT_TRUE(fast->taps.used_variant(g.fast_variant)) << "no tap records the variant " << g.fast_variant;
  std::printf("[gate] %-20s alone fast: %zu taps differ\n", g.id, n);
}

INSTANTIATE_TEST_SUITE_P(Cpu, GateConformance, ::testing::ValuesIn(ds4::all_gates()),
                         [](const auto& info) { return std::string(info.param.id); });

TEST(Gates, AllFastDiffersMeasurablyAndStrictIsExact) {
  const auto exact = run_batched("ds4", ds4::Profile::Ds4, ds4::GateSet::all_exact());
  const auto fast = run_batched("ds4", ds4::Profile::Ds4, ds4::GateSet::all_fast());
  double max_abs = 0;
  for (size_t i = 0; i < exact->logits.size(); ++i)
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(exact->logits[i] - fast->logits[i])));
  std::printf("[gate] all fast vs strict: logits max-abs %.3g, %zu taps differ\n", max_abs,
              differing_taps(*exact, *fast));
  EXPECT_GT(max_abs, 1e-3);
  // Strict batched equals N=1 decode on every tap (the decode run takes no gate at all).
  auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  ds4::Session s(model, {});
  GateRun plain;
  s.set_tap_sink(&plain.taps);
  for (int32_t t : ds4::testing::pseudo_tokens(200, static_cast<int>(model->hparams().n_vocab))) {
    const auto l = s.decode(t);
    plain.logits.insert(plain.logits.end(), l.begin(), l.end());
  }
  EXPECT_EQ(differing_taps(plain, *exact), 0u);
  EXPECT_EQ(std::memcmp(plain.logits.data(), exact->logits.data(), plain.logits.size() * sizeof(float)), 0);
}

}  // namespace
