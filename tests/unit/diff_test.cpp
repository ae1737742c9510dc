// `ds4-parity diff` and ds4::diff_dumps: small dumps written with DumpWriter (first divergence in
// dataflow order, thresholded divergence, logits summary, routing flips, growth, filters,
// windowed streaming, stats-only dumps, refusals, the command's exit codes and JSON), then the
// end-to-end negative controls on the tiny model: strict batched == plain (bit-equal, gate
// passes), a planted one-ULP fault found exactly where it was planted, all-fast differs, and
// the gate fails on both.
#include "ds4/diff.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "../support/tiny_models.h"
#include "ds4/ci_gate.h"
#include "ds4/drivers.h"
#include "ds4/error.h"
#include "../support/errors.h"
#include "../support/scratch.h"

namespace fs = std::filesystem;

namespace {

using ds4::testing::error_of;
using ds4::testing::read_text;

std::string test_dir() {
  static const ds4::testing::ProcessDir dir(std::string(DS4_BINARY_DIR) + "/test-diff");
  return dir.path();
}

std::string fresh(const std::string& name) {
  const std::string p = test_dir() + "/" + name;
  fs::remove(p);
  return p;
}

// ---------------------------------------------------------------------------------------------
// A synthetic two-layer "run": 6 positions, vocabulary 4, taps in this dataflow order per
// position: layer 0 attn_norm, attn_out, ffn_moe_topk, ffn_moe_probs, l_out; layer 1 attn_out,
// ffn_moe_topk, l_out; layer -1 result_output.
// ---------------------------------------------------------------------------------------------

const std::vector<int32_t> kTokens = {0, 1, 2, 3, 0, 1};

ds4::RunManifest manifest(
    const std::string& sha = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12") {
  ds4::RunManifest m;
  m.engine_version = "0.1.0";
  m.model_path = "synthetic.gguf";
  m.model_sha256 = sha;
  m.backend = "cpu";
  m.profile = "ds4";
  m.run_mode = "plain";
  m.width = 1;
  m.tokens = kTokens;
  m.command_line = "diff_test";
  return m;
}

struct Row {
  int layer;
  std::string name;
  std::vector<float> data;
  std::string variant = "x__ref";
};

// The reference rows of position p.
std::vector<Row> rows_a(int64_t p) {
  const float f = float(p);
  std::vector<float> logits(4, 0.0f);
  logits[p % 4] = 2.0f;
  if (p == 4) logits = {2.0f, 1.9995f, 0, 0};  // a near tie: margin 0.0005 logits
  return {{0, "attn_norm", {f, f + 0.5f, -f}}, {0, "attn_out", {1 + f, 2, 3}, "attn__ref"},
          {0, "ffn_moe_topk", {1, 2}},         {0, "ffn_moe_probs", {0.25f, 0.75f}},
          {0, "l_out", {f * 0.1f, 1, 2}},      {1, "attn_out", {2 + f, 3, 4}, "attn__ref"},
          {1, "ffn_moe_topk", {0, 3}},         {1, "l_out", {f * 0.2f, 3, 4}},
          {-1, "result_output", logits}};
}

Row& find(std::vector<Row>& rows, int layer, const std::string& name) {
  for (Row& r : rows)
    if (r.layer == layer && r.name == name) return r;
  throw std::logic_error("no row " + name);
}

// The candidate: the reference with the differences the tests look for.
//   pos 1: layer 1 attn_out[2] and l_out[0] one ULP up       -> first bit divergence
//   pos 2: layer 0 l_out[1] +0.5, layer 1 attn_out[0] +0.25,
//          layer 1 l_out[2] +1.0                              -> first thresholded divergence
//   pos 3: logits argmax 3 -> 2 with margin 2 (structural);   pos 4: 0 -> 1, margin 0.0005 (tie)
//   pos 5: layer 0 experts [2, 1] (same set), layer 1 [0, 2] (a flip), router probs +-0.05
// Layer 1 attn_out rows come from a "fast" variant everywhere.
std::vector<Row> rows_b(int64_t p) {
  std::vector<Row> r = rows_a(p);
  find(r, 1, "attn_out").variant = "attn__fast";
  if (p == 1) {
    auto& x = find(r, 1, "attn_out").data[2];
    x = std::nextafter(x, INFINITY);
    auto& y = find(r, 1, "l_out").data[0];
    y = std::nextafter(y, INFINITY);
  }
  if (p == 2) {
    find(r, 0, "l_out").data[1] += 0.5f;
    find(r, 1, "attn_out").data[0] += 0.25f;
    find(r, 1, "l_out").data[2] += 1.0f;
  }
  if (p == 3) find(r, -1, "result_output").data = {0, 0, 2.5f, 2.0f};
  if (p == 4) find(r, -1, "result_output").data = {1.9995f, 2.0f, 0, 0};
  if (p == 5) {
    find(r, 0, "ffn_moe_topk").data = {2, 1};
    find(r, 1, "ffn_moe_topk").data = {0, 2};
    find(r, 0, "ffn_moe_probs").data = {0.3f, 0.7f};
  }
  return r;
}

using RowsOf = std::vector<Row> (*)(int64_t);

void write_dump(const std::string& path, RowsOf rows, ds4::TapLevel level = ds4::TapLevel::Full,
                const ds4::RunManifest& m = manifest(), int64_t skip_pos = -1,
                const std::string& skip_tap = "") {
  ds4::DumpWriter w(path, m, level);
  for (int64_t p = 0; p < int64_t(kTokens.size()); ++p) {
    w.begin_forward(p, 1);
    for (const Row& r : rows(p)) {
      if (p == skip_pos && r.name == skip_tap) continue;
      w.tap(r.layer, r.name.c_str(), p, r.data.data(), r.data.size(), r.variant.c_str());
    }
  }
  w.finish();
}

struct Pair {
  std::string a, b;
};
const Pair& synthetic_pair() {
  static const Pair p = [] {
    Pair q{fresh("syn_a.h5"), fresh("syn_b.h5")};
    write_dump(q.a, rows_a);
    write_dump(q.b, rows_b);
    return q;
  }();
  return p;
}

const ds4::TapDiff& tap_of(const ds4::DiffResult& r, int layer, const std::string& name) {
  for (const auto& t : r.taps)
    if (t.layer == layer && t.name == name) return t;
  throw std::logic_error("no tap " + name);
}

TEST(DiffSynthetic, IdenticalDumpsAreBitEqual) {
  const auto& p = synthetic_pair();
  const ds4::DiffResult r = ds4::diff_dumps(p.a, p.a, {});
  EXPECT_TRUE(r.bit_equal());
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.rows_compared, 9 * 6);  // 9 taps x 6 positions
  EXPECT_EQ(r.rows_bitdiff, 0);
  EXPECT_FALSE(r.first_bit.found());
  EXPECT_FALSE(r.first_thresh.found());
  EXPECT_EQ(r.logits.first_token, ds4::kNever);
  EXPECT_EQ(r.logits.argmax.p, 1.0);
  EXPECT_EQ(r.logits.kld.max, 0.0);
  EXPECT_EQ(r.routing.flips, 0);
}

