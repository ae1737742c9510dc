// Reference, ReferenceRecorder and CompareSink (see ds4/run_compare.h).
#include "ds4/run_compare.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "ds4/error.h"

namespace ds4 {

// ---- Reference ---------------------------------------------------------------------------------

int Reference::tap_index(int layer, const std::string& name) const {
  for (size_t i = 0; i < taps_.size(); ++i)
    if (taps_[i].layer == layer && taps_[i].name == name) return static_cast<int>(i);
  return -1;
}

int Reference::add_tap(int layer, const std::string& name) {
  const int i = tap_index(layer, name);
  if (i >= 0) return i;
  taps_.push_back({layer, name});
  rows_.emplace_back();
  return static_cast<int>(taps_.size() - 1);
}

void Reference::put(int tap, int64_t pos, const float* data, size_t n, const std::string& variant) {
  auto& rows = rows_[static_cast<size_t>(tap)];
  if (pos < 0) fail("reference: negative position");
  if (static_cast<size_t>(pos) >= rows.size()) rows.resize(static_cast<size_t>(pos) + 1);
  RowRef& r = rows[static_cast<size_t>(pos)];
  r.offset = data_.size();
  r.length = static_cast<uint32_t>(n);
  data_.insert(data_.end(), data, data + n);
  auto it = std::find(variants_.begin(), variants_.end(), variant);
  r.variant = static_cast<int32_t>(it - variants_.begin());
  if (it == variants_.end()) variants_.push_back(variant);
}

const float* Reference::row(int tap, int64_t pos, size_t* n) const {
  if (tap < 0 || static_cast<size_t>(tap) >= rows_.size() || pos < 0) return nullptr;
  const auto& rows = rows_[static_cast<size_t>(tap)];
  if (static_cast<size_t>(pos) >= rows.size() || rows[static_cast<size_t>(pos)].variant < 0)
    return nullptr;
  const RowRef& r = rows[static_cast<size_t>(pos)];
  if (n) *n = r.length;
  return data_.data() + r.offset;
}

const std::string& Reference::variant(int tap, int64_t pos) const {
  static const std::string none;
  if (!row(tap, pos, nullptr)) return none;
  return variants_[static_cast<size_t>(rows_[static_cast<size_t>(tap)][static_cast<size_t>(pos)].variant)];
}

bool Reference::captured(int layer, const std::string& name, int64_t pos) const {
  return filter_.matches(layer, name, pos);
}

namespace {
// TapFilter::to_string() "layers=0,2-3 names=kv,q positions=10-20" (or "all") back to a filter.
TapFilter filter_from_text(const std::string& text) {
  if (text.empty() || text == "all") return {};
  std::string layers, names, positions;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find(' ', i);
    if (j == std::string::npos) j = text.size();
    const std::string item = text.substr(i, j - i);
    const size_t eq = item.find('=');
    if (eq != std::string::npos) {
      const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
      if (k == "layers") layers = v;
      if (k == "names") names = v;
      if (k == "positions") positions = v;
    }
    i = j + 1;
  }
  return TapFilter::parse(layers, names, positions);
}
}  // namespace

std::shared_ptr<const Reference> Reference::load(const std::string& path) {
  const DumpReader rd = DumpReader::open(path);
  if (!rd.has_data())
    fail(path + ": the reference must be dumped at tap level full (this one is '" +
         std::string(tap_level_name(rd.level())) + "')");
  auto ref = std::make_shared<Reference>();
  ref->manifest_ = rd.manifest();
  ref->filter_ = filter_from_text(rd.manifest().tap_filter);
  for (const TapKey& k : rd.taps()) {
    const int t = ref->add_tap(k.layer, k.name);
    rd.for_each_row(k.layer, k.name, [&](const DumpRow& r) {
      ref->put(t, r.pos, r.data.data(), r.data.size(), std::string(r.variant));
    });
  }
  return ref;
}

ReferenceRecorder::ReferenceRecorder(RunManifest manifest, TapFilter capture)
    : ref_(std::make_shared<Reference>()) {
  ref_->manifest_ = std::move(manifest);
  ref_->manifest_.tap_filter = capture.to_string();
  ref_->filter_ = std::move(capture);
}

