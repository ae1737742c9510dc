// diff_dumps: the streaming comparison of two tap dumps (see ds4/diff.h for what is computed and
// how memory stays bounded). Output (text table, JSON, the command) is in diff_report.cpp.
#include "ds4/diff.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "ds4/error.h"

namespace ds4 {

void check_comparable(const RunManifest& a, const std::string& pa, const RunManifest& b,
                      const std::string& pb) {
  const std::string head = "dumps are not comparable: ";
  if (a.schema_version != b.schema_version)
    fail(head + "schema_version " + std::to_string(a.schema_version) + " (" + pa + ") vs " +
         std::to_string(b.schema_version) + " (" + pb + ")");
  if (a.model_sha256 != b.model_sha256)
    fail(head + "different models (model_sha256 " + a.model_sha256.substr(0, 12) + "... in " + pa +
         ", " + b.model_sha256.substr(0, 12) + "... in " + pb + ")");
  if (a.tokens != b.tokens) {
    const int64_t t = first_token_divergence(a.tokens, b.tokens);
    const std::string where = t == kNever ? "lengths " + std::to_string(a.tokens.size()) + " vs " +
                                                std::to_string(b.tokens.size())
                                          : "first difference at position " + std::to_string(t) +
                                                ": " + std::to_string(a.tokens[t]) + " vs " +
                                                std::to_string(b.tokens[t]);
    fail(head + "different tokens (" + where + ") in " + pa + " and " + pb);
  }
}

namespace {

// B's rows of one tap for positions [start, next): a window of the tap, bounded in bytes.
struct Window {
  std::vector<int64_t> pos;
  std::vector<uint64_t> off{0};
  std::vector<float> data;
  std::vector<size_t> length;
  std::vector<std::string> variant;
  std::vector<TensorStats> stats;
  void clear() {
    pos.clear();
    off.assign(1, 0);
    data.clear();
    length.clear();
    variant.clear();
    stats.clear();
  }
  std::span<const float> row(size_t j) const {
    return std::span<const float>(data.data() + off[j], off[j + 1] - off[j]);
  }
};

// One row of each side at the same position, as the per-tap handlers see it.
struct RowPair {
  int64_t pos;
  const DumpRow& a;
  std::span<const float> b_data;
  size_t b_length;
  const std::string& b_variant;
  const TensorStats& b_stats;
};

class Differ {
 public:
  Differ(const DumpReader& A, const DumpReader& B, const DiffOptions& opt, DiffResult& r)
      : A_(A), B_(B), opt_(opt), r_(r) {}

  void run();

 private:
  bool tap_selected(const TapKey& k) const {
    const TapFilter& f = opt_.filter;
    return (f.layers.empty() || f.layers.count(k.layer)) &&
           (f.names.empty() || f.names.count(k.name));
  }
  TapDiff compare_tap(const TapKey& key, bool logits, bool routing);
  void compare_row(TapDiff& td, const RowPair& p, bool logits, bool routing);
  void unmatched(TapDiff& td, int64_t pos, const std::string& variant_a,
                 const std::string& variant_b, size_t length);
  void logits_row(int64_t pos, std::span<const float> a, std::span<const float> b);
  void finish_logits();
  void finish_growth();
  void finish_routing();