TEST(DiffSynthetic, FirstDivergenceBitAndThresholdedInDataflowOrder) {
  const auto& p = synthetic_pair();
  const ds4::DiffResult r = ds4::diff_dumps(p.a, p.b, {});
  EXPECT_FALSE(r.bit_equal());
  EXPECT_EQ(r.exit_code(), 1);
  // Differing rows: pos 1 (2), pos 2 (3), pos 3 (1), pos 4 (1), pos 5 (3) = 10 of 54.
  EXPECT_EQ(r.rows_compared, 54);
  EXPECT_EQ(r.rows_bitdiff, 10);
  // t*_bit = 1; at position 1 layer 1 attn_out precedes layer 1 l_out in dataflow order.
  ASSERT_TRUE(r.first_bit.found());
  EXPECT_EQ(r.first_bit.pos, 1);
  EXPECT_EQ(r.first_bit.layer, 1);
  EXPECT_EQ(r.first_bit.tap, "attn_out");
  EXPECT_EQ(r.first_bit.n_bitdiff, 1u);
  EXPECT_EQ(r.first_bit.max_abs_at.index, 2);
  EXPECT_EQ(r.first_bit.max_abs,
            double(std::nextafter(4.0f, INFINITY)) - 4.0);  // 1 ULP of 4 = 2^-21
  EXPECT_EQ(r.first_bit.variant_a, "attn__ref");
  EXPECT_EQ(r.first_bit.variant_b, "attn__fast");
  // Thresholded (max-abs > 1e-3): position 2, where layer 0 l_out (+0.5) comes before layer 1.
  ASSERT_TRUE(r.first_thresh.found());
  EXPECT_EQ(r.first_thresh.pos, 2);
  EXPECT_EQ(r.first_thresh.layer, 0);
  EXPECT_EQ(r.first_thresh.tap, "l_out");
  EXPECT_EQ(r.first_thresh.max_abs, 0.5);
  // With a threshold above 0.5 the first significant divergence moves to layer 1 l_out (+1.0)
  // at position 2 (layer 1 attn_out's +0.25 and the logits stay under it until position 3).
  ds4::DiffOptions o;
  o.max_abs_threshold = 0.6;
  const ds4::DiffResult r2 = ds4::diff_dumps(p.a, p.b, o);
  EXPECT_EQ(r2.first_thresh.pos, 2);
  EXPECT_EQ(r2.first_thresh.layer, 1);
  EXPECT_EQ(r2.first_thresh.tap, "l_out");
  // Per-tap facts: provenance differs on layer 1 attn_out; max-abs location (pos, channel).
  const ds4::TapDiff& t = tap_of(r, 1, "attn_out");
  EXPECT_TRUE(t.variants_differ);
  EXPECT_EQ(t.rows_bitdiff, 2);
  EXPECT_EQ(t.stats.max_abs, 0.25);
  EXPECT_EQ(t.stats.max_abs_at.row, 2);
  EXPECT_EQ(t.stats.max_abs_at.index, 0);
  EXPECT_FALSE(tap_of(r, 0, "attn_norm").variants_differ);
  EXPECT_TRUE(tap_of(r, 0, "attn_norm").bit_equal());
}

