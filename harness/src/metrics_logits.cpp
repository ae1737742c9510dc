// Logit metrics (metrics.md §9-§13) and llama.cpp's aggregation of per-position values: see
// ds4/metrics.h for the definitions and the stated choices (margins in logits, lowest-index ties,
// linear percentile interpolation).
#include <algorithm>
#include <cmath>
#include <limits>

#include "ds4/error.h"
#include "ds4/metrics.h"

namespace ds4 {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

void same_length(size_t a, size_t b, const char* what) {
  if (a != b)
    fail(std::string(what) + ": lengths differ (" + std::to_string(a) + " vs " + std::to_string(b) +
         ")");
}

// a ranks before b: larger value first, then lower index; NaN last.
bool ranks_before(std::span<const float> l, int32_t a, int32_t b) {
  const float x = l[a], y = l[b];
  const bool nx = std::isnan(x), ny = std::isnan(y);
  if (nx != ny) return ny;
  if (!nx && x != y) return x > y;
  return a < b;
}

}  // namespace

std::vector<double> log_softmax(std::span<const float> l) {
  std::vector<double> out(l.size());
  if (l.empty()) return out;
  double m = -kInf;
  bool bad = false;
  for (float v : l) {
    if (std::isnan(v) || v == std::numeric_limits<float>::infinity()) bad = true;
    m = std::max(m, double(v));
  }
  if (bad || m == -kInf) {
    std::fill(out.begin(), out.end(), kNaN);
    return out;
  }
  double s = 0;
  for (float v : l) s += std::exp(double(v) - m);  // index order; the max term is exactly 1
  const double lse = m + std::log(s);
  for (size_t i = 0; i < l.size(); ++i) out[i] = double(l[i]) - lse;
  return out;
}

double kl_divergence_logp(std::span<const double> logp, std::span<const double> logq) {
  same_length(logp.size(), logq.size(), "KL divergence");
  double kld = 0;
  for (size_t v = 0; v < logp.size(); ++v) {
    if (std::isnan(logp[v]) || std::isnan(logq[v])) return kNaN;
    const double p = std::exp(logp[v]);
    if (p == 0) continue;            // 0 log 0 = 0
    kld += p * (logp[v] - logq[v]);  // log q = -inf with p > 0 gives +inf, as it should
  }
  return kld;
}

double kl_divergence(std::span<const float> la, std::span<const float> lb) {
  same_length(la.size(), lb.size(), "KL divergence");
  const std::vector<double> lp = log_softmax(la), lq = log_softmax(lb);
  return kl_divergence_logp(lp, lq);
}

int32_t argmax_lowest(std::span<const float> l) {
  int32_t best = -1;
  for (size_t i = 0; i < l.size(); ++i) {
    if (std::isnan(l[i])) continue;
    if (best < 0 || l[i] > l[best]) best = int32_t(i);  // strict >: the lowest index keeps ties
  }
  return best;
}

std::vector<int32_t> topk_lowest(std::span<const float> l, int k) {
  const size_t kk = std::min<size_t>(size_t(std::max(k, 0)), l.size());
  std::vector<int32_t> idx(l.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
  std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                    [&](int32_t a, int32_t b) { return ranks_before(l, a, b); });
  idx.resize(kk);
  // NaN never enters the top-k.
  while (!idx.empty() && std::isnan(l[idx.back()])) idx.pop_back();
  return idx;
}

double top2_margin(std::span<const float> l) {
  const std::vector<int32_t> t = topk_lowest(l, 2);
  if (t.size() < 2) return kInf;
  return double(l[t[0]]) - double(l[t[1]]);
}

namespace {

TopkOverlap overlap_of(const std::vector<int32_t>& ta, const std::vector<int32_t>& tb, int k) {
  TopkOverlap o;
  o.k = k;
  for (int32_t x : ta) o.common += std::count(tb.begin(), tb.end(), x) > 0;
  o.united = int(ta.size() + tb.size()) - o.common;
  o.overlap = k > 0 ? double(o.common) / double(k) : 1.0;
  o.jaccard = o.united > 0 ? double(o.common) / double(o.united) : 1.0;
  return o;
}

}  // namespace

TopkOverlap topk_overlap(std::span<const float> la, std::span<const float> lb, int k) {
  same_length(la.size(), lb.size(), "top-k overlap");
  const int kk = int(std::min<size_t>(size_t(std::max(k, 0)), la.size()));
  return overlap_of(topk_lowest(la, kk), topk_lowest(lb, kk), kk);
}

CrossContainment cross_containment(std::span<const float> la, std::span<const float> lb, int k) {
  same_length(la.size(), lb.size(), "cross-containment");
  CrossContainment c;
  c.k = k;
  c.token_a = argmax_lowest(la);
  c.token_b = argmax_lowest(lb);
  const std::vector<int32_t> ta = topk_lowest(la, k), tb = topk_lowest(lb, k);
  c.a_in_topk_b = std::count(tb.begin(), tb.end(), c.token_a) > 0;
  c.b_in_topk_a = std::count(ta.begin(), ta.end(), c.token_b) > 0;
  return c;
}

