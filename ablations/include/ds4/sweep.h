// Width sweep (`ds4-parity sweep`, ARCHITECTURE.md §8): where do the dispatch thresholds lie?
//
//   widths   a speculative verifier over the same teacher-forced tokens with W = 1..K rows per
//            verify pass (N=1 decode of the prefix first); W = 1 runs decode itself
//   lengths  a batched prefill of the first L tokens in one forward, for each L of a list of
//            prompt-length bands
// Every point is compared with one plain (N=1 decode) reference of the whole sequence (a prefill
// of L tokens is compared on positions < L; decode is causal, so those rows are the plain run of
// the first L tokens). A change is reported wherever, between consecutive points, bit-equality
// flips, the first divergent position (the fork) moves, or the first divergent (layer, tap) -
// that is, the kernel that breaks first - changes.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ds4/ablate_util.h"
#include "ds4/drivers.h"
#include "ds4/run_compare.h"

namespace ds4 {

struct SweepConfig {
  std::string model_path;
  std::string mtp_path;  // MTP sidecar paired with the model ("" none)
  std::vector<int32_t> tokens;
  Profile profile = Profile::Ds4;
  GateSet gates;                  // candidate gate settings (default all fast)
  int64_t prefix = 1;             // verify: tokens decoded with N=1 before the first pass
  int64_t max_width = 16;         // K; 0: no width sweep
  std::vector<int64_t> lengths;   // prefill lengths; empty: no length sweep
  TapFilter capture;              // the taps compared (default all; see ablate.h)
  int threads = 0;
  CompareRunOptions compare;
  std::FILE* progress = stderr;
};

struct SweepPoint {
  std::string axis;  // "width" | "length"
  int64_t value = 0;
  bool bit_equal = false;
  DivPoint first;
  int64_t token_fork = kNoDivergence;  // first argmax flip
  double logits_max_abs = 0, kld_mean = 0;
  int64_t flips = 0;
  double seconds = 0;
};

struct SweepChange {
  std::string axis;
  int64_t from = 0, to = 0;
  std::string what;
};

struct SweepResult {
  std::string model, gates, profile;
  int64_t n_tokens = 0, prefix = 0;
  std::vector<SweepPoint> widths, lengths;
  std::vector<SweepChange> changes;
};

// "1,2,4,8", "1-64" (every length), "pow2" (1, 2, 4, ... and n); values are clamped to [1, n].
std::vector<int64_t> parse_lengths(const std::string& spec, int64_t n);
SweepResult sweep(const SweepConfig& cfg);
Json sweep_result_json(const SweepResult& r);
std::string sweep_result_text(const SweepResult& r);

}  // namespace ds4
