// Reports (`ds4-parity report`, ARCHITECTURE.md §9): Markdown and one self-contained HTML page
// from the JSON results of `ablate`, `bisect` and `sweep`.
//
// The HTML page needs no network and no files beside it: styles and a few lines of script are
// inline, plots are inline SVG (heatmaps as rects, curves as polylines). It holds:
//   - a summary (model, prompts, cells, wall time, strict and baseline, the minimal exact set)
//   - the gates x metrics table (ranking alone, leave-one-out reduction, minimal-set membership)
//     and the table of every cell
//   - per-layer x position divergence heatmaps (log10 max-abs over the layer's taps) for the
//     baseline and each add_one_in cell, first prompt
//   - logit-gap curves (the reference's top-2 margin against the logits error, per position) and
//     first-divergence curves (taps not bit-equal per position, per gate)
//   - the bisect verdict and reruns, the sweep's widths/lengths and thresholds
//   - the run manifests (each reference dump's manifest and the plan)
// The inline script only sorts the gates table on a header click and records, in
// body[data-render-check], how many tables, SVGs and rects rendered (what the Chromium check
// reads back from the DOM).
#pragma once
#include <string>
#include <vector>

#include "ds4/json.h"

namespace ds4 {

struct ReportInputs {
  bool has_ablate = false, has_bisect = false, has_sweep = false;
  Json ablate, bisect, sweep;
  std::vector<std::string> sources;  // input files, in the order given
};

// Reads result files, recognised by their "schema" (ds4-parity-ablate / -bisect / -sweep);
// throws naming a file that is none of them or a second file of one kind.
ReportInputs load_report_inputs(const std::vector<std::string>& paths);
std::string report_markdown(const ReportInputs& in);
std::string report_html(const ReportInputs& in);
// Writes <dir>/report.md and <dir>/report.html (atomically); returns the HTML path.
std::string write_report(const ReportInputs& in, const std::string& dir);

}  // namespace ds4
