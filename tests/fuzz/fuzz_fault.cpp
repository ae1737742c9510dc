// libFuzzer target: fault-injection specs (ds4::FaultInjection::parse, `ds4-parity run --fault
// layer:tap:pos[:element]`). An accepted spec must round-trip through to_string().
//   scripts/fuzz fault        (corpus: tests/fuzz/corpus/fault)
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "ds4/engine.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string spec(reinterpret_cast<const char*>(data), size);
  ds4::FaultInjection f;
  try {
    f = ds4::FaultInjection::parse(spec);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  ds4::fuzz::check(f.enabled && !f.tap.empty() && f.pos >= 0 && f.element >= 0,
                   "an accepted spec is enabled, names a tap, and has pos, element >= 0");
  // Each accepted number is the number written (no silent wrap-around or saturation): read the
  // fields again with strtoll, which flags overflow.
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t c = spec.find(':', start);
    parts.push_back(spec.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  auto written = [](const std::string& s) {
    errno = 0;
    const long long v = std::strtoll(s.c_str(), nullptr, 10);
    ds4::fuzz::check(errno == 0, "an accepted number does not overflow int64");
    return static_cast<int64_t>(v);
  };
  ds4::fuzz::check(written(parts[0]) == f.layer, "the layer is the number written");
  ds4::fuzz::check(written(parts[2]) == f.pos, "the position is the number written");
  if (parts.size() == 4) ds4::fuzz::check(written(parts[3]) == f.element, "the element is the number written");
  ds4::FaultInjection back;
  try {
    back = ds4::FaultInjection::parse(f.to_string());
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "to_string() '%s' does not parse: %s\n", f.to_string().c_str(), e.what());
    std::abort();
  }
  ds4::fuzz::check(back.layer == f.layer && back.tap == f.tap && back.pos == f.pos &&
                       back.element == f.element,
                   "parse(to_string(f)) == f");
  return 0;
}
