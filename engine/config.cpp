// The only file that reads the environment (getenv) or parses engine flags.
#include "ds4/config.h"

#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <utility>

#include "backend/cuda/forward_cuda.h"
#include "forward/exec.h"
#include "ds4/error.h"
#include "ds4/synth.h"

extern char** environ;

namespace ds4 {

const std::vector<EnvVar>& known_env_vars() {
  static const std::vector<EnvVar> vars = {
      {"DS4_PROFILE", "numerics profile: ds4 (default) or plain"},
      {"DS4_THREADS", "CPU threads (default: all cores)"},
      {"DS4_CACHE_DIR", "where the built-in model is generated (default ~/.cache/ds4-parity)"},
      {"DS4_STRICT_BATCHED", "1: every gate exact (batched == N=1 decode)"},
      {"DS4_CUDA_STRICT_BATCHED", "alias of DS4_STRICT_BATCHED (the name ds4 uses)"},
      {"DS4_GATES", "gate settings, e.g. all=fast or id=exact,id2=fast"},
      {"DS4_CPU_DEQUANT_CACHE_MB", "cap on the CPU cache of dequantised F32 weight copies the GEMM gates use, in MiB (default 512)"},
      {"DS4_CUDA_MEM_LIMIT_MB", "cap on the CUDA forward's device allocations in MiB (0/unset: none; tests provoke OOM)"},
      // Read by scripts/ (build folder, parallel jobs), ignored by the binaries; listed so that
      // running a tool from those scripts is not an "unknown variable" error.
      {"DS4_BUILD_DIR", "scripts/: build folder (default build)"},
      {"DS4_JOBS", "scripts/: parallel build and test jobs (default nproc)"},
  };
  return vars;
}

static bool parse_bool01(const char* name, const char* v) {
  if (!std::strcmp(v, "1")) return true;
  if (!std::strcmp(v, "0") || !*v) return false;
  fail(std::string("environment variable ") + name + "='" + v + "': expected 0 or 1");
}

EnvSettings read_environment() {
  EnvSettings s;
  for (char** e = environ; e && *e; ++e) {
    const char* kv = *e;
    if (std::strncmp(kv, "DS4_", 4) != 0) continue;
    const char* eq = std::strchr(kv, '=');
    const std::string name(kv, eq ? static_cast<size_t>(eq - kv) : std::strlen(kv));
    bool known = false;
    for (const EnvVar& v : known_env_vars()) known |= (name == v.name);
    if (!known) fail("unknown environment variable " + name + " (see `ds4 --help` for the DS4_* list)");
  }
  if (const char* v = std::getenv("DS4_PROFILE")) {
    s.profile = v;
    // hardening: validate here (the one place the environment is read) so every tool refuses a
    // bad DS4_PROFILE with the variable's name, not only `ds4`, and not as a bare profile error.
    if (*v) {
      try {
        profile_from_name(s.profile);
      } catch (const Error& e) {
        fail(std::string("DS4_PROFILE: ") + e.what());
      }
    }
  }
  if (const char* v = std::getenv("DS4_THREADS"); v && *v)
    s.threads = static_cast<int>(parse_int_flag("DS4_THREADS", v, 0, 4096));
  if (const char* v = std::getenv("DS4_STRICT_BATCHED")) s.strict |= parse_bool01("DS4_STRICT_BATCHED", v);
  if (const char* v = std::getenv("DS4_CUDA_STRICT_BATCHED"))
    s.strict |= parse_bool01("DS4_CUDA_STRICT_BATCHED", v);
  if (const char* v = std::getenv("DS4_GATES")) s.gates = v;
  if (const char* v = std::getenv("DS4_CACHE_DIR"); v && *v) {
    s.cache_dir = v;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    s.cache_dir = std::string(home) + "/.cache/ds4-parity";
  } else {
    s.cache_dir = "/tmp/ds4-parity";
  }
  return s;
}

int64_t parse_int_flag(const std::string& flag, const std::string& value, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end || errno || v < lo || v > hi)
    fail("bad value '" + value + "' for " + flag + " (expected an integer in [" + std::to_string(lo) +
         ", " + std::to_string(hi) + "])");
  return v;
}

double parse_float_flag(const std::string& flag, const std::string& value, double lo, double hi) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end || errno || !(v >= lo && v <= hi))
    fail("bad value '" + value + "' for " + flag + " (expected a number in [" + std::to_string(lo) +
         ", " + std::to_string(hi) + "])");
  return v;
}

