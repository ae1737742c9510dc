// Settings: the only place the environment and command-line flags are read (style.md rule 5).
// Precedence: CLI > environment > default. Any DS4_* environment variable that is not listed in
// known_env_vars() is an error, which catches typos.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ds4/convert.h"
#include "ds4/engine.h"
#include "ds4/gates.h"
#include "ds4/synth.h"

namespace ds4 {

struct EnvVar {
  const char* name;
  const char* doc;
};
// The documented DS4_* variables.
const std::vector<EnvVar>& known_env_vars();

// Values read from the environment (validated; unset -> empty/default).
struct EnvSettings {
  std::string profile;     // DS4_PROFILE
  int threads = 0;         // DS4_THREADS
  std::string cache_dir;   // DS4_CACHE_DIR (default $HOME/.cache/ds4-parity, else /tmp/ds4-parity)
  bool strict = false;     // DS4_STRICT_BATCHED=1 (alias DS4_CUDA_STRICT_BATCHED=1)
  std::string gates;       // DS4_GATES
};
// Reads and validates the environment; throws ds4::Error naming the variable.
EnvSettings read_environment();

// The `ds4` command line.
struct Ds4Cli {
  std::string model;                // -m (empty: built-in tiny model)
  std::string mtp;                  // --mtp: MTP sidecar paired with -m (empty: none)
  std::string prompt = "Hello";     // -p
  int n_predict = 32;               // -n
  float temperature = 0.0f;         // --temp (0 = greedy)
  uint64_t seed = 1234;             // --seed
  bool think = true;                // --nothink clears
  std::string system = "You are a helpful assistant";  // -sys
  std::string backend = "cpu";      // --backend cpu|cuda
  Profile profile = Profile::Ds4;   // --profile ds4|plain
  int threads = 0;                  // --threads
  int64_t ctx = 4096;               // --ctx
  bool raw = false;                 // --raw: no chat template, BPE the prompt as is
  GateSet gates;                    // --strict / --gates over DS4_STRICT_BATCHED / DS4_GATES
  bool help = false;
};
// Parses argv (throws ds4::Error "bad flag ..." on an unknown flag or a bad value).
Ds4Cli parse_ds4_cli(int argc, char** argv, const EnvSettings& env);
std::string ds4_cli_usage();

// The `ds4-synth` command line (no environment: the output depends only on its flags).
struct SynthCli {
  SynthOptions opt;
  std::string output;  // -o (required)
  bool help = false;
};
SynthCli parse_synth_cli(int argc, char** argv);
std::string synth_cli_usage();

// The `ds4-convert` command line.
struct ConvertCli {
  ConvertOptions opt;  // input (positional), --config, --quant, -o (required)
  bool help = false;
};
ConvertCli parse_convert_cli(int argc, char** argv);
std::string convert_cli_usage();

// Gate settings with CLI > environment > default (all fast): DS4_STRICT_BATCHED, then DS4_GATES,
// then --strict, then --gates. Throws naming an unknown gate or a bad state.
GateSet resolve_gates(const EnvSettings& env, bool cli_strict, const std::string& cli_gates);

// Path of the built-in synthetic model (preset tiny, mix ds4, seed 1234) in the cache folder;
// generated on first use (atomically, so concurrent first runs are safe).
std::string builtin_model_path(const EnvSettings& env);

// Small helpers shared by the command-line tools.
int64_t parse_int_flag(const std::string& flag, const std::string& value, int64_t lo, int64_t hi);

// One command-line argument as a flag: "--name=value" splits into ("--name", "value"), anything
// else is (arg, none). Every CLI of the project reads its flags through this, so `--width=4` and
// `--width 4` mean the same everywhere; a flag that takes no value refuses "=value".
struct FlagArg {
  std::string name;
  std::optional<std::string> value;
};
FlagArg split_flag_arg(const std::string& arg);
double parse_float_flag(const std::string& flag, const std::string& value, double lo, double hi);

}  // namespace ds4
