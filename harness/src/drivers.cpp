// Run drivers: plain, batched and verify (see ds4/drivers.h).
#include "ds4/drivers.h"

#include "ds4/cuda_backend.h"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/tokenizer.h"
#include <algorithm>

namespace ds4 {

const char* run_mode_name(RunMode m) {
  switch (m) {
    case RunMode::Plain: return "plain";
    case RunMode::Batched: return "batched";
    case RunMode::Verify: return "verify";
  }
  return "?";
}

RunMode run_mode_from_name(const std::string& s) {
  if (s == "plain") return RunMode::Plain;
  if (s == "batched") return RunMode::Batched;
  if (s == "verify") return RunMode::Verify;
  fail("bad value '" + s + "' for --mode (plain, batched or verify)");
}

namespace {

SessionOptions session_options(const RunSpec& spec, int64_t n_tokens) {
  SessionOptions so;
  so.backend = spec.backend;
  so.profile = spec.profile;
  so.gates = spec.gates;
  so.fault = spec.fault;
  so.n_threads = spec.threads;
  so.max_ctx = std::max<int64_t>(4096, n_tokens + spec.generate + std::max<int64_t>(spec.width, 1) + 1);
  return so;
}

void append(std::vector<float>& all, const std::vector<float>& rows) { all.insert(all.end(), rows.begin(), rows.end()); }

// Verify with MTP drafts: after the prefix, each pass drafts width tokens (the trunk's argmax,
// then MTP drafts), verifies them in one batched forward, keeps the longest agreeing prefix,
// and on a partial accept restores the snapshot and re-runs the accepted rows.
void verify_with_mtp(Session& s, const RunSpec& spec, int64_t V, TapSink* sink, RunResult& out) {
  const int64_t W = spec.width > 0 ? spec.width : 4;
  const int64_t target = static_cast<int64_t>(out.tokens.size()) + spec.generate;
  while (static_cast<int64_t>(out.tokens.size()) < target) {
    std::span<const float> last(out.logits.data() + (out.tokens.size() - 1) * V, V);
    std::vector<int32_t> drafts = {argmax(last)};
    const auto snap = s.snapshot();
    while (static_cast<int64_t>(drafts.size()) < std::min<int64_t>(W, target - out.tokens.size()))
      drafts.push_back(argmax(s.mtp_draft(drafts.back())));
    s.restore(*snap);  // mtp_draft advanced only the MTP block's cache; keep the trunk as it was
    const int64_t p0 = s.pos();
    const auto logits = s.forward(drafts);
    ++out.forwards;
    size_t accepted = 1;
    while (accepted < drafts.size() &&
           argmax(std::span<const float>(logits.data() + (accepted - 1) * V, V)) == drafts[accepted])
      ++accepted;
    out.drafts_accepted += static_cast<int64_t>(accepted) - 1;
    out.drafts_rejected += static_cast<int64_t>(drafts.size() - accepted);
    if (accepted == drafts.size()) {
      append(out.logits, logits);
    } else {
      s.restore(*snap);
      if (sink) sink->rollback(p0);
      const auto redo = s.forward(std::span<const int32_t>(drafts.data(), accepted));
      ++out.forwards;
      append(out.logits, redo);
    }
    out.tokens.insert(out.tokens.end(), drafts.begin(), drafts.begin() + accepted);
    ++out.verify_passes;
  }
}

}  // namespace

std::shared_ptr<const PrefixCache::Entry> PrefixCache::find(const Model* model, Backend backend, Profile profile,
                                                            std::span<const int32_t> prefix) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_)
    if (e->model == model && e->backend == backend && e->profile == profile &&
        std::equal(e->tokens.begin(), e->tokens.end(), prefix.begin(), prefix.end())) {
      ++hits_;
      return e;
    }
  return nullptr;
}

void PrefixCache::store(std::shared_ptr<const Entry> e) {
  const int64_t bytes = static_cast<int64_t>(e->logits.size() * sizeof(float));
  std::lock_guard<std::mutex> lock(mu_);
  if (logit_bytes_ + bytes > max_logit_bytes_) return;
  logit_bytes_ += bytes;
  entries_.push_back(std::move(e));
}

namespace {
// The tokens a verifier decodes with N=1 before its first verify pass.
int64_t verify_prefix(const RunSpec& spec) {
  return std::clamp<int64_t>(spec.prefix, 1, static_cast<int64_t>(spec.tokens.size()));
}
}  // namespace

bool prefix_unobserved(const RunSpec& spec, const TapFilter& capture) {
  const int64_t prefix = verify_prefix(spec);
  return spec.mode == RunMode::Verify && capture.pos_begin >= prefix &&
         (!spec.fault.enabled || spec.fault.pos >= prefix);
}

int64_t PrefixCache::hits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hits_;
}