std::string ds4_cli_usage() {
  std::string u =
      "usage: ds4 [-m model.gguf] [--mtp sidecar.gguf] [-p prompt] [-n N] [--temp T] [--seed S] [--nothink] [-sys TEXT]\n"
      "           [--backend cpu|cuda] [--profile ds4|plain] [--threads N] [--ctx N] [--raw]\n"
      "           [--strict] [--gates id=fast|exact,...]\n"
      "Runs DeepSeek V4 Flash (deepseek4 GGUF). Without -m it generates and runs the built-in\n"
      "synthetic tiny model (random weights: the text is gibberish, the numerics are real).\n"
      "  -m PATH        deepseek4 GGUF file\n"
      "  --mtp PATH     MTP sidecar (deepseek4_mtp_support, e.g. DeepSeek-V4-Flash-MTP-*.gguf) paired\n"
      "                 with -m: checked against the trunk, its block loaded\n"
      "  -p TEXT        user prompt (rendered with the DS4 chat template)\n"
      "  -n N           tokens to generate (default 32)\n"
      "  --temp T       sampling temperature (default 0 = greedy)\n"
      "  --seed S       sampling seed (default 1234)\n"
      "  --nothink      open the assistant turn with </think> instead of <think>\n"
      "  -sys TEXT      system text (default \"You are a helpful assistant\")\n"
      "  --backend B    cpu (reference) or cuda\n"
      "  --profile P    numerics: ds4 (FP8 KV, FP4 indexer, int8 activations) or plain\n"
      "  --threads N    CPU threads (default: all cores)\n"
      "  --ctx N        maximum context (default 4096)\n"
      "  --raw          no chat template: BPE the prompt as is, prefixed with BOS\n"
      "  --strict       every gate exact: the batched prefill computes what N=1 decode computes\n"
      "  --gates SPEC   gate settings, e.g. all=fast,q8_gemm=exact (see ds4-parity gates)\n"
      "environment:\n";
  for (const EnvVar& v : known_env_vars()) u += std::string("  ") + v.name + "  " + v.doc + "\n";
  return u;
}

GateSet resolve_gates(const EnvSettings& env, bool cli_strict, const std::string& cli_gates) {
  GateSet g = GateSet::all_fast();
  if (env.strict) g = GateSet::all_exact();
  if (!env.gates.empty()) {
    try {
      g.apply(env.gates);
    } catch (const Error& e) {
      fail(std::string("DS4_GATES: ") + e.what());
    }
  }
  if (cli_strict) g = GateSet::all_exact();
  if (!cli_gates.empty()) {
    try {
      g.apply(cli_gates);
    } catch (const Error& e) {
      fail(std::string("--gates: ") + e.what());
    }
  }
  return g;
}

