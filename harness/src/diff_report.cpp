// The outputs of a diff: JSON (the machine form `ds4-parity check` reads, layout in
// harness/PARITY_TOML.md), the human table, and the `ds4-parity diff` command itself.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "ds4/cli_args.h"
#include "ds4/diff.h"
#include "ds4/error.h"
#include "ds4/json_build.h"

namespace ds4 {

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

namespace {

Json jpos(int64_t p) { return p == kNever ? Json{} : jint(p); }
Json julp(uint64_t u) { return u == kUlpInfinite ? jstr("inf") : jint(int64_t(u)); }

Json loc_json(const ElementLoc& l) {
  if (!l.valid()) return Json{};
  return jobj({{"pos", jint(l.row)}, {"index", jint(l.index)}, {"a", jnum(l.a)}, {"b", jnum(l.b)}});
}

Json stats_json(const CompareStats& s) {
  Json::Members hist;
  for (int k = 0; k < kUlpBuckets; ++k)
    hist.emplace_back(ulp_bucket_name(k), jint(int64_t(s.ulp_hist[k])));
  return jobj({{"n", jint(int64_t(s.n))},
               {"bit_equal", jbool(s.bit_equal())},
               {"n_bitdiff", jint(int64_t(s.n_bitdiff))},
               {"frac_bitdiff", jnum(s.frac_bitdiff())},
               {"n_signed_zero", jint(int64_t(s.n_signed_zero))},
               {"n_nan_a", jint(int64_t(s.n_nan_a))},
               {"n_nan_b", jint(int64_t(s.n_nan_b))},
               {"n_nan_both", jint(int64_t(s.n_nan_both))},
               {"n_nan_mismatch", jint(int64_t(s.n_nan_mismatch))},
               {"n_inf_mismatch", jint(int64_t(s.n_inf_mismatch))},
               {"nan_failure", jbool(s.nan_failure())},
               {"max_abs", jnum(s.max_abs)},
               {"max_abs_at", loc_json(s.max_abs_at)},
               {"max_rel", jnum(s.max_rel)},
               {"eps_rel", jnum(s.opt.eps_rel)},
               {"max_rel_at", loc_json(s.max_rel_at)},
               {"max_ulp", julp(s.max_ulp)},
               {"max_ulp_at", loc_json(s.max_ulp_at)},
               {"ulp_hist", jobj(std::move(hist))},
               {"nmse_energy", jnum(s.nmse_energy())},
               {"nmse_energy_db", jnum(s.nmse_energy_db())},
               {"nmse_variance", jnum(s.nmse_variance())},
               {"sqnr_db", jnum(s.sqnr_db())},
               {"rel_l2", jnum(s.rel_l2())},
               {"cosine", jnum(s.cosine())},
               {"rmse", jnum(s.rmse())}});
}

Json point_json(const DivergencePoint& d) {
  if (!d.found()) return Json{};
  return jobj({{"pos", jint(d.pos)},
               {"layer", jint(d.layer)},
               {"tap", jstr(d.tap)},
               {"variant_a", jstr(d.variant_a)},
               {"variant_b", jstr(d.variant_b)},
               {"n_bitdiff", jint(int64_t(d.n_bitdiff))},
               {"max_abs", jnum(d.max_abs)},
               {"max_abs_at", loc_json(d.max_abs_at)}});
}

Json summary_json(const DistSummary& s) {
  Json::Members pct;
  for (const auto& [p, v] : s.percentiles) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", p);
    pct.emplace_back(buf, jnum(v));
  }
  return jobj({{"n", jint(s.n)},
               {"n_nan", jint(s.n_nan)},
               {"mean", jnum(s.mean)},
               {"mean_err", jnum(s.mean_err)},
               {"rms", jnum(s.rms)},
               {"max", jnum(s.max)},
               {"min", jnum(s.min)},
               {"percentiles", jobj(std::move(pct))}});
}

Json manifest_json(const RunManifest& m, const std::string& path) {
  return jobj({{"path", jstr(path)},
               {"model_sha256", jstr(m.model_sha256)},
               {"model_name", jstr(m.model_name)},
               {"schema_version", jint(m.schema_version)},
               {"backend", jstr(m.backend)},
               {"device_name", jstr(m.device_name)},
               {"profile", jstr(m.profile)},
               {"gate_set", jstr(m.gate_set)},
               {"run_mode", jstr(m.run_mode)},
               {"width", jint(m.width)},
               {"n_tokens", jint(int64_t(m.tokens.size()))},
               {"tap_level", jstr(m.tap_level)},
               {"engine_git_sha", jstr(m.engine_git_sha)},
               {"fault", jstr(m.extra.count("fault") ? m.extra.at("fault") : "")}});
}

Json logits_json(const LogitsDiff& L, const DiffOptions& o) {
  if (!L.present) return jobj({{"present", jbool(false)}});
  std::vector<Json> flips;
  for (const TokenFlip& f : L.flips)
    flips.push_back(jobj({{"pos", jint(f.pos)},
                          {"token_a", jint(f.token_a)},
                          {"token_b", jint(f.token_b)},
                          {"margin", jnum(f.margin)},
                          {"kind", jstr(flip_kind_name(f.kind))}}));
  Json cross = L.first_token == kNever ? Json{}
                                       : jobj({{"pos", jint(L.first_token)},
                                               {"k", jint(L.cross.k)},
                                               {"token_a", jint(L.cross.token_a)},
                                               {"token_b", jint(L.cross.token_b)},
                                               {"a_in_topk_b", jbool(L.cross.a_in_topk_b)},
                                               {"b_in_topk_a", jbool(L.cross.b_in_topk_a)},
                                               {"pass", jbool(L.cross.pass())}});
  return jobj({{"present", jbool(true)},
               {"positions", jint(L.positions)},
               {"n_vocab", jint(L.n_vocab)},
               {"max_abs", jnum(L.stats.max_abs)},
               {"stats", stats_json(L.stats)},
               {"kld", summary_json(L.kld)},
               {"kld_negative", jint(L.kld_negative)},
               {"kld_min_negative", jnum(L.kld_negative ? L.kld_min_value : 0.0)},
               {"argmax_agreement", jobj({{"p", jnum(L.argmax.p)},
                                          {"err", jnum(L.argmax.err)},
                                          {"same", jint(L.argmax.same)},
                                          {"n", jint(L.argmax.n)},
                                          {"tie_break", jstr("lowest index")}})},
               {"delta_p", summary_json(L.dp)},
               {"delta_p_target", jstr("next input token tokens[t+1]")},
               {"mult_prob_error", jnum(L.mult_prob_error)},
               {"topk", jobj({{"k", jint(o.topk)},
                              {"overlap_mean", jnum(L.topk_overlap_mean)},
                              {"overlap_min", jnum(L.topk_overlap_min)},
                              {"jaccard_mean", jnum(L.topk_jaccard_mean)}})},
               {"margin", summary_json(L.margin)},
               {"margin_unit", jstr("logits")},
               {"tau", jnum(o.tau)},
               {"first_token", jpos(L.first_token)},
               {"cross_containment", cross},
               {"tie_flips", jint(L.tie_flips)},
               {"structural_flips", jint(L.structural_flips)},
               {"flips", jarr(std::move(flips))}});
}

Json routing_json(const RoutingDiff& R) {
  std::vector<Json> per_layer;
  for (const auto& [layer, n] : R.flips_per_layer)
    per_layer.push_back(jobj({{"layer", jint(layer)}, {"flips", jint(n)}}));
  auto brief = [](const CompareStats& s) {
    return jobj({{"n", jint(int64_t(s.n))},
                 {"max_abs", jnum(s.max_abs)},
                 {"max_abs_at", loc_json(s.max_abs_at)}});
  };
  return jobj({{"rows_compared", jint(R.rows_compared)},
               {"flips", jint(R.flips)},
               {"first_flip",
                R.first_flip_pos == kNever
                    ? Json{}
                    : jobj({{"layer", jint(R.first_flip_layer)}, {"pos", jint(R.first_flip_pos)}})},
               {"per_layer", jarr(std::move(per_layer))},
               {"router_logits", brief(R.router_logits)},
               {"router_probs", brief(R.router_probs)},
               {"gate_weights", brief(R.gate_weights)}});
}

void pretty(const Json& j, int indent, std::string& out) {
  const std::string compact = j.dump();
  const bool container = j.is_array() || j.is_object();
  if (!container || compact.size() + size_t(indent) <= 100) {
    out += compact;
    return;
  }
  const std::string pad(size_t(indent + 2), ' ');
  if (j.is_array()) {
    out += "[\n";
    for (size_t i = 0; i < j.array.size(); ++i) {
      out += pad;
      pretty(j.array[i], indent + 2, out);
      out += i + 1 < j.array.size() ? ",\n" : "\n";
    }
    out += std::string(size_t(indent), ' ') + "]";
    return;
  }
  out += "{\n";
  for (size_t i = 0; i < j.members.size(); ++i) {
    out += pad + jstr(j.members[i].first).dump() + ": ";
    pretty(j.members[i].second, indent + 2, out);
    out += i + 1 < j.members.size() ? ",\n" : "\n";
  }
  out += std::string(size_t(indent), ' ') + "}";
}

}  // namespace