RunResult run_model(const std::shared_ptr<const Model>& model, const RunSpec& spec, TapSink* sink) {
  if (spec.tokens.empty()) fail("run: no tokens to run");
  const int64_t V = model->hparams().n_vocab, T = static_cast<int64_t>(spec.tokens.size());
  Session s(model, session_options(spec, T));
  s.set_tap_sink(sink);
  RunResult out;
  out.n_vocab = V;
  const auto t0 = std::chrono::steady_clock::now();
  std::span<const int32_t> toks(spec.tokens);
  switch (spec.mode) {
    case RunMode::Plain:
      for (int64_t t = 0; t < T; ++t) {
        append(out.logits, s.decode(toks[t]));
        ++out.forwards;
      }
      out.tokens = spec.tokens;
      break;
    case RunMode::Batched: {
      const int64_t W = spec.width > 0 ? spec.width : T;
      for (int64_t t = 0; t < T; t += W) {
        append(out.logits, s.forward(toks.subspan(t, std::min(W, T - t))));
        ++out.forwards;
      }
      out.tokens = spec.tokens;
      break;
    }
    case RunMode::Verify: {
      const int64_t W = spec.width > 0 ? spec.width : 4;
      const int64_t prefix = verify_prefix(spec);
      const auto head = toks.first(static_cast<size_t>(prefix));
      PrefixCache* cache = spec.prefix_cache.get();
      if (auto kept = cache ? cache->find(model.get(), spec.backend, spec.profile, head) : nullptr) {
        s.restore(*kept->state);
        out.logits = kept->logits;
        out.prefix_restored = true;
      } else {
        for (int64_t t = 0; t < prefix; ++t) append(out.logits, s.decode(toks[t]));
        if (cache)
          cache->store(std::make_shared<const PrefixCache::Entry>(PrefixCache::Entry{
              model.get(), spec.backend, spec.profile, {head.begin(), head.end()}, s.snapshot(), out.logits}));
      }
      out.forwards += prefix;  // N=1 decodes, run now or when the kept state was made
      out.tokens.assign(spec.tokens.begin(), spec.tokens.begin() + prefix);
      if (spec.drafts == "given") {
        // Teacher-forced verification: the given tokens are the drafts and every pass is a full
        // accept, so the verifier's cache writes and last-row logits are what later rows use.
        for (int64_t t = prefix; t < T; t += W) {
          append(out.logits, s.forward(toks.subspan(t, std::min(W, T - t))));
          ++out.forwards;
        }
        out.tokens = spec.tokens;
      } else if (spec.drafts == "mtp") {
        if (!model->has_mtp()) fail("run: --drafts mtp needs a model with an MTP block (ds4-synth --mtp)");
        if (prefix != T) fail("run: --drafts mtp generates after the tokens; give --prefix equal to the token count");
        verify_with_mtp(s, spec, V, sink, out);
      } else {
        fail("bad value '" + spec.drafts + "' for --drafts (given or mtp)");
      }
      break;
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::vector<int32_t> tokens_from_prompt(const Model& model, const std::string& system, const std::string& user,
                                        bool think) {
  return render_chat(model.tokenizer(), system, user, think);
}

std::vector<int32_t> read_token_file(const std::string& path, int64_t n_vocab) {
  // hardening: a directory opens as an ifstream on Linux; reading it then threw a non-ds4
  // exception (exit 3, "internal error") or reported a nonsense size for ".i32".
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    fail(path + ": token file is not a regular file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open token file");
  std::vector<int32_t> out;
  if (path.size() > 4 && path.substr(path.size() - 4) == ".i32") {
    f.seekg(0, std::ios::end);
    const auto n = static_cast<size_t>(f.tellg());
    if (n % 4) fail(path + ": .i32 token file size " + std::to_string(n) + " is not a multiple of 4");
    f.seekg(0);
    out.resize(n / 4);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n));
  } else {
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (char& c : text)
      if (c == ',') c = ' ';
    std::istringstream in(text);
    std::string word;
    while (in >> word) {
      char* end = nullptr;
      const long long v = std::strtoll(word.c_str(), &end, 10);
      if (*end) fail(path + ": token '" + word + "' is not an integer");
      out.push_back(static_cast<int32_t>(v));
      if (v != out.back()) fail(path + ": token " + word + " out of range");
    }
  }
  if (out.empty()) fail(path + ": no tokens");
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] < 0 || out[i] >= n_vocab)
      fail(path + ": token " + std::to_string(out[i]) + " at index " + std::to_string(i) + " out of range (vocab " +
           std::to_string(n_vocab) + ")");
  return out;
}

std::vector<int32_t> teacher_forced_tokens(const std::shared_ptr<const Model>& model, Profile profile,
                                           const std::vector<int32_t>& prompt, int64_t n, Backend backend) {
  if (n <= 0) return prompt;
  RunSpec spec;
  spec.profile = profile;
  spec.backend = backend;
  Session s(model, session_options(spec, static_cast<int64_t>(prompt.size()) + n));
  std::vector<int32_t> out = prompt;
  const int64_t V = model->hparams().n_vocab;
  std::vector<float> logits;
  for (int32_t t : prompt) logits = s.decode(t);
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(argmax(std::span<const float>(logits.data(), V)));
    if (i + 1 < n) logits = s.decode(out.back());
  }
  return out;
}

RunManifest make_manifest(const Model& model, const RunSpec& spec, const std::string& command_line) {
  RunManifest m;
  m.engine_version = engine_version();
  m.engine_git_sha = engine_git_sha();
  m.model_path = model.path();
  m.model_sha256 = sha256_file(model.path());
  m.model_name = model.file().get_str_or("general.name", "");
  m.backend = backend_name(spec.backend);
  m.device_name = spec.backend == Backend::Cuda
                      ? cuda_device_info().name
                      : "cpu (" + std::to_string(spec.threads > 0 ? spec.threads : std::max(1u, std::thread::hardware_concurrency())) + " threads)";
  m.profile = profile_name(spec.profile);
  m.gate_set = spec.mode == RunMode::Plain ? "n/a (N=1 decode)" : spec.gates.to_string();
  m.run_mode = run_mode_name(spec.mode);
  m.width = spec.mode == RunMode::Plain ? 1 : spec.width;
  m.tokens = spec.tokens;
  m.command_line = command_line;
  m.extra["fault"] = spec.fault.to_string();
  if (spec.mode == RunMode::Verify) {
    m.extra["verify_prefix"] = std::to_string(spec.prefix);
    m.extra["drafts"] = spec.drafts;
  }
  return m;
}

}  // namespace ds4
