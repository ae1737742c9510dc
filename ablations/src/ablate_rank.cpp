// Ranking, the minimal exact set, and the result (JSON and tables) of the ablation matrix (see
// ds4/ablate.h for the definitions).
#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <tuple>

#include "ablate_internal.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

double first_key(const CellAggregate& a) {
  return a.first_bit.found() ? static_cast<double>(a.first_bit.pos) : INFINITY;
}

// Severity keys, largest = worst; each a number so that --rank-by can reorder them.
std::vector<double> severity_keys(const CellAggregate& a, const std::string& rank_by) {
  const double ulp = a.logits_max_ulp == kUlpInfinite ? INFINITY : static_cast<double>(a.logits_max_ulp);
  std::vector<std::pair<std::string, double>> keys = {
      {"flips", static_cast<double>(a.structural_flips)},
      {"all_flips", static_cast<double>(a.flips)},
      {"kld", a.kld_mean},
      {"max-abs", a.logits_max_abs},
      {"ulp", ulp},
      {"first", -first_key(a)},  // earlier first divergence is worse
      {"rows", static_cast<double>(a.rows_bitdiff + a.rows_unmatched)},
  };
  std::vector<double> out = {a.bit_equal ? 0.0 : 1.0};
  if (rank_by != "severity") {
    auto it = std::find_if(keys.begin(), keys.end(), [&](const auto& k) { return k.first == rank_by; });
    if (it == keys.end())
      fail("bad value '" + rank_by + "' for --rank-by (severity, first, max-abs, ulp, kld or flips)");
    out.push_back(it->second);
  }
  for (const auto& k : keys) out.push_back(k.second);
  return out;
}

}  // namespace

void Matrix::compute_minimal(AblateResult& r) {
  MinimalSet& ms = r.minimal;
  ms.computed = true;
  std::vector<std::string> needed, rest;
  for (const GateRank& g : r.alone) (g.needed ? needed : rest).push_back(g.gate);
  // Cells are cached by gate set, so a set tested twice runs once.
  // The axes not in e are fast; gates outside the axes are held exact (the question is which of
  // the axes must be exact, with everything else as decode computes it).
  auto exact_set = [&](const std::vector<std::string>& e) {
    GateSet s = GateSet::all_exact();
    for (const std::string& g : gates_)
      if (std::find(e.begin(), e.end(), g) == e.end()) s.set(gate_from_name(g), GateState::Fast);
    return s;
  };
  auto passes = [&](const std::vector<std::string>& e, std::string* id) {
    const GateSet s = exact_set(e);
    if (s == GateSet::all_exact()) {
      if (id) *id = "strict";
      return r.strict_bit_equal;
    }
    const CellSpec spec = set_cell(s);
    const CellResult c = run_cell(spec);
    if (std::none_of(r.extra.begin(), r.extra.end(), [&](const CellResult& x) { return x.spec.id == spec.id; }))
      r.extra.push_back(c);
    if (id) *id = spec.id;
    return c.agg.bit_equal;
  };
  std::vector<std::string> e = needed;
  if (passes(e, &ms.verify_cell)) {
    ms.method = "the gates whose add_one_in cell diverges, verified together";
  } else {
    // Gates interact: ddmin over the others for a 1-minimal addition that restores equality.
    std::vector<int> idx(rest.size());
    for (size_t i = 0; i < rest.size(); ++i) idx[i] = static_cast<int>(i);
    auto with = [&](const std::vector<int>& sub) {
      std::vector<std::string> s = needed;
      for (int i : sub) s.push_back(rest[static_cast<size_t>(i)]);
      return s;
    };
    if (!passes(with(idx), nullptr))
      fail("ablate: even every gate of the axes exact is not bit-equal; the strict cell must be fixed first");
    const std::vector<int> add = ddmin(idx, [&](const std::vector<int>& sub) { return passes(with(sub), nullptr); });
    e = with(add);
    passes(e, &ms.verify_cell);
    ms.method = "the gates whose add_one_in cell diverges, plus a ddmin-minimal set of interacting gates";
  }
  ms.exact = e;
  ms.verified = true;  // passes() ran this very set and found it bit-equal on every prompt
  if (cfg_.verify_minimal)
    for (const std::string& g : e) {
      std::vector<std::string> less;
      for (const std::string& x : e)
        if (x != g) less.push_back(x);
      ms.removals.emplace_back(g, !passes(less, nullptr));
    }
  for (GateRank& g : r.alone) g.in_minimal = std::find(e.begin(), e.end(), g.gate) != e.end();
}