TEST(DiffSynthetic, LogitsSummary) {
  const auto& p = synthetic_pair();
  const ds4::DiffResult r = ds4::diff_dumps(p.a, p.b, {});
  const ds4::LogitsDiff& L = r.logits;
  ASSERT_TRUE(L.present);
  EXPECT_EQ(L.positions, 6);
  EXPECT_EQ(L.n_vocab, 4);
  // Argmax differs at positions 3 and 4: 4 of 6 agree, err = sqrt((2/3)(1/3)/5) = 0.2108185.
  EXPECT_EQ(L.argmax.same, 4);
  EXPECT_NEAR(L.argmax.err, 0.2108185107, 1e-9);
  // t*_tok = 3 >= t*_bit = 1. Position 3: margin 2 > tau: structural; position 4: margin
  // 2 - 1.9995 = 0.0005 <= 1e-3: tie.
  EXPECT_EQ(L.first_token, 3);
  EXPECT_EQ(L.structural_flips, 1);
  EXPECT_EQ(L.tie_flips, 1);
  ASSERT_EQ(L.flips.size(), 2u);
  EXPECT_EQ(L.flips[0].token_a, 3);
  EXPECT_EQ(L.flips[0].token_b, 2);
  EXPECT_EQ(L.flips[0].margin, 2.0);
  EXPECT_EQ(L.flips[1].kind, ds4::FlipKind::Tie);
  EXPECT_EQ(L.cross.token_a, 3);
  EXPECT_EQ(L.cross.token_b, 2);
  EXPECT_TRUE(L.cross.pass());  // vocabulary 4, k = 5 clamped: every token is in the top-k
  // KLD per position: 0 except at 3 and 4, where it equals the metric on those rows.
  const double k3 = ds4::kl_divergence(rows_a(3).back().data, rows_b(3).back().data);
  const double k4 = ds4::kl_divergence(rows_a(4).back().data, rows_b(4).back().data);
  EXPECT_EQ(L.kld.n, 6);
  EXPECT_DOUBLE_EQ(L.kld.max, std::max(k3, k4));
  EXPECT_EQ(L.kld.min, 0.0);
  EXPECT_DOUBLE_EQ(L.kld.mean, (k3 + k4) / 6);
  EXPECT_EQ(L.kld_negative, 0);
  // Delta-p on the next input token: positions 0..4 have one (the last has none).
  EXPECT_EQ(L.dp.n, 5);
  // Logit element metrics: max-abs 2.5 at position 3, token 2 (0 -> 2.5).
  EXPECT_EQ(L.stats.max_abs, 2.5);
  EXPECT_EQ(L.stats.max_abs_at.row, 3);
  EXPECT_EQ(L.stats.max_abs_at.index, 2);
}

