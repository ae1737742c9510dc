// `ds4`: run a deepseek4 GGUF (or the built-in synthetic model) and print the generated text.
#include <chrono>
#include <cstdio>
#include <string>

#include "ds4/config.h"
#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/tokenizer.h"

namespace {

std::string printable(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\n' || c == '\t' || c >= 0x20) out += static_cast<char>(c);
    else out += '?';
  }
  return out;
}

int run(int argc, char** argv) {
  const ds4::EnvSettings env = ds4::read_environment();
  const ds4::Ds4Cli cli = ds4::parse_ds4_cli(argc, argv, env);
  if (cli.help) {
    std::fputs(ds4::ds4_cli_usage().c_str(), stdout);
    return 0;
  }
  if (cli.backend == "cuda") ds4::fail("--backend cuda: the CUDA forward is not implemented yet (use cpu)");
  const std::string path = cli.model.empty() ? ds4::builtin_model_path(env) : cli.model;
  auto model = ds4::Model::load(path);
  const ds4::Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> prompt;
  if (cli.raw) {
    prompt = tok.encode(cli.prompt);
    if (tok.bos() >= 0) prompt.insert(prompt.begin(), tok.bos());
  } else {
    prompt = ds4::render_chat(tok, cli.system, cli.prompt, cli.think);
  }
  if (prompt.empty()) ds4::fail("empty prompt");
  ds4::SessionOptions so;
  so.profile = cli.profile;
  so.n_threads = cli.threads;
  so.gates = cli.gates;
  so.max_ctx = std::max<int64_t>(cli.ctx, static_cast<int64_t>(prompt.size()) + cli.n_predict + 1);
  ds4::Session session(model, so);

  std::fprintf(stderr, "model: %s\n%s\nprofile: %s, gates: %s, prompt: %zu tokens\n", path.c_str(),
               model->hparams().summary().c_str(), ds4::profile_name(cli.profile), cli.gates.to_string().c_str(),
               prompt.size());
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = session.forward(prompt);
  const auto t1 = std::chrono::steady_clock::now();
  const size_t V = model->hparams().n_vocab;
  std::span<const float> last(logits.data() + (prompt.size() - 1) * V, V);
  uint64_t rng = cli.seed;
  int generated = 0;
  std::string text;
  for (int i = 0; i < cli.n_predict; ++i) {
    const int32_t next = ds4::sample_token(last, cli.temperature, rng);
    if (next == tok.eos()) break;
    const std::string piece = tok.decode({next});
    text += piece;
    std::fputs(printable(piece).c_str(), stdout);
    std::fflush(stdout);
    ++generated;
    if (i + 1 == cli.n_predict) break;
    logits = session.decode(next);
    last = std::span<const float>(logits.data(), V);
  }
  const auto t2 = std::chrono::steady_clock::now();
  std::fputc('\n', stdout);
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s)\n",
               prompt.size(), prefill_s, prompt.size() / std::max(prefill_s, 1e-9), generated, decode_s,
               generated / std::max(decode_s, 1e-9));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "ds4: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4: internal error: %s\n", e.what());
    return 3;
  }
}