AblateResult Matrix::finish(const std::vector<std::string>& dirs, bool rank) {
  AblateResult r;
  r.plan = plan_;
  r.state_dir = cfg_.state_dir;
  r.cells = matrix_results(dirs);
  r.cells_total = static_cast<int64_t>(cells_.size());
  r.cells_run = ran_;
  r.cells_resumed = resumed_;
  r.complete = r.cells.size() == cells_.size();
  if (const CellResult* s = r.cell("strict")) r.strict_bit_equal = s->agg.bit_equal;
  r.ref_manifests = reference_manifests();
  if (!rank || !r.complete) return r;

  const CellResult& base = *r.cell("baseline");
  for (const std::string& g : gates_) {
    GateRank gr;
    gr.gate = g;
    const CellResult& a = *r.cell("add_one_in." + g);
    const CellResult& l = *r.cell("leave_one_out." + g);
    gr.alone = a.agg;
    gr.loo = l.agg;
    const std::string fast = gate_info(gate_from_name(g)).fast_variant;
    gr.exercised = std::find(a.agg.variants.begin(), a.agg.variants.end(), fast) != a.agg.variants.end();
    gr.needed = !a.agg.bit_equal;
    gr.max_abs_reduction = base.agg.logits_max_abs - l.agg.logits_max_abs;
    gr.kld_reduction = base.agg.kld_mean - l.agg.kld_mean;
    gr.flips_removed = base.agg.flips - l.agg.flips;
    r.alone.push_back(gr);
  }
  std::stable_sort(r.alone.begin(), r.alone.end(), [&](const GateRank& x, const GateRank& y) {
    return severity_keys(x.alone, cfg_.rank_by) > severity_keys(y.alone, cfg_.rank_by);
  });
  std::vector<const GateRank*> red;
  for (const GateRank& g : r.alone) red.push_back(&g);
  auto red_key = [](const GateRank* g) {
    const double shift = first_key(g->loo);
    return std::make_tuple(g->loo.bit_equal ? 1 : 0, g->flips_removed, g->kld_reduction, g->max_abs_reduction, shift);
  };
  std::stable_sort(red.begin(), red.end(), [&](const GateRank* x, const GateRank* y) { return red_key(x) > red_key(y); });
  for (const GateRank* g : red) r.reduction_order.push_back(g->gate);
  if (cfg_.minimal) compute_minimal(r);
  return r;
}

// ---- output ------------------------------------------------------------------------------------

