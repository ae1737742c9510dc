// Width sweep: with every gate exact every verify width and prefill length is bit-equal (no
// threshold); with one gate fast the threshold W 1 -> 2 (decode -> batched kernels) is reported.
#include <gtest/gtest.h>

#include "ds4/error.h"
#include "ds4/sweep.h"
#include "../support/tiny_models.h"

namespace {

ds4::SweepConfig tiny_sweep() {
  ds4::SweepConfig cfg;
  cfg.model_path = ds4::testing::tiny_model_path("ds4");
  cfg.tokens = ds4::testing::pseudo_tokens(24, 512, 11);
  cfg.prefix = 8;
  cfg.max_width = 5;
  cfg.lengths = ds4::parse_lengths("1,2,8,24", 24);
  cfg.threads = 2;
  cfg.progress = nullptr;
  return cfg;
}

TEST(Sweep, StrictIsBitEqualAtEveryWidthAndLength) {
  ds4::SweepConfig cfg = tiny_sweep();
  cfg.gates = ds4::GateSet::all_exact();
  const ds4::SweepResult r = ds4::sweep(cfg);
  ASSERT_EQ(r.widths.size(), 5u);
  ASSERT_EQ(r.lengths.size(), 4u);
  for (const auto& p : r.widths) EXPECT_TRUE(p.bit_equal) << "width " << p.value;
  for (const auto& p : r.lengths) EXPECT_TRUE(p.bit_equal) << "length " << p.value;
  EXPECT_TRUE(r.changes.empty());
}

TEST(Sweep, ReportsTheDecodeToBatchedThreshold) {
  ds4::SweepConfig cfg = tiny_sweep();
  cfg.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  const ds4::SweepResult r = ds4::sweep(cfg);
  EXPECT_TRUE(r.widths[0].bit_equal) << "W = 1 is N=1 decode";
  for (size_t i = 1; i < r.widths.size(); ++i) {
    EXPECT_FALSE(r.widths[i].bit_equal);
    EXPECT_EQ(r.widths[i].first.pos, cfg.prefix) << "the first verified row diverges";
  }
  EXPECT_TRUE(r.lengths[0].bit_equal) << "a one-token prefill runs the decode kernels";
  EXPECT_FALSE(r.lengths[1].bit_equal);
  ASSERT_GE(r.changes.size(), 2u);
  EXPECT_EQ(r.changes[0].axis, "width");
  EXPECT_EQ(r.changes[0].from, 1);
  EXPECT_EQ(r.changes[0].to, 2);
  EXPECT_NE(ds4::sweep_result_text(r).find("thresholds"), std::string::npos);
  EXPECT_EQ(ds4::sweep_result_json(r).at("widths").as_array().size(), 5u);
}

// With a capture filter the rows before it are not compared: the first divergence of a width
// is the first captured verified row (ablate.h, long contexts).
TEST(Sweep, CaptureFilterComparesOnlyTheCapturedRows) {
  ds4::SweepConfig cfg = tiny_sweep();
  cfg.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  cfg.lengths.clear();
  cfg.max_width = 3;
  cfg.capture = ds4::TapFilter::parse("", "", std::to_string(cfg.prefix + 2) + "-");
  const ds4::SweepResult r = ds4::sweep(cfg);
  EXPECT_TRUE(r.widths[0].bit_equal);
  for (size_t i = 1; i < r.widths.size(); ++i) {
    EXPECT_FALSE(r.widths[i].bit_equal);
    EXPECT_EQ(r.widths[i].first.pos, cfg.prefix + 2);
  }
}

TEST(Sweep, LengthSpecs) {
  EXPECT_EQ(ds4::parse_lengths("pow2", 10), (std::vector<int64_t>{1, 2, 4, 8, 10}));
  EXPECT_EQ(ds4::parse_lengths("3-5,1,99", 10), (std::vector<int64_t>{1, 3, 4, 5, 10}));
  EXPECT_THROW(ds4::parse_lengths("x", 10), ds4::Error);
  EXPECT_THROW(ds4::parse_lengths("0", 10), ds4::Error);
}

}  // namespace
