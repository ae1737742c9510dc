// ds4-convert: DeepSeek V4 upstream safetensors (+ config.json) -> deepseek4 GGUF.
//   ds4-convert path/to/checkpoint-dir --quant ds4 -o model.gguf
// Flags are parsed in engine/config.cpp (parse_convert_cli).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "ds4/config.h"
#include "ds4/convert.h"
#include "ds4/error.h"
#include "ds4/model.h"

int main(int argc, char** argv) {
  try {
    const ds4::ConvertCli cli = ds4::parse_convert_cli(argc, argv);
    if (cli.help) {
      std::fputs(ds4::convert_cli_usage().c_str(), stdout);
      return 0;
    }
    const ds4::ConvertOptions& opt = cli.opt;
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
