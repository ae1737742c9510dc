// The HF transformers oracle on the CUDA forward (issue #6): the fixture's F32 GGUF (every tensor
// F32, so the routed experts run moe__matvec_exact) in the plain profile on the GPU, against
//   a. HF's fp64 prefill logits: max-abs and argmax at all 320 positions (torch tie order, the
//      prefill's queue of 320/4 rows), plus the fp64-relative RMSE rule (metrics.md §8) on the
//      logits with the CPU plain reference as the baseline;
//   b. HF's decode path: 320 N = 1 GPU decodes (torch ties with the unpadded queue, as
//      hf_oracle_test.cpp's decode test) against logits_step, argmax at all 320 positions;
//   c. the CPU plain forward, per layer: every tap within the declared NMSE tier (no per-layer
//      fp64 exists, so the CPU plain taps are the reference), worst per layer reported;
//   d. strict (all gates exact) batched == GPU decodes, bit for bit, on this model.
// Skips (GTEST_SKIP) without a CUDA device or without -DDS4_CUDA=ON.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "../support/hf_fixture.h"
#include "ds4/cuda_backend.h"
#include "ds4/engine.h"

namespace {

using ds4::testing::compare_logits;
using ds4::testing::kHfFixture;
using ds4::testing::read_binary;
using ds4::testing::RecordingSink;
using ds4::testing::report_hf;

constexpr int64_t kT = 320;

// The plain profile with HF's tie order; queue = 0 is HF's decode path, 320/4 its prefill.
ds4::SessionOptions plain_opts(ds4::Backend b, int64_t queue_len) {
  ds4::SessionOptions so;
  so.backend = b;
  so.profile = ds4::Profile::Plain;
  so.gates = ds4::GateSet::all_exact();
  so.topk_ties = ds4::TopkTies::TorchCpu;
  so.torch_queue_len = queue_len;
  so.max_ctx = 1024;
  return so;
}

double rmse(const std::vector<float>& x, const std::vector<double>& ref) {
  double s = 0;
  for (size_t i = 0; i < ref.size(); ++i) s += (x[i] - ref[i]) * (x[i] - ref[i]);
  return std::sqrt(s / static_cast<double>(ref.size()));
}

// Energy-normalised NMSE (metrics.md §5) in fp64 with the CPU tap as the reference; 0 when equal,
// +inf when the reference is all zeros and the GPU tap is not.
double nmse(const std::vector<float>& ref, const std::vector<float>& x) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(x[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return num == 0 ? 0.0 : den == 0 ? INFINITY : num / den;
}

class HfOracleCuda : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const ds4::CudaDeviceInfo info = ds4::cuda_device_info();
    if (!info.available) return;
    std::printf("device: %s\n", info.name.c_str());
    model_ = ds4::testing::hf_tiny_f32_model();
    tokens_ = read_binary<int32_t>(kHfFixture + "/tokens.i32");
    fp64_ = read_binary<double>(kHfFixture + "/logits_cpu_fp64.f64");
    step_ = read_binary<float>(kHfFixture + "/logits_step.f32");
  }
  static void TearDownTestSuite() { model_.reset(); }
  void SetUp() override {
    if (!ds4::cuda_device_info().available) GTEST_SKIP() << ds4::cuda_device_info().why_unavailable;
    ASSERT_EQ(tokens_.size(), static_cast<size_t>(kT));
    ASSERT_EQ(fp64_.size(), static_cast<size_t>(kT * model_->hparams().n_vocab));
    ASSERT_EQ(step_.size(), fp64_.size());
  }
  static inline std::shared_ptr<ds4::Model> model_;
  static inline std::vector<int32_t> tokens_;
  static inline std::vector<double> fp64_;
  static inline std::vector<float> step_;
};

