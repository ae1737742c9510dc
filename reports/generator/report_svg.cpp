// Inline SVG primitives of the HTML report (see report_svg.h).
#include "report_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace ds4::report {

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(double v, const char* f) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

namespace {

// Yellow -> orange -> red -> purple, t in [0, 1] (small errors light, large ones dark).
std::string ramp(double t) {
  static const double stops[][3] = {{255, 237, 160}, {254, 178, 76}, {240, 59, 32}, {189, 0, 38}, {84, 39, 143}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  char b[16];
  std::snprintf(b, sizeof b, "#%02x%02x%02x", static_cast<int>(stops[i][0] + f * (stops[i + 1][0] - stops[i][0])),
                static_cast<int>(stops[i][1] + f * (stops[i + 1][1] - stops[i][1])),
                static_cast<int>(stops[i][2] + f * (stops[i + 1][2] - stops[i][2])));
  return b;
}

std::string cell_color(double v, int lo, int hi) {
  if (std::isnan(v)) return "#ffffff";
  if (std::isinf(v)) return "#000000";
  if (v <= 0) return "#eeeeee";
  return ramp((std::log10(v) - lo) / static_cast<double>(hi - lo));
}

}  // namespace

std::string heatmap_svg(const std::string& title, const std::vector<std::string>& labels,
                        const std::vector<std::vector<double>>& rows, long long x0, int lo, int hi) {
  size_t cols = 0;
  for (const auto& r : rows) cols = std::max(cols, r.size());
  const int left = 60, top = 22, cell_h = 14;
  const double cell_w = cols > 0 ? std::max(2.0, std::min(10.0, 820.0 / static_cast<double>(cols))) : 10;
  const int w = left + static_cast<int>(cell_w * static_cast<double>(cols)) + 10;
  const int h = top + cell_h * static_cast<int>(rows.size()) + 24;
  std::ostringstream o;
  o << "<svg class=\"heatmap\" width=\"" << w << "\" height=\"" << h
    << "\" role=\"img\" aria-label=\"" << html_escape(title) << "\">";
  o << "<text x=\"0\" y=\"14\" class=\"svg-title\">" << html_escape(title) << "</text>";
  for (size_t i = 0; i < rows.size(); ++i) {
    const int y = top + cell_h * static_cast<int>(i);
    o << "<text x=\"" << left - 4 << "\" y=\"" << y + cell_h - 3 << "\" text-anchor=\"end\" class=\"svg-label\">"
      << html_escape(labels[i]) << "</text>";
    for (size_t c = 0; c < rows[i].size(); ++c) {
      const double v = rows[i][c];
      o << "<rect x=\"" << fmt(left + cell_w * static_cast<double>(c), "%.1f") << "\" y=\"" << y << "\" width=\""
        << fmt(cell_w, "%.2f") << "\" height=\"" << cell_h - 1 << "\" fill=\"" << cell_color(v, lo, hi)
        << "\"><title>" << html_escape(labels[i]) << ", position " << x0 + static_cast<long long>(c) << ": "
        << (v == 0 ? std::string("bit-equal") : std::isinf(v) ? std::string("row on one side only") : "max-abs " + fmt(v))
        << "</title></rect>";
    }
  }
  // Position ticks every 10 (or 50) columns.
  const long long step = cols > 200 ? 50 : 10;
  for (long long p = ((x0 + step - 1) / step) * step; p < x0 + static_cast<long long>(cols); p += step) {
    const double x = left + cell_w * static_cast<double>(p - x0);
    o << "<text x=\"" << fmt(x, "%.1f") << "\" y=\"" << h - 8 << "\" class=\"svg-tick\">" << p << "</text>";
  }
  o << "</svg>";
  return o.str();
}

std::string heatmap_legend_svg(int lo, int hi) {
  std::ostringstream o;
  const int n = hi - lo, cw = 36;
  o << "<svg class=\"legend\" width=\"" << (n + 3) * cw + 80
    << "\" height=\"40\">";
  int x = 0;
  auto box = [&](const std::string& color, const std::string& label) {
    o << "<rect x=\"" << x << "\" y=\"2\" width=\"" << cw - 2 << "\" height=\"14\" fill=\"" << color
      << "\" stroke=\"#999\" stroke-width=\"0.5\"/><text x=\"" << x << "\" y=\"32\" class=\"svg-tick\">" << label
      << "</text>";
    x += cw;
  };
  box("#eeeeee", "equal");
  for (int e = lo; e <= hi; ++e) box(ramp((e - lo) / static_cast<double>(n)), "1e" + std::to_string(e));
  box("#000000", "1 side");
  o << "</svg>";
  return o.str();
}

std::string series_color(size_t i) {
  static const char* c[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                            "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39", "#7b4173"};
  return c[i % (sizeof c / sizeof c[0])];
}

std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series, long long x0, bool log_y, int width, int height) {
  const int left = 70, right = 180, top = 24, bottom = 36;
  const int pw = width - left - right, ph = height - top - bottom;
  size_t n = 1;
  double lo = INFINITY, hi = -INFINITY;
  for (const Series& s : series) {
    n = std::max(n, s.y.size());
    for (double v : s.y) {
      if (!std::isfinite(v) || (log_y && v <= 0)) continue;
      const double t = log_y ? std::log10(v) : v;
      lo = std::min(lo, t);
      hi = std::max(hi, t);
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (log_y) lo = std::floor(lo), hi = std::ceil(hi);
  if (!log_y) lo = std::min(lo, 0.0);
  if (hi <= lo) hi = lo + 1;
  auto X = [&](double i) { return left + pw * (n > 1 ? i / static_cast<double>(n - 1) : 0.5); };
  auto Y = [&](double v) {
    const double t = log_y ? std::log10(v) : v;
    return top + ph * (1.0 - (t - lo) / (hi - lo));
  };
  std::ostringstream o;
  o << "<svg class=\"chart\" width=\"" << width << "\" height=\"" << height
    << "\" role=\"img\" aria-label=\"" << html_escape(title) << "\">";
  o << "<text x=\"0\" y=\"14\" class=\"svg-title\">" << html_escape(title) << "</text>";
  o << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#bbb\"/>";
  // Y ticks: decades on a log axis, 5 steps otherwise.
  const int steps = log_y ? static_cast<int>(hi - lo) : 5;
  for (int k = 0; k <= steps; ++k) {
    const double t = lo + (hi - lo) * k / std::max(1, steps);
    const double y = top + ph * (1.0 - (t - lo) / (hi - lo));
    o << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << fmt(y, "%.1f") << "\" y2=\""
      << fmt(y, "%.1f") << "\" stroke=\"#eee\"/>";
    o << "<text x=\"" << left - 4 << "\" y=\"" << fmt(y + 4, "%.1f") << "\" text-anchor=\"end\" class=\"svg-tick\">"
      << (log_y ? "1e" + std::to_string(static_cast<int>(t)) : fmt(t)) << "</text>";
  }
  const long long xstep = n > 200 ? 50 : n > 40 ? 10 : n > 10 ? 5 : 1;
  for (long long p = ((x0 + xstep - 1) / xstep) * xstep; p < x0 + static_cast<long long>(n); p += xstep)
    o << "<text x=\"" << fmt(X(static_cast<double>(p - x0)), "%.1f") << "\" y=\"" << top + ph + 14
      << "\" text-anchor=\"middle\" class=\"svg-tick\">" << p << "</text>";
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << height - 4 << "\" text-anchor=\"middle\" class=\"svg-label\">"
    << html_escape(x_label) << "</text>";
  o << "<text x=\"12\" y=\"" << top + ph / 2 << "\" transform=\"rotate(-90 12 " << top + ph / 2
    << ")\" text-anchor=\"middle\" class=\"svg-label\">" << html_escape(y_label) << "</text>";
  for (size_t si = 0; si < series.size(); ++si) {
    const Series& s = series[si];
    std::string pts;
    auto flush = [&]() {
      if (pts.empty()) return;
      o << "<polyline class=\"series\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\""
        << (s.dashed ? " stroke-dasharray=\"4 3\"" : "") << " points=\"" << pts << "\"><title>"
        << html_escape(s.name) << "</title></polyline>";
      pts.clear();
    };
    for (size_t i = 0; i < s.y.size(); ++i) {
      const double v = s.y[i];
      if (!std::isfinite(v) || (log_y && v <= 0)) {
        flush();
        continue;
      }
      pts += fmt(X(static_cast<double>(i)), "%.1f") + "," + fmt(Y(v), "%.1f") + " ";
    }
    // A lone point would draw nothing as a polyline: mark it.
    if (std::count(pts.begin(), pts.end(), ' ') == 1) {
      const size_t comma = pts.find(',');
      o << "<circle cx=\"" << pts.substr(0, comma) << "\" cy=\"" << pts.substr(comma + 1, pts.size() - comma - 2)
        << "\" r=\"2\" fill=\"" << s.color << "\"/>";
    }
    flush();
    const int ly = top + 12 + 14 * static_cast<int>(si);
    o << "<line x1=\"" << left + pw + 10 << "\" x2=\"" << left + pw + 28 << "\" y1=\"" << ly - 4 << "\" y2=\""
      << ly - 4 << "\" stroke=\"" << s.color << "\" stroke-width=\"2\"" << (s.dashed ? " stroke-dasharray=\"4 3\"" : "")
      << "/><text x=\"" << left + pw + 32 << "\" y=\"" << ly << "\" class=\"svg-label\">" << html_escape(s.name)
      << "</text>";
  }
  o << "</svg>";
  return o.str();
}

}  // namespace ds4::report
