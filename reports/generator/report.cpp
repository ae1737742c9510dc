// Markdown and self-contained HTML reports of ablate / bisect / sweep results (see ds4/report.h).
#include "ds4/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "ds4/ablate_util.h"
#include "ds4/dump.h"
#include "ds4/error.h"
#include "report_svg.h"

namespace ds4 {

using report::fmt;
using report::html_escape;

ReportInputs load_report_inputs(const std::vector<std::string>& paths) {
  ReportInputs in;
  if (paths.empty()) fail("report: no result files (ablate, bisect or sweep JSON)");
  for (const std::string& p : paths) {
    Json j = read_json_file(p);
    const std::string schema = j.is_object() ? jstr_at(j, "schema") : "";
    auto take = [&](bool& has, Json& slot, const char* kind) {
      if (has) fail(p + ": a second " + kind + " result (one of each kind per report)");
      has = true;
      slot = std::move(j);
    };
    if (schema == "ds4-parity-ablate")
      take(in.has_ablate, in.ablate, "ablate");
    else if (schema == "ds4-parity-bisect")
      take(in.has_bisect, in.bisect, "bisect");
    else if (schema == "ds4-parity-sweep")
      take(in.has_sweep, in.sweep, "sweep");
    else
      fail(p + ": not an ablate, bisect or sweep result (schema '" + printable(schema, 60) + "')");
    in.sources.push_back(p);
  }
  return in;
}

namespace {

// ---- shared helpers ----------------------------------------------------------------------------

std::string first_text(const Json& p) {
  if (p.is_null()) return "never";
  return std::to_string(jint_at(p, "pos")) + " / L" + std::to_string(jint_at(p, "layer")) + " / " +
         jstr_at(p, "tap");
}

std::string ulp_text(const Json& o, const std::string& key) {
  const Json* v = o.find(key);
  if (!v || v->is_null()) return "0";
  return v->is_string() ? v->string : std::to_string(v->as_int());
}

std::string layer_label(int64_t l) { return l < 0 ? "head" : "L" + std::to_string(l); }

const Json* find_cell(const Json& ab, const std::string& id) {
  for (const Json& c : ab.at("cells").as_array())
    if (jstr_at(c, "id") == id) return &c;
  return nullptr;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string o;
  for (size_t i = 0; i < v.size(); ++i) o += (i ? sep : "") + v[i];
  return o;
}

std::vector<std::string> strings_of(const Json* v) {
  std::vector<std::string> out;
  if (v && v->is_array())
    for (const Json& s : v->array) out.push_back(s.as_string());
  return out;
}

struct GateRow {
  std::string rank, gate, exercised, first, max_abs, ulp, kld, flips, red_rank, loo_equal, d_max_abs, d_kld,
      minimal;
  double v_max_abs, v_kld, v_flips, v_first, v_d_max_abs, v_d_kld;
};

std::vector<GateRow> gate_rows(const Json& ab) {
  std::vector<GateRow> rows;
  for (const Json& g : ab.at("ranking").as_array()) {
    const Json& a = g.at("alone");
    const Json& l = g.at("leave_one_out");
    GateRow r;
    r.rank = std::to_string(jint_at(g, "rank"));
    r.gate = jstr_at(g, "gate");
    r.exercised = jbool_at(g, "exercised") ? "yes" : "no";
    r.first = first_text(a.at("first_bit"));
    r.max_abs = fmt(jnum_at(a, "logits_max_abs"));
    r.ulp = ulp_text(a, "logits_max_ulp");
    r.kld = fmt(jnum_at(a, "kld_mean"));
    r.flips = std::to_string(jint_at(a, "argmax_flips")) + " (" + std::to_string(jint_at(a, "structural_flips")) + ")";
    r.red_rank = std::to_string(jint_at(g, "reduction_rank"));
    r.loo_equal = jbool_at(l, "bit_equal") ? "yes" : "no";
    r.d_max_abs = fmt(jnum_at(g, "max_abs_reduction"));
    r.d_kld = fmt(jnum_at(g, "kld_reduction"));
    r.minimal = jbool_at(g, "in_minimal") ? "exact" : "may stay fast";
    r.v_max_abs = jnum_at(a, "logits_max_abs");
    r.v_kld = jnum_at(a, "kld_mean");
    r.v_flips = static_cast<double>(jint_at(a, "argmax_flips"));
    r.v_first = a.at("first_bit").is_null() ? INFINITY : static_cast<double>(jint_at(a.at("first_bit"), "pos"));
    r.v_d_max_abs = jnum_at(g, "max_abs_reduction");
    r.v_d_kld = jnum_at(g, "kld_reduction");
    rows.push_back(r);
  }
  return rows;
}

// ---- Markdown ----------------------------------------------------------------------------------

void md_ablate(const Json& ab, std::ostringstream& o) {
  const Json& q = ab.at("request");
  const auto& prompts = q.at("prompts").as_array();
  o << "## Ablation matrix\n\n";
  o << "- model: `" << jstr_at(q, "model_name") << "` (SHA-256 `" << jstr_at(q, "model_sha256").substr(0, 16)
    << "...`), profile `" << jstr_at(q, "profile") << "`, candidate `" << jstr_at(q, "mode") << "` width "
    << (jint_at(q, "width") ? std::to_string(jint_at(q, "width")) : std::string("all")) << "\n";
  o << "- prompts: " << prompts.size() << " (";
  const auto& toks = ab.at("prompt_tokens").as_array();
  for (size_t i = 0; i < prompts.size(); ++i)
    o << (i ? ", " : "") << jstr_at(prompts[i], "name") << ": " << (i < toks.size() ? toks[i].as_int() : 0) << " tokens";
  o << "), teacher-forced +" << jint_at(q, "generate") << " tokens\n";
  o << "- cells: " << jint_at(ab, "cells_total") << " (" << jint_at(ab, "cells_run") << " run, "
    << jint_at(ab, "cells_resumed") << " resumed), wall " << fmt(jnum_at(ab, "wall_seconds"), "%.1f") << " s\n";
  o << "- strict (all exact): " << (jbool_at(ab, "strict_bit_equal") ? "**bit-equal** to plain decode" : "**NOT bit-equal**")
    << "\n";
  if (const Json* b = find_cell(ab, "baseline")) {
    const Json& a = b->at("aggregate");
    o << "- baseline (all fast): first divergence " << first_text(a.at("first_bit")) << ", logits max-abs "
      << fmt(jnum_at(a, "logits_max_abs")) << ", mean KLD " << fmt(jnum_at(a, "kld_mean")) << ", argmax flips "
      << jint_at(a, "argmax_flips") << "\n";
  }
  const Json& ms = ab.at("minimal_exact_set");
  if (jbool_at(ms, "computed"))
    o << "- minimal exact set for bit-equality: {" << join(strings_of(ms.find("exact")), ", ") << "} ("
      << (jbool_at(ms, "verified") ? "verified by a run" : "not verified") << "; " << jstr_at(ms, "method") << ")\n";
  o << "\n### Gates x metrics\n\n";
  o << "Alone = only the gate fast (add_one_in); reduction = only the gate exact (leave_one_out) vs the baseline.\n\n";
  o << "| rank | gate | exercised | first divergence (pos / layer / tap) | logits max-abs | logits max ULP | mean KLD | "
       "argmax flips (structural) | reduction rank | bit-equal alone exact | d max-abs | d KLD | minimal set |\n";
  o << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const GateRow& r : gate_rows(ab))
    o << "| " << r.rank << " | `" << r.gate << "` | " << r.exercised << " | " << r.first << " | " << r.max_abs << " | "
      << r.ulp << " | " << r.kld << " | " << r.flips << " | " << r.red_rank << " | " << r.loo_equal << " | "
      << r.d_max_abs << " | " << r.d_kld << " | " << r.minimal << " |\n";
  o << "\n### Cells\n\n| cell | gate set | bit-equal | first divergence | logits max-abs | mean KLD | flips | seconds |\n";
  o << "|---|---|---|---|---|---|---|---|\n";
  auto cell_rows = [&](const Json& list) {
    for (const Json& c : list.as_array()) {
      const Json& a = c.at("aggregate");
      o << "| " << jstr_at(c, "id") << " | `" << jstr_at(c, "gate_set") << "` | " << (jbool_at(a, "bit_equal") ? "yes" : "no")
        << " | " << first_text(a.at("first_bit")) << " | " << fmt(jnum_at(a, "logits_max_abs")) << " | "
        << fmt(jnum_at(a, "kld_mean")) << " | " << jint_at(a, "argmax_flips") << " | " << fmt(jnum_at(c, "seconds"), "%.2f")
        << " |\n";
    }
  };
  cell_rows(ab.at("cells"));
  cell_rows(ab.at("extra_cells"));
  o << "\nHeatmaps and curves: see report.html.\n\n";
}

void md_bisect(const Json& b, std::ostringstream& o) {
  o << "## Bisect\n\n- reference: " << jstr_at(b, "reference") << "\n- candidate: " << jstr_at(b, "candidate") << "\n";
  if (jbool_at(b, "bit_equal")) {
    o << "- bit-equal\n\n";
    return;
  }
  const Json& d = b.at("first_divergence");
  o << "- first divergence: position " << jint_at(d, "pos") << ", layer " << jint_at(d, "layer") << ", tap `"
    << jstr_at(d, "tap") << "`; variant `" << jstr_at(d, "variant_cand") << "` (reference `" << jstr_at(d, "variant_ref")
    << "`)";
  if (const Json* g = b.find("gate"); g && !g->is_null()) o << ", gate `" << g->string << "`";
  o << "\n- verdict: **" << jstr_at(b, "verdict") << "** - " << jstr_at(b, "explanation") << "\n";
  for (const Json& r : b.at("reruns").as_array())
    o << "- rerun (" << jstr_at(r, "purpose") << ", gates `" << jstr_at(r, "gates") << "`): "
      << (jbool_at(r, "bit_equal") ? std::string("bit-equal") : "first divergence " + first_text(r.at("first_divergence")))
      << "\n";
  const Json& dd = b.at("gates_ddmin");
  if (jbool_at(dd, "ran"))
    o << "- minimal failing gate set (ddmin): {" << join(strings_of(dd.find("minimal_failing")), ", ") << "}\n";
  o << "\n";
}

void md_sweep(const Json& s, std::ostringstream& o) {
  o << "## Width sweep\n\n" << jint_at(s, "n_tokens") << " tokens, gates `" << jstr_at(s, "gates") << "`, prefix "
    << jint_at(s, "prefix") << ".\n\n| axis | value | bit-equal | first divergence | token fork | logits max-abs |\n";
  o << "|---|---|---|---|---|---|\n";
  for (const char* axis : {"widths", "lengths"})
    for (const Json& p : s.at(axis).as_array())
      o << "| " << (axis[0] == 'w' ? "width" : "length") << " | " << jint_at(p, "value") << " | "
        << (jbool_at(p, "bit_equal") ? "yes" : "no") << " | " << first_text(p.at("first_divergence")) << " | "
        << (p.at("token_fork").is_null() ? std::string("none") : std::to_string(p.at("token_fork").as_int())) << " | "
        << fmt(jnum_at(p, "logits_max_abs")) << " |\n";
  o << "\nThresholds:\n\n";
  if (s.at("changes").as_array().empty()) o << "- none\n";
  for (const Json& c : s.at("changes").as_array())
    o << "- " << jstr_at(c, "axis") << " " << jint_at(c, "from") << " -> " << jint_at(c, "to") << ": " << jstr_at(c, "what")
      << "\n";
  o << "\n";
}

}  // namespace

