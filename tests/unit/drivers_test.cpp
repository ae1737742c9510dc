// Run drivers: plain, batched and verify give bit-equal logits with every gate exact; speculative
// decoding with MTP drafts and rollback reproduces greedy decode exactly; token files.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <filesystem>
#include <fstream>

#include "ds4/cuda_backend.h"
#include "ds4/drivers.h"
#include "ds4/dump.h"
#include "ds4/error.h"
#include "../support/recording_sink.h"
#include "../support/scratch.h"
#include "../support/tiny_models.h"

namespace {

using ds4::RunMode;

std::shared_ptr<const ds4::Model> tiny(bool mtp = false) {
  return ds4::Model::load(ds4::testing::tiny_model_path("ds4", mtp));
}

bool same_bytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Drivers, StrictBatchedAndVerifyEqualPlain) {
  auto model = tiny();
  ds4::RunSpec spec;
  spec.tokens = ds4::testing::pseudo_tokens(150, static_cast<int>(model->hparams().n_vocab));
  spec.gates = ds4::GateSet::all_exact();
  spec.mode = RunMode::Plain;
  const auto plain = ds4::run_model(model, spec, nullptr);
  EXPECT_EQ(plain.forwards, 150);
  for (int64_t w : {0, 7}) {
    spec.mode = RunMode::Batched;
    spec.width = w;
    EXPECT_TRUE(same_bytes(ds4::run_model(model, spec, nullptr).logits, plain.logits)) << "width " << w;
  }
  spec.mode = RunMode::Verify;
  spec.width = 4;
  spec.prefix = 10;
  const auto verify = ds4::run_model(model, spec, nullptr);
  EXPECT_EQ(verify.forwards, 10 + 35);
  EXPECT_TRUE(same_bytes(verify.logits, plain.logits));
  // All fast: the batched logits differ (the divergence the harness exists to find).
  spec.mode = RunMode::Batched;
  spec.width = 0;
  spec.gates = ds4::GateSet::all_fast();
  EXPECT_FALSE(same_bytes(ds4::run_model(model, spec, nullptr).logits, plain.logits));
}

TEST(Drivers, SpeculativeMtpVerifyReproducesGreedyDecode) {
  auto model = tiny(true);
  const auto prompt = ds4::testing::pseudo_tokens(20, static_cast<int>(model->hparams().n_vocab), 7);
  const auto greedy = ds4::teacher_forced_tokens(model, ds4::Profile::Ds4, prompt, 24);
  ASSERT_EQ(greedy.size(), 44u);
  ds4::RunSpec spec;
  spec.mode = RunMode::Verify;
  spec.drafts = "mtp";
  spec.width = 4;
  spec.prefix = 20;
  spec.generate = 24;
  spec.tokens = prompt;
  spec.gates = ds4::GateSet::all_exact();
  const auto r = ds4::run_model(model, spec, nullptr);
  EXPECT_EQ(r.tokens, greedy) << "strict speculative decoding must emit exactly the greedy tokens";
  EXPECT_GT(r.drafts_rejected, 0) << "a random MTP head should be rejected sometimes";
  // Its logits equal plain decode's on the same tokens.
  ds4::RunSpec plain;
  plain.tokens = greedy;
  const auto p = ds4::run_model(model, plain, nullptr);
  ASSERT_EQ(r.logits.size(), p.logits.size());
  EXPECT_TRUE(same_bytes(r.logits, p.logits));
}

// `ds4-parity run --mode verify --drafts mtp` names in its dump the tokens it consumed (the prefix
// and what it generated), so `diff` can pair it with a plain run of the same tokens; and it
// reports the draft acceptance.
TEST(Drivers, MtpVerifyDumpNamesTheGeneratedTokens) {
  auto model = tiny(true);
  ds4::testing::TempDir dir("ds4_mtp_dump");
  const auto prompt = ds4::testing::pseudo_tokens(20, static_cast<int>(model->hparams().n_vocab), 7);
  {
    std::ofstream f(dir.file("prompt.txt"));
    for (int32_t t : prompt) f << t << "\n";
  }
  const std::string parity = std::string(DS4_BINARY_DIR) + "/harness/ds4-parity";
  const std::string cmd = parity + " run -m " + ds4::testing::tiny_model_path("ds4", true) + " --tokens " +
                          dir.file("prompt.txt") + " --mode verify --drafts mtp --width 4 --generate 24 --strict -o " +
                          dir.file("v.h5") + " > " + dir.file("out.txt") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto greedy = ds4::teacher_forced_tokens(model, ds4::Profile::Ds4, prompt, 24);
  EXPECT_EQ(ds4::DumpReader::open(dir.file("v.h5")).manifest().tokens, greedy);
  std::ifstream out(dir.file("out.txt"));
  const std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("(acceptance "), std::string::npos) << text;
}