void ReferenceRecorder::tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
                            const char* variant) {
  if (!ref_->filter_.matches(layer, name, pos)) return;
  std::lock_guard<std::mutex> lock(mu_);
  ref_->put(ref_->add_tap(layer, name), pos, data, n, variant);
}

std::shared_ptr<const Reference> ReferenceRecorder::finish() {
  std::lock_guard<std::mutex> lock(mu_);
  return ref_;
}

// ---- CompareSink -------------------------------------------------------------------------------

namespace {

struct RowCmp {
  bool present = false;
  bool equal = false;        // bytes equal and same length
  bool length_mismatch = false;
  int32_t variant = -1;
  int32_t stats = -1;        // index into Impl::stats when !equal
  double sum_sq = 0;         // sum of squared reference values (NMSE denominator of equal rows)
  uint64_t n = 0;
};

// The display order of heatmap rows: trunk layers ascending, then the head (-1), then MTP.
bool layer_before(int a, int b) {
  const auto key = [](int l) { return l < 0 ? 1'000'000 : l; };
  return key(a) < key(b);
}

}  // namespace

struct CompareSink::Impl {
  std::shared_ptr<const Reference> ref;
  CompareRunOptions opt;
  std::mutex mu;
  std::vector<TapKey> taps;                // reference taps, then candidate-only taps
  std::vector<std::vector<RowCmp>> rows;   // [tap][pos]
  std::vector<CompareStats> stats;
  std::vector<std::string> variants;
  std::vector<std::vector<float>> logits;  // candidate result_output rows by position
  int logits_tap = -1;
  int64_t cand_min = INT64_MAX, cand_max = -1;

  int tap_of(int layer, const char* name) {
    for (size_t i = 0; i < taps.size(); ++i)
      if (taps[i].layer == layer && taps[i].name == name) return static_cast<int>(i);
    taps.push_back({layer, name});
    rows.emplace_back();
    return static_cast<int>(taps.size() - 1);
  }
  void summarize_logits(RunDivergence& d);
  int variant_id(const char* v) {
    for (size_t i = 0; i < variants.size(); ++i)
      if (variants[i] == v) return static_cast<int>(i);
    variants.emplace_back(v);
    return static_cast<int>(variants.size() - 1);
  }
};

// Logits (§9-§13) on result_output: KLD, argmax flips (tie vs structural), max-abs and ULP, and
// the per-position curves.
void CompareSink::Impl::summarize_logits(RunDivergence& d) {
  Impl& m = *this;
  const Reference& ref = *m.ref;
  const int64_t P = d.pos_end - d.pos_begin;
  std::vector<double> klds, dps;
  LogitsSummary& L = d.logits;
  d.curve_logits_max_abs.assign(static_cast<size_t>(P), 0);
  d.curve_kld.assign(static_cast<size_t>(P), 0);
  d.curve_margin.assign(static_cast<size_t>(P), NAN);
  if (m.logits_tap >= 0) {
    const auto& toks = ref.tokens();
    for (int64_t p = d.pos_begin; p < d.pos_end; ++p) {
      size_t n = 0;
      const float* a = ref.row(m.logits_tap, p, &n);
      if (!a || static_cast<size_t>(p) >= m.logits.size() || m.logits[static_cast<size_t>(p)].size() != n)
        continue;
      const std::vector<float>& b = m.logits[static_cast<size_t>(p)];
      const int32_t target = p + 1 < static_cast<int64_t>(toks.size()) ? toks[static_cast<size_t>(p + 1)] : -1;
      const LogitsPosition lp = compare_logits_position(std::span<const float>(a, n), b, target, m.opt.topk);
      const size_t i = static_cast<size_t>(p - d.pos_begin);
      const CompareStats s = compare(std::span<const float>(a, n), b);
      ++L.positions;
      L.max_abs = std::max(L.max_abs, s.max_abs);
      L.max_ulp = std::max(L.max_ulp, s.max_ulp);
      d.curve_logits_max_abs[i] = s.max_abs;
      d.curve_kld[i] = lp.kld;
      d.curve_margin[i] = lp.margin_a;
      klds.push_back(lp.kld);
      if (target >= 0) dps.push_back(lp.dp);
      const FlipKind k = classify_flip(lp.argmax_a, lp.argmax_b, lp.margin_a, m.opt.tau);
      if (k == FlipKind::None) {
        ++L.argmax_same;
      } else {
        (k == FlipKind::Tie ? L.tie_flips : L.structural_flips)++;
        if (L.first_flip == kNoDivergence) L.first_flip = p;
      }
    }
    const std::array<double, 1> p99 = {99};
    const DistSummary ks = summarize(klds, p99);
    L.kld_mean = ks.mean;
    L.kld_max = ks.max;
    L.kld_p99 = ks.percentiles.empty() ? 0 : ks.percentiles[0].second;
    const DistSummary ds = summarize(dps, p99);
    L.dp_rms = ds.rms;
  }
}

