// Element metrics (metrics.md §1-§8, §14-§16): see ds4/metrics.h for the definitions and the
// decisions taken where metrics.md leaves a choice. Logit metrics are in metrics_logits.cpp.
#include "ds4/metrics.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <set>

#include "ds4/error.h"
#include "ds4/quant.h"

namespace ds4 {

// ---------------------------------------------------------------------------------------------
// ULP distance
// ---------------------------------------------------------------------------------------------

int64_t ulp_key32(uint32_t u) {
  return (u & 0x80000000u) ? int64_t(0x80000000) - int64_t(u & 0x7FFFFFFFu)
                           : int64_t(0x80000000) + int64_t(u);
}

int64_t ulp_key16(uint16_t u) {
  return (u & 0x8000u) ? int64_t(0x8000) - int64_t(u & 0x7FFFu) : int64_t(0x8000) + int64_t(u);
}

const char* half16_name(Half16 f) { return f == Half16::F16 ? "f16" : "bf16"; }

namespace {

// The per-dtype pieces the element loop needs.
struct F32Traits {
  using Bits = uint32_t;
  static Bits bits(float v) { return std::bit_cast<uint32_t>(v); }
  static int64_t key(Bits u) { return ulp_key32(u); }
  static bool is_zero(Bits u) { return (u & 0x7FFFFFFFu) == 0; }
};

bool half_is_nan(uint16_t u, Half16 f) {
  return f == Half16::F16 ? (u & 0x7FFFu) > 0x7C00u : (u & 0x7FFFu) > 0x7F80u;
}
bool half_is_inf(uint16_t u, Half16 f) {
  return f == Half16::F16 ? (u & 0x7FFFu) == 0x7C00u : (u & 0x7FFFu) == 0x7F80u;
}
double half_value(uint16_t u, Half16 f) {
  return f == Half16::F16 ? double(f16_to_f32(u)) : double(bf16_to_f32(u));
}

uint64_t abs_diff(int64_t x, int64_t y) { return x > y ? uint64_t(x - y) : uint64_t(y - x); }

}  // namespace

uint64_t ulp_distance32(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return kUlpInfinite;
  return abs_diff(ulp_key32(F32Traits::bits(a)), ulp_key32(F32Traits::bits(b)));
}

uint64_t ulp_distance16(uint16_t a, uint16_t b, Half16 format) {
  if (half_is_nan(a, format) || half_is_nan(b, format)) return kUlpInfinite;
  return abs_diff(ulp_key16(a), ulp_key16(b));
}

int ulp_bucket(uint64_t ulp) {
  if (ulp == 0) return 0;
  if (ulp == 1) return 1;
  if (ulp <= 4) return 2;
  if (ulp <= 16) return 3;
  return 4;
}

const char* ulp_bucket_name(int bucket) {
  static const char* const names[kUlpBuckets] = {"0", "1", "2-4", "5-16", ">16"};
  return bucket >= 0 && bucket < kUlpBuckets ? names[bucket] : "?";
}

// ---------------------------------------------------------------------------------------------
// CompareStats
// ---------------------------------------------------------------------------------------------

namespace {

// One element pair, already classified. The element loop of add() and add16() is shared: only
// how bits, keys and values are obtained differs by dtype.
struct Pair {
  bool bits_differ, both_zero, nan_a, nan_b, inf_a, inf_b;
  int64_t key_a, key_b;
  double a, b;
};

void add_pair(CompareStats& s, const Pair& p, int64_t row, int64_t i) {
  ++s.n;
  if (p.bits_differ) {
    ++s.n_bitdiff;
    if (p.both_zero) ++s.n_signed_zero;
  }
  uint64_t ulp;
  if (p.nan_a || p.nan_b) {
    s.n_nan_a += p.nan_a;
    s.n_nan_b += p.nan_b;
    if (p.nan_a && p.nan_b) {
      ++s.n_nan_both;
      ulp = s.opt.allow_matching_nan ? 0 : kUlpInfinite;
    } else {
      ++s.n_nan_mismatch;
      ulp = kUlpInfinite;
    }
  } else {
    ulp = abs_diff(p.key_a, p.key_b);
    if ((p.inf_a || p.inf_b) && !(p.inf_a && p.inf_b && p.a == p.b)) ++s.n_inf_mismatch;
  }
  ++s.ulp_hist[ulp_bucket(ulp)];
  if (ulp > s.max_ulp || !s.max_ulp_at.valid()) {
    s.max_ulp = ulp;
    s.max_ulp_at = {row, i, p.a, p.b};
  }
  if (p.nan_a || p.nan_b || p.inf_a || p.inf_b) return;  // not in the numeric sums

  const double d = p.a - p.b, ad = std::fabs(d);
  if (ad > s.max_abs || !s.max_abs_at.valid()) {
    s.max_abs = ad;
    s.max_abs_at = {row, i, p.a, p.b};
  }
  const double rel = ad / std::max(std::fabs(p.a), s.opt.eps_rel);
  if (rel > s.max_rel || !s.max_rel_at.valid()) {
    s.max_rel = rel;
    s.max_rel_at = {row, i, p.a, p.b};
  }
  s.sum_sq_err += d * d;
  s.sum_sq_a += p.a * p.a;
  s.sum_sq_b += p.b * p.b;
  s.sum_ab += p.a * p.b;
  // Welford: a single pass that stays accurate when mean^2 >> variance.
  ++s.n_finite;
  const double delta = p.a - s.mean_a;
  s.mean_a += delta / double(s.n_finite);
  s.m2_a += delta * (p.a - s.mean_a);
}

}  // namespace

void CompareStats::add(std::span<const float> a, std::span<const float> b, int64_t row) {
  if (a.size() != b.size())
    fail("compare: lengths differ (" + std::to_string(a.size()) + " vs " +
         std::to_string(b.size()) + " elements)");
  for (size_t i = 0; i < a.size(); ++i) {
    const uint32_t ua = F32Traits::bits(a[i]), ub = F32Traits::bits(b[i]);
    Pair p;
    p.bits_differ = ua != ub;
    p.both_zero = F32Traits::is_zero(ua) && F32Traits::is_zero(ub);
    p.nan_a = std::isnan(a[i]);
    p.nan_b = std::isnan(b[i]);
    p.inf_a = std::isinf(a[i]);
    p.inf_b = std::isinf(b[i]);
    p.key_a = ulp_key32(ua);
    p.key_b = ulp_key32(ub);
    p.a = a[i];
    p.b = b[i];
    add_pair(*this, p, row, int64_t(i));
  }
}

void CompareStats::add16(std::span<const uint16_t> a, std::span<const uint16_t> b, Half16 format,
                         int64_t row) {
  if (a.size() != b.size())
    fail("compare: lengths differ (" + std::to_string(a.size()) + " vs " +
         std::to_string(b.size()) + " elements)");
  for (size_t i = 0; i < a.size(); ++i) {
    Pair p;
    p.bits_differ = a[i] != b[i];
    p.both_zero = (a[i] & 0x7FFFu) == 0 && (b[i] & 0x7FFFu) == 0;
    p.nan_a = half_is_nan(a[i], format);
    p.nan_b = half_is_nan(b[i], format);
    p.inf_a = half_is_inf(a[i], format);
    p.inf_b = half_is_inf(b[i], format);
    p.key_a = ulp_key16(a[i]);
    p.key_b = ulp_key16(b[i]);
    p.a = half_value(a[i], format);
    p.b = half_value(b[i], format);
    add_pair(*this, p, row, int64_t(i));
  }
}

void CompareStats::merge(const CompareStats& o) {
  if (o.n == 0) return;
  auto take = [](double mine, const ElementLoc& my_at, double theirs, const ElementLoc& their_at) {
    return theirs > mine || (!my_at.valid() && their_at.valid());
  };
  if (take(max_abs, max_abs_at, o.max_abs, o.max_abs_at)) {
    max_abs = o.max_abs;
    max_abs_at = o.max_abs_at;
  }
  if (take(max_rel, max_rel_at, o.max_rel, o.max_rel_at)) {
    max_rel = o.max_rel;
    max_rel_at = o.max_rel_at;
  }
  if (o.max_ulp > max_ulp || (!max_ulp_at.valid() && o.max_ulp_at.valid())) {
    max_ulp = o.max_ulp;
    max_ulp_at = o.max_ulp_at;
  }
  for (int k = 0; k < kUlpBuckets; ++k) ulp_hist[k] += o.ulp_hist[k];
  n += o.n;
  n_bitdiff += o.n_bitdiff;
  n_signed_zero += o.n_signed_zero;
  n_nan_a += o.n_nan_a;
  n_nan_b += o.n_nan_b;
  n_nan_both += o.n_nan_both;
  n_nan_mismatch += o.n_nan_mismatch;
  n_inf_mismatch += o.n_inf_mismatch;
  sum_sq_err += o.sum_sq_err;
  sum_sq_a += o.sum_sq_a;
  sum_sq_b += o.sum_sq_b;
  sum_ab += o.sum_ab;
  // Chan et al.'s pairwise combination of two Welford states.
  if (o.n_finite) {
    const double na = double(n_finite), nb = double(o.n_finite), nt = na + nb;
    const double delta = o.mean_a - mean_a;
    mean_a += delta * nb / nt;
    m2_a += o.m2_a + delta * delta * na * nb / nt;
    n_finite += o.n_finite;
  }
}

double CompareStats::nmse_energy() const {
  if (sum_sq_a > 0) return sum_sq_err / sum_sq_a;
  return sum_sq_err == 0 ? 0.0 : std::numeric_limits<double>::infinity();
}

double CompareStats::nmse_energy_db() const { return 10.0 * std::log10(nmse_energy()); }

double CompareStats::nmse_variance() const {
  if (n_finite == 0) return 0.0;
  const double mse = sum_sq_err / double(n_finite), var = m2_a / double(n_finite);
  if (var > 0) return mse / var;
  return mse == 0 ? 0.0 : std::numeric_limits<double>::infinity();
}

double CompareStats::sqnr_db() const { return -nmse_energy_db(); }

double CompareStats::rel_l2() const { return std::sqrt(nmse_energy()); }

double CompareStats::cosine() const {
  if (sum_sq_a == 0 && sum_sq_b == 0) return 1.0;
  if (sum_sq_a == 0 || sum_sq_b == 0) return 0.0;
  return sum_ab / (std::sqrt(sum_sq_a) * std::sqrt(sum_sq_b));
}

double CompareStats::rmse() const {
  return n_finite ? std::sqrt(sum_sq_err / double(n_finite)) : 0.0;
}

CompareStats compare(std::span<const float> a, std::span<const float> b,
                     const CompareOptions& opt) {
  CompareStats s;
  s.opt = opt;
  s.add(a, b);
  return s;
}

CompareStats compare16(std::span<const uint16_t> a, std::span<const uint16_t> b, Half16 format,
                       const CompareOptions& opt) {
  CompareStats s;
  s.opt = opt;
  s.add16(a, b, format);
  return s;
}

// ---------------------------------------------------------------------------------------------
// fp64-relative RMSE gate
// ---------------------------------------------------------------------------------------------

RmseGate fp64_rmse_gate(std::span<const double> fp64, std::span<const float> a,
                        std::span<const float> b, bool half_precision, double tol) {
  if (fp64.size() != a.size() || a.size() != b.size())
    fail("fp64 RMSE gate: lengths differ (fp64 " + std::to_string(fp64.size()) + ", a " +
         std::to_string(a.size()) + ", b " + std::to_string(b.size()) + ")");
  auto rmse = [&](std::span<const float> x) {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = fp64[i] - double(x[i]);
      s += d * d;
    }
    return x.empty() ? 0.0 : std::sqrt(s / double(x.size()));
  };
  RmseGate g;
  g.rmse_ref = rmse(a);
  g.rmse_cand = rmse(b);
  g.multiplier = (half_precision || a.size() < 1000) ? 3.0 : 2.0;
  g.tol = tol;
  g.bound = g.multiplier * g.rmse_ref + tol / 10.0;
  g.pass = g.rmse_cand <= g.bound;
  return g;
}