std::string report_markdown(const ReportInputs& in) {
  std::ostringstream o;
  o << "# DS4 Parity report\n\nGenerated " << utc_timestamp() << " from " << join(in.sources, ", ") << ".\n\n";
  if (in.has_ablate) md_ablate(in.ablate, o);
  if (in.has_bisect) md_bisect(in.bisect, o);
  if (in.has_sweep) md_sweep(in.sweep, o);
  if (in.has_ablate) {
    o << "## Run manifests\n\n";
    const auto mans = strings_of(in.ablate.find("reference_manifests"));
    const auto& prompts = in.ablate.at("request").at("prompts").as_array();
    for (size_t i = 0; i < mans.size(); ++i)
      o << "Reference of prompt `" << (i < prompts.size() ? jstr_at(prompts[i], "name") : "?") << "`:\n\n```\n"
        << mans[i] << "```\n\n";
    o << "Plan (`" << jstr_at(in.ablate, "plan_id").substr(0, 16) << "...`):\n\n```json\n"
      << json_indented(in.ablate.at("request")) << "```\n";
  }
  return o.str();
}

// ---- HTML --------------------------------------------------------------------------------------

namespace {

const char* kStyle = R"CSS(
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer}td.l,th.l{text-align:left}tr.needed td.g{font-weight:bold}
tr.fast td{color:#777}.ok{color:#1a7f37;font-weight:bold}.bad{color:#c62828;font-weight:bold}
.svg-title{font-size:12px;font-weight:bold}.svg-label{font-size:11px}.svg-tick{font-size:9px;fill:#555}
pre{background:#f7f7f7;padding:8px;font-size:11px;overflow:auto}.heat{margin:6px 0}
ul.summary li{margin:2px 0}.note{color:#555;font-size:12px}
)CSS";

const char* kScript = R"JS(
(function(){
  var t=document.getElementById('gates-table');
  function key(c){var v=c.getAttribute('data-v');if(v!==null){var f=parseFloat(v);return isNaN(f)?v:f;}return c.textContent;}
  if(t){var hs=t.tHead.rows[0].cells;for(var i=0;i<hs.length;i++){(function(i){hs[i].addEventListener('click',function(){
    var rows=Array.prototype.slice.call(t.tBodies[0].rows);var asc=!(t.getAttribute('data-col')==String(i)&&t.getAttribute('data-dir')=='asc');
    rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);var c=(typeof x=='number'&&typeof y=='number')?(x<y?-1:x>y?1:0):String(x).localeCompare(String(y));return asc?c:-c;});
    rows.forEach(function(r){t.tBodies[0].appendChild(r);});t.setAttribute('data-col',i);t.setAttribute('data-dir',asc?'asc':'desc');});})(i);}}
  document.body.setAttribute('data-render-check','tables='+document.querySelectorAll('table').length+
    ' svgs='+document.querySelectorAll('svg').length+' rects='+document.querySelectorAll('svg rect').length+
    ' polylines='+document.querySelectorAll('svg polyline').length+
    ' gate-rows='+document.querySelectorAll('#gates-table tbody tr').length);
})();
)JS";

