// libFuzzer target: gate strings (ds4::GateSet::parse, as given to --gates and DS4_GATES) and
// gate names. An accepted spec must round-trip through its canonical text.
//   scripts/fuzz gates        (corpus: tests/fuzz/corpus/gates)
#include <cstdint>
#include <string>

#include "ds4/gates.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string spec(reinterpret_cast<const char*>(data), size);
  try {
    ds4::gate_from_name(spec);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  ds4::GateSet g;
  try {
    g = ds4::GateSet::parse(spec);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  const std::string text = g.to_string();
  ds4::GateSet back;
  try {
    back = ds4::GateSet::parse(text);
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "canonical text '%s' does not parse: %s\n", text.c_str(), e.what());
    std::abort();
  }
  ds4::fuzz::check(back == g, "parse(to_string(g)) == g");
  // Applying the canonical text on top of any set gives the same set (it starts with all=...).
  ds4::GateSet over = ds4::GateSet::all_exact();
  over.apply(text);
  ds4::fuzz::check(over == g, "the canonical text is absolute");
  return 0;
}