const char* flip_kind_name(FlipKind k) {
  switch (k) {
    case FlipKind::None:
      return "none";
    case FlipKind::Tie:
      return "tie";
    case FlipKind::Structural:
      return "structural";
  }
  return "?";
}

FlipKind classify_flip(int32_t token_a, int32_t token_b, double margin, double tau) {
  if (token_a == token_b) return FlipKind::None;
  return margin <= tau ? FlipKind::Tie : FlipKind::Structural;
}

LogitsPosition compare_logits_position(std::span<const float> la, std::span<const float> lb,
                                       int32_t target, int k) {
  same_length(la.size(), lb.size(), "logits");
  if (target >= int64_t(la.size()))
    fail("logits: target token " + std::to_string(target) + " is outside the vocabulary of " +
         std::to_string(la.size()));
  LogitsPosition r;
  const std::vector<double> lp = log_softmax(la), lq = log_softmax(lb);
  r.kld = kl_divergence_logp(lp, lq);
  const int kk = int(std::min<size_t>(size_t(std::max(k, 0)), la.size()));
  // One top-max(k,2) per side serves argmax, margin, overlap and containment.
  const int kt = std::max(kk, 2);
  const std::vector<int32_t> ta = topk_lowest(la, kt), tb = topk_lowest(lb, kt);
  r.argmax_a = ta.empty() ? -1 : ta[0];
  r.argmax_b = tb.empty() ? -1 : tb[0];
  r.margin_a = ta.size() < 2 ? kInf : double(la[ta[0]]) - double(la[ta[1]]);
  const std::vector<int32_t> ka(ta.begin(), ta.begin() + std::min<size_t>(kk, ta.size())),
      kb(tb.begin(), tb.begin() + std::min<size_t>(kk, tb.size()));
  r.topk = overlap_of(ka, kb, kk);
  r.cross.k = kk;
  r.cross.token_a = r.argmax_a;
  r.cross.token_b = r.argmax_b;
  r.cross.a_in_topk_b = std::count(kb.begin(), kb.end(), r.argmax_a) > 0;
  r.cross.b_in_topk_a = std::count(ka.begin(), ka.end(), r.argmax_b) > 0;
  if (target >= 0) {
    r.logp_target = lp[target];
    r.logq_target = lq[target];
    r.dp = std::exp(r.logq_target) - std::exp(r.logp_target);
  } else {
    r.logp_target = r.logq_target = r.dp = kNaN;
  }
  return r;
}

double multiplicative_prob_error(std::span<const double> logp, std::span<const double> logq) {
  same_length(logp.size(), logq.size(), "multiplicative probability error");
  if (logp.empty()) return 1.0;
  double s = 0;
  for (size_t t = 0; t < logp.size(); ++t) s += std::exp(std::fabs(logp[t] - logq[t]));
  return s / double(logp.size());
}

Agreement argmax_agreement(int64_t same, int64_t n) {
  Agreement a;
  a.n = n;
  a.same = same;
  a.p = n > 0 ? double(same) / double(n) : 1.0;
  a.err = n > 1 ? std::sqrt(a.p * (1 - a.p) / double(n - 1)) : 0.0;
  return a;
}

double percentile_linear(std::span<const double> v, double percent) {
  if (v.empty()) return 0.0;
  const double f = percent / 100.0;
  if (f <= 0) return v.front();
  if (f >= 1) return v.back();
  const double h = f * double(v.size() - 1);
  const size_t i = size_t(h);
  const double w = h - double(i);
  return (1 - w) * v[i] + w * v[std::min(i + 1, v.size() - 1)];
}

DistSummary summarize(std::vector<double> values, std::span<const double> percents) {
  DistSummary s;
  const auto nan_end =
      std::remove_if(values.begin(), values.end(), [](double x) { return std::isnan(x); });
  s.n_nan = int64_t(values.end() - nan_end);
  values.erase(nan_end, values.end());
  s.n = int64_t(values.size());
  if (values.empty()) {
    for (double p : percents) s.percentiles.emplace_back(p, 0.0);
    return s;
  }
  double sum = 0, sum2 = 0;
  for (double x : values) {  // input order, fp64 (llama.cpp sums per chunk in the same order)
    sum += x;
    sum2 += x * x;
  }
  const double n = double(values.size());
  s.mean = sum / n;
  const double e2 = sum2 / n, var = e2 - s.mean * s.mean;
  s.mean_err = (values.size() > 1 && var > 0) ? std::sqrt(var / (n - 1)) : 0.0;
  s.rms = std::sqrt(e2);
  std::sort(values.begin(), values.end());
  s.min = values.front();
  s.max = values.back();
  for (double p : percents) s.percentiles.emplace_back(p, percentile_linear(values, p));
  return s;
}

}  // namespace ds4
