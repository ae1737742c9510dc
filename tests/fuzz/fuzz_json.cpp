// libFuzzer target: the strict JSON parser (ds4::Json::parse: safetensors headers, HF
// config.json and tokenizer.json) on arbitrary bytes. An accepted document must round-trip:
// parse(dump(x)) succeeds and dumps to the same text (ds4/json.h promises an equal value).
//   scripts/fuzz json        (corpus: tests/fuzz/corpus/json)
#include <cstdint>
#include <string_view>

#include "ds4/json.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ds4::Json j;
  try {
    j = ds4::Json::parse(text, "fuzz.json");
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  const std::string once = j.dump();
  ds4::Json again;
  try {
    again = ds4::Json::parse(once, "dump");
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "dump() of an accepted document does not parse: %s\n", e.what());
    std::abort();
  }
  ds4::fuzz::check(again.dump() == once, "parse(dump(x)) dumps to the same text");
  ds4::fuzz::check(ds4::printable(text, 64).find('\n') == std::string::npos,
                   "printable() has no newline");
  return 0;
}
