// ds4-synth: writes a seeded synthetic DS4 model (deepseek4 GGUF) for tests and benchmarks.
//   ds4-synth --preset tiny --quant ds4 --seed 1234 -o tiny.gguf
// Flags are parsed in engine/config.cpp (parse_synth_cli).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "ds4/config.h"
#include "ds4/error.h"
#include "ds4/model.h"
#include "ds4/synth.h"

int main(int argc, char** argv) {
  try {
    const ds4::SynthCli cli = ds4::parse_synth_cli(argc, argv);
    if (cli.help) {
      std::fputs(ds4::synth_cli_usage().c_str(), stdout);
      return 0;
    }
    const ds4::HParams hp = ds4::synth_hparams(cli.opt);
    const auto t0 = std::chrono::steady_clock::now();
    ds4::write_synth_model(cli.opt, cli.output);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto bytes = std::filesystem::file_size(cli.output);
    std::printf("%s | mix %s, seed %llu | %.1f MiB (%llu bytes) in %.2f s -> %s\n",
                hp.summary().c_str(), cli.opt.quant_mix.c_str(),
                static_cast<unsigned long long>(cli.opt.seed), bytes / 1048576.0,
                static_cast<unsigned long long>(bytes), secs, cli.output.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4-synth: %s\n", e.what());
    return 2;
  }
}