std::string td(const std::string& text, double v = NAN, bool left = false, const std::string& cls = "") {
  std::string o = "<td";
  std::string c = (left ? "l" : "") + std::string(cls.empty() || !left ? "" : " ") + cls;
  if (!c.empty()) o += " class=\"" + c + "\"";
  if (!std::isnan(v)) o += " data-v=\"" + (std::isinf(v) ? std::string(v > 0 ? "Infinity" : "-Infinity") : fmt(v, "%.17g")) + "\"";
  return o + ">" + html_escape(text) + "</td>";
}

void html_ablate(const Json& ab, std::ostringstream& o) {
  const Json& q = ab.at("request");
  const auto& prompts = q.at("prompts").as_array();
  const auto& toks = ab.at("prompt_tokens").as_array();
  o << "<section id=\"summary\"><h2>Ablation matrix</h2><ul class=\"summary\">";
  o << "<li>model <code>" << html_escape(jstr_at(q, "model_name")) << "</code>, profile <code>"
    << html_escape(jstr_at(q, "profile")) << "</code>, candidate <code>" << html_escape(jstr_at(q, "mode"))
    << "</code> width " << (jint_at(q, "width") ? std::to_string(jint_at(q, "width")) : std::string("all"))
    << ", backend " << html_escape(jstr_at(q, "backend")) << "</li>";
  o << "<li>" << prompts.size() << " prompts:";
  for (size_t i = 0; i < prompts.size(); ++i)
    o << (i ? "," : "") << " <code>" << html_escape(jstr_at(prompts[i], "name")) << "</code> ("
      << (i < toks.size() ? toks[i].as_int() : 0) << " tokens)";
  o << "; teacher-forced +" << jint_at(q, "generate") << " greedy tokens</li>";
  o << "<li><span id=\"cell-count\">" << jint_at(ab, "cells_total") << "</span> cells (" << jint_at(ab, "cells_run")
    << " run, " << jint_at(ab, "cells_resumed") << " resumed), wall <span id=\"wall\">"
    << fmt(jnum_at(ab, "wall_seconds"), "%.1f") << "</span> s</li>";
  o << "<li>strict (every gate exact): " << (jbool_at(ab, "strict_bit_equal") ? "<span class=\"ok\" id=\"strict\">bit-equal</span> to plain decode"
                                                                                 : "<span class=\"bad\" id=\"strict\">NOT bit-equal</span>")
    << "</li>";
  if (const Json* b = find_cell(ab, "baseline")) {
    const Json& a = b->at("aggregate");
    o << "<li>baseline (every gate fast): first divergence " << html_escape(first_text(a.at("first_bit")))
      << ", logits max-abs " << fmt(jnum_at(a, "logits_max_abs")) << ", mean KLD " << fmt(jnum_at(a, "kld_mean"))
      << ", argmax flips " << jint_at(a, "argmax_flips") << "</li>";
  }
  const Json& ms = ab.at("minimal_exact_set");
  if (jbool_at(ms, "computed"))
    o << "<li id=\"minimal\">minimal exact set for bit-equality: <b>{" << html_escape(join(strings_of(ms.find("exact")), ", "))
      << "}</b> (" << (jbool_at(ms, "verified") ? "verified by a run" : "not verified") << "; "
      << html_escape(jstr_at(ms, "method")) << ")</li>";
  o << "</ul></section>";

  o << "<section id=\"gates\"><h2>Gates &times; metrics</h2><p class=\"note\">Alone: only the gate fast "
       "(add_one_in), ranked by severity. Reduction: only the gate exact (leave_one_out) against the baseline. "
       "Click a header to sort.</p>";
  o << "<table id=\"gates-table\"><thead><tr><th>rank</th><th class=\"l\">gate</th><th>exercised</th>"
       "<th class=\"l\">first divergence (pos / layer / tap)</th><th>logits max-abs</th><th>logits max ULP</th>"
       "<th>mean KLD</th><th>argmax flips (structural)</th><th>reduction rank</th><th>bit-equal with only it exact</th>"
       "<th>&Delta; max-abs</th><th>&Delta; KLD</th><th class=\"l\">minimal set</th></tr></thead><tbody>";
  for (const GateRow& r : gate_rows(ab)) {
    o << "<tr class=\"gate-row " << (r.minimal == "exact" ? "needed" : "fast") << "\" data-gate=\"" << html_escape(r.gate)
      << "\">" << td(r.rank, std::stod(r.rank)) << td(r.gate, NAN, true, "g") << td(r.exercised)
      << td(r.first, r.v_first, true) << td(r.max_abs, r.v_max_abs) << td(r.ulp) << td(r.kld, r.v_kld)
      << td(r.flips, r.v_flips) << td(r.red_rank, std::stod(r.red_rank)) << td(r.loo_equal)
      << td(r.d_max_abs, r.v_d_max_abs) << td(r.d_kld, r.v_d_kld) << td(r.minimal, NAN, true) << "</tr>";
  }
  o << "</tbody></table></section>";

  o << "<section id=\"cells\"><h2>Cells</h2><table id=\"cells-table\"><thead><tr><th class=\"l\">cell</th>"
       "<th class=\"l\">gate set</th><th>bit-equal</th><th class=\"l\">first divergence</th><th>logits max-abs</th>"
       "<th>mean KLD</th><th>flips</th><th>rows differing</th><th>seconds</th></tr></thead><tbody>";
  auto cell_rows = [&](const Json& list) {
    for (const Json& c : list.as_array()) {
      const Json& a = c.at("aggregate");
      o << "<tr class=\"cell-row\">" << td(jstr_at(c, "id"), NAN, true) << td(jstr_at(c, "gate_set"), NAN, true)
        << td(jbool_at(a, "bit_equal") ? "yes" : "no") << td(first_text(a.at("first_bit")), NAN, true)
        << td(fmt(jnum_at(a, "logits_max_abs"))) << td(fmt(jnum_at(a, "kld_mean"))) << td(std::to_string(jint_at(a, "argmax_flips")))
        << td(std::to_string(jint_at(a, "rows_bitdiff") + jint_at(a, "rows_unmatched")))
        << td(fmt(jnum_at(c, "seconds"), "%.2f")) << "</tr>";
    }
  };
  cell_rows(ab.at("cells"));
  cell_rows(ab.at("extra_cells"));
  o << "</tbody></table></section>";

  // Heatmaps: the baseline, then each gate alone in rank order, on the first prompt.
  const std::string p0 = prompts.empty() ? "" : jstr_at(prompts[0], "name");
  o << "<section id=\"heatmaps\"><h2>Divergence heatmaps (layer &times; position)</h2><p class=\"note\">Prompt <code>"
    << html_escape(p0) << "</code>: max-abs difference to plain decode over each layer's taps, per position "
    << "(grey: bit-equal; black: a row that exists on one side only).</p>" << report::heatmap_legend_svg();
  std::vector<std::pair<std::string, const Json*>> maps;
  if (const Json* b = find_cell(ab, "baseline")) maps.emplace_back("baseline (all fast)", b);
  for (const Json& g : ab.at("ranking").as_array())
    if (const Json* c = find_cell(ab, "add_one_in." + jstr_at(g, "gate")))
      maps.emplace_back("only " + jstr_at(g, "gate") + " fast", c);
  for (const auto& [title, c] : maps) {
    const Json& p = c->at("prompts").as_array().at(0);
    const Json* h = p.find("heatmap");
    if (!h) continue;
    std::vector<std::string> labels;
    for (const Json& l : h->at("layers").as_array()) labels.push_back(layer_label(l.as_int()));
    std::vector<std::vector<double>> rows;
    for (const Json& r : h->at("max_abs").as_array()) rows.push_back(jnums_of(r));
    o << "<div class=\"heat\">" << report::heatmap_svg(title, labels, rows, jint_at(p, "pos_begin")) << "</div>";
  }
  o << "</section>";

  // Curves on the first prompt.
  o << "<section id=\"curves\"><h2>Logit-gap and first-divergence curves</h2>";
  const Json* base = find_cell(ab, "baseline");
  if (base) {
    const Json& p = base->at("prompts").as_array().at(0);
    const Json& c = p.at("curves");
    std::vector<report::Series> s;
    s.push_back({"reference top-2 margin", "#555555", jnums_of(c.at("margin")), true});
    s.push_back({"baseline logits max-abs", report::series_color(1), jnums_of(c.at("logits_max_abs")), false});
    const auto& rk = ab.at("ranking").as_array();
    for (size_t i = 0; i < rk.size() && i < 3; ++i)
      if (const Json* cc = find_cell(ab, "add_one_in." + jstr_at(rk[i], "gate")))
        s.push_back({"only " + jstr_at(rk[i], "gate") + " fast", report::series_color(2 + i),
                     jnums_of(cc->at("prompts").as_array().at(0).at("curves").at("logits_max_abs")), false});
    o << "<p class=\"note\">Where the logits error reaches the reference's top-1/top-2 margin, the argmax can "
         "flip.</p>"
      << report::line_chart_svg("logit gap: margin vs logits error (prompt " + p0 + ")", "position", "logits",
                                s, jint_at(p, "pos_begin"), true);
    std::vector<report::Series> k;
    k.push_back({"baseline", report::series_color(1), jnums_of(c.at("kld")), false});
    for (size_t i = 0; i < rk.size() && i < 3; ++i)
      if (const Json* cc = find_cell(ab, "add_one_in." + jstr_at(rk[i], "gate")))
        k.push_back({"only " + jstr_at(rk[i], "gate") + " fast", report::series_color(2 + i),
                     jnums_of(cc->at("prompts").as_array().at(0).at("curves").at("kld")), false});
    o << report::line_chart_svg("KL divergence per position (prompt " + p0 + ")", "position", "KLD (nats)", k,
                                jint_at(p, "pos_begin"), true);
    std::vector<report::Series> f;
    std::vector<double> bd;
    for (const Json& x : c.at("divergent_taps").as_array()) bd.push_back(static_cast<double>(x.as_int()));
    f.push_back({"baseline", "#000000", bd, true});
    size_t ci = 0;
    for (const Json& g : rk) {
      const Json* cc = find_cell(ab, "add_one_in." + jstr_at(g, "gate"));
      if (!cc || jbool_at(cc->at("aggregate"), "bit_equal")) continue;
      std::vector<double> v;
      for (const Json& x : cc->at("prompts").as_array().at(0).at("curves").at("divergent_taps").as_array())
        v.push_back(static_cast<double>(x.as_int()));
      f.push_back({"only " + jstr_at(g, "gate") + " fast", report::series_color(ci++), v, false});
    }
    o << report::line_chart_svg("first-divergence curves: taps not bit-equal per position (prompt " + p0 + ")",
                                "position", "taps differing", f, jint_at(p, "pos_begin"), false, 900, 320);
  }
  o << "</section>";
}