// A verifier restored from a PrefixCache equals one that decoded its prefix: logits, every tap
// after the prefix and the gates' effects (the kept state was made under other gates: N=1 decode
// takes none), on the CPU and, when there is one, on the GPU.
void expect_prefix_cache_is_invisible(ds4::Backend backend) {
  auto model = tiny();
  constexpr int64_t kPrefix = 40;
  ds4::RunSpec spec;
  spec.backend = backend;
  spec.tokens = ds4::testing::pseudo_tokens(90, static_cast<int>(model->hparams().n_vocab), 3);
  spec.mode = RunMode::Verify;
  spec.width = 8;
  spec.prefix = kPrefix;
  auto after_prefix = [&](const ds4::testing::RecordingSink& sink) {
    std::map<ds4::testing::RecordingSink::Key, std::vector<float>> out;
    for (const auto& [k, v] : sink.taps)
      if (std::get<2>(k) >= kPrefix) out[k] = v;
    return out;
  };
  const ds4::GateSet exact = ds4::GateSet::all_exact(), fast = ds4::GateSet::all_fast();
  for (const auto& [gates, other] : {std::pair{exact, fast}, std::pair{fast, exact}}) {
    spec.gates = gates;
    spec.prefix_cache = nullptr;
    ds4::testing::RecordingSink decoded_sink;
    const auto decoded = ds4::run_model(model, spec, &decoded_sink);
    spec.prefix_cache = std::make_shared<ds4::PrefixCache>();
    ds4::RunSpec maker = spec;
    maker.gates = other;
    const auto made = ds4::run_model(model, maker, nullptr);  // decodes and keeps the prefix
    EXPECT_FALSE(made.prefix_restored);
    ds4::testing::RecordingSink restored_sink;
    const auto restored = ds4::run_model(model, spec, &restored_sink);
    EXPECT_TRUE(restored.prefix_restored);
    EXPECT_EQ(spec.prefix_cache->hits(), 1);
    EXPECT_EQ(restored.forwards, decoded.forwards);
    EXPECT_TRUE(same_bytes(restored.logits, decoded.logits)) << gates.to_string();
    const auto want = after_prefix(decoded_sink), got = after_prefix(restored_sink);
    EXPECT_GT(want.size(), 100u);
    EXPECT_TRUE(want == got) << gates.to_string() << ": taps after the prefix differ";
    for (const auto& [k, v] : restored_sink.taps) EXPECT_GE(std::get<2>(k), kPrefix) << "restored runs tap no prefix row";
  }
  // Another prefix (or another backend/profile) is a miss.
  spec.prefix = kPrefix + 1;
  EXPECT_FALSE(ds4::run_model(model, spec, nullptr).prefix_restored);
}

TEST(Drivers, PrefixCacheIsInvisibleCpu) { expect_prefix_cache_is_invisible(ds4::Backend::Cpu); }

TEST(Drivers, PrefixCacheIsInvisibleCuda) {
  if (!ds4::cuda_device_info().available) GTEST_SKIP() << "no CUDA device";
  expect_prefix_cache_is_invisible(ds4::Backend::Cuda);
}

// Who may restore a prefix: verifiers whose sink keeps no prefix position and whose fault lies
// after the prefix (counted as run_model counts it: at least one token, at most all).
TEST(Drivers, PrefixUnobservedRule) {
  ds4::RunSpec spec;
  spec.tokens.assign(30, 1);
  spec.mode = RunMode::Verify;
  spec.prefix = 16;
  auto from = [](const char* positions) { return ds4::TapFilter::parse("", "", positions); };
  EXPECT_TRUE(ds4::prefix_unobserved(spec, from("16-")));
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("15-")));
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("")));
  spec.fault = ds4::FaultInjection::parse("1:q:15");
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("16-")));
  spec.fault = ds4::FaultInjection::parse("1:q:16");
  EXPECT_TRUE(ds4::prefix_unobserved(spec, from("16-")));
  spec.prefix = 0;  // decodes one token
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("")));
  EXPECT_TRUE(ds4::prefix_unobserved(spec, from("1-")));
  spec.prefix = 100;  // clamped to the 30 tokens: the fault at 16 is inside
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("30-")));
  spec.fault = ds4::FaultInjection{};
  EXPECT_TRUE(ds4::prefix_unobserved(spec, from("30-")));
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("29-")));
  spec.mode = RunMode::Batched;
  EXPECT_FALSE(ds4::prefix_unobserved(spec, from("30-")));
}

TEST(Drivers, TokenFilesAndErrors) {
  const std::string dir = std::string(DS4_BINARY_DIR) + "/test-tmp";
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir + "/t.txt") << "1, 2 3\n4\n";
  }
  EXPECT_EQ(ds4::read_token_file(dir + "/t.txt", 512), (std::vector<int32_t>{1, 2, 3, 4}));
  {
    std::ofstream(dir + "/bad.txt") << "1 two 3";
    std::ofstream(dir + "/range.txt") << "1 999";
    std::ofstream(dir + "/empty.txt") << "  ";
    std::ofstream(dir + "/odd.i32", std::ios::binary) << "abc";
  }
  for (const char* f : {"/bad.txt", "/range.txt", "/empty.txt", "/odd.i32", "/missing.txt"})
    EXPECT_THROW(ds4::read_token_file(dir + f, 512), ds4::Error) << f;
  EXPECT_THROW(ds4::run_mode_from_name("sideways"), ds4::Error);
  auto model = tiny();
  ds4::RunSpec spec;
  EXPECT_THROW(ds4::run_model(model, spec, nullptr), ds4::Error);  // no tokens
  spec.tokens = {1, 2, 3};
  spec.mode = RunMode::Verify;
  spec.drafts = "mtp";
  EXPECT_THROW(ds4::run_model(model, spec, nullptr), ds4::Error);  // no MTP block
}

}  // namespace
