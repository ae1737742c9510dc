// ds4-synth: writes a seeded synthetic DS4 model (deepseek4 GGUF) for tests and benchmarks.
//   ds4-synth --preset tiny --quant ds4 --seed 1234 -o tiny.gguf
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "ds4/error.h"
#include "ds4/model.h"
#include "ds4/synth.h"

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "|") + x;
  return s;
}

void usage(FILE* f) {
  std::fprintf(f,
               "usage: ds4-synth [--preset %s] [--quant %s] [--seed N]\n"
               "                 [--layers N] [--experts N] [--vocab N] [--ff N] [--mtp]\n"
               "                 [--threads N] -o out.gguf\n"
               "Writes a synthetic DeepSeek V4 Flash model with seeded random weights.\n"
               "  --preset   tiny (the HF oracle's shapes, expert FF 256; default) or flash-shape\n"
               "             (every per-layer dimension of Flash, 4 layers, 16 experts)\n"
               "  --quant    quant mix (default ds4: IQ2_XXS/Q2_K experts, Q8_0 attention, ...)\n"
               "  --seed     weight seed (default 1234); same options give the same bytes\n"
               "  --layers/--experts/--vocab/--ff  override the preset (0 = preset default)\n"
               "  --mtp      add one MTP block\n"
               "  --threads  worker threads (default: all cores; does not change the output)\n",
               join(ds4::synth_presets()).c_str(), join(ds4::QuantMix::names()).c_str());
}

template <class T>
T parse_number(const std::string& flag, const std::string& text) {
  T v{};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || text.empty())
    ds4::fail("bad value '" + text + "' for " + flag + " (expected a non-negative integer)");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ds4::SynthOptions opt;
    std::string out;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) ds4::fail("missing value for " + a);
        return argv[++i];
      };
      if (a == "-h" || a == "--help") {
        usage(stdout);
        return 0;
      } else if (a == "--preset") {
        opt.preset = value();
      } else if (a == "--quant") {
        opt.quant_mix = value();
        ds4::QuantMix::by_name(opt.quant_mix);  // reject an unknown mix before anything else
      } else if (a == "--seed") {
        opt.seed = parse_number<uint64_t>(a, value());
      } else if (a == "--layers") {
        opt.n_layer = parse_number<uint32_t>(a, value());
      } else if (a == "--experts") {
        opt.n_expert = parse_number<uint32_t>(a, value());
      } else if (a == "--vocab") {
        opt.n_vocab = parse_number<uint32_t>(a, value());
      } else if (a == "--ff") {
        opt.n_ff_exp = parse_number<uint32_t>(a, value());
      } else if (a == "--threads") {
        opt.n_threads = parse_number<unsigned>(a, value());
      } else if (a == "--mtp") {
        opt.mtp = true;
      } else if (a == "-o" || a == "--output") {
        out = value();
      } else {
        ds4::fail("unknown argument '" + a + "' (see --help)");
      }
    }
    if (out.empty()) ds4::fail("missing -o out.gguf (see --help)");
    const ds4::HParams hp = ds4::synth_hparams(opt);
    const auto t0 = std::chrono::steady_clock::now();
    ds4::write_synth_model(opt, out);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto bytes = std::filesystem::file_size(out);
    std::printf("%s | mix %s, seed %llu | %.1f MiB (%llu bytes) in %.2f s -> %s\n",
                hp.summary().c_str(), opt.quant_mix.c_str(),
                static_cast<unsigned long long>(opt.seed), bytes / 1048576.0,
                static_cast<unsigned long long>(bytes), secs, out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4-synth: %s\n", e.what());
    return 2;
  }
}