CompareSink::CompareSink(std::shared_ptr<const Reference> ref, CompareRunOptions opt)
    : impl_(std::make_unique<Impl>()) {
  if (!ref) fail("CompareSink: no reference");
  impl_->ref = std::move(ref);
  impl_->opt = opt;
  impl_->taps = impl_->ref->taps();
  impl_->rows.resize(impl_->taps.size());
  impl_->logits_tap = impl_->ref->tap_index(-1, "result_output");
}

CompareSink::~CompareSink() = default;

void CompareSink::tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
                      const char* variant) {
  Impl& m = *impl_;
  if (!m.ref->captured(layer, name, pos)) return;
  std::lock_guard<std::mutex> lock(m.mu);
  const int t = m.tap_of(layer, name);
  auto& rows = m.rows[static_cast<size_t>(t)];
  if (pos < 0) fail("CompareSink: negative position");
  if (static_cast<size_t>(pos) >= rows.size()) rows.resize(static_cast<size_t>(pos) + 1);
  RowCmp& r = rows[static_cast<size_t>(pos)];
  r = RowCmp{};
  r.present = true;
  r.variant = m.variant_id(variant);
  r.n = n;
  m.cand_min = std::min(m.cand_min, pos);
  m.cand_max = std::max(m.cand_max, pos);
  size_t rn = 0;
  const float* ref = m.ref->row(t, pos, &rn);
  if (ref) {
    double ss = 0;
    for (size_t i = 0; i < rn; ++i) ss += double(ref[i]) * double(ref[i]);
    r.sum_sq = ss;
    if (rn != n) {
      r.length_mismatch = true;
    } else if (std::memcmp(ref, data, n * sizeof(float)) == 0) {
      r.equal = true;
    } else {
      // Only differing rows pay for the fp64 element metrics.
      CompareStats s;
      s.add(std::span<const float>(ref, rn), std::span<const float>(data, n), pos);
      r.stats = static_cast<int32_t>(m.stats.size());
      m.stats.push_back(s);
    }
  }
  if (t == m.logits_tap) {
    if (static_cast<size_t>(pos) >= m.logits.size()) m.logits.resize(static_cast<size_t>(pos) + 1);
    m.logits[static_cast<size_t>(pos)].assign(data, data + n);
  }
}

void CompareSink::rollback(int64_t pos) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  for (auto& rows : m.rows)
    for (size_t p = static_cast<size_t>(std::max<int64_t>(pos, 0)); p < rows.size(); ++p)
      rows[p] = RowCmp{};
  for (size_t p = static_cast<size_t>(std::max<int64_t>(pos, 0)); p < m.logits.size(); ++p)
    m.logits[p].clear();
  m.cand_max = std::min(m.cand_max, pos - 1);
}

