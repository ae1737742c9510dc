// `ds4-parity ablate`: the gate ablation matrix (ds4/ablate.h), resumable and shardable.
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "commands.h"
#include "ds4/ablate.h"
#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int cmd_ablate(const std::vector<std::string>& args) {
  std::string model_path, mtp_path, prompts_file, token_files, profile = "ds4", mode = "batched", gates, state = "ablate-state",
                                                     shard, json_out, rank_by = "severity", backend = "cpu";
  int64_t generate = 64, width = 0, prefix = 0, threads = 0;
  bool merge = false, no_minimal = false, verify_minimal = false, quiet = false;
  TapFilterFlags capture;
  std::vector<std::string> dirs;
  ArgParser p("ablate");
  p.option("-m", &model_path, "model GGUF (default: the built-in tiny model)")
      .option("--mtp", &mtp_path, "MTP sidecar GGUF (deepseek4_mtp_support) paired with -m")
      .option("--prompts", &prompts_file, "prompt file: one user prompt per line, '@file' for a token file")
      .option("--tokens", &token_files, "token files (comma separated) instead of prompts")
      .option("--generate", &generate, "teacher-forced greedy tokens appended to each prompt", 0, 1 << 20)
      .option("--profile", &profile, "numerics profile: ds4 or plain")
      .option("--mode", &mode, "candidate run: batched or verify")
      .option("--width", &width, "batched: tokens per forward (0 = all); verify: rows per pass", 0, 1 << 20)
      .option("--prefix", &prefix, "verify: tokens decoded with N=1 first (0 = the prompt)", 0, 1 << 24)
      .option("--backend", &backend, "cpu or cuda: where every run goes; its gates form the axes")
      .option("--only", &gates, "gate axes, comma separated (default: every gate of the backend)");
  capture.add_to(p, "compare");
  p.option("--threads", &threads, "CPU threads (0 = all)", 0, 4096)
      .option("--state", &state, "state folder (plan, cached references, one file per finished cell)")
      .option("--shard", &shard, "i/n: run cells i, i+n, ... only (0-based), then --merge the folders")
      .flag("--merge", &merge, "join the state folders given as arguments and rank")
      .option("--rank-by", &rank_by, "severity (default), first, max-abs, ulp, kld or flips")
      .flag("--no-minimal", &no_minimal, "skip the minimal exact set (its verification runs)")
      .flag("--verify-minimal", &verify_minimal, "also run the minimal set less each gate (1-minimality)")
      .flag("--quiet", &quiet, "no progress bar")
      .option("--json", &json_out, "write the result as JSON (the input of ds4-parity report)")
      .positionals(&dirs, "state folders (with --merge)");
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  const EnvSettings env = read_environment();
  AblateConfig cfg;
  cfg.model_path = model_path.empty() ? builtin_model_path(env) : model_path;
  if (!mtp_path.empty() && model_path.empty()) fail("bad flag: --mtp needs -m (the built-in tiny model takes no MTP sidecar)");
  cfg.mtp_path = mtp_path;
  if (!prompts_file.empty()) cfg.prompts = read_prompt_file(prompts_file);
  for (const std::string& f : split_list(token_files)) {
    PromptInput in;
    in.name = "t" + std::to_string(cfg.prompts.size());
    in.token_file = f;
    cfg.prompts.push_back(in);
  }
  cfg.generate = generate;
  cfg.profile = profile_from_name(profile);
  cfg.mode = run_mode_from_name(mode);
  if (cfg.mode == RunMode::Plain) fail("bad flag: --mode must be batched or verify (plain is the reference)");
  cfg.width = width;
  cfg.prefix = prefix;
  cfg.backend = backend;
  cfg.gates = split_list(gates);
  cfg.capture = capture.filter();
  cfg.threads = static_cast<int>(threads ? threads : env.threads);
  cfg.state_dir = state;
  if (rank_by != "severity" && rank_by != "first" && rank_by != "max-abs" && rank_by != "ulp" && rank_by != "kld" &&
      rank_by != "flips")
    fail("bad flag: --rank-by '" + rank_by + "' (severity, first, max-abs, ulp, kld or flips)");
  cfg.rank_by = rank_by;
  cfg.minimal = !no_minimal;
  cfg.verify_minimal = verify_minimal;
  cfg.progress = quiet ? nullptr : stderr;
  cfg.command_line = "ds4-parity ablate";
  for (const std::string& a : args) cfg.command_line += " " + a;
  if (!shard.empty()) {
    const size_t slash = shard.find('/');
    if (slash == std::string::npos) fail("bad flag: --shard expects i/n, e.g. 0/4");
    cfg.shard_index = static_cast<int>(parse_int_flag("--shard", shard.substr(0, slash), 0, 1 << 20));
    cfg.shard_count = static_cast<int>(parse_int_flag("--shard", shard.substr(slash + 1), 1, 1 << 20));
    if (cfg.shard_index >= cfg.shard_count) fail("bad flag: --shard " + shard + ": i must be below n");
  }
  if (merge && dirs.empty()) fail("bad flag: --merge needs the state folders as arguments");
  if (!merge && !dirs.empty()) fail("bad flag: unexpected argument '" + dirs[0] + "' (folders go with --merge)");

  const AblateResult r = merge ? merge_ablation(dirs, cfg) : run_ablation(cfg);
  std::fputs(ablate_result_text(r).c_str(), stdout);
  if (!json_out.empty()) {
    write_file_atomic(json_out, json_indented(ablate_result_json(r)));
    std::printf("result: %s\n", json_out.c_str());
  }
  if (r.complete && !r.strict_bit_equal) {
    std::fprintf(stderr, "ds4-parity ablate: the strict cell (every gate exact) is not bit-equal to plain decode\n");
    return 1;
  }
  return 0;
}

}  // namespace ds4