Ds4Cli parse_ds4_cli(int argc, char** argv, const EnvSettings& env) {
  Ds4Cli c;
  bool strict = false;
  std::string gates;
  if (!env.profile.empty()) c.profile = profile_from_name(env.profile);
  c.threads = env.threads;
  for (int i = 1; i < argc; ++i) {
    FlagArg arg = split_flag_arg(argv[i]);
    const std::string& a = arg.name;
    auto value = [&]() -> std::string {
      if (arg.value) return *std::exchange(arg.value, std::nullopt);
      if (i + 1 >= argc) fail("bad flag: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") c.help = true;
    else if (a == "-m" || a == "--model") c.model = value();
    else if (a == "--mtp") c.mtp = value();
    else if (a == "-p" || a == "--prompt") c.prompt = value();
    else if (a == "-n") c.n_predict = static_cast<int>(parse_int_flag(a, value(), 0, 1 << 20));
    else if (a == "--temp") c.temperature = static_cast<float>(parse_float_flag(a, value(), 0.0, 100.0));
    else if (a == "--seed") c.seed = static_cast<uint64_t>(parse_int_flag(a, value(), 0, INT64_MAX));
    else if (a == "--nothink") c.think = false;
    else if (a == "-sys" || a == "--system") c.system = value();
    else if (a == "--backend") {
      c.backend = value();
      if (c.backend != "cpu" && c.backend != "cuda") fail("bad value '" + c.backend + "' for --backend (cpu or cuda)");
    } else if (a == "--profile") {
      const std::string v = value();
      try {
        c.profile = profile_from_name(v);
      } catch (const Error& e) {
        fail("--profile: " + std::string(e.what()));  // hardening: name the flag
      }
    }
    else if (a == "--threads") c.threads = static_cast<int>(parse_int_flag(a, value(), 0, 4096));
    else if (a == "--ctx") c.ctx = parse_int_flag(a, value(), 1, int64_t(1) << 24);
    else if (a == "--raw") c.raw = true;
    else if (a == "--strict") strict = true;
    else if (a == "--gates") gates = value();
    else fail("bad flag: unknown option '" + a + "' (see ds4 --help)");
    if (arg.value) fail("bad flag: " + a + " takes no value");
  }
  c.gates = resolve_gates(env, strict, gates);
  if (!c.mtp.empty() && c.model.empty())
    fail("bad flag: --mtp needs -m (the built-in tiny model takes no MTP sidecar)");
  return c;
}

std::string builtin_model_path(const EnvSettings& env) {
  SynthOptions opt;  // tiny, ds4 mix, seed 1234
  const std::string dir = env.cache_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("cannot create cache folder " + dir + ": " + ec.message());
  // Bump the suffix whenever the generator changes what it writes for the same options.
  const std::string path = dir + "/" + synth_model_name(opt) + "-gen1.gguf";
  if (!std::filesystem::exists(path)) write_synth_model(opt, path);
  return path;
}

// DS4_CUDA_MEM_LIMIT_MB: read here only (style.md rule 5), at each CUDA session's creation.
int64_t cuda_forward_mem_limit_bytes() {
  const char* v = std::getenv("DS4_CUDA_MEM_LIMIT_MB");
  if (!v || !*v) return 0;
  return parse_int_flag("DS4_CUDA_MEM_LIMIT_MB", v, 0, int64_t{1} << 30) * (int64_t{1} << 20);
}

// DS4_CPU_DEQUANT_CACHE_MB: read here only (style.md rule 5), at each CPU session's creation.
int64_t cpu_dequant_cache_budget_bytes() {
  const char* v = std::getenv("DS4_CPU_DEQUANT_CACHE_MB");
  if (!v || !*v) return WeightCache::kDefaultBudgetBytes;
  return parse_int_flag("DS4_CPU_DEQUANT_CACHE_MB", v, 1, int64_t{1} << 30) * (int64_t{1} << 20);
}

FlagArg split_flag_arg(const std::string& arg) {
  const size_t eq = arg.find('=');
  if (arg.rfind("--", 0) != 0 || eq == std::string::npos || eq == 2) return {arg, std::nullopt};
  return {arg.substr(0, eq), arg.substr(eq + 1)};
}

// ---- ds4-synth and ds4-convert -----------------------------------------------------------------

namespace {

std::string join_bar(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "|") + x;
  return s;
}

// Walks argv for the two model-writing tools: `value()` takes the next argument or fails with
// "missing value for <flag>".
struct ArgWalker {
  ArgWalker(int c, char** v) : argc(c), argv(v) {}
  int argc;
  char** argv;
  int i = 1;
  std::string flag;
  std::optional<std::string> inline_value;  // from "--flag=value"
  bool next() {
    if (inline_value) fail("bad flag: " + flag + " takes no value");
    if (i >= argc) return false;
    FlagArg a = split_flag_arg(argv[i++]);
    flag = std::move(a.name);
    inline_value = std::move(a.value);
    return true;
  }
  std::string value() {
    if (inline_value) return *std::exchange(inline_value, std::nullopt);
    if (i >= argc) fail("missing value for " + flag);
    return argv[i++];
  }
};

// The flags ds4-synth and ds4-convert share: --quant MIX (checked at once) and -o/--output.
bool model_writer_flag(ArgWalker& w, std::string* quant_mix, std::string* output) {
  if (w.flag == "--quant") {
    *quant_mix = w.value();
    QuantMix::by_name(*quant_mix);  // reject an unknown mix before anything else
  } else if (w.flag == "-o" || w.flag == "--output") {
    *output = w.value();
  } else {
    return false;
  }
  return true;
}

template <class T>
T parse_count(const std::string& flag, const std::string& text) {
  T v{};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || text.empty())
    fail("bad value '" + text + "' for " + flag + " (expected a non-negative integer)");
  return v;
}

}  // namespace

