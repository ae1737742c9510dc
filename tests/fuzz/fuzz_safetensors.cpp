// libFuzzer target: the safetensors reader (ds4::SafetensorsFile::open) on arbitrary bytes.
// On success every tensor is converted to F32 and I64 (where its dtype allows) and every data byte
// is read, so a bad offset or size that got through the validation faults here.
//   scripts/fuzz safetensors        (corpus: tests/fuzz/corpus/safetensors)
#include <cstdint>

#include "ds4/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".safetensors");
  const std::string& path = scratch.write(data, size);
  std::shared_ptr<ds4::SafetensorsFile> f;
  try {
    f = ds4::SafetensorsFile::open(path);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  uint64_t sink = 0;
  for (const ds4::SafeTensor& t : f->tensors()) {
    ds4::fuzz::check(f->find(t.name) == &t, "find() returns its tensor");
    ds4::fuzz::check(t.nelements() >= 0, "non-negative element count");
    for (size_t i = 0; i < t.nbytes; ++i) sink += t.data[i];
    try {
      sink += t.to_f32().size();
    } catch (const ds4::Error& e) {
      ds4::fuzz::check_one_line(e);
    }
    try {
      sink += t.to_i64().size();
    } catch (const ds4::Error& e) {
      ds4::fuzz::check_one_line(e);
    }
  }
  for (const auto& [k, v] : f->metadata()) sink += k.size() + v.size();
  ds4::fuzz::escape(sink);
  return 0;
}