std::string json_pretty(const Json& j) {
  std::string out;
  pretty(j, 0, out);
  return out + "\n";
}

Json diff_result_json(const DiffResult& r) {
  const DiffOptions& o = r.options;
  std::vector<Json> taps, only_a, only_b, growth, notes;
  for (const TapDiff& t : r.taps)
    taps.push_back(jobj({{"layer", jint(t.layer)},
                         {"name", jstr(t.name)},
                         {"bit_equal", jbool(t.bit_equal())},
                         {"rows_compared", jint(t.rows_compared)},
                         {"rows_bitdiff", jint(t.rows_bitdiff)},
                         {"rows_only_a", jint(t.rows_only_a)},
                         {"rows_only_b", jint(t.rows_only_b)},
                         {"rows_length_mismatch", jint(t.rows_length_mismatch)},
                         {"variant_a", jstr(t.variant_a)},
                         {"variant_b", jstr(t.variant_b)},
                         {"variants_differ", jbool(t.variants_differ)},
                         {"first_bit", point_json(t.first_bit)},
                         {"first_thresholded", point_json(t.first_thresh)},
                         {"stats", r.full_data ? stats_json(t.stats) : Json{}}}));
  for (const TapKey& k : r.taps_only_a)
    only_a.push_back(jobj({{"layer", jint(k.layer)}, {"name", jstr(k.name)}}));
  for (const TapKey& k : r.taps_only_b)
    only_b.push_back(jobj({{"layer", jint(k.layer)}, {"name", jstr(k.name)}}));
  for (const LayerGrowth& g : r.growth)
    growth.push_back(jobj({{"layer", jint(g.layer)},
                           {"tap", jstr(g.tap)},
                           {"max_abs_in", jnum(g.max_abs_in)},
                           {"max_abs_out", jnum(g.max_abs_out)},
                           {"growth", jnum(g.growth)},
                           {"nmse_in", jnum(g.nmse_in)},
                           {"nmse_out", jnum(g.nmse_out)},
                           {"nmse_growth", jnum(g.nmse_growth)},
                           {"input_bit_equal", jbool(g.input_bit_equal)},
                           {"output_bit_equal", jbool(g.output_bit_equal)}}));
  for (const std::string& n : r.notes) notes.push_back(jstr(n));
  const LogitsDiff& L = r.logits;
  Json token = jobj({{"pos", jpos(L.first_token)},
                     {"token_a", L.first_token == kNever ? Json{} : jint(L.cross.token_a)},
                     {"token_b", L.first_token == kNever ? Json{} : jint(L.cross.token_b)}});
  return jobj({{"schema", jstr("ds4-parity-diff")},
               {"version", jint(1)},
               {"label", jstr(r.label)},
               {"bit_equal", jbool(r.bit_equal())},
               {"exit_code", jint(r.exit_code())},
               {"full_data", jbool(r.full_data)},
               {"a", manifest_json(r.manifest_a, r.path_a)},
               {"b", manifest_json(r.manifest_b, r.path_b)},
               {"options", jobj({{"filter", jstr(o.filter.to_string())},
                                 {"tau", jnum(o.tau)},
                                 {"max_abs_threshold", jnum(o.max_abs_threshold)},
                                 {"eps_rel", jnum(o.compare.eps_rel)},
                                 {"allow_matching_nan", jbool(o.compare.allow_matching_nan)},
                                 {"topk", jint(o.topk)},
                                 {"layer_output_tap", jstr(o.layer_output_tap)}})},
               {"rows", jobj({{"compared", jint(r.rows_compared)},
                              {"bitdiff", jint(r.rows_bitdiff)},
                              {"unmatched", jint(r.rows_unmatched)}})},
               {"taps_only_a", jarr(std::move(only_a))},
               {"taps_only_b", jarr(std::move(only_b))},
               {"first_divergence", jobj({{"token", token},
                                          {"bit", point_json(r.first_bit)},
                                          {"thresholded", point_json(r.first_thresh)},
                                          {"threshold", jnum(o.max_abs_threshold)}})},
               {"logits", logits_json(L, o)},
               {"routing", routing_json(r.routing)},
               {"growth", jarr(std::move(growth))},
               {"taps", jarr(std::move(taps))},
               {"notes", jarr(std::move(notes))}});
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

namespace {

std::string num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}
std::string ulp_text(uint64_t u) { return u == kUlpInfinite ? "inf" : std::to_string(u); }
std::string pad(std::string s, size_t w) {
  if (s.size() < w) s += std::string(w - s.size(), ' ');
  return s;
}
std::string lpad(std::string s, size_t w) {
  if (s.size() < w) s = std::string(w - s.size(), ' ') + s;
  return s;
}

std::string point_text(const DivergencePoint& d, bool numeric) {
  if (!d.found()) return "none";
  std::string s = "position " + std::to_string(d.pos) + ", " + tap_key_text(d.layer, d.tap);
  if (numeric && d.max_abs_at.valid())
    s += " channel " + std::to_string(d.max_abs_at.index) + ": a=" + num(d.max_abs_at.a) +
         " b=" + num(d.max_abs_at.b) + " (" + std::to_string(d.n_bitdiff) +
         (d.n_bitdiff == 1 ? " element differs" : " elements differ") + ", max-abs " +
         num(d.max_abs) + ")";
  s += "; variant a=" + d.variant_a + " b=" + d.variant_b;
  return s;
}

std::string summary_text(const DistSummary& s) {
  std::string t = "mean " + num(s.mean) + " +- " + num(s.mean_err) + ", max " + num(s.max);
  for (const auto& [p, v] : s.percentiles) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%g%%", p);
    t += ", " + std::string(buf) + " " + num(v);
  }
  return t + ", min " + num(s.min);
}