std::string synth_cli_usage() {
  return "usage: ds4-synth [--preset " + join_bar(synth_presets()) + "] [--quant " + join_bar(QuantMix::names()) +
         "] [--seed N]\n"
         "                 [--layers N] [--experts N] [--vocab N] [--ff N] [--mtp | --mtp-sidecar]\n"
         "                 [--values quantised|random|zero] [--threads N] -o out.gguf\n"
         "Writes a synthetic DeepSeek V4 Flash model with seeded random weights.\n"
         "  --preset   tiny (the HF oracle's shapes, expert FF 256; default), flash-shape\n"
         "             (every per-layer dimension of Flash, 4 layers, 16 experts), published (the\n"
         "             tensor directory and metadata of the published 43-layer IQ2XXS trunk, MTP\n"
         "             declared but not in the file) or published-mtp (its MTP sidecar); the two\n"
         "             published presets are weightless: zero bytes left as sparse holes\n"
         "  --quant    quant mix (default ds4: IQ2_XXS/Q2_K experts, Q8_0 attention, ...)\n"
         "  --seed     weight seed (default 1234); same options give the same bytes\n"
         "  --layers/--experts/--vocab/--ff  override the preset (0 = preset default)\n"
         "  --mtp      add one MTP block\n"
         "  --mtp-sidecar  write only the MTP block, as a deepseek4_mtp_support sidecar (mtp.0.*)\n"
         "             for the trunk of the same options (ds4 --mtp FILE pairs it)\n"
         "  --values   quantised (floats through the reference quantisers; default of tiny and\n"
         "             flash-shape), zero (sparse holes; default of the published presets) or\n"
         "             random (random quants with sane scales in each block, generated straight\n"
         "             into the output: the published presets with values at disk speed)\n"
         "  --threads  worker threads (default: all cores; does not change the output)\n";
}

SynthCli parse_synth_cli(int argc, char** argv) {
  SynthCli c;
  ArgWalker w{argc, argv};
  while (w.next()) {
    const std::string& a = w.flag;
    if (a == "-h" || a == "--help") {
      c.help = true;
      return c;
    } else if (model_writer_flag(w, &c.opt.quant_mix, &c.output)) {  // --quant, -o
    } else if (a == "--preset") {
      c.opt.preset = w.value();
    } else if (a == "--seed") {
      c.opt.seed = parse_count<uint64_t>(a, w.value());
    } else if (a == "--layers") {
      c.opt.n_layer = parse_count<uint32_t>(a, w.value());
    } else if (a == "--experts") {
      c.opt.n_expert = parse_count<uint32_t>(a, w.value());
    } else if (a == "--vocab") {
      c.opt.n_vocab = parse_count<uint32_t>(a, w.value());
    } else if (a == "--ff") {
      c.opt.n_ff_exp = parse_count<uint32_t>(a, w.value());
    } else if (a == "--threads") {
      c.opt.n_threads = parse_count<unsigned>(a, w.value());
    } else if (a == "--values") {
      c.opt.values = w.value();
      synth_values(c.opt);  // reject an unknown kind before anything else
    } else if (a == "--mtp") {
      c.opt.mtp = true;
    } else if (a == "--mtp-sidecar") {
      c.opt.mtp_sidecar = true;
    } else {
      fail("unknown argument '" + a + "' (see --help)");
    }
  }
  if (c.output.empty()) fail("missing -o out.gguf (see --help)");
  if (c.opt.mtp && c.opt.mtp_sidecar) fail("--mtp and --mtp-sidecar exclude each other (one file or the sidecar)");
  return c;
}

std::string convert_cli_usage() {
  return "usage: ds4-convert <model.safetensors | dir with *.safetensors> [--config config.json]\n"
         "                   [--quant " + join_bar(QuantMix::names()) + "] -o out.gguf\n"
         "Converts a DeepSeek V4 checkpoint in upstream tensor names (FP8/FP4 or float) to a\n"
         "deepseek4 GGUF. --config defaults to config.json next to the input; --quant to f32.\n"
         "mtp.* tensors are dropped. Without a tokenizer.json next to the input a synthetic\n"
         "vocabulary is written.\n";
}

ConvertCli parse_convert_cli(int argc, char** argv) {
  ConvertCli c;
  ArgWalker w{argc, argv};
  while (w.next()) {
    const std::string& a = w.flag;
    if (a == "-h" || a == "--help") {
      c.help = true;
      return c;
    } else if (model_writer_flag(w, &c.opt.quant_mix, &c.opt.output)) {  // --quant, -o
    } else if (a == "--config") {
      c.opt.config = w.value();
    } else if (!a.empty() && a[0] == '-') {
      fail("unknown argument '" + a + "' (see --help)");
    } else if (c.opt.input.empty()) {
      c.opt.input = a;
    } else {
      fail("more than one input given ('" + c.opt.input + "', '" + a + "')");
    }
  }
  if (c.opt.input.empty()) fail("missing input safetensors file or directory (see --help)");
  if (c.opt.output.empty()) fail("missing -o out.gguf (see --help)");
  return c;
}

}  // namespace ds4
