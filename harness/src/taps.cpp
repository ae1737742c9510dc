// Tap level / filter parsing and per-tensor statistics (definitions in ds4/taps.h).
#include "ds4/taps.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <vector>

#include "ds4/error.h"

namespace ds4 {

const char* tap_level_name(TapLevel level) {
  switch (level) {
    case TapLevel::Off:
      return "off";
    case TapLevel::Stats:
      return "stats";
    case TapLevel::Full:
      return "full";
  }
  return "?";
}

TapLevel tap_level_from_name(const std::string& name) {
  if (name == "off") return TapLevel::Off;
  if (name == "stats") return TapLevel::Stats;
  if (name == "full") return TapLevel::Full;
  fail("tap level '" + name + "' is not one of off|stats|full");
}

// ---------------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------------

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    out.push_back(
        trim(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// Whole-string integer; false on anything else (empty, sign-only, trailing characters, overflow).
bool parse_int64(const std::string& s, int64_t& v) {
  if (s.empty()) return false;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  return ec == std::errc() && p == end;
}

[[noreturn]] void bad_item(const char* field, const std::string& item, const char* why) {
  fail(std::string("tap filter ") + field + ": bad item '" + item + "' (" + why + ")");
}

// Inclusive range "a-b" of non-negative numbers, or a single (possibly negative) number.
// A leading '-' always means a negative number: "-1" is the output head, not an open range.
void parse_range(const char* field, const std::string& item, int64_t& lo, int64_t& hi,
                 bool allow_open_end) {
  const size_t dash = item.empty() ? std::string::npos : item.find('-', 1);
  if (dash == std::string::npos) {
    if (!parse_int64(item, lo)) bad_item(field, item, "expected a number or a range a-b");
    hi = lo;
    return;
  }
  const std::string a = item.substr(0, dash), b = item.substr(dash + 1);
  if (!parse_int64(a, lo) || lo < 0) bad_item(field, item, "range start must be a number >= 0");
  if (b.empty() && allow_open_end) {
    hi = INT64_MAX;
    return;
  }
  if (!parse_int64(b, hi)) bad_item(field, item, "range end must be a number");
  if (hi < lo) bad_item(field, item, "range end is below its start");
}

}  // namespace

bool TapFilter::matches(int layer, const std::string& name, int64_t pos) const {
  if (pos < pos_begin || pos >= pos_end) return false;
  if (!layers.empty() && !layers.count(layer)) return false;
  if (!names.empty() && !names.count(name)) return false;
  return true;
}

TapFilter TapFilter::parse(const std::string& layers, const std::string& names,
                           const std::string& positions) {
  TapFilter f;
  if (!trim(layers).empty()) {
    for (const std::string& item : split_commas(layers)) {
      int64_t lo, hi;
      parse_range("layers", item, lo, hi, false);
      if (lo < -1 || hi > 100000) bad_item("layers", item, "layers are -1 (head) .. 100000");
      for (int64_t l = lo; l <= hi; ++l) f.layers.insert(static_cast<int>(l));
    }
  }
  if (!trim(names).empty()) {
    for (const std::string& item : split_commas(names)) {
      if (item.empty()) bad_item("names", item, "empty name");
      if (item.find('/') != std::string::npos) bad_item("names", item, "names contain no '/'");
      f.names.insert(item);
    }
  }
  const std::string pos = trim(positions);
  if (!pos.empty()) {
    if (pos.find(',') != std::string::npos)
      bad_item("positions", pos, "one range only, e.g. 10-20");
    int64_t lo, hi;
    parse_range("positions", pos, lo, hi, true);
    if (lo < 0) bad_item("positions", pos, "positions are >= 0");
    f.pos_begin = lo;
    f.pos_end = hi == INT64_MAX ? INT64_MAX : hi + 1;
  }
  return f;
}

std::string TapFilter::to_string() const {
  std::string out;
  if (!layers.empty()) {
    out += "layers=";
    // Collapse consecutive layers back into ranges so the text parses to the same set.
    bool first = true;
    for (auto it = layers.begin(); it != layers.end();) {
      int lo = *it, hi = lo;
      auto next = std::next(it);
      while (next != layers.end() && *next == hi + 1 && hi >= 0) hi = *next++;
      if (!first) out += ',';
      first = false;
      out += std::to_string(lo);
      if (hi != lo) out += "-" + std::to_string(hi);
      it = next;
    }
  }
  if (!names.empty()) {
    if (!out.empty()) out += ' ';
    out += "names=";
    bool first = true;
    for (const auto& n : names) {
      if (!first) out += ',';
      first = false;
      out += n;
    }
  }
  if (pos_begin != 0 || pos_end != INT64_MAX) {
    if (!out.empty()) out += ' ';
    out += "positions=" + std::to_string(pos_begin) + "-";
    if (pos_end != INT64_MAX) out += std::to_string(pos_end - 1);
  }
  return out.empty() ? "all" : out;
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

uint64_t fnv1a64(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

TensorStats compute_stats(const float* data, size_t n) {
  TensorStats s;
  double sum = 0;
  uint64_t finite = 0;
  for (size_t i = 0; i < n; ++i) {
    const float x = data[i];
    if (std::isnan(x)) {
      ++s.nan_count;
    } else if (std::isinf(x)) {
      ++s.inf_count;
    } else {
      const double d = x;
      s.absmax = std::max(s.absmax, std::fabs(d));
      sum += d;
      ++finite;
    }
  }
  s.mean = finite ? sum / static_cast<double>(finite) : 0.0;
  s.hash = fnv1a64(data, n * sizeof(float));
  return s;
}

}  // namespace ds4
