// The CPU reference forward: batched forward == N decodes bit for bit (logits, every tap, the
// final KV/compressor/indexer state), snapshot/rollback, thread-count independence, MTP, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <tuple>

#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/synth.h"
#include "../support/recording_sink.h"
#include "../support/tiny_models.h"

namespace {

using ds4::testing::RecordingSink;
using ds4::testing::tiny_model_path;

std::vector<int32_t> test_tokens(int n, int vocab) {
  std::vector<int32_t> t(n);
  uint64_t s = 42;
  for (int i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    t[i] = static_cast<int32_t>((s >> 33) % vocab);
  }
  return t;
}

bool bytes_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Param {
  std::string mix;
  ds4::Profile profile;
};

class ForwardTest : public ::testing::TestWithParam<Param> {};

// 200 tokens cross a ratio-128 window end (127) and make the indexer select (more than
// top_k = 16 visible rows from position 67 on), so every block of the forward is exercised.
TEST_P(ForwardTest, BatchedIsBitEqualToDecodes) {
  auto model = ds4::Model::load(tiny_model_path(GetParam().mix));
  const auto tokens = test_tokens(200, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions so;
  so.profile = GetParam().profile;
  so.gates = ds4::GateSet::all_exact();
  so.n_threads = 2;

  ds4::Session plain(model, so);
  RecordingSink plain_taps;
  plain.set_tap_sink(&plain_taps);
  std::vector<float> plain_logits;
  for (int32_t t : tokens) {
    const auto l = plain.decode(t);
    plain_logits.insert(plain_logits.end(), l.begin(), l.end());
  }

  for (int width : {7, 64, 200}) {
    ds4::Session batched(model, so);
    RecordingSink batched_taps;
    batched.set_tap_sink(&batched_taps);
    std::vector<float> logits;
    for (size_t i = 0; i < tokens.size(); i += width) {
      const size_t n = std::min<size_t>(width, tokens.size() - i);
      const auto l = batched.forward(std::span<const int32_t>(tokens.data() + i, n));
      logits.insert(logits.end(), l.begin(), l.end());
    }
    EXPECT_TRUE(bytes_equal(logits, plain_logits)) << "logits differ at width " << width;
    ASSERT_EQ(batched_taps.taps.size(), plain_taps.taps.size());
    size_t differing = 0;
    for (const auto& [key, v] : plain_taps.taps) {
      auto it = batched_taps.taps.find(key);
      ASSERT_NE(it, batched_taps.taps.end());
      if (!bytes_equal(it->second, v)) {
        if (++differing < 5)
          ADD_FAILURE() << "tap differs: layer " << std::get<0>(key) << " " << std::get<1>(key)
                        << " pos " << std::get<2>(key) << " width " << width;
      }
    }
    EXPECT_EQ(differing, 0u);
    EXPECT_TRUE(ds4::Session::states_equal(*batched.snapshot(), *plain.snapshot()))
        << "state differs at width " << width;
  }
  // The taps must have covered the compressors and the indexer selection.
  bool saw_hca = false, saw_csa = false, saw_topk = false;
  for (const auto& [key, v] : plain_taps.taps) {
    saw_hca |= std::get<1>(key) == "hca_state_compress";
    saw_csa |= std::get<1>(key) == "csa_state_compress";
    saw_topk |= std::get<1>(key) == "lid_top_k";
  }
  EXPECT_TRUE(saw_hca && saw_csa && saw_topk);
  for (float v : plain_logits) ASSERT_TRUE(std::isfinite(v));
}

INSTANTIATE_TEST_SUITE_P(Mixes, ForwardTest,
                         ::testing::Values(Param{"ds4", ds4::Profile::Ds4}, Param{"ds4", ds4::Profile::Plain},
                                           Param{"f32", ds4::Profile::Plain}, Param{"q8_0", ds4::Profile::Ds4}),
                         [](const auto& info) {
                           return info.param.mix + "_" + ds4::profile_name(info.param.profile);
                         });

TEST(Forward, SnapshotRollbackReplaysExactly) {
  auto model = ds4::Model::load(tiny_model_path("ds4"));
  const auto tokens = test_tokens(90, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions strict;
  strict.gates = ds4::GateSet::all_exact();
  ds4::Session s(model, strict);
  s.forward(std::span<const int32_t>(tokens.data(), 70));
  const auto snap = s.snapshot();
  const auto first = s.forward(std::span<const int32_t>(tokens.data() + 70, 20));  // a verifier pass
  s.restore(*snap);
  EXPECT_EQ(s.pos(), 70);
  EXPECT_TRUE(ds4::Session::states_equal(*s.snapshot(), *snap));
  const auto again = s.forward(std::span<const int32_t>(tokens.data() + 70, 20));
  EXPECT_TRUE(bytes_equal(first, again));
  // Rejecting all but 5 drafts: restore and feed the accepted prefix, then decode on.
  s.restore(*snap);
  s.forward(std::span<const int32_t>(tokens.data() + 70, 5));
  ds4::Session ref(model, strict);
  ref.forward(std::span<const int32_t>(tokens.data(), 75));
  EXPECT_TRUE(ds4::Session::states_equal(*s.snapshot(), *ref.snapshot()));
}

TEST(Forward, ThreadCountDoesNotChangeResults) {
  auto model = ds4::Model::load(tiny_model_path("ds4"));
  const auto tokens = test_tokens(40, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions one, many;
  one.n_threads = 1;
  many.n_threads = 3;
  ds4::Session a(model, one), b(model, many);
  EXPECT_TRUE(bytes_equal(a.forward(tokens), b.forward(tokens)));
}

TEST(Forward, ProfilesDiffer) {
  auto model = ds4::Model::load(tiny_model_path("ds4"));
  const auto tokens = test_tokens(20, static_cast<int>(model->hparams().n_vocab));
  ds4::SessionOptions d, p;
  d.profile = ds4::Profile::Ds4;
  p.profile = ds4::Profile::Plain;
  ds4::Session a(model, d), b(model, p);
  const auto la = a.forward(tokens), lb = b.forward(tokens);
  double max_abs = 0;
  for (size_t i = 0; i < la.size(); ++i) max_abs = std::max(max_abs, std::fabs(double(la[i]) - lb[i]));
  EXPECT_GT(max_abs, 1e-4) << "ds4 and plain numerics should not coincide";
  EXPECT_LT(max_abs, 5.0) << "but they compute the same model";
}

TEST(Forward, MtpDraftIsDeterministicAndShaped) {
  auto model = ds4::Model::load(tiny_model_path("ds4", true));
  ASSERT_TRUE(model->has_mtp());
  const auto tokens = test_tokens(12, static_cast<int>(model->hparams().n_vocab));
  ds4::Session a(model, {}), b(model, {});
  const auto la = a.forward(tokens);
  b.forward(tokens);
  const int32_t next = ds4::argmax(std::span<const float>(la.data() + 11 * model->hparams().n_vocab,
                                                          model->hparams().n_vocab));
  const auto da = a.mtp_draft(next), db = b.mtp_draft(next);
  ASSERT_EQ(da.size(), model->hparams().n_vocab);
  EXPECT_TRUE(bytes_equal(da, db));
  for (float v : da) ASSERT_TRUE(std::isfinite(v));
  ds4::Session c(model, {});
  EXPECT_THROW(c.mtp_draft(next), ds4::Error);  // nothing consumed yet
}

TEST(Forward, BadInputsThrow) {
  auto model = ds4::Model::load(tiny_model_path("ds4"));
  ds4::SessionOptions so;
  so.max_ctx = 8;
  ds4::Session s(model, so);
  EXPECT_THROW(s.decode(-1), ds4::Error);
  EXPECT_THROW(s.decode(static_cast<int32_t>(model->hparams().n_vocab)), ds4::Error);
  EXPECT_EQ(s.pos(), 0);
  std::vector<int32_t> nine(9, 3);
  EXPECT_THROW(s.forward(nine), ds4::Error);
  EXPECT_THROW(ds4::Model::load("/nonexistent/model.gguf"), ds4::Error);
}

}  // namespace