TEST(DiffSynthetic, RoutingFlipsAndRouterScores) {
  const auto& p = synthetic_pair();
  const ds4::DiffResult r = ds4::diff_dumps(p.a, p.b, {});
  // Position 5: layer 0 [1, 2] vs [2, 1] is the same set (bits differ, routing does not);
  // layer 1 [0, 3] vs [0, 2] is a flip.
  EXPECT_EQ(r.routing.rows_compared, 12);
  EXPECT_EQ(r.routing.flips, 1);
  EXPECT_EQ(r.routing.first_flip_layer, 1);
  EXPECT_EQ(r.routing.first_flip_pos, 5);
  EXPECT_EQ(r.routing.flips_per_layer, (std::vector<std::pair<int, int64_t>>{{0, 0}, {1, 1}}));
  EXPECT_FALSE(tap_of(r, 0, "ffn_moe_topk").bit_equal());
  // Router probs 0.25 -> 0.3: max-abs |0.25 - 0.3f| = 0.05 (to float precision).
  EXPECT_NEAR(r.routing.router_probs.max_abs, 0.05, 1e-7);
  EXPECT_EQ(r.routing.router_probs.max_abs_at.row, 5);
}

TEST(DiffSynthetic, PerLayerGrowth) {
  const auto& p = synthetic_pair();
  const ds4::DiffResult r = ds4::diff_dumps(p.a, p.b, {});
  ASSERT_EQ(r.growth.size(), 2u);
  // Layer 0: input (embedding) equal by construction, output l_out max-abs 0.5: created here.
  EXPECT_EQ(r.growth[0].tap, "l_out");
  EXPECT_TRUE(r.growth[0].input_bit_equal);
  EXPECT_EQ(r.growth[0].max_abs_out, 0.5);
  EXPECT_EQ(r.growth[0].growth, 0.5 / double(FLT_MIN));
  // Layer 1: in 0.5 (layer 0 l_out), out 1.0 (its own l_out): g = 1.0 / 0.5 = 2.
  EXPECT_EQ(r.growth[1].max_abs_in, 0.5);
  EXPECT_EQ(r.growth[1].max_abs_out, 1.0);
  EXPECT_EQ(r.growth[1].growth, 2.0);
  EXPECT_DOUBLE_EQ(r.growth[1].nmse_growth, tap_of(r, 1, "l_out").stats.nmse_energy() /
                                                tap_of(r, 0, "l_out").stats.nmse_energy());
}

TEST(DiffSynthetic, FiltersRestrictTheComparison) {
  const auto& p = synthetic_pair();
  ds4::DiffOptions o;
  // Positions 0 (nothing differs there): bit-equal, though the logits summary still runs.
  o.filter = ds4::TapFilter::parse("", "", "0");
  const ds4::DiffResult r0 = ds4::diff_dumps(p.a, p.b, o);
  EXPECT_TRUE(r0.bit_equal());
  EXPECT_EQ(r0.rows_compared, 9);
  EXPECT_EQ(r0.logits.positions, 1);
  // Only layer 0 attn_norm: equal everywhere.
  o.filter = ds4::TapFilter::parse("0", "attn_norm", "");
  const ds4::DiffResult r1 = ds4::diff_dumps(p.a, p.b, o);
  EXPECT_TRUE(r1.bit_equal());
  ASSERT_EQ(r1.taps.size(), 1u);
  EXPECT_TRUE(r1.logits.present);  // from result_output, outside the tap table
  EXPECT_EQ(r1.logits.structural_flips, 1);
  // Only layer 1 l_out, positions 2-5: first bit divergence moves to position 2.
  o.filter = ds4::TapFilter::parse("1", "l_out", "2-5");
  const ds4::DiffResult r2 = ds4::diff_dumps(p.a, p.b, o);
  EXPECT_EQ(r2.first_bit.pos, 2);
  EXPECT_EQ(r2.first_bit.tap, "l_out");
  // A filter that selects nothing is bad input.
  o.filter = ds4::TapFilter::parse("", "no_such_tap", "");
  EXPECT_NE(error_of([&] { ds4::diff_dumps(p.a, p.b, o); }).find("selects no tap"),
            std::string::npos);
}