void html_bisect(const Json& b, std::ostringstream& o) {
  o << "<section id=\"bisect\"><h2>Bisect</h2><ul class=\"summary\"><li>reference: " << html_escape(jstr_at(b, "reference"))
    << "</li><li>candidate: " << html_escape(jstr_at(b, "candidate")) << "</li>";
  if (jbool_at(b, "bit_equal")) {
    o << "<li class=\"ok\">bit-equal</li></ul></section>";
    return;
  }
  const Json& d = b.at("first_divergence");
  o << "<li>first divergence: <b id=\"bisect-first\">position " << jint_at(d, "pos") << ", layer " << jint_at(d, "layer")
    << ", tap " << html_escape(jstr_at(d, "tap")) << "</b>; variant <code>" << html_escape(jstr_at(d, "variant_cand"))
    << "</code> (reference <code>" << html_escape(jstr_at(d, "variant_ref")) << "</code>)";
  if (const Json* g = b.find("gate"); g && !g->is_null()) o << ", gate <code id=\"bisect-gate\">" << html_escape(g->string) << "</code>";
  o << "</li><li>verdict: <b id=\"bisect-verdict\">" << html_escape(jstr_at(b, "verdict")) << "</b> &mdash; "
    << html_escape(jstr_at(b, "explanation")) << "</li>";
  const Json& dd = b.at("gates_ddmin");
  if (jbool_at(dd, "ran"))
    o << "<li>minimal failing gate set (ddmin): {" << html_escape(join(strings_of(dd.find("minimal_failing")), ", ")) << "}</li>";
  o << "</ul><table id=\"bisect-table\"><thead><tr><th class=\"l\">rerun</th><th class=\"l\">gates</th><th>bit-equal</th>"
       "<th class=\"l\">first divergence</th><th>seconds</th></tr></thead><tbody>";
  for (const Json& r : b.at("reruns").as_array())
    o << "<tr>" << td(jstr_at(r, "purpose"), NAN, true) << td(jstr_at(r, "gates"), NAN, true)
      << td(jbool_at(r, "bit_equal") ? "yes" : "no") << td(first_text(r.at("first_divergence")), NAN, true)
      << td(fmt(jnum_at(r, "seconds"), "%.2f")) << "</tr>";
  o << "</tbody></table></section>";
}

