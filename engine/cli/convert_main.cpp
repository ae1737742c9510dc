// ds4-convert: DeepSeek V4 upstream safetensors (+ config.json) -> deepseek4 GGUF.
//   ds4-convert path/to/checkpoint-dir --quant ds4 -o model.gguf
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "ds4/convert.h"
#include "ds4/error.h"
#include "ds4/model.h"

namespace {

void usage(FILE* f) {
  std::string mixes;
  for (const auto& m : ds4::QuantMix::names()) mixes += (mixes.empty() ? "" : "|") + m;
  std::fprintf(
      f,
      "usage: ds4-convert <model.safetensors | dir with *.safetensors> [--config config.json]\n"
      "                   [--quant %s] -o out.gguf\n"
      "Converts a DeepSeek V4 checkpoint in upstream tensor names (FP8/FP4 or float) to a\n"
      "deepseek4 GGUF. --config defaults to config.json next to the input; --quant to f32.\n"
      "mtp.* tensors are dropped. Without a tokenizer.json next to the input a synthetic\n"
      "vocabulary is written.\n",
      mixes.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ds4::ConvertOptions opt;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) ds4::fail("missing value for " + a);
        return argv[++i];
      };
      if (a == "-h" || a == "--help") {
        usage(stdout);
        return 0;
      } else if (a == "--config") {
        opt.config = value();
      } else if (a == "--quant") {
        opt.quant_mix = value();
        ds4::QuantMix::by_name(opt.quant_mix);
      } else if (a == "-o" || a == "--output") {
        opt.output = value();
      } else if (!a.empty() && a[0] == '-') {
        ds4::fail("unknown argument '" + a + "' (see --help)");
      } else if (opt.input.empty()) {
        opt.input = a;
      } else {
        ds4::fail("more than one input given ('" + opt.input + "', '" + a + "')");
      }
    }
    if (opt.input.empty()) ds4::fail("missing input safetensors file or directory (see --help)");
    if (opt.output.empty()) ds4::fail("missing -o out.gguf (see --help)");
    const auto t0 = std::chrono::steady_clock::now();
    const ds4::ConvertResult res = ds4::convert_hf_to_gguf(opt);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const std::string& note : res.notes)
      std::fprintf(stderr, "ds4-convert: note: %s\n", note.c_str());
    const auto bytes = std::filesystem::file_size(opt.output);
    std::printf("%s | mix %s | %zu tensors from %zu source tensors | %.1f MiB in %.2f s -> %s\n",
                res.hp.summary().c_str(), opt.quant_mix.c_str(), res.n_tensors,
                res.n_source_tensors, bytes / 1048576.0, secs, opt.output.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4-convert: %s\n", e.what());
    return 2;
  }
}
