// `ds4-parity bisect`: first divergence, its variant and gate, local vs propagated (ds4/bisect.h).
#include <cstdio>

#include "commands.h"
#include "ds4/bisect.h"
#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/error.h"

namespace ds4 {

int cmd_bisect(const std::vector<std::string>& args) {
  std::string model_path, mtp_path, prompt = "Hello! Who are you?", token_file, mode = "batched", profile = "ds4",
                          cand = "all=fast", ref = "plain", fault, json_out, backend = "cpu";
  int64_t generate = 64, width = 0, prefix = 0, threads = 0;
  bool minimize_gates = false, no_confirm = false, quiet = false;
  TapFilterFlags capture;
  std::vector<std::string> dumps;
  ArgParser p("bisect");
  p.option("-m", &model_path, "model GGUF for in-process runs (default: the built-in tiny model)")
      .option("--mtp", &mtp_path, "MTP sidecar GGUF (deepseek4_mtp_support) paired with -m")
      .option("--prompt", &prompt, "user prompt (in-process runs)")
      .option("--tokens", &token_file, "token file instead of a prompt")
      .option("--generate", &generate, "teacher-forced greedy tokens appended", 0, 1 << 20)
      .option("--mode", &mode, "candidate run: batched, verify or plain")
      .option("--width", &width, "batched: tokens per forward (0 = all); verify: rows per pass", 0, 1 << 20)
      .option("--prefix", &prefix, "verify: tokens decoded with N=1 first", 0, 1 << 24)
      .option("--backend", &backend, "in-process runs: cpu or cuda (reference and candidate on it)")
      .option("--profile", &profile, "numerics profile: ds4 or plain")
      .option("--cand", &cand, "candidate gate settings (default all=fast)")
      .option("--ref", &ref, "reference: plain (N=1 decode, default) or gate settings of a batched run")
      .option("--fault", &fault, "plant a one-ULP fault in the candidate: layer:tap:pos[:element]");
  capture.add_to(p, "in-process runs: compare");
  // Elsewhere --gates takes gate settings; bisect's candidate settings are --cand.
  p.flag("--minimize-gates", &minimize_gates, "delta debugging over gates: the minimal failing set")
      .retired("--gates", "is not a bisect flag: --minimize-gates for the minimal failing gate set, "
                          "--cand SPEC for the candidate's gate settings")
      .flag("--no-confirm", &no_confirm, "skip the confirmation reruns")
      .option("--threads", &threads, "CPU threads (0 = all)", 0, 4096)
      .flag("--quiet", &quiet, "no rerun log on stderr")
      .option("--json", &json_out, "write the result as JSON")
      .positionals(&dumps, "A.h5 B.h5 (reference and candidate dumps; or none for in-process runs)", 0, 2);
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  if (dumps.size() == 1) fail("bad flag: bisect takes two dumps (A.h5 B.h5) or none");
  const EnvSettings env = read_environment();
  BisectConfig cfg;
  cfg.confirm = !no_confirm;
  cfg.minimize_gates = minimize_gates;
  cfg.threads = static_cast<int>(threads ? threads : env.threads);
  cfg.log = quiet ? nullptr : stderr;
  if (dumps.size() == 2) {
    if (capture.given())
      fail("bad flag: --tap-layers/--tap-names/--positions apply to in-process runs (dumps keep their own filter)");
    cfg.dump_a = dumps[0];
    cfg.dump_b = dumps[1];
  } else {
    cfg.model_path = model_path.empty() ? builtin_model_path(env) : model_path;
    if (!mtp_path.empty() && model_path.empty()) fail("bad flag: --mtp needs -m (the built-in tiny model takes no MTP sidecar)");
    cfg.mtp_path = mtp_path;
    auto model = Model::load(cfg.model_path, cfg.mtp_path);
    PromptInput in;
    in.name = "bisect";
    in.text = prompt;
    in.token_file = token_file;
    cfg.cand.backend = backend_from_name(backend);
    cfg.cand.profile = profile_from_name(profile);
    cfg.tokens = prompt_tokens(model, in, cfg.cand.profile, generate);
    cfg.cand.mode = run_mode_from_name(mode);
    cfg.cand.width = width;
    cfg.cand.prefix = cfg.cand.mode == RunMode::Verify && prefix == 0 ? 1 : prefix;
    cfg.cand.gates = GateSet::parse(cand);
    if (!fault.empty()) cfg.cand.fault = FaultInjection::parse(fault);
    cfg.capture = capture.filter();
    cfg.ref_plain = ref == "plain";
    if (!cfg.ref_plain) cfg.ref_gates = GateSet::parse(ref);
  }
  const BisectResult r = bisect(cfg);
  std::fputs(bisect_result_text(r).c_str(), stdout);
  if (!json_out.empty()) {
    write_file_atomic(json_out, json_indented(bisect_result_json(r)));
    std::printf("result: %s\n", json_out.c_str());
  }
  return r.bit_equal ? 0 : 1;
}

}  // namespace ds4