void html_sweep(const Json& s, std::ostringstream& o) {
  o << "<section id=\"sweep\"><h2>Width sweep</h2><p class=\"note\">" << jint_at(s, "n_tokens") << " tokens, gates <code>"
    << html_escape(jstr_at(s, "gates")) << "</code>, verify prefix " << jint_at(s, "prefix") << ".</p>";
  for (const char* axis : {"widths", "lengths"}) {
    const auto& pts = s.at(axis).as_array();
    if (pts.empty()) continue;
    const bool w = axis[0] == 'w';
    std::vector<double> first, err;
    for (const Json& p : pts) {
      const Json& d = p.at("first_divergence");
      first.push_back(d.is_null() ? NAN : static_cast<double>(jint_at(d, "pos")));
      err.push_back(jnum_at(p, "logits_max_abs"));
    }
    if (w) {
      o << report::line_chart_svg("first divergence position vs verify width", "width W", "position",
                                  {{"first divergence", report::series_color(0), first, false}}, jint_at(pts[0], "value"),
                                  false);
      o << report::line_chart_svg("logits max-abs vs verify width", "width W", "max-abs",
                                  {{"logits max-abs", report::series_color(1), err, false}}, jint_at(pts[0], "value"), true);
    }
    o << "<table class=\"sweep-table\"><thead><tr><th>" << (w ? "width" : "length") << "</th><th>bit-equal</th>"
      << "<th class=\"l\">first divergence</th><th>token fork</th><th>logits max-abs</th></tr></thead><tbody>";
    for (const Json& p : pts)
      o << "<tr>" << td(std::to_string(jint_at(p, "value"))) << td(jbool_at(p, "bit_equal") ? "yes" : "no")
        << td(first_text(p.at("first_divergence")), NAN, true)
        << td(p.at("token_fork").is_null() ? std::string("none") : std::to_string(p.at("token_fork").as_int()))
        << td(fmt(jnum_at(p, "logits_max_abs"))) << "</tr>";
    o << "</tbody></table>";
  }
  o << "<h3>Thresholds</h3><ul>";
  if (s.at("changes").as_array().empty()) o << "<li>none</li>";
  for (const Json& c : s.at("changes").as_array())
    o << "<li>" << html_escape(jstr_at(c, "axis")) << " " << jint_at(c, "from") << " &rarr; " << jint_at(c, "to") << ": "
      << html_escape(jstr_at(c, "what")) << "</li>";
  o << "</ul></section>";
}

}  // namespace

