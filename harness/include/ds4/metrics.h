// Divergence metrics between a reference run `a` (plain N=1 decode, or the bit-equal gate
// configuration) and a candidate run `b` (batched, verify, the configuration under test).
// /work/shared/design/metrics.md is the definition of every metric; the item numbers (§n) below
// are its items. Everything is computed in fp64 after converting the stored values.
//
//   CompareStats       element metrics of one tensor, or of many rows accumulated (§1-§7):
//                      bit equality, max-abs and max-rel with location, ULP distance and histogram,
//                      both NMSE variants (named, never mixed), SQNR, cosine, NaN/Inf policy
//   fp64_rmse_gate     PyTorch same()'s fp64-relative RMSE gate (§8)
//   logits             KL divergence (§9), delta-p and the multiplicative probability error
//                      (§10), argmax agreement (§11), top-k overlap and cross-containment (§12),
//                      reference margin and tie vs structural flips (§13), llama.cpp aggregation
//   first_divergence   first position and first tap in dataflow order (§14)
//   growth_ratio       per-layer amplification (§15)
//   routing_flip       MoE expert sets compared as sets (§16)
//
// Decisions that metrics.md leaves to us, stated once here:
//   - -0.0 vs +0.0 counts as a bit difference (n_bitdiff, also counted in n_signed_zero) but has
//     ULP distance 0 (the ordered key maps both zeros to the same integer).
//   - NaN at index i on either side is a "NaN-mismatch" unless both sides are NaN there; a pair of
//     NaNs passes only when CompareOptions::allow_matching_nan is set (off by default). NaN has
//     ULP distance "infinite" (kUlpInfinite, histogram bucket >16) unless it is an allowed pair.
//   - Inf must match in sign and position; any other pair involving an Inf is counted in
//     n_inf_mismatch. Pairs with a NaN or an Inf are left out of the numeric sums (max-abs,
//     max-rel, NMSE, cosine, RMSE) so one Inf cannot hide the magnitude of the rest; the counts
//     above report them, and a NaN/Inf mismatch is always also a bit difference.
//   - max-abs and max-rel locations are the first index attaining the maximum.
//   - Percentiles interpolate linearly between closest ranks at h = q*(n-1) on the sorted values
//     (NumPy's default "linear", and what llama.cpp's perplexity tool does).
//   - Margins are in logits (stored float values, differenced in fp64), not log-probabilities;
//     tau is therefore in logits too (default 1e-3).
//   - argmax and top-k break ties by the lowest index (PyTorch argmax convention); NaN logits
//     never win.
#pragma once
#include <array>
#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace ds4 {

// ---------------------------------------------------------------------------------------------
// ULP distance (§4)
// ---------------------------------------------------------------------------------------------

// The ordered integer key of a float's bits, in int64:
//   k(u) = (u & 0x80000000) ? 0x80000000 - (u & 0x7FFFFFFF) : 0x80000000 + u
// -0 and +0 map to the same key; finite values (and the infinities) are ordered monotonically.
int64_t ulp_key32(uint32_t bits);
// The 16-bit analogue (fp16 and bf16 share it): mask 0x8000.
int64_t ulp_key16(uint16_t bits);

enum class Half16 { F16, BF16 };
const char* half16_name(Half16 f);  // "f16" | "bf16"

// "Infinite" ULP distance: a NaN on either side.
inline constexpr uint64_t kUlpInfinite = std::numeric_limits<uint64_t>::max();
// |k(a) - k(b)|, or kUlpInfinite when either is NaN.
uint64_t ulp_distance32(float a, float b);
uint64_t ulp_distance16(uint16_t a, uint16_t b, Half16 format);

// Histogram buckets {0, 1, 2-4, 5-16, >16}.
inline constexpr int kUlpBuckets = 5;
int ulp_bucket(uint64_t ulp);
const char* ulp_bucket_name(int bucket);  // "0", "1", "2-4", "5-16", ">16"
// googletest's kMaxUlps: the "near-equal" reporting tolerance (gated exact configurations need 0).
inline constexpr uint64_t kNearEqualUlps = 4;

// ---------------------------------------------------------------------------------------------
// Element metrics of one tensor or of many rows (§1-§7)
// ---------------------------------------------------------------------------------------------