RunDivergence CompareSink::finish() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  const Reference& ref = *m.ref;
  if (m.cand_max < 0) fail("comparison: the candidate run produced no taps");
  RunDivergence d;
  d.pos_begin = std::max(m.opt.pos_begin, m.cand_min);
  d.pos_end = std::min(m.opt.pos_end, m.cand_max + 1);
  if (d.pos_end <= d.pos_begin) fail("comparison: no position to compare");
  const int64_t P = d.pos_end - d.pos_begin;
  const size_t nref = ref.taps().size();

  // Heatmap rows: every layer with a tap, in display order.
  for (const TapKey& k : m.taps)
    if (std::find(d.heat_layers.begin(), d.heat_layers.end(), k.layer) == d.heat_layers.end())
      d.heat_layers.push_back(k.layer);
  std::sort(d.heat_layers.begin(), d.heat_layers.end(), layer_before);
  d.heat.assign(d.heat_layers.size(), std::vector<double>(static_cast<size_t>(P), 0.0));
  d.curve_div_taps.assign(static_cast<size_t>(P), 0);

  std::vector<int64_t> first_bit(m.taps.size(), kNever), first_thr(m.taps.size(), kNever);
  for (size_t t = 0; t < m.taps.size(); ++t) {
    const TapKey& key = m.taps[t];
    TapSummary ts;
    ts.layer = key.layer;
    ts.name = key.name;
    CompareStats acc;
    double sum_sq_ref = 0;
    const size_t hl = static_cast<size_t>(
        std::find(d.heat_layers.begin(), d.heat_layers.end(), key.layer) - d.heat_layers.begin());
    const auto& rows = m.rows[t];
    for (int64_t p = d.pos_begin; p < d.pos_end; ++p) {
      if (!ref.captured(key.layer, key.name, p)) continue;
      const bool has_ref = t < nref && ref.row(static_cast<int>(t), p, nullptr);
      const RowCmp* c =
          static_cast<size_t>(p) < rows.size() && rows[static_cast<size_t>(p)].present
              ? &rows[static_cast<size_t>(p)]
              : nullptr;
      if (!has_ref && !c) continue;
      double& cell = d.heat[hl][static_cast<size_t>(p - d.pos_begin)];
      bool diverged = false, over = false;
      if (!has_ref || !c || c->length_mismatch) {
        ++ts.rows_unmatched;
        diverged = over = true;
        cell = INFINITY;
      } else {
        ++ts.rows;
        sum_sq_ref += c->sum_sq;
        if (!c->equal) {
          const CompareStats& s = m.stats[static_cast<size_t>(c->stats)];
          ++ts.rows_bitdiff;
          diverged = true;
          over = exceeds_threshold(s, m.opt.max_abs_threshold);
          acc.merge(s);
          cell = std::max(cell, s.max_abs > 0 ? s.max_abs : double(FLT_TRUE_MIN));
          if (s.nonfinite_failure()) cell = INFINITY;
        }
        d.ulp_hist[0] += c->equal ? c->n : 0;
      }
      if (diverged) {
        ++d.curve_div_taps[static_cast<size_t>(p - d.pos_begin)];
        if (first_bit[t] == kNever) first_bit[t] = p;
      }
      if (over && first_thr[t] == kNever) first_thr[t] = p;
    }
    ts.max_abs = acc.max_abs;
    ts.max_ulp = acc.max_ulp;
    ts.nmse = sum_sq_ref > 0 ? acc.sum_sq_err / sum_sq_ref : (acc.sum_sq_err > 0 ? INFINITY : 0);
    ts.first_pos = first_bit[t] == kNever ? kNoDivergence : first_bit[t];
    for (int b = 0; b < kUlpBuckets; ++b) d.ulp_hist[static_cast<size_t>(b)] += acc.ulp_hist[static_cast<size_t>(b)];
    d.max_ulp = std::max(d.max_ulp, acc.max_ulp);
    d.rows_compared += ts.rows;
    d.rows_bitdiff += ts.rows_bitdiff;
    d.rows_unmatched += ts.rows_unmatched;
    d.taps.push_back(ts);
  }

  // §14: first position, then first tap in dataflow order at it.
  auto point = [&](const std::vector<int64_t>& firsts) {
    DivPoint dp;
    const FirstDivergence f = first_divergence(firsts);
    if (!f.found()) return dp;
    const size_t t = f.tap;
    dp.pos = f.pos;
    dp.layer = m.taps[t].layer;
    dp.tap = m.taps[t].name;
    dp.tap_index = static_cast<int>(t);
    if (t < nref) dp.variant_ref = ref.variant(static_cast<int>(t), f.pos);
    const auto& rows = m.rows[t];
    const RowCmp* c = static_cast<size_t>(f.pos) < rows.size() && rows[static_cast<size_t>(f.pos)].present
                          ? &rows[static_cast<size_t>(f.pos)]
                          : nullptr;
    dp.only_ref = !c;
    dp.only_cand = c && dp.variant_ref.empty();
    if (c) {
      dp.variant_cand = m.variants[static_cast<size_t>(c->variant)];
      dp.n = c->n;
      if (c->stats >= 0) {
        const CompareStats& s = m.stats[static_cast<size_t>(c->stats)];
        dp.n_bitdiff = s.n_bitdiff;
        dp.max_abs = s.max_abs;
        dp.channel = s.max_abs_at.index;
        dp.ref_value = s.max_abs_at.a;
        dp.cand_value = s.max_abs_at.b;
        if (!s.max_abs_at.valid()) dp.channel = s.max_ulp_at.index;
      }
    }
    return dp;
  };
  d.first_bit = point(first_bit);
  d.first_thresh = point(first_thr);

  m.summarize_logits(d);
  for (const auto& rows : m.rows)
    for (const RowCmp& r : rows)
      if (r.present) {
        const std::string& v = m.variants[static_cast<size_t>(r.variant)];
        if (std::find(d.variants.begin(), d.variants.end(), v) == d.variants.end()) d.variants.push_back(v);
      }
  std::sort(d.variants.begin(), d.variants.end());
  return d;
}