double median_of(const DistSummary& s) {
  for (const auto& [p, v] : s.percentiles)
    if (p == 50) return v;
  return std::nan("");
}

}  // namespace

std::string diff_report_text(const DiffResult& r, size_t worst) {
  std::string o;
  const RunManifest &ma = r.manifest_a, &mb = r.manifest_b;
  auto side = [](const RunManifest& m) {
    return m.run_mode + ", width " + std::to_string(m.width) + ", gates " + m.gate_set +
           (m.extra.count("fault") && !m.extra.at("fault").empty() && m.extra.at("fault") != "off"
                ? ", fault " + m.extra.at("fault")
                : "");
  };
  o += "A (reference): " + r.path_a + "  [" + side(ma) + "]\n";
  o += "B (candidate): " + r.path_b + "  [" + side(mb) + "]\n";
  o += "model " + (ma.model_name.empty() ? ma.model_path : ma.model_name) + " (sha256 " +
       ma.model_sha256.substr(0, 12) + "...), " + std::to_string(ma.tokens.size()) +
       " tokens, profile " + ma.profile + (r.label.empty() ? "" : ", label " + r.label) + "\n";
  for (const std::string& n : r.notes) o += "note: " + n + "\n";
  int64_t taps_diff = 0;
  for (const TapDiff& t : r.taps) taps_diff += !t.bit_equal();
  if (r.bit_equal()) {
    o += "result: BIT-EQUAL (" + std::to_string(r.rows_compared) + " rows in " +
         std::to_string(r.taps.size()) + " taps)\n";
  } else {
    o += "result: DIFFERENT (" + std::to_string(r.rows_bitdiff) + " of " +
         std::to_string(r.rows_compared) + " rows differ, in " + std::to_string(taps_diff) +
         " of " + std::to_string(r.taps.size()) + " taps";
    if (r.rows_unmatched) o += "; " + std::to_string(r.rows_unmatched) + " rows unmatched";
    if (!r.taps_only_a.empty() || !r.taps_only_b.empty())
      o += "; taps only in A: " + std::to_string(r.taps_only_a.size()) +
           ", only in B: " + std::to_string(r.taps_only_b.size());
    o += ")\n";
  }

  o += "\nfirst divergence (dataflow order)\n";
  const LogitsDiff& L = r.logits;
  o += "  token        ";
  if (!L.present) {
    o += "n/a (no result_output with data on both sides)\n";
  } else if (L.first_token == kNever) {
    o += "none\n";
  } else {
    double margin = 0;
    FlipKind kind = FlipKind::None;
    for (const TokenFlip& f : L.flips)
      if (f.pos == L.first_token) margin = f.margin, kind = f.kind;
    o += "position " + std::to_string(L.first_token) + ": a=" + std::to_string(L.cross.token_a) +
         " b=" + std::to_string(L.cross.token_b) + " (margin " + num(margin) + " logits, " +
         flip_kind_name(kind) + ")\n";
  }
  o += "  bit          " + point_text(r.first_bit, r.full_data) + "\n";
  if (r.full_data)
    o += "  thresholded  " + point_text(r.first_thresh, true) + "  [max-abs > " +
         num(r.options.max_abs_threshold) + "]\n";

  if (r.full_data) {
    std::vector<const TapDiff*> order;
    for (const TapDiff& t : r.taps)
      if (!t.bit_equal()) order.push_back(&t);
    std::stable_sort(order.begin(), order.end(), [](const TapDiff* x, const TapDiff* y) {
      return x->stats.max_abs > y->stats.max_abs;
    });
    if (order.size() > worst) order.resize(worst);
    if (!order.empty()) {
      o += "\nworst taps by max-abs\n";
      o += "  " + pad("tap", 30) + lpad("rows diff", 14) + lpad("max-abs", 11) + "  " +
           pad("at (pos, ch)", 14) + lpad("max ULP", 11) + lpad("NMSE", 11) + lpad("NMSE dB", 9) +
           "\n";
      for (const TapDiff* t : order) {
        const ElementLoc& at = t->stats.max_abs_at;
        o += "  " + pad(tap_key_text(t->layer, t->name), 30) +
             lpad(std::to_string(t->rows_bitdiff) + "/" + std::to_string(t->rows_compared), 14) +
             lpad(num(t->stats.max_abs), 11) + "  " +
             pad(at.valid() ? "(" + std::to_string(at.row) + ", " + std::to_string(at.index) + ")"
                            : "-",
                 14) +
             lpad(ulp_text(t->stats.max_ulp), 11) + lpad(num(t->stats.nmse_energy()), 11) +
             lpad(num(t->stats.nmse_energy_db()), 9) + "\n";
      }
    }
  }

  std::string one_side;
  for (const TapDiff& t : r.taps) {
    if (!t.rows_only_a && !t.rows_only_b && !t.rows_length_mismatch) continue;
    one_side += "  " + pad(tap_key_text(t.layer, t.name), 30);
    if (t.rows_only_a) one_side += " only in A: " + std::to_string(t.rows_only_a);
    if (t.rows_only_b) one_side += " only in B: " + std::to_string(t.rows_only_b);
    if (t.rows_length_mismatch)
      one_side += " length differs: " + std::to_string(t.rows_length_mismatch);
    one_side += " rows\n";
  }
  for (const TapKey& k : r.taps_only_a)
    one_side += "  " + pad(tap_key_text(k.layer, k.name), 30) + " tap only in A\n";
  for (const TapKey& k : r.taps_only_b)
    one_side += "  " + pad(tap_key_text(k.layer, k.name), 30) + " tap only in B\n";
  if (!one_side.empty())
    o += "\nunmatched (present on one side only: the runs computed different tensors)\n" + one_side;

  if (!r.growth.empty()) {
    o += "\nper-layer growth (output tap; g = max-abs out / max(max-abs in, FLT_MIN))\n";
    o += "  " + pad("layer", 7) + pad("tap", 10) + lpad("max-abs in", 12) +
         lpad("max-abs out", 12) + lpad("g", 11) + lpad("NMSE out", 11) + lpad("NMSE g", 11) + "\n";
    for (const LayerGrowth& g : r.growth)
      o += "  " + pad(std::to_string(g.layer), 7) + pad(g.tap, 10) + lpad(num(g.max_abs_in), 12) +
           lpad(num(g.max_abs_out), 12) + lpad(g.output_bit_equal ? "-" : num(g.growth), 11) +
           lpad(num(g.nmse_out), 11) + lpad(g.output_bit_equal ? "-" : num(g.nmse_growth), 11) +
           (g.input_bit_equal && !g.output_bit_equal ? "  <- created here (input bit-equal)" : "") +
           "\n";
  }

  if (L.present) {
    o += "\nlogits (layer -1 'result_output', " + std::to_string(L.positions) +
         " positions, vocab " + std::to_string(L.n_vocab) + ")\n";
    const ElementLoc& at = L.stats.max_abs_at;
    o += "  max-abs " + num(L.stats.max_abs) +
         (at.valid() && L.stats.max_abs > 0
              ? " at position " + std::to_string(at.row) + " token " + std::to_string(at.index)
              : "") +
         ", max ULP " + ulp_text(L.stats.max_ulp) + ", NMSE " + num(L.stats.nmse_energy()) + " (" +
         num(L.stats.nmse_energy_db()) + " dB), cosine " + num(L.stats.cosine()) + "\n";
    o += "  KLD " + summary_text(L.kld) + "; negative: " + std::to_string(L.kld_negative) + "\n";
    o += "  argmax agreement " + std::to_string(L.argmax.same) + "/" + std::to_string(L.argmax.n) +
         " = " + num(L.argmax.p) + " +- " + num(L.argmax.err) + " (ties: lowest index)\n";
    o += "  delta-p (next input token, " + std::to_string(L.dp.n) + " positions): RMS " +
         num(L.dp.rms) + ", " + summary_text(L.dp) + "\n";
    o += "  multiplicative probability error " + num(L.mult_prob_error) + "\n";
    o += "  top-" + std::to_string(r.options.topk) + " overlap mean " + num(L.topk_overlap_mean) +
         " (min " + num(L.topk_overlap_min) + "), Jaccard mean " + num(L.topk_jaccard_mean) + "\n";
    o += "  reference margin (logits): min " + num(L.margin.min) + ", median " +
         num(median_of(L.margin)) + "; flips with tau " + num(r.options.tau) + ": " +
         std::to_string(L.tie_flips) + " tie, " + std::to_string(L.structural_flips) +
         " structural\n";
    if (L.first_token != kNever)
      o += "  cross-containment at position " + std::to_string(L.first_token) +
           " (k=" + std::to_string(r.options.topk) + "): a in topk(b) " +
           (L.cross.a_in_topk_b ? "yes" : "NO") + ", b in topk(a) " +
           (L.cross.b_in_topk_a ? "yes" : "NO") + "\n";
  }

  const RoutingDiff& R = r.routing;
  if (R.rows_compared) {
    o += "\nMoE routing: " + std::to_string(R.flips) + " expert-set flips in " +
         std::to_string(R.rows_compared) + " (token, layer) rows";
    if (R.first_flip_pos != kNever)
      o += " (first: layer " + std::to_string(R.first_flip_layer) + " position " +
           std::to_string(R.first_flip_pos) + ")";
    o += "; max-abs router logits " + num(R.router_logits.max_abs) + ", router probs " +
         num(R.router_probs.max_abs) + ", gate weights " + num(R.gate_weights.max_abs) + "\n";
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

int diff_command(const std::vector<std::string>& args, std::string& out) {
  std::vector<std::string> files;
  std::string taps, layers, positions, json_path, label;
  DiffOptions opt;
  int64_t topk = opt.topk, worst = 10;
  bool allow_nan = false;
  ArgParser p("diff");
  p.positionals(&files, "A.h5 B.h5 (A = reference, B = candidate)", 2, 2)
      .option("--tap", &taps, "only these taps, e.g. attn_out,q (the logits summary always runs)")
      .option("--layer", &layers, "only these layers, e.g. 0,2-3 (-1 = output head)")
      .option("--position", &positions, "only these positions: P, P0-P1 (inclusive) or P0-")
      .option("--json", &json_path, "write every result as JSON here")
      .option("--label", &label, "configuration name recorded in the JSON (for `ds4-parity check`)")
      .option("--tau", &opt.tau,
              "near-tie margin in logits: flips with margin <= tau are ties (1e-3)")
      .option("--max-abs-threshold", &opt.max_abs_threshold,
              "thresholded first divergence: first row with max-abs above this (1e-3)")
      .option("--eps-rel", &opt.compare.eps_rel, "max-rel denominator floor (1e-6)")
      .option("--topk", &topk, "k of the top-k overlap and cross-containment (5)", 1, 1 << 20)
      .option("--worst", &worst, "taps listed in the worst-taps table (10)", 0, 1 << 20)
      .flag("--allow-matching-nan", &allow_nan, "NaN on both sides at the same element passes");
  if (!p.parse(args)) {
    out =
        p.usage() +
        "exit status: 0 bit-equal, 1 different (or a tap/position on one side only), 2 bad input\n";
    return 0;
  }
  opt.filter = TapFilter::parse(layers, taps, positions);
  opt.label = label;
  opt.topk = int(topk);
  opt.compare.allow_matching_nan = allow_nan;
  const DiffResult r = diff_dumps(files[0], files[1], opt);
  out = diff_report_text(r, size_t(worst));
  if (!json_path.empty()) {
    const std::string text = json_pretty(diff_result_json(r));
    std::ofstream f(json_path, std::ios::binary | std::ios::trunc);
    if (!f || !(f << text) || !f.flush()) fail(json_path + ": cannot write the JSON result");
    out += "json: " + json_path + "\n";
  }
  return r.exit_code();
}

}  // namespace ds4
