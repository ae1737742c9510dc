// libFuzzer target: the GGUF v3 reader (ds4::GgufFile::open) on arbitrary bytes.
// On success every metadata value goes through every typed getter and every tensor's bytes are
// read, so an offset or size the validation let through would fault here.
//   scripts/fuzz gguf        (corpus: tests/fuzz/corpus/gguf)
#include <cstdint>

#include "ds4/gguf.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".gguf");
  const std::string& path = scratch.write(data, size);
  std::shared_ptr<ds4::GgufFile> f;
  try {
    f = ds4::GgufFile::open(path);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
    return 0;
  }
  uint64_t sink = 0;
  for (const auto& kv : f->metadata()) {
    const std::string& key = kv.first;  // not a structured binding: clang 14 cannot capture those
    const ds4::GgufValue& v = kv.second;
    ds4::fuzz::check(f->find(key) == &v, "find() returns the value of its key");
    sink += v.array_size();
    ds4::fuzz::guarded([&] { sink += f->get_u32(key); });
    ds4::fuzz::guarded([&] { sink += f->get_u64(key); });
    ds4::fuzz::guarded([&] { sink += uint64_t(f->get_i64(key)); });
    ds4::fuzz::guarded([&] { sink += uint64_t(f->get_f32(key) != 0); });
    ds4::fuzz::guarded([&] { sink += f->get_bool(key); });
    ds4::fuzz::guarded([&] { sink += f->get_str(key).size(); });
    ds4::fuzz::guarded([&] { sink += f->get_int_array(key).size(); });
    ds4::fuzz::guarded([&] { sink += f->get_float_array(key).size(); });
    ds4::fuzz::guarded([&] { sink += f->get_str_array(key).size(); });
  }
  for (const ds4::GgufTensor& t : f->tensors()) {
    ds4::fuzz::check(f->find_tensor(t.name) == &t, "find_tensor() returns its tensor");
    ds4::fuzz::check(t.data >= f->bytes() && t.nbytes <= f->file_size() &&
                         size_t(t.data - f->bytes()) <= f->file_size() - t.nbytes,
                     "tensor data lies inside the file");
    ds4::fuzz::check(t.nelements() >= 0 && t.rows() >= 0, "non-negative element count");
    for (size_t i = 0; i < t.nbytes; ++i) sink += t.data[i];  // faults if out of the mapping
  }
  ds4::fuzz::guarded([&] { f->tensor("no such tensor"); });
  ds4::fuzz::escape(sink);
  return 0;
}