// ---- JSON --------------------------------------------------------------------------------------

Json run_divergence_json(const RunDivergence& d, bool with_maps) {
  Json j = jobj();
  jput(j, "bit_equal", jbool(d.bit_equal()));
  jput(j, "pos_begin", jint(d.pos_begin));
  jput(j, "pos_end", jint(d.pos_end));
  jput(j, "rows_compared", jint(d.rows_compared));
  jput(j, "rows_bitdiff", jint(d.rows_bitdiff));
  jput(j, "rows_unmatched", jint(d.rows_unmatched));
  jput(j, "max_ulp", d.max_ulp == kUlpInfinite ? jstr("inf") : jint(static_cast<int64_t>(d.max_ulp)));
  std::vector<int64_t> hist(d.ulp_hist.begin(), d.ulp_hist.end());
  jput(j, "ulp_hist", jints(hist));
  jput(j, "first_bit", divpoint_json(d.first_bit));
  jput(j, "first_thresh", divpoint_json(d.first_thresh));
  Json L = jobj();
  jput(L, "positions", jint(d.logits.positions));
  jput(L, "max_abs", jnum(d.logits.max_abs));
  jput(L, "max_ulp", d.logits.max_ulp == kUlpInfinite ? jstr("inf") : jint(static_cast<int64_t>(d.logits.max_ulp)));
  jput(L, "kld_mean", jnum(d.logits.kld_mean));
  jput(L, "kld_max", jnum(d.logits.kld_max));
  jput(L, "kld_p99", jnum(d.logits.kld_p99));
  jput(L, "dp_rms", jnum(d.logits.dp_rms));
  jput(L, "argmax_same", jint(d.logits.argmax_same));
  jput(L, "tie_flips", jint(d.logits.tie_flips));
  jput(L, "structural_flips", jint(d.logits.structural_flips));
  jput(L, "first_flip", d.logits.first_flip == kNoDivergence ? jnull() : jint(d.logits.first_flip));
  jput(j, "logits", L);
  Json taps = jarr();
  for (const TapSummary& t : d.taps) {
    Json o = jobj();
    jput(o, "layer", jint(t.layer));
    jput(o, "name", jstr(t.name));
    jput(o, "rows", jint(t.rows));
    jput(o, "rows_bitdiff", jint(t.rows_bitdiff));
    jput(o, "rows_unmatched", jint(t.rows_unmatched));
    jput(o, "max_abs", jnum(t.max_abs));
    jput(o, "max_ulp", t.max_ulp == kUlpInfinite ? jstr("inf") : jint(static_cast<int64_t>(t.max_ulp)));
    jput(o, "nmse", jnum(t.nmse));
    jput(o, "first_pos", t.first_pos == kNoDivergence ? jnull() : jint(t.first_pos));
    taps.array.push_back(o);
  }
  jput(j, "taps", taps);
  jput(j, "variants", jstrs(d.variants));
  jput(j, "seconds", jnum(d.seconds));
  if (with_maps) {
    Json h = jobj();
    std::vector<int64_t> layers(d.heat_layers.begin(), d.heat_layers.end());
    jput(h, "layers", jints(layers));
    Json rows = jarr();
    for (const auto& r : d.heat) rows.array.push_back(jnums(r));
    jput(h, "max_abs", rows);
    jput(j, "heatmap", h);
    Json c = jobj();
    jput(c, "logits_max_abs", jnums(d.curve_logits_max_abs));
    jput(c, "kld", jnums(d.curve_kld));
    jput(c, "margin", jnums(d.curve_margin));
    jput(c, "divergent_taps", jints(d.curve_div_taps));
    jput(j, "curves", c);
  }
  return j;
}