// ---------------------------------------------------------------------------------------------
// First divergence, growth, routing
// ---------------------------------------------------------------------------------------------

int64_t first_token_divergence(std::span<const int32_t> ta, std::span<const int32_t> tb) {
  const size_t n = std::min(ta.size(), tb.size());
  for (size_t t = 0; t < n; ++t)
    if (ta[t] != tb[t]) return int64_t(t);
  return kNever;
}

FirstDivergence first_divergence(std::span<const int64_t> first_pos) {
  FirstDivergence r;
  for (size_t i = 0; i < first_pos.size(); ++i) {
    const int64_t p = first_pos[i];
    if (p == kNever) continue;
    if (!r.found() || p < r.pos) {  // strict: the earliest tap in the order keeps a tie
      r.pos = p;
      r.tap = i;
    }
  }
  return r;
}

double growth_ratio(double max_abs_out, double max_abs_in, double eps) {
  return max_abs_out / std::max(max_abs_in, eps);
}

double nmse_growth_ratio(double nmse_out, double nmse_in) {
  if (nmse_in > 0) return nmse_out / nmse_in;
  return nmse_out > 0 ? std::numeric_limits<double>::infinity()
                      : std::numeric_limits<double>::quiet_NaN();
}

bool routing_flip(std::span<const float> ea, std::span<const float> eb) {
  // Bitwise set membership would treat -0 and +0 as different experts; ids are small
  // non-negative integers, so compare the values.
  auto has_nan = [](std::span<const float> v) {
    return std::any_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
  };
  if (has_nan(ea) || has_nan(eb)) return true;  // not a valid expert list: never "the same"
  const std::set<float> sa(ea.begin(), ea.end()), sb(eb.begin(), eb.end());
  return sa != sb;
}

}  // namespace ds4