// (a) One GPU prefill of the 320 tokens against HF's fp64 logits. Bounds as the CPU reference's
// (hf_oracle_test.cpp: max-abs <= 1e-4, argmax equal everywhere). The §8 rule on the logits:
// RMSE(fp64, GPU) <= 2 RMSE(fp64, CPU) + tol/10 with tol = 1e-5 (about the CPU's max-abs against
// HF, 7.05e-6), i.e. the GPU is no worse than twice the reference's own F32 error.
TEST_F(HfOracleCuda, PlainPrefillMatchesFp64Logits) {
  const int64_t V = model_->hparams().n_vocab;
  ds4::Session gpu(model_, plain_opts(ds4::Backend::Cuda, kT / 4));
  const auto lg = gpu.forward(tokens_);
  const auto c = compare_logits(lg, fp64_, V);
  report_hf("GPU plain, torch ties (prefill queue), batched forward vs HF fp64", c);
  EXPECT_LE(c.max_abs, 1e-4);
  EXPECT_EQ(c.argmax_mismatch, 0);
  ds4::Session cpu(model_, plain_opts(ds4::Backend::Cpu, kT / 4));
  const auto lc = cpu.forward(tokens_);
  const auto cc = compare_logits(lc, fp64_, V);
  report_hf("CPU plain, torch ties (prefill queue), batched forward vs HF fp64", cc);
  const double r_gpu = rmse(lg, fp64_), r_cpu = rmse(lc, fp64_), tol = 1e-5;
  std::printf("[oracle] metrics.md 8: RMSE(fp64, GPU) %.3e <= 2 x RMSE(fp64, CPU) %.3e + %.0e: %s\n", r_gpu, r_cpu,
              tol / 10, r_gpu <= 2 * r_cpu + tol / 10 ? "pass" : "FAIL");
  EXPECT_LE(r_gpu, 2 * r_cpu + tol / 10);
  std::printf("[oracle] GPU vs CPU plain logits: max-abs %.3e\n", ds4::testing::max_abs_diff(lg, lc));
}

// (b) 320 GPU decodes (N = 1 each) with HF's decode-path tie order against HF's decode logits;
// the argmax is also compared with the fp64 prefill logits.
TEST_F(HfOracleCuda, PlainDecodeMatchesHfDecodePath) {
  const int64_t V = model_->hparams().n_vocab;
  ds4::Session gpu(model_, plain_opts(ds4::Backend::Cuda, 0));
  std::vector<float> lg;
  for (int32_t t : tokens_) {
    const auto l = gpu.decode(t);
    lg.insert(lg.end(), l.begin(), l.end());
  }
  const auto cs = compare_logits(lg, step_, V);
  report_hf("GPU plain, torch ties (decode queue), 320 decodes vs HF decode logits (f32)", cs);
  EXPECT_LE(cs.max_abs, 1e-4);
  EXPECT_EQ(cs.argmax_mismatch, 0);
  const auto cf = compare_logits(lg, fp64_, V);
  report_hf("GPU plain, torch ties (decode queue), 320 decodes vs HF fp64 (prefill)", cf);
  EXPECT_EQ(cf.argmax_mismatch, 0);
}