std::string report_html(const ReportInputs& in) {
  std::ostringstream o;
  o << "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>DS4 Parity report</title><style>"
    << kStyle << "</style></head><body data-render-check=\"pending\"><h1>DS4 Parity report</h1><p class=\"note\">Generated "
    << utc_timestamp() << " from " << html_escape(join(in.sources, ", ")) << ".</p>";
  if (in.has_ablate) html_ablate(in.ablate, o);
  if (in.has_bisect) html_bisect(in.bisect, o);
  if (in.has_sweep) html_sweep(in.sweep, o);
  if (in.has_ablate) {
    o << "<section id=\"manifests\"><h2>Run manifests</h2>";
    const auto mans = strings_of(in.ablate.find("reference_manifests"));
    const auto& prompts = in.ablate.at("request").at("prompts").as_array();
    for (size_t i = 0; i < mans.size(); ++i)
      o << "<details class=\"manifest\"" << (i == 0 ? " open" : "") << "><summary>reference of prompt <code>"
        << html_escape(i < prompts.size() ? jstr_at(prompts[i], "name") : "?") << "</code></summary><pre>"
        << html_escape(mans[i]) << "</pre></details>";
    o << "<details class=\"manifest\"><summary>plan <code>" << html_escape(jstr_at(in.ablate, "plan_id").substr(0, 16))
      << "</code></summary><pre>" << html_escape(json_indented(in.ablate.at("request"))) << "</pre></details></section>";
  }
  o << "<script>" << kScript << "</script></body></html>\n";
  return o.str();
}

std::string write_report(const ReportInputs& in, const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::string md = (std::filesystem::path(dir) / "report.md").string();
  const std::string html = (std::filesystem::path(dir) / "report.html").string();
  write_file_atomic(md, report_markdown(in));
  write_file_atomic(html, report_html(in));
  return html;
}

}  // namespace ds4
