// Run drivers (ARCHITECTURE.md §6): the same token sequence through plain N=1 decode, batched
// forwards of width W, or a speculative verifier (N=1 prefix, then batched verify passes with
// rollback of rejected rows), with every tap going to a sink (usually a DumpWriter).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "ds4/dump.h"
#include "ds4/engine.h"

namespace ds4 {

enum class RunMode { Plain, Batched, Verify };
const char* run_mode_name(RunMode m);
RunMode run_mode_from_name(const std::string& s);  // throws naming the value

// The state after a verifier's N=1 prefix, kept for the next run that decodes the same prefix
// on the same model, backend and profile (an ablation's cells, a bisection's reruns): N=1 decode
// takes no gate, so each of them would reach these bits again; restoring them skips the prefix's
// decodes (2,100 of 2,612 tokens in the long-context proof). Restored runs emit no tap and no
// fault at the prefix positions: give it only to runs whose sink captures none of them
// (TapFilter::pos_begin >= prefix) and whose fault, if any, lies after the prefix.
class PrefixCache {
 public:
  explicit PrefixCache(int64_t max_logit_bytes = int64_t{4} << 30) : max_logit_bytes_(max_logit_bytes) {}
  struct Entry {
    const Model* model = nullptr;
    Backend backend = Backend::Cpu;
    Profile profile = Profile::Ds4;
    std::vector<int32_t> tokens;                // the prefix
    std::shared_ptr<const SessionState> state;  // after its last decode
    std::vector<float> logits;                  // prefix x n_vocab, as the decodes returned them
  };
  // The entry for this prefix, or null.
  std::shared_ptr<const Entry> find(const Model* model, Backend backend, Profile profile,
                                    std::span<const int32_t> prefix) const;
  // Keeps `e` unless the kept logits would pass the byte cap (then the runs decode as before).
  void store(std::shared_ptr<const Entry> e);
  int64_t hits() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<const Entry>> entries_;
  int64_t max_logit_bytes_, logit_bytes_ = 0;
  mutable int64_t hits_ = 0;
};

struct RunSpec;
// Whether a verifier run of `spec` may take its prefix from a PrefixCache: it is a verifier, no
// position `capture` keeps lies in its prefix (as run_model counts it: at least one token), and
// its planted fault, if any, lies after the prefix.
bool prefix_unobserved(const RunSpec& spec, const TapFilter& capture);

struct RunSpec {
  Backend backend = Backend::Cpu;  // cuda: the Session runs on the GPU (manifest: backend, device)
  Profile profile = Profile::Ds4;
  GateSet gates;                 // batched and verify passes use these; plain decode takes no gate
  FaultInjection fault;
  int threads = 0;
  RunMode mode = RunMode::Plain;
  int64_t width = 0;             // batched: tokens per forward (0 = all); verify: rows per pass (default 4)
  int64_t prefix = 0;            // verify: tokens decoded with N=1 before the first verify pass
  std::string drafts = "given";  // verify: "given" (teacher forcing, every pass fully accepted) or "mtp"
  int64_t generate = 0;          // verify with mtp drafts: tokens to generate after the tokens
  std::vector<int32_t> tokens;
  std::shared_ptr<PrefixCache> prefix_cache;  // verify: reuse an earlier run's prefix (see above)
};

struct RunResult {
  std::vector<int32_t> tokens;   // the sequence consumed (given drafts: the input tokens)
  std::vector<float> logits;     // tokens.size() x n_vocab, row t = logits after token t
  int64_t n_vocab = 0;
  int64_t forwards = 0;          // forward()/decode() calls
  int64_t drafts_accepted = 0, drafts_rejected = 0;
  int64_t verify_passes = 0;     // verify with mtp drafts: batched verify passes
  double seconds = 0;
  bool prefix_restored = false;  // verify: the prefix came from RunSpec::prefix_cache
};

// Runs `spec` on `model`; taps go to `sink` (may be null).
RunResult run_model(const std::shared_ptr<const Model>& model, const RunSpec& spec, TapSink* sink);

// Token sources.
std::vector<int32_t> tokens_from_prompt(const Model& model, const std::string& system, const std::string& user,
                                        bool think);
// A token file: raw little-endian int32 (".i32") or text (integers separated by spaces, commas
// or newlines). Throws "<path>: ..." naming the bad token or line.
std::vector<int32_t> read_token_file(const std::string& path, int64_t n_vocab);
// prompt + n greedy tokens from an exact plain decode on `backend` (teacher forcing: positions
// stay aligned across runs even where a candidate's argmax would flip).
std::vector<int32_t> teacher_forced_tokens(const std::shared_ptr<const Model>& model, Profile profile,
                                           const std::vector<int32_t>& prompt, int64_t n,
                                           Backend backend = Backend::Cpu);

// The manifest of a run of `spec` on `model` (model hash, gates, profile, mode, width, tokens).
RunManifest make_manifest(const Model& model, const RunSpec& spec, const std::string& command_line);

}  // namespace ds4
