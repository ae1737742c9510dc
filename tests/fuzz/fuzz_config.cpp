// libFuzzer target: settings (engine/config.cpp and the ds4-parity flag parser): the DS4_*
// environment (read_environment), the `ds4` command line (parse_ds4_cli, which resolves gates
// CLI > environment > default), and ds4::ArgParser with the option kinds of `ds4-parity run`.
//
// Input: lines separated by '\n'. Lines before the first empty line are environment entries
// ("NAME=VALUE"), the lines after it are the argument words. The process environment is swapped
// for exactly these entries during the call (no setenv: glibc never frees setenv strings).
//   scripts/fuzz config        (corpus: tests/fuzz/corpus/config)
#include <cstdint>
#include <string>
#include <vector>

#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/drivers.h"
#include "fuzz_util.h"

extern char** environ;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> lines = ds4::fuzz::split_lines(data, size, 256);
  std::vector<std::string> env_entries, words;
  bool in_env = true;
  for (const std::string& l : lines) {
    if (in_env && l.empty()) {
      in_env = false;
      continue;
    }
    (in_env ? env_entries : words).push_back(l);
  }

  std::vector<char*> envp;
  for (std::string& e : env_entries) envp.push_back(e.data());
  envp.push_back(nullptr);
  char** const saved = environ;
  environ = envp.data();
  ds4::EnvSettings env;
  bool env_ok = false;
  ds4::fuzz::guarded([&] {
    env = ds4::read_environment();
    env_ok = true;
  });
  environ = saved;

  // `ds4` argv (argv[0] is the program name).
  std::vector<std::string> argv_store = {"ds4"};
  argv_store.insert(argv_store.end(), words.begin(), words.end());
  std::vector<char*> argv;
  for (std::string& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (env_ok) {
    ds4::fuzz::guarded([&] {
      const ds4::Ds4Cli cli = ds4::parse_ds4_cli(static_cast<int>(argv.size() - 1), argv.data(), env);
      ds4::fuzz::check(cli.n_predict >= 0 && cli.threads >= 0 && cli.ctx >= 1 &&
                           cli.temperature >= 0.0f,
                       "parsed values are in their documented ranges");
      (void)cli.gates.to_string();
    });
  }

  // A ds4-parity subcommand parser with every option kind.
  std::string s, model;
  int64_t width = 0, threads = 0;
  double tol = 0;
  bool flag = false;
  std::vector<std::string> pos;
  ds4::ArgParser p("fuzz");
  p.option("-m", &model, "model")
      .option("--mode", &s, "mode")
      .option("--width", &width, "width", 0, 1 << 20)
      .option("--threads", &threads, "threads", 0, 4096)
      .option("--tol", &tol, "tolerance")
      .flag("--strict", &flag, "strict")
      .positionals(&pos, "A.h5 B.h5", 0, 2);
  ds4::fuzz::guarded([&] {
    if (p.parse(words)) {
      ds4::fuzz::check(width >= 0 && width <= (1 << 20) && threads >= 0 && threads <= 4096,
                       "ArgParser integers are in range");
      ds4::fuzz::check(pos.size() <= 2, "positional count is bounded");
    }
  });
  (void)p.usage();
  for (const std::string& w : words) {
    ds4::fuzz::guarded([&] { ds4::profile_from_name(w); });
    ds4::fuzz::guarded([&] { ds4::run_mode_from_name(w); });
    ds4::fuzz::guarded([&] { ds4::parse_int_flag("--n", w, -5, 5); });
    ds4::fuzz::guarded([&] { ds4::parse_float_flag("--x", w, 0.0, 1.0); });
  }
  return 0;
}
