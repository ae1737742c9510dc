// Bisection: planted one-ULP faults are found at exactly the (layer, tap, position) where they were
// planted, from two dumps and in-process; a gate's divergence is attributed to it and confirmed
// local by the isolation rerun; --minimize-gates ddmin returns a 1-minimal failing set.
#include <gtest/gtest.h>

#include <filesystem>

#include "ds4/bisect.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

namespace {

struct Planting {
  int layer;
  const char* tap;
  int64_t pos;
  int64_t element;
};

const Planting kPlantings[] = {
    {0, "attn_norm", 3, 0}, {1, "q", 10, 5}, {2, "ffn_moe_out", 17, 1}, {3, "l_out", 5, 300}, {-1, "result_norm", 20, 7},
};

std::string dump_dir() {
  const std::string d = std::string(DS4_BINARY_DIR) + "/test-tmp/bisect";
  fs::create_directories(d);
  return d;
}

void write_dump(const std::shared_ptr<const ds4::Model>& model, const ds4::RunSpec& spec, const std::string& path) {
  ds4::DumpWriter w(path, ds4::make_manifest(*model, spec, "bisect_test"), ds4::TapLevel::Full);
  ds4::run_model(model, spec, &w);
  w.finish();
}

TEST(Bisect, FindsPlantedFaultsExactlyFromDumps) {
  const std::string path = ds4::testing::tiny_model_path("ds4");
  auto model = ds4::Model::load(path);
  ds4::RunSpec plain;
  plain.threads = 2;
  plain.tokens = ds4::testing::pseudo_tokens(24, static_cast<int>(model->hparams().n_vocab));
  const std::string a = dump_dir() + "/plain.h5";
  write_dump(model, plain, a);
  for (const Planting& p : kPlantings) {
    ds4::RunSpec faulty = plain;
    faulty.fault.enabled = true;
    faulty.fault.layer = p.layer;
    faulty.fault.tap = p.tap;
    faulty.fault.pos = p.pos;
    faulty.fault.element = p.element;
    const std::string b = dump_dir() + "/fault.h5";
    write_dump(model, faulty, b);
    ds4::BisectConfig cfg;
    cfg.dump_a = a;
    cfg.dump_b = b;
    cfg.threads = 2;
    cfg.log = nullptr;
    const ds4::BisectResult r = ds4::bisect(cfg);
    SCOPED_TRACE(faulty.fault.to_string());
    ASSERT_FALSE(r.bit_equal);
    EXPECT_EQ(r.first.pos, p.pos);
    EXPECT_EQ(r.first.layer, p.layer);
    EXPECT_EQ(r.first.tap, p.tap);
    EXPECT_EQ(r.first.channel, p.element);
    EXPECT_EQ(r.first.n_bitdiff, 1u) << "one element, one ULP";
    EXPECT_TRUE(r.fault_at_first);
    EXPECT_EQ(r.verdict, "fault") << r.explanation;
  }
}

// An in-process bisect of n pseudo-random tokens on the tiny ds4 model (2 threads, no log).
static ds4::BisectConfig tiny_config(int n_tokens, uint32_t seed) {
  ds4::BisectConfig cfg;
  cfg.model_path = ds4::testing::tiny_model_path("ds4");
  auto model = ds4::Model::load(cfg.model_path);
  cfg.tokens = ds4::testing::pseudo_tokens(n_tokens, static_cast<int>(model->hparams().n_vocab), seed);
  cfg.threads = 2;
  cfg.log = nullptr;
  return cfg;
}

TEST(Bisect, FindsPlantedFaultsInProcessOnABatchedStrictRun) {
  ds4::BisectConfig cfg = tiny_config(24, 9);
  cfg.cand.mode = ds4::RunMode::Batched;
  cfg.cand.gates = ds4::GateSet::all_exact();
  for (const Planting& p : kPlantings) {
    cfg.cand.fault = ds4::FaultInjection::parse(std::to_string(p.layer) + ":" + p.tap + ":" + std::to_string(p.pos) +
                                                ":" + std::to_string(p.element));
    const ds4::BisectResult r = ds4::bisect(cfg);
    SCOPED_TRACE(cfg.cand.fault.to_string());
    EXPECT_EQ(r.first.pos, p.pos);
    EXPECT_EQ(r.first.layer, p.layer);
    EXPECT_EQ(r.first.tap, p.tap);
    EXPECT_EQ(r.verdict, "fault");
  }
}

// q8_gemm alone fast on a strict batched run: bisect must name the gate, its fast variant, and
// confirm the divergence is local. The same on either backend.
void expect_q8_gemm_attributed_and_local(ds4::Backend backend) {
  ds4::BisectConfig cfg = tiny_config(20, 3);
  cfg.cand.backend = backend;
  cfg.cand.mode = ds4::RunMode::Batched;
  cfg.cand.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  const ds4::BisectResult r = ds4::bisect(cfg);
  ASSERT_FALSE(r.bit_equal);
  EXPECT_EQ(r.gate, "q8_gemm");
  EXPECT_EQ(r.gate_side, "fast");
  EXPECT_EQ(r.first.variant_cand, ds4::gate_info(ds4::Gate::q8_gemm).fast_variant);
  EXPECT_EQ(r.verdict, "local") << r.explanation;
  ASSERT_EQ(r.runs.size(), 1u);
  EXPECT_TRUE(r.runs[0].first.same_place(r.first));
  const std::string text = ds4::bisect_result_text(r);
  EXPECT_NE(text.find("gate q8_gemm"), std::string::npos) << text;
  EXPECT_EQ(ds4::bisect_result_json(r).at("gate").as_string(), "q8_gemm");
  std::printf("%s", text.c_str());
}

// A capture filter (--positions): positions before it are not compared, so the first divergence
// of a verifier after a long prefix is found among the verified rows alone.
TEST(Bisect, CaptureFilterComparesOnlyTheCapturedRows) {
  ds4::BisectConfig cfg = tiny_config(24, 5);
  cfg.cand.mode = ds4::RunMode::Verify;
  cfg.cand.prefix = 16;
  cfg.cand.width = 4;
  cfg.cand.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  cfg.capture = ds4::TapFilter::parse("", "", "18-");
  const ds4::BisectResult r = ds4::bisect(cfg);
  ASSERT_FALSE(r.bit_equal);
  EXPECT_EQ(r.first.pos, 18);  // rows 16 and 17 diverge too, but are not captured
  EXPECT_EQ(r.gate, "q8_gemm");
  EXPECT_EQ(r.verdict, "local") << r.explanation;
}

TEST(Bisect, AttributesAGateAndConfirmsItLocal) { expect_q8_gemm_attributed_and_local(ds4::Backend::Cpu); }

TEST(Bisect, AttributesAGateAndConfirmsItLocalOnCuda) {
  if (!ds4::cuda_device_info().available) GTEST_SKIP() << "no CUDA device";
  expect_q8_gemm_attributed_and_local(ds4::Backend::Cuda);
}

TEST(Bisect, GatesDdminGivesAOneMinimalFailingSet) {
  ds4::BisectConfig cfg = tiny_config(12, 5);
  cfg.confirm = false;
  cfg.minimize_gates = true;
  cfg.cand.mode = ds4::RunMode::Batched;
  cfg.cand.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast,moe_tiles=fast,f16_gemm=fast");
  const ds4::BisectResult r = ds4::bisect(cfg);
  ASSERT_TRUE(r.ddmin_ran);
  EXPECT_EQ(r.ddmin_candidates.size(), 3u);
  ASSERT_EQ(r.minimal_failing.size(), 1u) << "each of these gates alone diverges";
  // The set found fails on its own.
  ds4::RunSpec s;
  s.mode = ds4::RunMode::Batched;
  s.threads = 2;
  s.tokens = cfg.tokens;
  s.gates = ds4::GateSet::all_exact();
  s.gates.set(ds4::gate_from_name(r.minimal_failing[0]), ds4::GateState::Fast);
  ds4::RunSpec p = s;
  p.mode = ds4::RunMode::Plain;
  const auto model = ds4::Model::load(cfg.model_path);
  const auto a = ds4::run_model(model, p, nullptr), b = ds4::run_model(model, s, nullptr);
  EXPECT_NE(a.logits, b.logits);
}

TEST(Bisect, RefusesBadInput) {
  ds4::BisectConfig cfg;
  cfg.dump_a = dump_dir() + "/missing.h5";
  cfg.dump_b = dump_dir() + "/missing2.h5";
  cfg.log = nullptr;
  EXPECT_THROW(ds4::bisect(cfg), ds4::Error);
  ds4::BisectConfig none;
  none.log = nullptr;
  EXPECT_THROW(ds4::bisect(none), ds4::Error);
}

}  // namespace
