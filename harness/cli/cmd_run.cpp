// `ds4-parity run`: one run (plain / batched / verify) with its taps dumped to HDF5.
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/drivers.h"
#include "ds4/error.h"

namespace ds4 {

int cmd_run(const std::vector<std::string>& args) {
  std::string model_path, mtp_path, prompt = "Hello", system = "You are a helpful assistant", token_file, mode = "plain",
                          profile = "ds4", gates, fault, taps = "full", out,
                          drafts = "given", backend = "cpu";
  int64_t width = 0, prefix = 0, generate = 0, threads = 0;
  bool nothink = false, strict = false;
  TapFilterFlags tap_filter;
  ArgParser p("run");
  p.option("-m", &model_path, "model GGUF (default: the built-in tiny model)")
      .option("--mtp", &mtp_path, "MTP sidecar GGUF (deepseek4_mtp_support) paired with -m")
      .option("--prompt", &prompt, "user prompt, rendered with the chat template")
      .option("--system", &system, "system text for the chat template")
      .flag("--nothink", &nothink, "open the assistant turn with </think>")
      .option("--tokens", &token_file, "token file (.i32 binary or text) instead of a prompt")
      .option("--generate", &generate, "teacher forcing: append N greedy tokens of a plain run on the backend", 0, 1 << 20)
      .option("--mode", &mode, "plain | batched | verify")
      .option("--width", &width, "batched: tokens per forward (0 = all); verify: rows per pass", 0, 1 << 20)
      .option("--prefix", &prefix, "verify: tokens decoded with N=1 first", 0, 1 << 24)
      .option("--drafts", &drafts, "verify: given (teacher forcing) or mtp")
      .option("--backend", &backend, "cpu (reference) or cuda")
      .option("--profile", &profile, "numerics profile: ds4 or plain")
      .option("--gates", &gates, "gate settings, e.g. all=fast,q8_gemm=exact")
      .flag("--strict", &strict, "every gate exact")
      .option("--fault", &fault, "negative control: one ULP at layer:tap:pos[:element]")
      .option("--taps", &taps, "tap level: off | stats | full");
  tap_filter.add_to(p, "dump");
  p.option("--threads", &threads, "CPU threads (0 = all)", 0, 4096)
      .option("-o", &out, "output dump (.h5); written atomically");
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  const EnvSettings env = read_environment();
  if (out.empty()) fail("bad flag: -o OUT.h5 is required");
  RunSpec spec;
  spec.mode = run_mode_from_name(mode);
  spec.backend = backend_from_name(backend);
  spec.profile = profile_from_name(profile);
  spec.gates = resolve_gates(env, strict, gates);
  if (!fault.empty()) spec.fault = FaultInjection::parse(fault);
  spec.threads = static_cast<int>(threads ? threads : env.threads);
  spec.width = width;
  spec.prefix = prefix;
  spec.drafts = drafts;
  const TapLevel level = tap_level_from_name(taps);
  const TapFilter filter = tap_filter.filter();

  const std::string path = model_path.empty() ? builtin_model_path(env) : model_path;
  if (!mtp_path.empty() && model_path.empty()) fail("bad flag: --mtp needs -m (the built-in tiny model takes no MTP sidecar)");
  std::shared_ptr<const Model> model = Model::load(path, mtp_path);
  std::vector<int32_t> tokens = token_file.empty() ? tokens_from_prompt(*model, system, prompt, !nothink)
                                                   : read_token_file(token_file, model->hparams().n_vocab);
  if (spec.mode == RunMode::Verify && drafts == "mtp") {
    spec.generate = generate;  // mtp drafts generate after the tokens
    if (spec.prefix == 0) spec.prefix = static_cast<int64_t>(tokens.size());
  } else {
    tokens = teacher_forced_tokens(model, spec.profile, tokens, generate, spec.backend);
  }
  if (spec.mode == RunMode::Verify && spec.prefix == 0) spec.prefix = 1;
  spec.tokens = tokens;

  std::string cmdline = "ds4-parity run";
  for (const std::string& a : args) cmdline += " " + a;
  DumpWriter writer(out, make_manifest(*model, spec, cmdline), level, filter);
  const RunResult r = run_model(model, spec, level == TapLevel::Off ? nullptr : &writer);
  writer.set_tokens(r.tokens);  // with MTP drafts: the prefix and the tokens it generated
  writer.finish();
  const auto bytes = std::filesystem::file_size(out);
  std::printf("%s: %s run of %zu tokens (%lld forwards, %.3f s, %s, gates %s) -> %s (%.1f KiB, %zu rows)\n",
              path.c_str(), run_mode_name(spec.mode), r.tokens.size(), static_cast<long long>(r.forwards), r.seconds,
              profile_name(spec.profile), spec.mode == RunMode::Plain ? "n/a" : spec.gates.to_string().c_str(),
              out.c_str(), bytes / 1024.0, writer.rows());
  if (spec.drafts == "mtp") {
    const int64_t offered = r.drafts_accepted + r.drafts_rejected;
    std::printf("drafts: %lld accepted, %lld rejected (acceptance %.1f%%), %.1f tokens per verify pass\n",
                static_cast<long long>(r.drafts_accepted), static_cast<long long>(r.drafts_rejected),
                offered > 0 ? 100.0 * static_cast<double>(r.drafts_accepted) / static_cast<double>(offered) : 0.0,
                r.verify_passes > 0 ? static_cast<double>(r.tokens.size() - spec.prefix) / static_cast<double>(r.verify_passes)
                                    : 0.0);
  }
  return 0;
}

}  // namespace ds4