namespace {

Json agg_json(const CellAggregate& a) {
  Json j = jobj();
  jput(j, "bit_equal", jbool(a.bit_equal));
  jput(j, "first_bit", divpoint_json(a.first_bit));
  jput(j, "first_bit_prompt", a.first_bit.found() ? jstr(a.first_bit_prompt) : jnull());
  jput(j, "logits_max_abs", jnum(a.logits_max_abs));
  jput(j, "logits_max_ulp", a.logits_max_ulp == kUlpInfinite ? jstr("inf") : jint(static_cast<int64_t>(a.logits_max_ulp)));
  jput(j, "max_ulp", a.max_ulp == kUlpInfinite ? jstr("inf") : jint(static_cast<int64_t>(a.max_ulp)));
  jput(j, "kld_mean", jnum(a.kld_mean));
  jput(j, "kld_max", jnum(a.kld_max));
  jput(j, "argmax_flips", jint(a.flips));
  jput(j, "structural_flips", jint(a.structural_flips));
  jput(j, "rows_bitdiff", jint(a.rows_bitdiff));
  jput(j, "rows_unmatched", jint(a.rows_unmatched));
  return j;
}

Json cell_summary_json(const CellResult& c) {
  Json j = jobj();
  jput(j, "id", jstr(c.spec.id));
  jput(j, "kind", jstr(c.spec.kind));
  jput(j, "gate", c.spec.gate.empty() ? jnull() : jstr(c.spec.gate));
  jput(j, "gate_set", jstr(c.spec.gates.to_string()));
  jput(j, "seconds", jnum(c.seconds));
  jput(j, "aggregate", agg_json(c.agg));
  jput(j, "variants", jstrs(c.agg.variants));
  Json ps = jarr();
  for (size_t i = 0; i < c.prompts.size(); ++i) {
    Json p = run_divergence_json(c.prompts[i]);
    p.members.insert(p.members.begin(), {"prompt", jstr(c.prompt_names[i])});
    ps.array.push_back(p);
  }
  jput(j, "prompts", ps);
  return j;
}

std::string num(double v, const char* fmt = "%.3g") {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  char b[48];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

std::string ulp_text(uint64_t u) { return u == kUlpInfinite ? "inf" : std::to_string(u); }

std::string first_text(const CellAggregate& a) {
  if (!a.first_bit.found()) return "never";
  return std::to_string(a.first_bit.pos) + " L" + std::to_string(a.first_bit.layer) + " " + a.first_bit.tap;
}

}  // namespace

Json ablate_result_json(const AblateResult& r) {
  Json j = jobj();
  jput(j, "schema", jstr("ds4-parity-ablate"));
  jput(j, "version", jint(1));
  jput(j, "plan_id", jstr(jstr_at(r.plan, "plan_id")));
  jput(j, "request", r.plan.at("request"));
  Json toks = jarr();
  for (const Json& t : r.plan.at("tokens").as_array()) toks.array.push_back(jint(static_cast<int64_t>(t.array.size())));
  jput(j, "prompt_tokens", toks);
  jput(j, "state_dir", jstr(r.state_dir));
  jput(j, "complete", jbool(r.complete));
  jput(j, "cells_total", jint(r.cells_total));
  jput(j, "cells_run", jint(r.cells_run));
  jput(j, "cells_resumed", jint(r.cells_resumed));
  jput(j, "wall_seconds", jnum(r.wall_seconds));
  jput(j, "strict_bit_equal", jbool(r.strict_bit_equal));
  Json ranking = jarr();
  for (size_t i = 0; i < r.alone.size(); ++i) {
    const GateRank& g = r.alone[i];
    Json o = jobj();
    jput(o, "rank", jint(static_cast<int64_t>(i + 1)));
    jput(o, "gate", jstr(g.gate));
    jput(o, "exercised", jbool(g.exercised));
    jput(o, "needed", jbool(g.needed));
    jput(o, "in_minimal", jbool(g.in_minimal));
    const auto it = std::find(r.reduction_order.begin(), r.reduction_order.end(), g.gate);
    jput(o, "reduction_rank", jint(static_cast<int64_t>(it - r.reduction_order.begin() + 1)));
    jput(o, "alone", agg_json(g.alone));
    jput(o, "leave_one_out", agg_json(g.loo));
    jput(o, "max_abs_reduction", jnum(g.max_abs_reduction));
    jput(o, "kld_reduction", jnum(g.kld_reduction));
    jput(o, "flips_removed", jint(g.flips_removed));
    ranking.array.push_back(o);
  }
  jput(j, "ranking", ranking);
  jput(j, "reduction_order", jstrs(r.reduction_order));
  Json ms = jobj();
  jput(ms, "computed", jbool(r.minimal.computed));
  jput(ms, "exact", jstrs(r.minimal.exact));
  jput(ms, "verified", jbool(r.minimal.verified));
  jput(ms, "method", jstr(r.minimal.method));
  jput(ms, "verify_cell", jstr(r.minimal.verify_cell));
  Json rem = jarr();
  for (const auto& [g, div] : r.minimal.removals) {
    Json o = jobj();
    jput(o, "gate", jstr(g));
    jput(o, "removal_diverges", jbool(div));
    rem.array.push_back(o);
  }
  jput(ms, "removals", rem);
  jput(j, "minimal_exact_set", ms);
  Json cells = jarr();
  for (const CellResult& c : r.cells) cells.array.push_back(cell_summary_json(c));
  jput(j, "cells", cells);
  Json extra = jarr();
  for (const CellResult& c : r.extra) extra.array.push_back(cell_summary_json(c));
  jput(j, "extra_cells", extra);
  jput(j, "reference_manifests", jstrs(r.ref_manifests));
  return j;
}

std::string ablate_result_text(const AblateResult& r) {
  std::ostringstream o;
  const Json& q = r.plan.at("request");
  const auto& prompts = q.at("prompts").as_array();
  o << "ablation matrix: " << r.cells_total << " cells (" << q.at("gates").as_array().size()
    << " gates x 2 + baseline + strict) over " << prompts.size() << " prompts; model "
    << jstr_at(q, "model_name") << ", profile " << jstr_at(q, "profile") << ", " << jstr_at(q, "mode")
    << " width " << (jint_at(q, "width") ? std::to_string(jint_at(q, "width")) : std::string("all")) << "\n";
  o << "  " << r.cells_run << " cells run now, " << r.cells_resumed << " resumed; wall "
    << num(r.wall_seconds, "%.1f") << " s; state " << r.state_dir << "\n";
  if (!r.complete) {
    o << "  " << r.cells.size() << " of " << r.cells_total
      << " cells present: run the other shards, then `ds4-parity ablate --merge DIR...`\n";
    return o.str();
  }
  const CellResult& s = *r.cell("strict");
  const CellResult& b = *r.cell("baseline");
  o << "strict (all exact): "
    << (s.agg.bit_equal ? "bit-equal to plain decode on every prompt"
                        : "NOT bit-equal: first divergence " + s.agg.first_bit.where() + " (prompt " +
                              s.agg.first_bit_prompt + ")")
    << "\n";
  o << "baseline (all fast): first divergence " << b.agg.first_bit.where() << " (prompt "
    << b.agg.first_bit_prompt << "); logits max-abs " << num(b.agg.logits_max_abs) << ", mean KLD "
    << num(b.agg.kld_mean) << ", argmax flips " << b.agg.flips << " (" << b.agg.structural_flips
    << " structural)\n\n";
  char line[512];
  o << "gates ranked by the divergence each creates alone (add_one_in: only g fast)\n";
  std::snprintf(line, sizeof line, "  %4s  %-20s %-26s %11s %9s %10s %6s  %s\n", "rank", "gate",
                "first divergence", "logit |d|", "logit ULP", "mean KLD", "flips", "note");
  o << line;
  for (size_t i = 0; i < r.alone.size(); ++i) {
    const GateRank& g = r.alone[i];
    const std::string note = !g.exercised ? "not exercised by this model/prompt set"
                             : g.alone.bit_equal ? "exercised, bit-equal"
                                                 : "";
    std::snprintf(line, sizeof line, "  %4zu  %-20s %-26s %11s %9s %10s %6lld  %s\n", i + 1, g.gate.c_str(),
                  first_text(g.alone).c_str(), num(g.alone.logits_max_abs).c_str(),
                  ulp_text(g.alone.logits_max_ulp).c_str(), num(g.alone.kld_mean).c_str(),
                  static_cast<long long>(g.alone.flips), note.c_str());
    o << line;
  }
  o << "\ngates ranked by what their exactness buys (leave_one_out: only g exact, vs baseline)\n";
  std::snprintf(line, sizeof line, "  %4s  %-20s %-9s %12s %12s %6s  %s\n", "rank", "gate", "bit-equal",
                "d logit |d|", "d mean KLD", "flips", "first divergence");
  o << line;
  for (size_t i = 0; i < r.reduction_order.size(); ++i) {
    const GateRank& g = *std::find_if(r.alone.begin(), r.alone.end(),
                                      [&](const GateRank& x) { return x.gate == r.reduction_order[i]; });
    std::snprintf(line, sizeof line, "  %4zu  %-20s %-9s %12s %12s %6lld  %s\n", i + 1, g.gate.c_str(),
                  g.loo.bit_equal ? "yes" : "no", num(g.max_abs_reduction).c_str(), num(g.kld_reduction).c_str(),
                  static_cast<long long>(g.flips_removed), first_text(g.loo).c_str());
    o << line;
  }
  if (r.minimal.computed) {
    o << "\nminimal exact set for bit-equality (" << r.minimal.exact.size() << " of " << r.alone.size()
      << " gates): {";
    for (size_t i = 0; i < r.minimal.exact.size(); ++i) o << (i ? ", " : "") << r.minimal.exact[i];
    o << "}\n  " << r.minimal.method << "; "
      << (r.minimal.verified ? "verified: bit-equal on every prompt (cell " + r.minimal.verify_cell + ")"
                             : "NOT verified")
      << "\n";
    std::vector<std::string> stay_fast;
    for (const GateRank& g : r.alone)
      if (!g.in_minimal) stay_fast.push_back(g.gate);
    if (!stay_fast.empty()) {
      o << "  may stay fast:";
      for (const std::string& g : stay_fast) o << " " << g;
      o << "\n";
    }
    for (const auto& [g, div] : r.minimal.removals)
      o << "  without " << g << " exact: " << (div ? "diverges (needed)" : "still bit-equal (NOT needed)") << "\n";
  }
  return o.str();
}

}  // namespace ds4