// (c) GPU plain vs CPU plain, per layer, on one 320-token prefill with the prefill tie order.
// Declared tier (nmse, metrics.md §5, per tap and position, CPU as the reference): 1e-8.
// Derivation: with plain numerics nothing is quantised, so the two backends differ only by F32
// rounding: other summation orders in the matmuls (ordered chunks vs index order) and the
// RMSNorm sum of squares, and correctly rounded exp against glibc's expf. Each of those is a few
// ulp (NMSE ~1e-14 per op); 4 layers of HC (Sinkhorn), attention and MoE amplify that by orders
// of magnitude at most, so 1e-8 leaves about two decades of headroom over the growth and still
// catches any numerics difference (an FP8 or F16 rounding alone is NMSE >= 1e-8). The discrete
// taps (router top-k, indexer top-k, dispatch) must be equal at every position: a flip there
// would be O(1), and on this fixture no score is that close to a boundary.
TEST_F(HfOracleCuda, PerLayerWithinTierOfCpuPlain) {
  constexpr double kTier = 1e-8;
  ds4::Session cpu(model_, plain_opts(ds4::Backend::Cpu, kT / 4));
  ds4::Session gpu(model_, plain_opts(ds4::Backend::Cuda, kT / 4));
  RecordingSink sc, sg;
  cpu.set_tap_sink(&sc);
  gpu.set_tap_sink(&sg);
  cpu.forward(tokens_);
  gpu.forward(tokens_);
  EXPECT_EQ(sc.taps.size(), sg.taps.size()) << "GPU and CPU tap different (layer, name, pos) sets";
  static const std::set<std::string> discrete = {"ffn_moe_topk", "lid_top_k", "attn_dispatch"};
  std::map<std::pair<int, std::string>, std::vector<double>> per_tap;
  std::map<std::pair<int, std::string>, double> mabs;
  std::map<std::string, int> discrete_mismatch;
  for (const auto& [k, a] : sc.taps) {
    const auto it = sg.taps.find(k);
    ASSERT_NE(it, sg.taps.end()) << "GPU lacks tap " << std::get<0>(k) << " " << std::get<1>(k) << " "
                                 << std::get<2>(k);
    ASSERT_EQ(a.size(), it->second.size()) << std::get<1>(k);
    if (discrete.count(std::get<1>(k))) {
      discrete_mismatch[std::get<1>(k)] += !ds4::testing::bytes_equal(a, it->second);
      continue;
    }
    const std::pair<int, std::string> key{std::get<0>(k), std::get<1>(k)};
    per_tap[key].push_back(nmse(a, it->second));
    mabs[key] = std::max(mabs[key], ds4::testing::max_abs_diff(a, it->second));
  }
  std::printf("%-6s %-24s %-12s %-12s %-12s\n", "layer", "tap", "median_nmse", "worst_nmse", "max_abs");
  std::map<int, std::tuple<double, std::string, double>> per_layer;  // worst nmse, its tap, max-abs
  for (auto& [k, v] : per_tap) {
    std::sort(v.begin(), v.end());
    const double worst = v.back();
    std::printf("%-6d %-24s %-12.3e %-12.3e %-12.3e\n", k.first, k.second.c_str(), v[v.size() / 2], worst, mabs[k]);
    auto& l = per_layer[k.first];
    if (worst >= std::get<0>(l)) std::get<0>(l) = worst, std::get<1>(l) = k.second;
    std::get<2>(l) = std::max(std::get<2>(l), mabs[k]);
    EXPECT_LE(worst, kTier) << "layer " << k.first << " tap " << k.second;
  }
  for (const auto& [l, v] : per_layer)
    std::printf("[per-layer] %s: worst nmse %.3e (%s), max-abs %.3e (tier nmse <= %.0e)\n",
                l < 0 ? "head" : ("layer " + std::to_string(l)).c_str(), std::get<0>(v), std::get<1>(v).c_str(),
                std::get<2>(v), kTier);
  for (const auto& [n, c] : discrete_mismatch) {
    std::printf("[per-layer] discrete tap %s: %d (layer, position) pairs differ\n", n.c_str(), c);
    EXPECT_EQ(c, 0) << n;
  }
}

// (d) Strict batched == decodes, bit for bit (logits, taps, state) on the F32 model with the
// prefill tie order: N = 2, 16, 128 and the whole 320-token prompt (indexed attention active
// from position 67 on; 320 spans two cache chunks of 256).
TEST_F(HfOracleCuda, StrictBatchedBitEqualToDecodes) {
  ds4::testing::expect_strict_batched_equals_decodes(model_, plain_opts(ds4::Backend::Cuda, kT / 4), tokens_,
                                                     {{0, 2}, {0, 16}, {0, 128}, {0, 320}}, "hf-tiny plain");
}

}  // namespace