TEST(DiffSynthetic, WindowedStreamingGivesTheSameResult) {
  const auto& p = synthetic_pair();
  ds4::DiffOptions small;
  small.window_bytes = 8;  // one row per window: every tap is compared in 6 passes
  const std::string a = ds4::json_pretty(ds4::diff_result_json(ds4::diff_dumps(p.a, p.b, {})));
  std::string b = ds4::json_pretty(ds4::diff_result_json(ds4::diff_dumps(p.a, p.b, small)));
  EXPECT_EQ(a, b);
}

TEST(DiffSynthetic, UnmatchedTapsAndPositionsAreDifferences) {
  const std::string a = fresh("unmatched_a.h5"), b = fresh("unmatched_b.h5");
  write_dump(a, rows_a);
  write_dump(b, rows_a, ds4::TapLevel::Full, manifest(), /*skip_pos=*/2, /*skip_tap=*/"attn_norm");
  const ds4::DiffResult r = ds4::diff_dumps(a, b, {});
  EXPECT_EQ(r.rows_bitdiff, 0);
  EXPECT_EQ(r.rows_unmatched, 1);
  EXPECT_EQ(tap_of(r, 0, "attn_norm").rows_only_a, 1);
  // A row on one side only is a divergence at its position (both levels), provenance "(absent)".
  EXPECT_EQ(r.first_bit.pos, 2);
  EXPECT_EQ(r.first_bit.tap, "attn_norm");
  EXPECT_EQ(r.first_bit.variant_a, "x__ref");
  EXPECT_EQ(r.first_bit.variant_b, "(absent)");
  EXPECT_EQ(r.first_thresh.pos, 2);
  std::string out;
  EXPECT_EQ(ds4::diff_command({a, b}, out), 1);
  EXPECT_NE(out.find("only in A: 1 rows"), std::string::npos) << out;
  EXPECT_FALSE(r.bit_equal());
  EXPECT_EQ(r.exit_code(), 1);
}

TEST(DiffSynthetic, StatsOnlyDumpsCompareByHash) {
  const std::string a = fresh("stats_a.h5"), b = fresh("stats_b.h5");
  write_dump(a, rows_a, ds4::TapLevel::Stats);
  write_dump(b, rows_b, ds4::TapLevel::Stats);
  const ds4::DiffResult r = ds4::diff_dumps(a, b, {});
  EXPECT_FALSE(r.full_data);
  EXPECT_EQ(r.rows_bitdiff, 10);
  EXPECT_EQ(r.first_bit.pos, 1);
  EXPECT_EQ(r.first_bit.tap, "attn_out");
  EXPECT_FALSE(r.logits.present);
  EXPECT_TRUE(ds4::diff_dumps(a, a, {}).bit_equal());
}

TEST(DiffSynthetic, RefusesIncompatibleManifests) {
  const auto& p = synthetic_pair();
  const std::string other = fresh("other_model.h5");
  write_dump(other, rows_a, ds4::TapLevel::Full,
             manifest("ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000ffff0000"));
  const std::string e = error_of([&] { ds4::diff_dumps(p.a, other, {}); });
  EXPECT_NE(e.find("dumps are not comparable: different models (model_sha256 ab12cd34ef56..."),
            std::string::npos)
      << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
  ds4::RunManifest m1 = manifest(), m2 = manifest();
  m2.tokens[3] = 9;
  EXPECT_NE(error_of([&] {
              ds4::check_comparable(m1, "a.h5", m2, "b.h5");
            }).find("different tokens (first difference at position 3: 3 vs 9)"),
            std::string::npos);
  m2 = manifest();
  m2.schema_version = 2;
  EXPECT_NE(error_of([&] {
              ds4::check_comparable(m1, "a.h5", m2, "b.h5");
            }).find("schema_version 1 (a.h5) vs 2 (b.h5)"),
            std::string::npos);
  // An unreadable file is the reader's one-line error.
  EXPECT_NE(
      error_of([&] { ds4::diff_dumps(p.a, test_dir() + "/missing.h5", {}); }).find("no such file"),
      std::string::npos);
}

