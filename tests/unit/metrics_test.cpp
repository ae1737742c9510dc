// The divergence metrics (harness/include/ds4/metrics.h, definitions in metrics.md) on cases
// worked out by hand; each test shows its arithmetic. Edge cases: empty input, NaN, +-0, Inf,
// denormals, ties.
#include "ds4/metrics.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "ds4/error.h"

namespace {

using ds4::CompareStats;
using std::nextafter;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kDenormMin = std::numeric_limits<float>::denorm_min();  // 2^-149

// x advanced by `ulps` representable floats toward +inf.
float up(float x, int ulps) {
  for (int i = 0; i < ulps; ++i) x = nextafter(x, kInf);
  return x;
}

// The running example of metrics.md-style hand checks: a = [1, 2, 3], b = [1, 2.5, 3].
const std::vector<float> kA = {1, 2, 3}, kB = {1, 2.5f, 3};

// ---------------------------------------------------------------------------------------------
// §1 bitwise equality
// ---------------------------------------------------------------------------------------------

TEST(MetricsBitwise, EqualAndOneDifference) {
  const CompareStats eq = ds4::compare(kA, kA);
  EXPECT_TRUE(eq.bit_equal());
  EXPECT_EQ(eq.n, 3u);
  EXPECT_EQ(eq.n_bitdiff, 0u);
  // b differs at index 1 only: n_bitdiff = 1, frac = 1/3.
  const CompareStats s = ds4::compare(kA, kB);
  EXPECT_FALSE(s.bit_equal());
  EXPECT_EQ(s.n_bitdiff, 1u);
  EXPECT_DOUBLE_EQ(s.frac_bitdiff(), 1.0 / 3.0);
}

TEST(MetricsBitwise, SignedZeroIsABitDifferenceWithZeroUlp) {
  // +0 = 0x00000000, -0 = 0x80000000: the bits differ, so n_bitdiff = 1 (and n_signed_zero = 1),
  // but k(+0) = 0x80000000 + 0 and k(-0) = 0x80000000 - 0: ULP distance 0; |a - b| = 0.
  const std::vector<float> a = {0.0f, 1.0f}, b = {-0.0f, 1.0f};
  const CompareStats s = ds4::compare(a, b);
  EXPECT_FALSE(s.bit_equal());
  EXPECT_EQ(s.n_bitdiff, 1u);
  EXPECT_EQ(s.n_signed_zero, 1u);
  EXPECT_EQ(s.max_ulp, 0u);
  EXPECT_EQ(s.ulp_hist[0], 2u);
  EXPECT_EQ(s.max_abs, 0.0);
  EXPECT_EQ(s.nmse_energy(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// §2 max-abs, §3 max-rel
// ---------------------------------------------------------------------------------------------

TEST(MetricsMaxAbs, ValueIndexAndBothValues) {
  // |a - b| = [0, 0.5, 0]: max-abs 0.5 at index 1, a = 2, b = 2.5.
  CompareStats s;
  s.add(kA, kB, /*row=*/7);
  EXPECT_EQ(s.max_abs, 0.5);
  EXPECT_EQ(s.max_abs_at.row, 7);
  EXPECT_EQ(s.max_abs_at.index, 1);
  EXPECT_EQ(s.max_abs_at.a, 2.0);
  EXPECT_EQ(s.max_abs_at.b, 2.5);
}

TEST(MetricsMaxAbs, TiesKeepTheFirstIndex) {
  // |a - b| = [0.5, 0.5]: the first index attaining the maximum, 0.
  const std::vector<float> a = {1, 2}, b = {1.5f, 2.5f};
  EXPECT_EQ(ds4::compare(a, b).max_abs_at.index, 0);
}

TEST(MetricsMaxRel, DividesByMaxOfAbsAAndEps) {
  // a = [1, 2, 3], b = [1, 2.5, 3]: rel = [0, 0.5/2, 0] = [0, 0.25, 0]; max 0.25 at index 1.
  const CompareStats s = ds4::compare(kA, kB);
  EXPECT_EQ(s.max_rel, 0.25);
  EXPECT_EQ(s.max_rel_at.index, 1);
  EXPECT_EQ(s.opt.eps_rel, 1e-6);  // reported with the result
  // a = [0, 4], b = [2^-20, 4.25]: rel_0 = 2^-20 / max(0, 1e-6) = 9.5367431640625e-7 / 1e-6
  // = 0.95367431640625; rel_1 = 0.25 / 4 = 0.0625. Max 0.9537 at index 0 (the eps floor applied).
  const std::vector<float> a = {0, 4}, b = {std::ldexp(1.0f, -20), 4.25f};
  const CompareStats r = ds4::compare(a, b);
  EXPECT_NEAR(r.max_rel, 0.95367431640625, 1e-15);
  EXPECT_EQ(r.max_rel_at.index, 0);
  // With eps_rel = 1e-3 the same pair gives rel_0 = 9.5367431640625e-7 / 1e-3 = 9.5367e-4 and
  // index 1 (0.0625) wins.
  ds4::CompareOptions o;
  o.eps_rel = 1e-3;
  const CompareStats r2 = ds4::compare(a, b, o);
  EXPECT_EQ(r2.max_rel, 0.0625);
  EXPECT_EQ(r2.max_rel_at.index, 1);
}

// ---------------------------------------------------------------------------------------------
// §4 ULP distance
// ---------------------------------------------------------------------------------------------

TEST(MetricsUlp, OrderedKeys32) {
  // k(+1.0) = 0x80000000 + 0x3F800000 = 0xBF800000 = 3212836864
  EXPECT_EQ(ds4::ulp_key32(0x3F800000u), 3212836864LL);
  // k(-1.0) = 0x80000000 - (0xBF800000 & 0x7FFFFFFF) = 0x80000000 - 0x3F800000 = 0x40800000
  EXPECT_EQ(ds4::ulp_key32(0xBF800000u), 0x40800000LL);
  // k(+0) = k(-0) = 0x80000000
  EXPECT_EQ(ds4::ulp_key32(0x00000000u), 0x80000000LL);
  EXPECT_EQ(ds4::ulp_key32(0x80000000u), 0x80000000LL);
}

TEST(MetricsUlp, Distances32) {
  EXPECT_EQ(ds4::ulp_distance32(1.0f, 1.0f), 0u);
  EXPECT_EQ(ds4::ulp_distance32(1.0f, up(1.0f, 1)), 1u);  // 0x3F800000 -> 0x3F800001
  // -1 to +1: 0xBF800000 - 0x40800000 = 0x7F000000 = 2130706432 ULPs.
  EXPECT_EQ(ds4::ulp_distance32(-1.0f, 1.0f), 2130706432u);
  // Across zero: -denorm_min (key 0x7FFFFFFF) to +denorm_min (key 0x80000001) = 2.
  EXPECT_EQ(ds4::ulp_distance32(-kDenormMin, kDenormMin), 2u);
  EXPECT_EQ(ds4::ulp_distance32(0.0f, -0.0f), 0u);
  // FLT_MAX = 0x7F7FFFFF, +Inf = 0x7F800000: one ULP apart on the key line.
  EXPECT_EQ(ds4::ulp_distance32(std::numeric_limits<float>::max(), kInf), 1u);
  EXPECT_EQ(ds4::ulp_distance32(kNaN, 1.0f), ds4::kUlpInfinite);
  EXPECT_EQ(ds4::ulp_distance32(kNaN, kNaN), ds4::kUlpInfinite);
}

TEST(MetricsUlp, HistogramBuckets) {
  // ULPs [0, 1, 3, 4, 16, 17] -> buckets {0:1, 1:1, 2-4:2, 5-16:1, >16:1}; max 17 at index 5.
  const std::vector<float> a(6, 1.0f);
  const std::vector<float> b = {1.0f, up(1, 1), up(1, 3), up(1, 4), up(1, 16), up(1, 17)};
  const CompareStats s = ds4::compare(a, b);
  EXPECT_EQ(s.ulp_hist, (std::array<uint64_t, 5>{1, 1, 2, 1, 1}));
  EXPECT_EQ(s.max_ulp, 17u);
  EXPECT_EQ(s.max_ulp_at.index, 5);
  EXPECT_TRUE(ds4::compare(std::vector<float>(a.begin(), a.begin() + 4),
                           std::vector<float>(b.begin(), b.begin() + 4))
                  .near_equal());  // max 4 ULPs = googletest's kMaxUlps
  EXPECT_FALSE(s.near_equal());
  EXPECT_STREQ(ds4::ulp_bucket_name(2), "2-4");
  EXPECT_EQ(ds4::ulp_bucket(5), 3);
}

TEST(MetricsUlp, SixteenBitAnalogue) {
  // fp16 1.0 = 0x3C00, next 0x3C01: 1 ULP. +0 (0x0000) vs -0 (0x8000): 0 ULP.
  EXPECT_EQ(ds4::ulp_distance16(0x3C00, 0x3C01, ds4::Half16::F16), 1u);
  EXPECT_EQ(ds4::ulp_distance16(0x0000, 0x8000, ds4::Half16::F16), 0u);
  // bf16 1.0 = 0x3F80, -1.0 = 0xBF80: k = 0x8000 + 0x3F80 = 0xBF80 and 0x8000 - 0x3F80 = 0x4080,
  // distance 0x7F00 = 32512.
  EXPECT_EQ(ds4::ulp_key16(0x3F80), 0xBF80);
  EXPECT_EQ(ds4::ulp_key16(0xBF80), 0x4080);
  EXPECT_EQ(ds4::ulp_distance16(0x3F80, 0xBF80, ds4::Half16::BF16), 32512u);
  // NaN: fp16 0x7E00, bf16 0x7FC0. 0x7C00 is fp16 +Inf (not NaN) but a bf16 normal number.
  EXPECT_EQ(ds4::ulp_distance16(0x7E00, 0x3C00, ds4::Half16::F16), ds4::kUlpInfinite);
  EXPECT_EQ(ds4::ulp_distance16(0x7FC0, 0x3F80, ds4::Half16::BF16), ds4::kUlpInfinite);
  EXPECT_EQ(ds4::ulp_distance16(0x7C00, 0x7BFF, ds4::Half16::F16), 1u);
  // compare16 on fp16 [1, 2] vs [1 + 2^-10, 2]: max-abs 2^-10 = 0.0009765625 at index 0, 1 ULP.
  const std::vector<uint16_t> a = {0x3C00, 0x4000}, b = {0x3C01, 0x4000};
  const CompareStats s = ds4::compare16(a, b, ds4::Half16::F16);
  EXPECT_EQ(s.n_bitdiff, 1u);
  EXPECT_EQ(s.max_abs, 0.0009765625);
  EXPECT_EQ(s.max_abs_at.index, 0);
  EXPECT_EQ(s.max_ulp, 1u);
  // Inf handling follows the dtype: fp16 +Inf vs fp16 max (0x7BFF = 65504) is an Inf mismatch.
  const std::vector<uint16_t> ia = {0x7C00}, ib = {0x7BFF};
  EXPECT_EQ(ds4::compare16(ia, ib, ds4::Half16::F16).n_inf_mismatch, 1u);
  EXPECT_EQ(ds4::compare16(ia, ib, ds4::Half16::BF16).n_inf_mismatch, 0u);  // both finite in bf16
}

// ---------------------------------------------------------------------------------------------
// §5 NMSE (both variants), §6 SQNR, §7 cosine, §8 RMSE
// ---------------------------------------------------------------------------------------------

TEST(MetricsNmse, EnergyNormalised) {
  // sum (a-b)^2 = 0 + 0.25 + 0 = 0.25; sum a^2 = 1 + 4 + 9 = 14; NMSE = 0.25/14 = 0.017857142857.
  // NMSE_dB = 10 log10(0.017857142857) = 10 * (-1.7481880270) = -17.481880270.
  const CompareStats s = ds4::compare(kA, kB);
  EXPECT_DOUBLE_EQ(s.nmse_energy(), 0.25 / 14.0);
  EXPECT_NEAR(s.nmse_energy_db(), -17.481880270, 1e-8);
  // Normalised L2 = sqrt(0.25/14) = 0.13363062096.
  EXPECT_NEAR(s.rel_l2(), 0.13363062096, 1e-10);
}

TEST(MetricsNmse, VarianceNormalisedIsADifferentNumber) {
  // mean((b-a)^2) = 0.25/3 = 0.0833333; var(a) (population) = 14/3 - 2^2 = 2/3;
  // NMSE_var = (0.25/3) / (2/3) = 0.125 -- not 0.0178571 (the energy variant): never mix them.
  const CompareStats s = ds4::compare(kA, kB);
  EXPECT_NEAR(s.nmse_variance(), 0.125, 1e-15);
  EXPECT_NE(s.nmse_variance(), s.nmse_energy());
}

TEST(MetricsSqnr, IsMinusNmseDb) {
  // SQNR = 20 log10(|a| / |a-b|) = 20 log10(sqrt(14) / 0.5) = 20 log10(7.48331477) = 17.48188027.
  const CompareStats s = ds4::compare(kA, kB);
  EXPECT_NEAR(s.sqnr_db(), 17.481880270, 1e-8);
  EXPECT_DOUBLE_EQ(s.sqnr_db(), -s.nmse_energy_db());
}

TEST(MetricsCosine, HandValueAndScaleBlindness) {
  // a.b = 1 + 5 + 9 = 15; |a|^2 = 14; |b|^2 = 1 + 6.25 + 9 = 16.25;
  // cos = 15 / sqrt(14 * 16.25) = 15 / sqrt(227.5) = 15 / 15.08310313 = 0.99449032.
  EXPECT_NEAR(ds4::compare(kA, kB).cosine(), 0.9944903161, 1e-9);
  // b = 2a: cosine 1 although max-abs is 3 (|3 - 6|): cosine must be paired with max-abs.
  const std::vector<float> b2 = {2, 4, 6};
  const CompareStats s = ds4::compare(kA, b2);
  EXPECT_NEAR(s.cosine(), 1.0, 1e-15);
  EXPECT_EQ(s.max_abs, 3.0);
  // All-zero on both sides: 1 (identical); on one side only: 0.
  const std::vector<float> z = {0, 0, 0};
  EXPECT_EQ(ds4::compare(z, z).cosine(), 1.0);
  EXPECT_EQ(ds4::compare(z, kA).cosine(), 0.0);
}

TEST(MetricsRmse, MeanSquaredErrorRoot) {
  // RMSE = sqrt(0.25 / 3) = 0.28867513459.
  EXPECT_NEAR(ds4::compare(kA, kB).rmse(), 0.28867513459, 1e-10);
}

TEST(MetricsRmseGate, PyTorchSame) {
  // 4 elements (< 1000, so m = 3): fp64 = 0; a = [0.5, 0, 0, 0]: RMSE(fp64, a) = sqrt(0.25/4)
  // = 0.25; bound = 3 * 0.25 + 1e-4/10 = 0.75001.
  const std::vector<double> f = {0, 0, 0, 0};
  const std::vector<float> a = {0.5f, 0, 0, 0}, b_ok = {1, 0, 0, 0}, b_bad = {2, 0, 0, 0};
  const ds4::RmseGate ok = ds4::fp64_rmse_gate(f, a, b_ok);  // RMSE(fp64, b) = sqrt(1/4) = 0.5
  EXPECT_EQ(ok.rmse_ref, 0.25);
  EXPECT_EQ(ok.rmse_cand, 0.5);
  EXPECT_EQ(ok.multiplier, 3.0);
  EXPECT_DOUBLE_EQ(ok.bound, 0.75001);
  EXPECT_TRUE(ok.pass);
  EXPECT_FALSE(ds4::fp64_rmse_gate(f, a, b_bad).pass);  // sqrt(4/4) = 1 > 0.75001
  // 1000 elements (m = 2): one error of 0.5 in a, of 1.0002 in b: RMSE_a = sqrt(0.25/1000)
  // = 0.0158114, RMSE_b = 1.0002/sqrt(1000) = 0.0316291; bound = 2 * 0.0158114 + 1e-5
  // = 0.0316328: passes only thanks to tol/10 (2 * RMSE_a alone is 0.0316228).
  std::vector<double> f1(1000, 0.0);
  std::vector<float> a1(1000, 0.0f), b1(1000, 0.0f);
  a1[0] = 0.5f;
  b1[0] = 1.0002f;
  const ds4::RmseGate g = ds4::fp64_rmse_gate(f1, a1, b1);
  EXPECT_EQ(g.multiplier, 2.0);
  EXPECT_NEAR(g.bound, 0.0316327766, 1e-9);
  EXPECT_TRUE(g.pass);
  EXPECT_FALSE(ds4::fp64_rmse_gate(f1, a1, b1, false, 0.0).pass);  // 0.0316291 > 0.0316228
  EXPECT_EQ(ds4::fp64_rmse_gate(f1, a1, b1, /*half_precision=*/true).multiplier, 3.0);
}

// ---------------------------------------------------------------------------------------------
// Accumulation and edge cases
// ---------------------------------------------------------------------------------------------

TEST(MetricsCompare, MergeOfRowsEqualsOneCall) {
  // Rows [1, 2] and [3] against [1, 2.5] and [3]: merged max-abs at row 0 index 1, NMSE 0.25/14.
  CompareStats r0, r1;
  r0.add(std::vector<float>{1, 2}, std::vector<float>{1, 2.5f}, 0);
  r1.add(std::vector<float>{3}, std::vector<float>{3}, 1);
  CompareStats m;
  m.merge(r0);
  m.merge(r1);
  const CompareStats one = ds4::compare(kA, kB);
  EXPECT_EQ(m.n, one.n);
  EXPECT_EQ(m.max_abs, 0.5);
  EXPECT_EQ(m.max_abs_at.row, 0);
  EXPECT_EQ(m.max_abs_at.index, 1);
  EXPECT_DOUBLE_EQ(m.nmse_energy(), one.nmse_energy());
  EXPECT_NEAR(m.nmse_variance(), one.nmse_variance(), 1e-15);  // Chan's Welford merge
  EXPECT_DOUBLE_EQ(m.cosine(), one.cosine());
}

TEST(MetricsCompare, Empty) {
  const CompareStats s = ds4::compare(std::vector<float>{}, std::vector<float>{});
  EXPECT_TRUE(s.bit_equal());
  EXPECT_EQ(s.n, 0u);
  EXPECT_EQ(s.max_abs, 0.0);
  EXPECT_FALSE(s.max_abs_at.valid());
  EXPECT_EQ(s.nmse_energy(), 0.0);
  EXPECT_EQ(s.nmse_variance(), 0.0);
  EXPECT_EQ(s.cosine(), 1.0);
  EXPECT_EQ(s.rmse(), 0.0);
  EXPECT_EQ(s.frac_bitdiff(), 0.0);
}

TEST(MetricsCompare, LengthMismatchThrows) {
  EXPECT_THROW(ds4::compare(kA, std::vector<float>{1, 2}), ds4::Error);
}

TEST(MetricsCompare, NanPolicy) {
  // NaN on one side: a NaN-mismatch, infinite ULP (bucket >16), always a failure.
  const CompareStats m = ds4::compare(std::vector<float>{1, kNaN}, std::vector<float>{1, 2});
  EXPECT_EQ(m.n_nan_mismatch, 1u);
  EXPECT_TRUE(m.nan_failure());
  EXPECT_EQ(m.max_ulp, ds4::kUlpInfinite);
  EXPECT_EQ(m.max_ulp_at.index, 1);
  EXPECT_EQ(m.ulp_hist[4], 1u);
  EXPECT_EQ(m.max_abs, 0.0);  // the NaN pair is left out of the numeric sums
  EXPECT_TRUE(ds4::exceeds_threshold(m, 1.0));
  // NaN on both sides at the same index: the same bits, so bit-equal, but a failure unless the
  // policy allows matching NaNs.
  const std::vector<float> a = {kNaN, 1}, b = {kNaN, 1};
  const CompareStats both = ds4::compare(a, b);
  EXPECT_TRUE(both.bit_equal());
  EXPECT_EQ(both.n_nan_both, 1u);
  EXPECT_TRUE(both.nan_failure());
  ds4::CompareOptions allow;
  allow.allow_matching_nan = true;
  const CompareStats ok = ds4::compare(a, b, allow);
  EXPECT_FALSE(ok.nan_failure());
  EXPECT_EQ(ok.max_ulp, 0u);
}

TEST(MetricsCompare, InfMustMatchSignAndPosition) {
  const std::vector<float> a = {kInf, -kInf, 1};
  EXPECT_EQ(ds4::compare(a, a).n_inf_mismatch, 0u);
  // +Inf vs -Inf, and -Inf vs a finite value: 2 mismatches; the finite pair alone is in max-abs.
  const CompareStats s = ds4::compare(a, std::vector<float>{-kInf, -3e38f, 1.5f});
  EXPECT_EQ(s.n_inf_mismatch, 2u);
  EXPECT_TRUE(s.nonfinite_failure());
  EXPECT_EQ(s.max_abs, 0.5);
  EXPECT_EQ(s.max_abs_at.index, 2);
  EXPECT_EQ(s.n_finite, 1u);
}

TEST(MetricsCompare, DenormalsAreExactInFp64) {
  // a = [2^-149], b = [0]: 1 ULP; |a-b| = 1.401298464e-45; in fp64 a^2 = 1.96e-90 does not
  // underflow, so NMSE = (2^-149)^2 / (2^-149)^2 = 1 exactly (fp32 squares would give 0/0).
  const CompareStats s = ds4::compare(std::vector<float>{kDenormMin}, std::vector<float>{0.0f});
  EXPECT_EQ(s.max_ulp, 1u);
  EXPECT_EQ(s.max_abs, std::ldexp(1.0, -149));
  EXPECT_EQ(s.nmse_energy(), 1.0);
  // max-rel: 2^-149 / max(2^-149, 1e-6) = 1.4e-45 / 1e-6 = 1.4013e-39.
  EXPECT_NEAR(s.max_rel, std::ldexp(1.0, -149) / 1e-6, 1e-50);
}

// ---------------------------------------------------------------------------------------------
// §9 KL divergence, §10 delta-p, aggregation
// ---------------------------------------------------------------------------------------------

TEST(MetricsKld, HandValue) {
  // a = [0, 0]: P = [1/2, 1/2]. b = [1, 0]: Q = [e/(e+1), 1/(e+1)] = [0.7310585786, 0.2689414214].
  // KLD = 1/2 ln(0.5/0.7310585786) + 1/2 ln(0.5/0.2689414214)
  //     = 1/2 (-0.3798854930 + 0.6201145070) = 0.1201145070
  //     (closed form: ln(1 + e) - ln 2 - 1/2 = 1.3132616875 - 0.6931471806 - 0.5).
  const std::vector<float> a = {0, 0}, b = {1, 0};
  EXPECT_NEAR(ds4::kl_divergence(a, b), 0.1201145069, 1e-10);
  EXPECT_EQ(ds4::kl_divergence(a, a), 0.0);  // identical logits: exactly 0 in fp64
  // Log-sum-exp: logits of 1000 do not overflow: a = [1000, 0], b = [1000, 1].
  // P = [1, e^-1000], Q = [1/(1+e^-999), ...]: KLD ~ 1 * (0 - (-e^-999)) = e^-999 ~ 0 (> 0).
  const double k = ds4::kl_divergence(std::vector<float>{1000, 0}, std::vector<float>{1000, 1});
  EXPECT_GE(k, 0.0);
  EXPECT_LT(k, 1e-300);
  // Shift invariance: b = a + 7 is the same distribution.
  EXPECT_NEAR(ds4::kl_divergence(std::vector<float>{1, 2, 3}, std::vector<float>{8, 9, 10}), 0.0,
              1e-15);
}

TEST(MetricsKld, NegativeSignalsABug) {
  // Not a distribution on the Q side (log q = [0, 0], q sums to 2: a storage bug):
  // KLD = 1/2 (ln 1/2 - 0) * 2 = ln 1/2 = -0.6931471806 < 0, which the diff counts and flags.
  const std::vector<double> lp = {std::log(0.5), std::log(0.5)}, lq = {0, 0};
  EXPECT_NEAR(ds4::kl_divergence_logp(lp, lq), -0.6931471806, 1e-10);
}

TEST(MetricsKld, NonFiniteLogits) {
  // A NaN logit: KLD NaN. -Inf logits are masked tokens: P_v = 0 terms are 0.
  EXPECT_TRUE(
      std::isnan(ds4::kl_divergence(std::vector<float>{kNaN, 0}, std::vector<float>{0, 0})));
  EXPECT_NEAR(ds4::kl_divergence(std::vector<float>{0, 0, -kInf}, std::vector<float>{0, 0, -kInf}),
              0.0, 0.0);
  // P puts mass where Q has none: +inf.
  EXPECT_TRUE(
      std::isinf(ds4::kl_divergence(std::vector<float>{0, 0}, std::vector<float>{0, -kInf})));
  EXPECT_TRUE(ds4::log_softmax(std::vector<float>{}).empty());
}

TEST(MetricsDeltaP, TargetProbabilities) {
  // Target 0: P(0) = 0.5, Q(0) = 0.7310585786; delta-p = Q - P = 0.2310585786.
  // Multiplicative error: exp(|ln 0.5 - ln 0.7310585786|) = 0.7310585786 / 0.5 = 1.4621171573.
  const ds4::LogitsPosition p =
      ds4::compare_logits_position(std::vector<float>{0, 0}, std::vector<float>{1, 0}, 0, 1);
  EXPECT_NEAR(p.dp, 0.2310585786, 1e-10);
  const std::vector<double> lp = {p.logp_target}, lq = {p.logq_target};
  EXPECT_NEAR(ds4::multiplicative_prob_error(lp, lq), 1.4621171573, 1e-10);
  // Two positions, errors factor 1.4621171573 and 1 (equal): mean = 1.2310585786.
  const std::vector<double> lp2 = {p.logp_target, -1}, lq2 = {p.logq_target, -1};
  EXPECT_NEAR(ds4::multiplicative_prob_error(lp2, lq2), 1.2310585786, 1e-10);
  // No target: NaN fields.
  EXPECT_TRUE(std::isnan(
      ds4::compare_logits_position(std::vector<float>{0, 0}, std::vector<float>{1, 0}, -1).dp));
  EXPECT_THROW(ds4::compare_logits_position(std::vector<float>{0, 0}, std::vector<float>{1, 0}, 2),
               ds4::Error);
}

TEST(MetricsSummary, LlamaCppAggregation) {
  // x = [4, 1, 3, 2]: mean 2.5; E[x^2] = 30/4 = 7.5; E[x^2] - E[x]^2 = 7.5 - 6.25 = 1.25;
  // mean_err = sqrt(1.25 / 3) = 0.6454972244; rms = sqrt(7.5) = 2.7386127875.
  // Sorted [1, 2, 3, 4], h = q (n - 1) = 3q: median h = 1.5 -> 2.5; 90% h = 2.7 -> 3.7;
  // 10% h = 0.3 -> 1.3; 99.9% h = 2.997 -> 3.997; 0.1% h = 0.003 -> 1.003.
  const ds4::DistSummary s = ds4::summarize({4, 1, 3, 2}, ds4::kKldPercentiles);
  EXPECT_EQ(s.n, 4);
  EXPECT_EQ(s.mean, 2.5);
  EXPECT_NEAR(s.mean_err, 0.6454972244, 1e-10);
  EXPECT_NEAR(s.rms, 2.7386127875, 1e-10);
  EXPECT_EQ(s.max, 4);
  EXPECT_EQ(s.min, 1);
  ASSERT_EQ(s.percentiles.size(), 9u);
  auto at = [&](double p) {
    for (const auto& [q, v] : s.percentiles)
      if (q == p) return v;
    return -1.0;
  };
  EXPECT_NEAR(at(50), 2.5, 1e-12);
  EXPECT_NEAR(at(90), 3.7, 1e-12);
  EXPECT_NEAR(at(10), 1.3, 1e-12);
  EXPECT_NEAR(at(99.9), 3.997, 1e-12);
  EXPECT_NEAR(at(0.1), 1.003, 1e-12);
  // NaN values are counted and left out; one value: no uncertainty.
  const ds4::DistSummary one = ds4::summarize({2.0, std::nan("")}, ds4::kKldPercentiles);
  EXPECT_EQ(one.n, 1);
  EXPECT_EQ(one.n_nan, 1);
  EXPECT_EQ(one.mean_err, 0.0);
  EXPECT_EQ(ds4::summarize({}, ds4::kDpPercentiles).n, 0);
}

// ---------------------------------------------------------------------------------------------
// §11 argmax agreement, §12 top-k, §13 margins and flips
// ---------------------------------------------------------------------------------------------

TEST(MetricsArgmax, LowestIndexTieBreak) {
  EXPECT_EQ(ds4::argmax_lowest(std::vector<float>{1, 3, 3}), 1);      // tie between 1 and 2 -> 1
  EXPECT_EQ(ds4::argmax_lowest(std::vector<float>{kNaN, 2, 1}), 1);   // NaN never wins
  EXPECT_EQ(ds4::argmax_lowest(std::vector<float>{-0.0f, 0.0f}), 0);  // -0 == +0: a tie
  EXPECT_EQ(ds4::argmax_lowest(std::vector<float>{}), -1);
}

TEST(MetricsArgmax, AgreementAndUncertainty) {
  // 3 of 4 agree: p = 0.75; err = sqrt(0.75 * 0.25 / 3) = sqrt(0.0625) = 0.25.
  const ds4::Agreement a = ds4::argmax_agreement(3, 4);
  EXPECT_EQ(a.p, 0.75);
  EXPECT_EQ(a.err, 0.25);
  EXPECT_EQ(ds4::argmax_agreement(1, 1).err, 0.0);
  EXPECT_EQ(ds4::argmax_agreement(5, 5).err, 0.0);  // p = 1: p (1 - p) = 0
}

TEST(MetricsTopk, OverlapAndJaccard) {
  // a = [5, 4, 3, 2, 1]: Top3 = {0, 1, 2}; b = [5, 4, 1, 2, 3]: Top3 = {0, 1, 4}.
  // |n| = 2, |u| = 4: overlap@3 = 2/3, Jaccard@3 = 2/4 = 0.5.
  const std::vector<float> a = {5, 4, 3, 2, 1}, b = {5, 4, 1, 2, 3};
  const ds4::TopkOverlap o = ds4::topk_overlap(a, b, 3);
  EXPECT_EQ(o.common, 2);
  EXPECT_EQ(o.united, 4);
  EXPECT_DOUBLE_EQ(o.overlap, 2.0 / 3.0);
  EXPECT_EQ(o.jaccard, 0.5);
  // Ties inside the top-k resolve to the lowest index: [1, 1, 1, 0] -> top2 = {0, 1}.
  EXPECT_EQ(ds4::topk_lowest(std::vector<float>{1, 1, 1, 0}, 2), (std::vector<int32_t>{0, 1}));
  // k larger than the vocabulary is clamped.
  EXPECT_EQ(ds4::topk_overlap(a, b, 9).k, 5);
}

TEST(MetricsTopk, CrossContainment) {
  // a = [3, 2, 1, 0] -> y^a = 0; b = [2, 3, 1, 0] -> y^b = 1. Top2(a) = {0, 1} holds 1 and
  // Top2(b) = {1, 0} holds 0: passes at k = 2; at k = 1 neither holds the other's token.
  const std::vector<float> a = {3, 2, 1, 0}, b = {2, 3, 1, 0};
  const ds4::CrossContainment c2 = ds4::cross_containment(a, b, 2);
  EXPECT_EQ(c2.token_a, 0);
  EXPECT_EQ(c2.token_b, 1);
  EXPECT_TRUE(c2.pass());
  const ds4::CrossContainment c1 = ds4::cross_containment(a, b, 1);
  EXPECT_FALSE(c1.a_in_topk_b);
  EXPECT_FALSE(c1.b_in_topk_a);
  EXPECT_FALSE(c1.pass());
}

TEST(MetricsMargin, TieVersusStructural) {
  // [1.0, 3.0, 2.5]: top1 = 3.0, top2 = 2.5: margin 0.5 logits.
  EXPECT_EQ(ds4::top2_margin(std::vector<float>{1.0f, 3.0f, 2.5f}), 0.5);
  EXPECT_EQ(ds4::top2_margin(std::vector<float>{2, 2}), 0.0);  // an exact tie
  EXPECT_TRUE(std::isinf(ds4::top2_margin(std::vector<float>{1})));
  const double tau = 1e-3;
  EXPECT_EQ(ds4::classify_flip(4, 4, 0.0, tau), ds4::FlipKind::None);
  EXPECT_EQ(ds4::classify_flip(4, 5, 0.5, tau), ds4::FlipKind::Structural);
  EXPECT_EQ(ds4::classify_flip(4, 5, 5e-4, tau), ds4::FlipKind::Tie);
  EXPECT_EQ(ds4::classify_flip(4, 5, 1e-3, tau), ds4::FlipKind::Tie);  // margin <= tau
  // One position end to end: a = [1, 3, 2.9995], b = [1, 2.9995, 3]: argmax 1 vs 2;
  // margin_a = 3 - 2.9995 = 0.0005 (float: 0.000499964) <= 1e-3: a tie flip.
  const ds4::LogitsPosition p = ds4::compare_logits_position(
      std::vector<float>{1, 3, 2.9995f}, std::vector<float>{1, 2.9995f, 3}, -1, 2);
  EXPECT_EQ(p.argmax_a, 1);
  EXPECT_EQ(p.argmax_b, 2);
  EXPECT_NEAR(p.margin_a, 0.0005, 1e-6);
  EXPECT_EQ(ds4::classify_flip(p.argmax_a, p.argmax_b, p.margin_a, tau), ds4::FlipKind::Tie);
  EXPECT_EQ(p.topk.common, 2);  // top2 {1, 2} on both sides
}

// ---------------------------------------------------------------------------------------------
// §14 first divergence, §15 growth, §16 routing
// ---------------------------------------------------------------------------------------------

TEST(MetricsFirstDivergence, PositionThenDataflowOrder) {
  // Taps in dataflow order with their first divergent positions [never, 5, 3, 3, never]:
  // t* = min = 3; the first tap in order diverging at 3 is index 2.
  const int64_t N = ds4::kNever;
  const std::vector<int64_t> first = {N, 5, 3, 3, N};
  const ds4::FirstDivergence f = ds4::first_divergence(first);
  EXPECT_EQ(f.pos, 3);
  EXPECT_EQ(f.tap, 2u);
  EXPECT_FALSE(ds4::first_divergence(std::vector<int64_t>{N, N}).found());
  EXPECT_FALSE(ds4::first_divergence(std::vector<int64_t>{}).found());
  // Token level: [1, 2, 3] vs [1, 2, 4] first differ at 2; equal sequences never.
  EXPECT_EQ(
      ds4::first_token_divergence(std::vector<int32_t>{1, 2, 3}, std::vector<int32_t>{1, 2, 4}), 2);
  EXPECT_EQ(ds4::first_token_divergence(std::vector<int32_t>{1, 2}, std::vector<int32_t>{1, 2}), N);
}

TEST(MetricsGrowth, Ratios) {
  // g = 1e-6 / max(1e-7, eps) = 10; a bit-equal input: g = 1e-6 / FLT_MIN = 8.507e31 >> 1.
  EXPECT_NEAR(ds4::growth_ratio(1e-6, 1e-7), 10.0, 1e-12);
  EXPECT_NEAR(ds4::growth_ratio(1e-6, 0.0), 1e-6 / 1.1754943508222875e-38, 1e18);
  EXPECT_EQ(ds4::growth_ratio(0.0, 0.0), 0.0);
  // NMSE variant: 4e-10 / 1e-10 = 4; from 0: inf; 0 over 0: undefined (NaN).
  EXPECT_NEAR(ds4::nmse_growth_ratio(4e-10, 1e-10), 4.0, 1e-12);
  EXPECT_TRUE(std::isinf(ds4::nmse_growth_ratio(1e-10, 0.0)));
  EXPECT_TRUE(std::isnan(ds4::nmse_growth_ratio(0.0, 0.0)));
}

TEST(MetricsRouting, ExpertSetsNotOrder) {
  // [3, 7] vs [7, 3]: the same experts in another order: no flip (bits differ, routing does not).
  EXPECT_FALSE(ds4::routing_flip(std::vector<float>{3, 7}, std::vector<float>{7, 3}));
  EXPECT_TRUE(ds4::routing_flip(std::vector<float>{3, 7}, std::vector<float>{3, 8}));
  EXPECT_TRUE(ds4::routing_flip(std::vector<float>{3, 7}, std::vector<float>{3}));
  EXPECT_TRUE(ds4::routing_flip(std::vector<float>{3, kNaN}, std::vector<float>{3, kNaN}));
  EXPECT_FALSE(ds4::routing_flip(std::vector<float>{}, std::vector<float>{}));
}

}  // namespace