  const DumpReader& A_;
  const DumpReader& B_;
  const DiffOptions& opt_;
  DiffResult& r_;
  // Per-position logit values for the aggregations.
  std::vector<double> kld_, dp_, logp_, logq_, margins_;
  int64_t same_ = 0;
  double overlap_sum_ = 0, jaccard_sum_ = 0, overlap_min_ = 1;
  std::map<int, int64_t> routing_rows_, routing_flips_;
};

void Differ::run() {
  const bool full = r_.full_data;
  std::set<TapKey> in_a(A_.taps().begin(), A_.taps().end());
  const TapKey logits_key{-1, "result_output"};
  bool logits_done = false;
  for (const TapKey& k : A_.taps()) {
    const bool selected = tap_selected(k);
    const bool is_logits = k == logits_key && full;
    if (!selected && !is_logits) continue;
    if (!B_.has_tap(k.layer, k.name)) {
      if (selected) r_.taps_only_a.push_back(k);
      continue;
    }
    TapDiff td = compare_tap(k, is_logits, full && selected && k.name == "ffn_moe_topk");
    if (is_logits) {
      logits_done = true;
      r_.logits.stats = td.stats;
    }
    if (!selected) continue;  // result_output compared for the logits summary only
    r_.rows_compared += td.rows_compared;
    r_.rows_bitdiff += td.rows_bitdiff;
    r_.rows_unmatched += td.rows_only_a + td.rows_only_b + td.rows_length_mismatch;
    r_.taps.push_back(std::move(td));
  }
  for (const TapKey& k : B_.taps())
    if (!in_a.count(k) && tap_selected(k)) r_.taps_only_b.push_back(k);
  if (r_.taps.empty() && r_.taps_only_a.empty() && r_.taps_only_b.empty())
    fail("the tap filter (" + opt_.filter.to_string() + ") selects no tap of " + r_.path_a);

  // §14: t* over all taps, then the first tap in dataflow order diverging at t*.
  std::vector<int64_t> bit, thresh;
  for (const TapDiff& td : r_.taps) {
    bit.push_back(td.first_bit.pos);
    thresh.push_back(td.first_thresh.pos);
  }
  if (const FirstDivergence f = first_divergence(bit); f.found())
    r_.first_bit = r_.taps[f.tap].first_bit;
  if (const FirstDivergence f = first_divergence(thresh); f.found())
    r_.first_thresh = r_.taps[f.tap].first_thresh;
  if (logits_done) finish_logits();
  if (full) {
    finish_growth();
    finish_routing();
  }
}

TapDiff Differ::compare_tap(const TapKey& key, bool logits, bool routing) {
  TapDiff td;
  td.layer = key.layer;
  td.name = key.name;
  td.stats.opt = opt_.compare;
  const int64_t pos_end = opt_.filter.pos_end;
  int64_t start = opt_.filter.pos_begin;
  Window w;
  for (;;) {
    // B's rows from `start` until the window is full; `next` is the first row left out.
    w.clear();
    int64_t next = INT64_MAX;
    B_.for_each_row(key.layer, key.name, [&](const DumpRow& row) {
      if (row.pos < start || row.pos >= pos_end || next != INT64_MAX) return;
      if (!w.pos.empty() && (w.data.size() + row.data.size()) * sizeof(float) > opt_.window_bytes) {
        next = row.pos;
        return;
      }
      w.pos.push_back(row.pos);
      w.data.insert(w.data.end(), row.data.begin(), row.data.end());
      w.off.push_back(w.data.size());
      w.length.push_back(row.length);
      w.variant.emplace_back(row.variant);
      w.stats.push_back(row.stats);
    });
    const int64_t end = std::min(next, pos_end);
    size_t j = 0;  // both sides ascend in position: a merge walk
    A_.for_each_row(key.layer, key.name, [&](const DumpRow& row) {
      if (row.pos < start || row.pos >= end) return;
      while (j < w.pos.size() && w.pos[j] < row.pos) {
        unmatched(td, w.pos[j], "(absent)", w.variant[j], w.length[j]);
        ++j;
      }
      if (j == w.pos.size() || w.pos[j] != row.pos) {
        unmatched(td, row.pos, std::string(row.variant), "(absent)", row.length);
        return;
      }
      compare_row(td, {row.pos, row, w.row(j), w.length[j], w.variant[j], w.stats[j]}, logits,
                  routing);
      ++j;
    });
    for (; j < w.pos.size(); ++j) unmatched(td, w.pos[j], "(absent)", w.variant[j], w.length[j]);
    if (next == INT64_MAX || next >= pos_end) break;
    start = next;
  }
  return td;
}

// A row present on one side only: the two runs did not compute the same tensors there (e.g. a
// batch-wide dispatch choosing another attention path), so it is a divergence at that position
// at every level, bit and thresholded.
void Differ::unmatched(TapDiff& td, int64_t pos, const std::string& variant_a,
                       const std::string& variant_b, size_t length) {
  ++(variant_a == "(absent)" ? td.rows_only_b : td.rows_only_a);
  for (DivergencePoint* d : {&td.first_bit, &td.first_thresh}) {
    if (d->found() && d->pos <= pos) continue;
    *d = DivergencePoint{};
    d->pos = pos;
    d->layer = td.layer;
    d->tap = td.name;
    d->variant_a = variant_a;
    d->variant_b = variant_b;
    d->n_bitdiff = length;
  }
}

void Differ::compare_row(TapDiff& td, const RowPair& p, bool logits, bool routing) {
  const std::string_view va = p.a.variant;
  if (td.rows_compared == 0) {
    td.variant_a = std::string(va);
    td.variant_b = p.b_variant;
  }
  if (va != p.b_variant) td.variants_differ = true;
  ++td.rows_compared;
  auto point = [&](DivergencePoint& d, const CompareStats* rs) {
    d.pos = p.pos;
    d.layer = td.layer;
    d.tap = td.name;
    d.variant_a = std::string(va);
    d.variant_b = p.b_variant;
    if (rs) {
      d.n_bitdiff = rs->n_bitdiff;
      d.max_abs = rs->max_abs;
      d.max_abs_at = rs->max_abs_at;
    } else {
      d.n_bitdiff = std::max(p.a.length, p.b_length);
    }
  };
  if (p.a.length != p.b_length) {
    ++td.rows_length_mismatch;
    ++td.rows_bitdiff;
    if (!td.first_bit.found()) point(td.first_bit, nullptr);
    if (!td.first_thresh.found()) point(td.first_thresh, nullptr);
    return;
  }
  if (!r_.full_data) {  // stats only: the hash decides bit equality
    if (p.a.stats.hash != p.b_stats.hash) {
      ++td.rows_bitdiff;
      if (!td.first_bit.found()) point(td.first_bit, nullptr);
    }
    return;
  }
  CompareStats rs;
  rs.opt = opt_.compare;
  rs.add(p.a.data, p.b_data, p.pos);
  td.stats.merge(rs);
  if (!rs.bit_equal()) {
    ++td.rows_bitdiff;
    if (!td.first_bit.found()) point(td.first_bit, &rs);
  }
  if (exceeds_threshold(rs, opt_.max_abs_threshold) && !td.first_thresh.found())
    point(td.first_thresh, &rs);
  if (logits) logits_row(p.pos, p.a.data, p.b_data);
  if (routing) {
    ++routing_rows_[td.layer];
    ++r_.routing.rows_compared;
    if (routing_flip(p.a.data, p.b_data)) {
      ++routing_flips_[td.layer];
      ++r_.routing.flips;
      if (r_.routing.first_flip_pos == kNever || p.pos < r_.routing.first_flip_pos ||
          (p.pos == r_.routing.first_flip_pos && td.layer < r_.routing.first_flip_layer)) {
        r_.routing.first_flip_pos = p.pos;
        r_.routing.first_flip_layer = td.layer;
      }
    }
  }
}

void Differ::logits_row(int64_t pos, std::span<const float> a, std::span<const float> b) {
  LogitsDiff& L = r_.logits;
  const auto& tokens = r_.manifest_a.tokens;
  // delta-p target: the next input token, when the run has one for this position.
  const int32_t target = (pos + 1 < int64_t(tokens.size()) && tokens[pos + 1] >= 0 &&
                          size_t(tokens[pos + 1]) < a.size())
                             ? tokens[pos + 1]
                             : -1;
  const LogitsPosition lp = compare_logits_position(a, b, target, opt_.topk);
  ++L.positions;
  L.n_vocab = int64_t(a.size());
  kld_.push_back(lp.kld);
  margins_.push_back(lp.margin_a);
  if (lp.kld < 0) {
    if (L.kld_negative == 0 || lp.kld < L.kld_min_value) L.kld_min_value = lp.kld;
    ++L.kld_negative;
  }
  if (target >= 0) {
    dp_.push_back(lp.dp);
    logp_.push_back(lp.logp_target);
    logq_.push_back(lp.logq_target);
  }
  same_ += lp.argmax_a == lp.argmax_b;
  overlap_sum_ += lp.topk.overlap;
  jaccard_sum_ += lp.topk.jaccard;
  overlap_min_ = std::min(overlap_min_, lp.topk.overlap);
  const FlipKind kind = classify_flip(lp.argmax_a, lp.argmax_b, lp.margin_a, opt_.tau);
  if (kind == FlipKind::None) return;
  if (L.first_token == kNever) {  // rows arrive in ascending position
    L.first_token = pos;
    L.cross = lp.cross;
  }
  (kind == FlipKind::Tie ? L.tie_flips : L.structural_flips)++;
  if (L.flips.size() < opt_.max_flips_listed)
    L.flips.push_back({pos, lp.argmax_a, lp.argmax_b, lp.margin_a, kind});
}

void Differ::finish_logits() {
  LogitsDiff& L = r_.logits;
  L.present = L.positions > 0;
  L.kld = summarize(kld_, kKldPercentiles);
  L.dp = summarize(dp_, kDpPercentiles);
  L.margin = summarize(margins_, kKldPercentiles);
  L.mult_prob_error = multiplicative_prob_error(logp_, logq_);
  L.argmax = argmax_agreement(same_, L.positions);
  if (L.positions) {
    L.topk_overlap_mean = overlap_sum_ / double(L.positions);
    L.topk_jaccard_mean = jaccard_sum_ / double(L.positions);
    L.topk_overlap_min = overlap_min_;
  }
  L.cross.k = opt_.topk;
}

void Differ::finish_growth() {
  // Each layer's output: the layer_output_tap when compared, else the layer's last compared tap.
  std::map<int, const TapDiff*> out;
  for (const TapDiff& td : r_.taps) {
    if (td.layer < 0) continue;
    auto it = out.find(td.layer);
    if (it == out.end() || it->second->name != opt_.layer_output_tap) out[td.layer] = &td;
  }
  for (const auto& [layer, td] : out) {
    LayerGrowth g;
    g.layer = layer;
    g.tap = td->name;
    g.max_abs_out = td->stats.max_abs;
    g.nmse_out = td->stats.nmse_energy();
    g.output_bit_equal = td->bit_equal();
    if (layer > 0) {
      auto prev = out.find(layer - 1);
      if (prev == out.end()) continue;  // the input of this layer was not compared
      g.max_abs_in = prev->second->stats.max_abs;
      g.nmse_in = prev->second->stats.nmse_energy();
      g.input_bit_equal = prev->second->bit_equal();
    }
    g.growth = growth_ratio(g.max_abs_out, g.max_abs_in);
    g.nmse_growth = nmse_growth_ratio(g.nmse_out, g.nmse_in);
    r_.growth.push_back(g);
  }
}

void Differ::finish_routing() {
  RoutingDiff& R = r_.routing;
  for (const auto& [layer, rows] : routing_rows_) {
    (void)rows;
    R.flips_per_layer.emplace_back(layer,
                                   routing_flips_.count(layer) ? routing_flips_.at(layer) : 0);
  }
  R.router_logits.opt = R.router_probs.opt = R.gate_weights.opt = opt_.compare;
  for (const TapDiff& td : r_.taps) {
    if (td.name == "ffn_moe_logits") R.router_logits.merge(td.stats);
    if (td.name == "ffn_moe_probs") R.router_probs.merge(td.stats);
    if (td.name == "ffn_moe_weights_scaled") R.gate_weights.merge(td.stats);
  }
}

std::vector<std::string> manifest_notes(const RunManifest& a, const RunManifest& b) {
  std::vector<std::string> notes;
  auto note = [&](const char* field, const std::string& x, const std::string& y) {
    if (x != y) notes.push_back(std::string(field) + ": '" + x + "' vs '" + y + "'");
  };
  note("profile", a.profile, b.profile);
  note("gate_set", a.gate_set, b.gate_set);
  note("run_mode", a.run_mode, b.run_mode);
  note("width", std::to_string(a.width), std::to_string(b.width));
  note("backend", a.backend, b.backend);
  note("device_name", a.device_name, b.device_name);
  note("engine_git_sha", a.engine_git_sha, b.engine_git_sha);
  note("tap_level", a.tap_level, b.tap_level);
  note("tap_filter", a.tap_filter, b.tap_filter);
  std::set<std::string> keys;
  for (const auto& kv : a.extra) keys.insert(kv.first);
  for (const auto& kv : b.extra) keys.insert(kv.first);
  for (const std::string& k : keys) {
    const auto ia = a.extra.find(k), ib = b.extra.find(k);
    note(("extra." + k).c_str(), ia == a.extra.end() ? "" : ia->second,
         ib == b.extra.end() ? "" : ib->second);
  }
  return notes;
}

}  // namespace

DiffResult diff_dumps(const std::string& path_a, const std::string& path_b,
                      const DiffOptions& opt) {
  if (opt.topk < 1) fail("diff: top-k must be at least 1 (got " + std::to_string(opt.topk) + ")");
  if (!(opt.tau >= 0)) fail("diff: tau must be >= 0");
  if (!(opt.max_abs_threshold >= 0)) fail("diff: the max-abs threshold must be >= 0");
  const DumpReader A = DumpReader::open(path_a);
  const DumpReader B = DumpReader::open(path_b);
  check_comparable(A.manifest(), path_a, B.manifest(), path_b);
  DiffResult r;
  r.path_a = path_a;
  r.path_b = path_b;
  r.label = opt.label;
  r.manifest_a = A.manifest();
  r.manifest_b = B.manifest();
  r.options = opt;
  r.full_data = A.has_data() && B.has_data();
  r.notes = manifest_notes(A.manifest(), B.manifest());
  if (!r.full_data)
    r.notes.push_back("stats-only dump (" + std::string(A.has_data() ? path_b : path_a) +
                      "): rows compared by hash; numeric metrics need tap level full on both");
  r.logits.stats.opt = r.routing.router_logits.opt = opt.compare;
  Differ(A, B, opt, r).run();
  return r;
}

}  // namespace ds4
