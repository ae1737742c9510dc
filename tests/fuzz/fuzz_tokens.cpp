// libFuzzer target: token files (ds4::read_token_file, `ds4-parity run --tokens`). The first
// input byte picks the format (odd: binary .i32, even: text), the rest is the file.
//   scripts/fuzz tokens        (corpus: tests/fuzz/corpus/tokens)
#include <cstdint>

#include "ds4/drivers.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile binary(".i32"), text(".txt");
  if (size == 0) return 0;
  ds4::fuzz::ScratchFile& file = (data[0] & 1) ? binary : text;
  const std::string& path = file.write(data + 1, size - 1);
  constexpr int64_t kVocab = 1000;
  try {
    const std::vector<int32_t> t = ds4::read_token_file(path, kVocab);
    ds4::fuzz::check(!t.empty(), "a token file holds tokens");
    for (int32_t x : t) ds4::fuzz::check(x >= 0 && x < kVocab, "tokens are inside the vocabulary");
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  return 0;
}