struct CompareOptions {
  double eps_rel = 1e-6;            // §3: max_rel divides by max(|a_i|, eps_rel)
  bool allow_matching_nan = false;  // NaN policy: a NaN on both sides at i passes only if set
};

// Where a maximum was attained: row (the caller's id: a position, or 0) and element index in
// the row, with both values. row = -1 until an element has been seen.
struct ElementLoc {
  int64_t row = -1, index = -1;
  double a = 0, b = 0;
  bool valid() const { return index >= 0; }
};

struct CompareStats {
  CompareOptions opt;
  uint64_t n = 0;              // element pairs compared
  uint64_t n_bitdiff = 0;      // #{i : bits(a_i) != bits(b_i)}
  uint64_t n_signed_zero = 0;  // of those, -0 vs +0 pairs (ULP 0)
  uint64_t n_nan_a = 0, n_nan_b = 0;
  uint64_t n_nan_both = 0;      // NaN on both sides at the same index
  uint64_t n_nan_mismatch = 0;  // NaN on exactly one side
  uint64_t n_inf_mismatch = 0;  // an Inf not matched by an Inf of the same sign
  uint64_t n_finite = 0;        // pairs with both sides finite: the numeric sums below

  double max_abs = 0;  // max |a_i - b_i| over finite pairs
  ElementLoc max_abs_at;
  double max_rel = 0;  // max |a_i - b_i| / max(|a_i|, eps_rel) over finite pairs
  ElementLoc max_rel_at;
  uint64_t max_ulp = 0;  // kUlpInfinite after a NaN-mismatch
  ElementLoc max_ulp_at;
  std::array<uint64_t, kUlpBuckets> ulp_hist{};

  // fp64 sums over finite pairs (row by row, index order inside a row).
  double sum_sq_err = 0, sum_sq_a = 0, sum_sq_b = 0, sum_ab = 0;
  double mean_a = 0, m2_a = 0;  // Welford running mean and sum of squared deviations of a

  // Adds the pairs (a_i, b_i); `row` tags locations. Throws ds4::Error if the lengths differ.
  void add(std::span<const float> a, std::span<const float> b, int64_t row = 0);
  // The same for raw fp16/bf16 bits (values converted exactly to fp64; ULPs on the 16-bit keys).
  void add16(std::span<const uint16_t> a, std::span<const uint16_t> b, Half16 format,
             int64_t row = 0);
  // Accumulates another CompareStats (same options); locations keep the first maximum in
  // merge order, so merging rows in ascending order keeps "first index attaining the max".
  void merge(const CompareStats& o);

  bool bit_equal() const { return n_bitdiff == 0; }  // §1 (memcmp == 0)
  double frac_bitdiff() const { return n ? double(n_bitdiff) / double(n) : 0.0; }
  bool nan_failure() const {
    return n_nan_mismatch > 0 || (n_nan_both > 0 && !opt.allow_matching_nan);
  }
  bool nonfinite_failure() const { return nan_failure() || n_inf_mismatch > 0; }
  bool near_equal(uint64_t max_ulps = kNearEqualUlps) const {
    return max_ulp <= max_ulps && !nonfinite_failure();
  }
  // §5 energy-normalised (ggml test-backend-ops): sum (a-b)^2 / sum a^2.
  // 0 when both sums are 0; +inf when only the reference energy is 0.
  double nmse_energy() const;
  double nmse_energy_db() const;  // 10 log10(nmse_energy); -inf when equal
  // §5 variance-normalised (llama.cpp check-nmse.py): mean((b-a)^2) / var(a), var the population
  // variance (divide by n). 0 when both are 0; +inf when only var(a) is 0.
  double nmse_variance() const;
  double sqnr_db() const;  // §6: 20 log10(|a|_2 / |a-b|_2) = -nmse_energy_db()
  double rel_l2() const;   // §6: |a-b|_2 / |a|_2 = sqrt(nmse_energy())
  // §7: (a.b) / (|a|_2 |b|_2); 1 when both are all-zero, 0 when only one is.
  double cosine() const;
  double rmse() const;  // §8: sqrt(mean (a-b)^2), 0 when nothing finite was compared
};