namespace {
uint64_t ulp_of(const Json& o, const std::string& key) {
  const Json* v = o.find(key);
  if (!v || v->is_null()) return 0;
  if (v->is_string()) return kUlpInfinite;
  return static_cast<uint64_t>(v->as_int());
}
std::vector<int64_t> ints_of(const Json* v) {
  std::vector<int64_t> out;
  if (v && v->is_array())
    for (const Json& x : v->array) out.push_back(x.as_int());
  return out;
}
}  // namespace

RunDivergence run_divergence_from_json(const Json& j) {
  RunDivergence d;
  d.pos_begin = jint_at(j, "pos_begin");
  d.pos_end = jint_at(j, "pos_end");
  d.rows_compared = jint_at(j, "rows_compared");
  d.rows_bitdiff = jint_at(j, "rows_bitdiff");
  d.rows_unmatched = jint_at(j, "rows_unmatched");
  d.max_ulp = ulp_of(j, "max_ulp");
  const auto hist = ints_of(j.find("ulp_hist"));
  for (size_t i = 0; i < hist.size() && i < d.ulp_hist.size(); ++i) d.ulp_hist[i] = static_cast<uint64_t>(hist[i]);
  d.first_bit = divpoint_from_json(j.at("first_bit"));
  d.first_thresh = divpoint_from_json(j.at("first_thresh"));
  const Json& L = j.at("logits");
  d.logits.positions = jint_at(L, "positions");
  d.logits.max_abs = jnum_at(L, "max_abs");
  d.logits.max_ulp = ulp_of(L, "max_ulp");
  d.logits.kld_mean = jnum_at(L, "kld_mean");
  d.logits.kld_max = jnum_at(L, "kld_max");
  d.logits.kld_p99 = jnum_at(L, "kld_p99");
  d.logits.dp_rms = jnum_at(L, "dp_rms");
  d.logits.argmax_same = jint_at(L, "argmax_same");
  d.logits.tie_flips = jint_at(L, "tie_flips");
  d.logits.structural_flips = jint_at(L, "structural_flips");
  d.logits.first_flip = jint_at(L, "first_flip", kNoDivergence);
  for (const Json& o : j.at("taps").as_array()) {
    TapSummary t;
    t.layer = static_cast<int>(jint_at(o, "layer"));
    t.name = jstr_at(o, "name");
    t.rows = jint_at(o, "rows");
    t.rows_bitdiff = jint_at(o, "rows_bitdiff");
    t.rows_unmatched = jint_at(o, "rows_unmatched");
    t.max_abs = jnum_at(o, "max_abs");
    t.max_ulp = ulp_of(o, "max_ulp");
    t.nmse = jnum_at(o, "nmse");
    t.first_pos = jint_at(o, "first_pos", kNoDivergence);
    d.taps.push_back(t);
  }
  if (const Json* v = j.find("variants"))
    for (const Json& s : v->as_array()) d.variants.push_back(s.as_string());
  d.seconds = jnum_at(j, "seconds");
  if (const Json* h = j.find("heatmap")) {
    for (int64_t l : ints_of(h->find("layers"))) d.heat_layers.push_back(static_cast<int>(l));
    for (const Json& r : h->at("max_abs").as_array()) d.heat.push_back(jnums_of(r));
  }
  if (const Json* c = j.find("curves")) {
    d.curve_logits_max_abs = jnums_of(c->at("logits_max_abs"));
    d.curve_kld = jnums_of(c->at("kld"));
    d.curve_margin = jnums_of(c->at("margin"));
    d.curve_div_taps = ints_of(c->find("divergent_taps"));
  }
  return d;
}

}  // namespace ds4
