// Inline SVG for the HTML report: a layer x position heatmap and a line chart. Plain strings, no
// script, no external references, so the page renders anywhere (and in headless Chromium).
#pragma once
#include <string>
#include <vector>

namespace ds4::report {

std::string html_escape(const std::string& s);
std::string fmt(double v, const char* f = "%.3g");  // "inf", "nan" for non-finite values

// Heatmap of max-abs differences: rows[i] is layer row_labels[i], columns are positions
// x0, x0+1, ... Colour: 0 (bit-equal) light grey; log10(v) on a yellow -> red -> purple scale
// over [lo_exp, hi_exp]; +inf (a row on one side only) black. Each rect carries a <title>.
std::string heatmap_svg(const std::string& title, const std::vector<std::string>& row_labels,
                        const std::vector<std::vector<double>>& rows, long long x0, int lo_exp = -9,
                        int hi_exp = 1);
std::string heatmap_legend_svg(int lo_exp = -9, int hi_exp = 1);

struct Series {
  std::string name, color;
  std::vector<double> y;  // y[i] at x = x0 + i; NaN (or <= 0 on a log axis) leaves a gap
  bool dashed = false;
};
// A line chart with axes, ticks and a legend. log_y: decades on the y axis.
std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series, long long x0, bool log_y, int width = 900,
                           int height = 260);
// A palette colour for series i.
std::string series_color(size_t i);

}  // namespace ds4::report