TEST(DiffCommand, ExitCodesTableAndJson) {
  const auto& p = synthetic_pair();
  std::string out;
  EXPECT_EQ(ds4::diff_command({p.a, p.a}, out), 0);
  EXPECT_NE(out.find("result: BIT-EQUAL (54 rows in 9 taps)"), std::string::npos) << out;
  const std::string json = fresh("syn.json");
  EXPECT_EQ(ds4::diff_command({p.a, p.b, "--json", json, "--label", "exact", "--tau", "1e-4"}, out),
            1);
  EXPECT_NE(out.find("result: DIFFERENT (10 of 54 rows differ, in 7 of 9 taps)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("bit          position 1, layer 1 'attn_out' channel 2"), std::string::npos)
      << out;
  EXPECT_NE(out.find("variant a=attn__ref b=attn__fast"), std::string::npos) << out;
  EXPECT_NE(out.find("worst taps by max-abs"), std::string::npos);
  EXPECT_NE(out.find("MoE routing: 1 expert-set flips in 12"), std::string::npos) << out;
  // With tau 1e-4 the 0.0005 margin flip is structural too.
  const ds4::Json j = ds4::Json::parse(read_text(json), json);
  EXPECT_EQ(j.at("schema").as_string(), "ds4-parity-diff");
  EXPECT_EQ(j.at("label").as_string(), "exact");
  EXPECT_FALSE(j.at("bit_equal").as_bool());
  EXPECT_EQ(j.at("exit_code").as_int(), 1);
  EXPECT_EQ(j.at("logits").at("structural_flips").as_int(), 2);
  EXPECT_EQ(j.at("logits").at("tie_flips").as_int(), 0);
  EXPECT_EQ(j.at("first_divergence").at("bit").at("tap").as_string(), "attn_out");
  EXPECT_EQ(j.at("first_divergence").at("token").at("pos").as_int(), 3);
  EXPECT_EQ(j.at("routing").at("flips").as_int(), 1);
  EXPECT_EQ(j.at("taps").as_array().size(), 9u);
  EXPECT_EQ(j.at("taps").as_array()[0].at("stats").at("ulp_hist").at("0").as_int(), 18);  // 6 x 3
  // Equal dumps: never-diverged positions are null; infinite SQNR is the string "inf".
  EXPECT_EQ(ds4::diff_command({p.a, p.a, "--json", json}, out), 0);
  const ds4::Json e = ds4::Json::parse(read_text(json), json);
  EXPECT_TRUE(e.at("first_divergence").at("bit").is_null());
  EXPECT_EQ(e.at("logits").at("stats").at("sqnr_db").as_string(), "inf");
  // Bad input throws (the main prints it and exits 2).
  EXPECT_NE(error_of([&] { ds4::diff_command({p.a}, out); }).find("bad flag"), std::string::npos);
  EXPECT_NE(error_of([&] {
              ds4::diff_command({p.a, p.b, "--tau", "x"}, out);
            }).find("--tau"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              ds4::diff_command({p.a, p.b, "--position", "5-x"}, out);
            }).find("positions"),
            std::string::npos);
  EXPECT_EQ(ds4::diff_command({"--help"}, out), 0);
  EXPECT_NE(out.find("exit status: 0 bit-equal, 1 different"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// The tiny model: the three negative-control runs of CI
// ---------------------------------------------------------------------------------------------

// The tiny model's runs, each made on first use: plain decode, and batched width 16 strict,
// strict with the planted fault, and all fast.
std::string tiny_dump(const std::string& which) {
  static std::map<std::string, std::string> made;
  if (made.count(which)) return made[which];
  auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  ds4::RunSpec spec;
  spec.tokens = ds4::testing::pseudo_tokens(48, int(model->hparams().n_vocab));
  spec.threads = 2;
  if (which != "plain") {
    spec.mode = ds4::RunMode::Batched;
    spec.width = 16;
    spec.gates = which == "fast" ? ds4::GateSet::all_fast() : ds4::GateSet::all_exact();
    if (which == "fault") spec.fault = ds4::FaultInjection::parse("2:attn_out:40:3");
  }
  const std::string path = fresh("tiny_" + which + ".h5");
  ds4::DumpWriter w(path, ds4::make_manifest(*model, spec, "diff_test " + which),
                    ds4::TapLevel::Full);
  ds4::run_model(model, spec, &w);
  w.finish();
  return made[which] = path;
}

// The gate configuration CI uses for configurations declared exact.
std::string exact_config() {
  const std::string path = fresh("exact.toml");
  std::ofstream(path)
      << "[config.exact]\nbitwise = true\nargmax_agreement_min = 1.0\nstructural_flips_max = 0\n";
  return path;
}

TEST(DiffTinyModel, StrictBatchedEqualsPlainAndPassesTheGate) {
  const std::string json = fresh("tiny_strict.json");
  std::string out;
  EXPECT_EQ(ds4::diff_command(
                {tiny_dump("plain"), tiny_dump("strict"), "--json", json, "--label", "exact"}, out),
            0)
      << out;
  EXPECT_NE(out.find("result: BIT-EQUAL"), std::string::npos) << out;
  EXPECT_EQ(ds4::check_command({"--config", exact_config(), json}, out), 0) << out;
}

TEST(DiffTinyModel, PlantedFaultIsFoundWhereItWasPlanted) {
  const ds4::DiffResult r = ds4::diff_dumps(tiny_dump("plain"), tiny_dump("fault"), {});
  EXPECT_EQ(r.exit_code(), 1);
  ASSERT_TRUE(r.first_bit.found());
  EXPECT_EQ(r.first_bit.pos, 40);
  EXPECT_EQ(r.first_bit.layer, 2);
  EXPECT_EQ(r.first_bit.tap, "attn_out");
  EXPECT_EQ(r.first_bit.n_bitdiff, 1u);  // one element, one ULP
  EXPECT_EQ(r.first_bit.max_abs_at.index, 3);
  EXPECT_EQ(ds4::ulp_distance32(float(r.first_bit.max_abs_at.a), float(r.first_bit.max_abs_at.b)),
            1u);
  // Nothing before position 40 differs anywhere.
  for (const auto& td : r.taps)
    if (td.first_bit.found()) EXPECT_GE(td.first_bit.pos, 40) << td.name;
  const std::string json = fresh("tiny_fault.json");
  std::string out;
  EXPECT_EQ(ds4::diff_command(
                {tiny_dump("plain"), tiny_dump("fault"), "--json", json, "--label", "exact"}, out),
            1);
  EXPECT_EQ(ds4::check_command({"--config", exact_config(), json}, out), 1) << out;
  EXPECT_NE(out.find("FAIL "), std::string::npos);
  EXPECT_NE(out.find("first bit divergence at position 40, layer 2 'attn_out'"), std::string::npos)
      << out;
}

TEST(DiffTinyModel, AllFastDiffersAndFailsTheGate) {
  const std::string json = fresh("tiny_fast.json");
  std::string out;
  EXPECT_EQ(ds4::diff_command(
                {tiny_dump("plain"), tiny_dump("fast"), "--json", json, "--label", "exact"}, out),
            1)
      << out;
  const ds4::DiffResult r = ds4::diff_dumps(tiny_dump("plain"), tiny_dump("fast"), {});
  ASSERT_TRUE(r.first_bit.found());
  EXPECT_NE(r.first_bit.variant_a, r.first_bit.variant_b);  // a fast variant produced it
  EXPECT_GT(r.logits.stats.max_abs, 0.0);
  EXPECT_EQ(ds4::check_command({"--config", exact_config(), json}, out), 1) << out;
}

}  // namespace