// One tensor: CompareStats of a single add().
CompareStats compare(std::span<const float> a, std::span<const float> b,
                     const CompareOptions& opt = {});
CompareStats compare16(std::span<const uint16_t> a, std::span<const uint16_t> b, Half16 format,
                       const CompareOptions& opt = {});

// The thresholded-divergence predicate of §14: max_abs > tau, or a NaN/Inf failure.
inline bool exceeds_threshold(const CompareStats& s, double tau) {
  return s.max_abs > tau || s.nonfinite_failure();
}

// ---------------------------------------------------------------------------------------------
// fp64-relative RMSE gate (§8, PyTorch same())
// ---------------------------------------------------------------------------------------------

struct RmseGate {
  double rmse_ref = 0;    // RMSE(fp64, a)
  double rmse_cand = 0;   // RMSE(fp64, b)
  double multiplier = 2;  // m: 2, or 3 below 1,000 elements or for fp16/bf16
  double tol = 0;
  double bound = 0;   // m * rmse_ref + tol / 10
  bool pass = false;  // rmse_cand <= bound
};
// `fp64` is the same tensor computed in fp64; `half_precision` marks fp16/bf16 tensors.
// tol defaults to same()'s 1e-4. Throws ds4::Error if the lengths differ.
RmseGate fp64_rmse_gate(std::span<const double> fp64, std::span<const float> a,
                        std::span<const float> b, bool half_precision = false, double tol = 1e-4);

// ---------------------------------------------------------------------------------------------
// Logits (§9-§13)
// ---------------------------------------------------------------------------------------------

// log softmax in fp64: l_v - (m + log sum_v exp(l_v - m)), m = max_v l_v, summed in index order.
// Empty input gives empty output; a NaN or +Inf logit (or all -Inf) gives all NaN.
std::vector<double> log_softmax(std::span<const float> logits);
// §9: KLD = sum_v P_v (log P_v - log Q_v), P = softmax(a), Q = softmax(b), terms with P_v = 0
// are 0. Exact KLD is >= 0; a negative result signals a storage or precision bug (flag it).
// Throws ds4::Error if the lengths differ.
double kl_divergence(std::span<const float> logits_a, std::span<const float> logits_b);
double kl_divergence_logp(std::span<const double> logp, std::span<const double> logq);

// §11: index of the maximum, lowest index on ties, NaN ignored; -1 for empty (or all NaN).
int32_t argmax_lowest(std::span<const float> logits);
// The k largest (value descending, lowest index first on ties, NaN never), k clamped to n.
std::vector<int32_t> topk_lowest(std::span<const float> logits, int k);
// §13: l[top1] - l[top2] in logits (fp64 difference of the stored values); +inf when n < 2.
double top2_margin(std::span<const float> logits);

struct TopkOverlap {
  int k = 0;           // the k used (clamped to the vocabulary)
  int common = 0;      // |TopK(a) n TopK(b)|
  int united = 0;      // |TopK(a) u TopK(b)|
  double overlap = 1;  // common / k
  double jaccard = 1;  // common / united
};
// §12 overlap@k and Jaccard@k.
TopkOverlap topk_overlap(std::span<const float> logits_a, std::span<const float> logits_b,
                         int k = 5);

struct CrossContainment {
  int k = 5;
  int32_t token_a = -1, token_b = -1;  // argmax of each side
  bool a_in_topk_b = false;            // y^a in TopK(l_b)
  bool b_in_topk_a = false;            // y^b in TopK(l_a)
  bool pass() const { return a_in_topk_b && b_in_topk_a; }
};
// §12 vLLM check_logprobs_close at one position (meant for the first differing token).
CrossContainment cross_containment(std::span<const float> logits_a, std::span<const float> logits_b,
                                   int k = 5);

enum class FlipKind { None, Tie, Structural };
const char* flip_kind_name(FlipKind k);  // "none" | "tie" | "structural"
// §13: no flip when the argmaxes agree; else a tie flip if margin <= tau, structural otherwise.
FlipKind classify_flip(int32_t token_a, int32_t token_b, double margin, double tau);

