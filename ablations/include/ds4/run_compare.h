// In-process comparison of a candidate run against a reference held in memory: the engine of the
// ablation matrix, the width sweep and model-mode bisection. A cell of the matrix is one batched
// run per prompt; instead of writing a dump and diffing two files, its taps go straight into a
// CompareSink that compares every row with the reference's row at the same (layer, tap,
// position) as it arrives. The metrics are those of ds4/metrics.h (metrics.md); two dumps on
// disk are compared with ds4/diff.h instead.
//
//   Reference     every row of a plain (or any) run: loaded from a full-level dump (the matrix's
//                 cached plain reference) or recorded in memory by a ReferenceRecorder.
//   CompareSink   a TapSink; finish() gives the RunDivergence.
//   RunDivergence bit equality, first divergence (bit and thresholded, §14 dataflow order) with
//                 provenance, per-tap summaries, logits metrics (KLD, argmax flips tie vs
//                 structural, max-abs, ULP), a layer x position max-abs heatmap and per-position
//                 curves for the report, and every variant the candidate ran.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "ds4/ablate_util.h"
#include "ds4/dump.h"
#include "ds4/engine.h"
#include "ds4/metrics.h"

namespace ds4 {

class Reference {
 public:
  // Loads every row of a dump written at level full (throws naming the path otherwise).
  static std::shared_ptr<const Reference> load(const std::string& dump_path);

  const RunManifest& manifest() const { return manifest_; }
  const std::vector<int32_t>& tokens() const { return manifest_.tokens; }
  const std::vector<TapKey>& taps() const { return taps_; }  // dataflow order
  int tap_index(int layer, const std::string& name) const;   // -1 if absent
  // The row at `pos` (nullptr when absent); n receives its length.
  const float* row(int tap, int64_t pos, size_t* n) const;
  const std::string& variant(int tap, int64_t pos) const;
  int64_t n_positions() const { return static_cast<int64_t>(manifest_.tokens.size()); }
  // A tap filter was used when the reference was captured: candidate taps outside it are not
  // compared (they have nothing to compare with), rather than counted as extra rows.
  bool captured(int layer, const std::string& name, int64_t pos) const;

 private:
  friend class ReferenceRecorder;
  struct RowRef {
    uint64_t offset = 0;
    uint32_t length = 0;
    int32_t variant = -1;  // -1: absent
  };
  int add_tap(int layer, const std::string& name);
  void put(int tap, int64_t pos, const float* data, size_t n, const std::string& variant);

  RunManifest manifest_;
  TapFilter filter_;
  std::vector<TapKey> taps_;
  std::vector<std::vector<RowRef>> rows_;  // [tap][pos]
  std::vector<float> data_;
  std::vector<std::string> variants_;
};

// Records a run into a Reference (in memory; no dump). Rows produced twice (a verifier's
// rollback) keep the last version. `capture` keeps only the taps it matches (a long context's
// reference would not fit in memory otherwise); candidates are then compared on those alone.
class ReferenceRecorder : public TapSink {
 public:
  explicit ReferenceRecorder(RunManifest manifest, TapFilter capture = {});
  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
           const char* variant) override;
  std::shared_ptr<const Reference> finish();

 private:
  std::mutex mu_;
  std::shared_ptr<Reference> ref_;
  std::vector<std::string> names_seen_;
};

struct CompareRunOptions {
  double tau = 1e-3;                // §13 near-tie margin (logits)
  double max_abs_threshold = 1e-3;  // §14 thresholded first divergence: max_abs > this
  int topk = 5;                     // §12
  // Positions compared: [pos_begin, pos_end) intersected with what the candidate produced
  // (a prefill of the first L tokens compares positions < L only).
  int64_t pos_begin = 0, pos_end = INT64_MAX;
};

struct TapSummary {
  int layer = 0;
  std::string name;
  int64_t rows = 0, rows_bitdiff = 0, rows_unmatched = 0;
  double max_abs = 0, nmse = 0;
  uint64_t max_ulp = 0;
  int64_t first_pos = kNoDivergence;
  bool bit_equal() const { return rows_bitdiff == 0 && rows_unmatched == 0; }
};

struct LogitsSummary {
  int64_t positions = 0;
  double max_abs = 0;
  uint64_t max_ulp = 0;
  double kld_mean = 0, kld_max = 0, kld_p99 = 0, dp_rms = 0;
  int64_t argmax_same = 0, tie_flips = 0, structural_flips = 0;
  int64_t first_flip = kNoDivergence;
  int64_t flips() const { return tie_flips + structural_flips; }
};

struct RunDivergence {
  int64_t pos_begin = 0, pos_end = 0;  // positions compared
  int64_t rows_compared = 0, rows_bitdiff = 0, rows_unmatched = 0;
  uint64_t max_ulp = 0;  // over every tap (kUlpInfinite on a NaN mismatch)
  std::array<uint64_t, kUlpBuckets> ulp_hist{};
  DivPoint first_bit, first_thresh;
  std::vector<TapSummary> taps;  // reference dataflow order, then candidate-only taps
  LogitsSummary logits;
  // Heatmap: heat[i][t - pos_begin] = max-abs over the taps of layer heat_layers[i] at position t
  // (0: bit-equal; a bit difference of magnitude 0 (-0 vs +0) is stored as the smallest
  // subnormal so it still shows; +inf: a row present on one side only).
  std::vector<int> heat_layers;
  std::vector<std::vector<double>> heat;
  // Per position (index t - pos_begin): logits max-abs, KLD, the reference's top-2 margin, and
  // the number of taps not bit-equal.
  std::vector<double> curve_logits_max_abs, curve_kld, curve_margin;
  std::vector<int64_t> curve_div_taps;
  std::vector<std::string> variants;  // every provenance the candidate recorded, sorted
  double seconds = 0;                 // candidate run time

  bool bit_equal() const { return rows_bitdiff == 0 && rows_unmatched == 0; }
};

Json run_divergence_json(const RunDivergence& d, bool with_maps = true);
RunDivergence run_divergence_from_json(const Json& j);

class CompareSink : public TapSink {
 public:
  CompareSink(std::shared_ptr<const Reference> ref, CompareRunOptions opt = {});
  ~CompareSink() override;
  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n,
           const char* variant) override;
  void rollback(int64_t pos) override;
  RunDivergence finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4
