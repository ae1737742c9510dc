// libFuzzer target: tap filters (ds4::TapFilter::parse of --tap-layers, --tap-names, --positions)
// and tap levels. The input holds the three fields separated by '\n'. An accepted filter must
// give the same layers and positions when its canonical text is parsed again.
//   scripts/fuzz tap_filter        (corpus: tests/fuzz/corpus/tap_filter)
#include <cstdint>
#include <string>

#include "ds4/taps.h"
#include "fuzz_util.h"

namespace {

// The value of "<key>=..." in TapFilter::to_string() ("layers=0,2-3 names=q positions=1-"), or "".
std::string field(const std::string& text, const std::string& key) {
  const size_t at = text.find(key + "=");
  if (at == std::string::npos || (at > 0 && text[at - 1] != ' ')) return "";
  const size_t b = at + key.size() + 1;
  const size_t e = text.find(' ', b);
  return text.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> f = ds4::fuzz::split_lines(data, size, 3);
  const std::string layers = f.size() > 0 ? f[0] : "", names = f.size() > 1 ? f[1] : "",
                    positions = f.size() > 2 ? f[2] : "";
  try {
    ds4::tap_level_from_name(layers);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  ds4::TapFilter t;
  try {
    t = ds4::TapFilter::parse(layers, names, positions);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  ds4::fuzz::check(t.pos_begin >= 0 && t.pos_begin < t.pos_end, "a non-empty position range");
  for (int l : t.layers) ds4::fuzz::check(l >= -1 && l <= 100000, "layers in -1..100000");
  (void)t.to_string();
  // Names may hold spaces and '=' (only the ends are trimmed), so the round trip is checked on
  // the filter without its names: layers and positions read back from the canonical text.
  ds4::TapFilter no_names = t;
  no_names.names.clear();
  const std::string text = no_names.to_string();
  ds4::TapFilter back;
  try {
    back = ds4::TapFilter::parse(field(text, "layers"), "", field(text, "positions"));
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "canonical text '%s' does not parse: %s\n", text.c_str(), e.what());
    std::abort();
  }
  ds4::fuzz::check(back.layers == t.layers, "layers round-trip through to_string()");
  ds4::fuzz::check(back.pos_begin == t.pos_begin && back.pos_end == t.pos_end,
                   "positions round-trip through to_string()");
  (void)t.matches(0, "q", 0);
  return 0;
}