// Everything about one position's two logit rows (one log_softmax per side).
struct LogitsPosition {
  double kld = 0;
  int32_t argmax_a = -1, argmax_b = -1;
  double margin_a = 0;  // top2_margin(a), logits
  TopkOverlap topk;
  CrossContainment cross;
  // For the target token y (when given, else NaN): log P(y), log Q(y), delta-p = Q(y) - P(y).
  double logp_target = 0, logq_target = 0, dp = 0;
};
// target < 0: no target token (dp fields NaN). Throws ds4::Error if the lengths differ or target
// is out of range.
LogitsPosition compare_logits_position(std::span<const float> logits_a,
                                       std::span<const float> logits_b, int32_t target, int k = 5);

// §10 multiplicative probability error (NeMo-RL): mean_t exp(|log P(y_t) - log Q(y_t)|); 1 when
// empty. Throws ds4::Error if the lengths differ.
double multiplicative_prob_error(std::span<const double> logp, std::span<const double> logq);

// §11 argmax agreement: p = same / n, uncertainty sqrt(p (1 - p) / (n - 1)) (0 when n < 2).
struct Agreement {
  int64_t n = 0, same = 0;
  double p = 1, err = 0;
};
Agreement argmax_agreement(int64_t same, int64_t n);

// llama.cpp's aggregation of a per-position quantity (KLD, delta-p):
//   mean +- sqrt((E[x^2] - E[x]^2) / (n - 1))   (0 when n < 2 or the bracket is <= 0)
//   rms = sqrt(E[x^2]), max, the percentiles asked for (interpolated, see the file comment), min.
// NaN values are left out and counted in n_nan.
struct DistSummary {
  int64_t n = 0, n_nan = 0;
  double mean = 0, mean_err = 0, rms = 0, max = 0, min = 0;
  std::vector<std::pair<double, double>> percentiles;  // (percent, value), in the order asked
};
inline constexpr std::array<double, 9> kKldPercentiles = {99.9, 99, 95, 90, 50, 10, 5, 1, 0.1};
// llama.cpp prints delta-p at these (adds the quartiles to the KLD list).
inline constexpr std::array<double, 11> kDpPercentiles = {99.9, 99, 95, 90, 75, 50,
                                                          25,   10, 5,  1,  0.1};
DistSummary summarize(std::vector<double> values, std::span<const double> percents);
// The percentile of sorted, NaN-free values at `percent` in [0, 100] (linear; 0 for empty).
double percentile_linear(std::span<const double> sorted, double percent);

// ---------------------------------------------------------------------------------------------
// First divergence (§14), growth (§15), routing (§16)
// ---------------------------------------------------------------------------------------------

// "Infinite": no divergence. Positions are >= 0.
inline constexpr int64_t kNever = -1;

// t*_tok = min{t : y^a_t != y^b_t} over the common length; kNever when equal there.
int64_t first_token_divergence(std::span<const int32_t> tokens_a,
                               std::span<const int32_t> tokens_b);

struct FirstDivergence {
  int64_t pos = kNever;   // t* (bit or thresholded, by what the caller passed)
  size_t tap = SIZE_MAX;  // index into the dataflow-ordered list of (l*, op*) at t*
  bool found() const { return pos != kNever; }
};
// Given, for every tap in dataflow (execution) order, the first position at which that tap
// diverges (kNever if it never does): t* = the minimum, (l*, op*) = the first tap in the list
// whose first divergent position is t*. Since t* is the minimum over all taps, a tap diverging at
// t* has t* as its own first divergent position, so this is exactly "first (l, op) in dataflow
// order with the tensor at t* not equal".
FirstDivergence first_divergence(std::span<const int64_t> first_pos_in_dataflow_order);

// §15: g = max_abs_out / max(max_abs_in, eps). eps defaults to FLT_MIN so that a bit-equal input
// (max_abs_in = 0) with any output error gives g >> 1 ("this layer created the error").
inline constexpr double kGrowthEps = FLT_MIN;
double growth_ratio(double max_abs_out, double max_abs_in, double eps = kGrowthEps);
// §15 alternative: NMSE_l / NMSE_(l-1); +inf when only the input NMSE is 0, NaN when both are.
double nmse_growth_ratio(double nmse_out, double nmse_in);

// §16: the two expert-id lists (stored as floats) differ as sets.
bool routing_flip(std::span<const float> experts_a, std::span<const float> experts_b);

}  // namespace ds4
