// libFuzzer target: loading a model (ds4::Model::load = GGUF reader + deepseek4 hyperparameters +
// weight binding + tokenizer) on arbitrary bytes, the path `ds4 -m` and `ds4-parity run -m` take.
// On success the tokenizer encodes and decodes a fixed chat prompt.
//   scripts/fuzz model        (corpus: tests/fuzz/corpus/model, a tiny synthetic model)
#include <cstdint>

#include "ds4/engine.h"
#include "ds4/tokenizer.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ds4::fuzz::ScratchFile scratch(".gguf");
  const std::string& path = scratch.write(data, size);
  try {
    const std::shared_ptr<ds4::Model> m = ds4::Model::load(path);
    size_t sink = m->hparams().summary().size();
    const ds4::Tokenizer& tok = m->tokenizer();
    const std::vector<int32_t> ids = ds4::render_chat(tok, "You are a helpful assistant",
                                                      "Hello, wörld! 123 <think>", true);
    for (int32_t id : ids)
      ds4::fuzz::check(id >= 0 && id < tok.vocab_size(), "encoded ids are in the vocabulary");
    sink += tok.decode(ids).size();
    ds4::fuzz::escape(sink);
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  return 0;
}
