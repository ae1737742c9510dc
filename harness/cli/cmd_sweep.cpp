// `ds4-parity sweep`: verify width 1..K and prefill-length bands (ds4/sweep.h).
#include <cstdio>

#include "commands.h"
#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/error.h"
#include "ds4/sweep.h"

namespace ds4 {

int cmd_sweep(const std::vector<std::string>& args) {
  std::string model_path, mtp_path, prompt = "Hello! Who are you?", token_file, profile = "ds4", gates = "all=fast", lengths,
                          json_out;
  int64_t generate = 64, max_width = 16, prefix = 0, threads = 0;
  bool strict = false, quiet = false;
  TapFilterFlags capture;
  ArgParser p("sweep");
  p.option("-m", &model_path, "model GGUF (default: the built-in tiny model)")
      .option("--mtp", &mtp_path, "MTP sidecar GGUF (deepseek4_mtp_support) paired with -m")
      .option("--prompt", &prompt, "user prompt")
      .option("--tokens", &token_file, "token file instead of a prompt")
      .option("--generate", &generate, "teacher-forced greedy tokens appended", 0, 1 << 20)
      .option("--profile", &profile, "numerics profile: ds4 or plain")
      .option("--gates", &gates, "candidate gate settings (default all=fast)")
      .flag("--strict", &strict, "every gate exact (must be bit-equal at every width)")
      .option("--max-width", &max_width, "K: verify widths 1..K (0: none)", 0, 4096)
      .option("--prefix", &prefix, "verify: tokens decoded with N=1 first (default: the prompt)", 0, 1 << 24)
      .option("--lengths", &lengths, "prefill lengths: 1,8,64 | 1-64 | pow2 (default: none)");
  capture.add_to(p, "compare");
  p.option("--threads", &threads, "CPU threads (0 = all)", 0, 4096)
      .flag("--quiet", &quiet, "no progress bar")
      .option("--json", &json_out, "write the result as JSON");
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  const EnvSettings env = read_environment();
  SweepConfig cfg;
  cfg.model_path = model_path.empty() ? builtin_model_path(env) : model_path;
  cfg.profile = profile_from_name(profile);
  cfg.gates = strict ? GateSet::all_exact() : GateSet::parse(gates);
  if (!mtp_path.empty() && model_path.empty()) fail("bad flag: --mtp needs -m (the built-in tiny model takes no MTP sidecar)");
  cfg.mtp_path = mtp_path;
  auto model = Model::load(cfg.model_path, cfg.mtp_path);
  PromptInput in;
  in.name = "sweep";
  in.text = prompt;
  in.token_file = token_file;
  const std::vector<int32_t> base = prompt_tokens(model, in, cfg.profile, 0);
  cfg.tokens = generate > 0 ? teacher_forced_tokens(model, cfg.profile, base, generate) : base;
  cfg.prefix = prefix > 0 ? prefix : static_cast<int64_t>(base.size());
  cfg.max_width = max_width;
  if (!lengths.empty()) cfg.lengths = parse_lengths(lengths, static_cast<int64_t>(cfg.tokens.size()));
  cfg.threads = static_cast<int>(threads ? threads : env.threads);
  cfg.capture = capture.filter();
  cfg.progress = quiet ? nullptr : stderr;
  const SweepResult r = sweep(cfg);
  std::fputs(sweep_result_text(r).c_str(), stdout);
  if (!json_out.empty()) {
    write_file_atomic(json_out, json_indented(sweep_result_json(r)));
    std::printf("result: %s\n", json_out.c_str());
  }
  return 0;
}

}  // namespace ds4
