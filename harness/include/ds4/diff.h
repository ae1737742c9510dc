// Differential comparison of two tap dumps: `ds4-parity diff A.h5 B.h5`, and the library function
// the ablation and bisection code reuses. A is the reference (plain N=1 run, or the bit-equal
// configuration), B the candidate. Every metric is defined in metrics.md (see ds4/metrics.h).
//
// diff_dumps():
//   - refuses incompatible manifests (different model_sha256, tokens or schema_version) with a
//     one-line ds4::Error, and a filter that selects nothing;
//   - walks the taps of A in dataflow order (then taps only B has), one tap at a time: B's rows
//     of the tap are buffered in windows of at most DiffOptions::window_bytes and A's rows are
//     streamed past them (DumpReader::for_each_row), so memory stays bounded by one window plus
//     one read block whatever the dump size;
//   - per tap: CompareStats over every compared row (max-abs with position and channel, ULP,
//     NMSE, ...), rows that differ, and the first bit-divergent and first thresholded
//     (max_abs > max_abs_threshold, or a NaN/Inf failure) position with both sides' provenance;
//   - first divergence (§14): token level from the argmax of result_output, bit level and
//     thresholded over all taps in dataflow order;
//   - per-layer growth (§15) on each layer's output tap (l_out), the input of layer l being the
//     output of layer l-1 (layer 0's input, the token embedding, is equal by construction: the
//     manifests' tokens are checked);
//   - logits summary (§9-§13) from layer -1 `result_output`: KLD, argmax agreement, delta-p and
//     the multiplicative probability error on the next input token (tokens[t+1], as llama.cpp
//     does; the last position has none), top-k overlap, cross-containment at the first differing
//     token, margins and tie vs structural flips;
//   - MoE routing (§16): `ffn_moe_topk` rows compared as sets, plus max-abs of the router
//     scores (`ffn_moe_logits`, `ffn_moe_probs`) and gate weights (`ffn_moe_weights_scaled`).
// The tap/layer filter restricts the tap table, divergence, growth and routing; the logits
// summary always uses result_output (restricted by the position filter only), because token
// level divergence is defined on it.
//
// Stats-only dumps: rows compare by their FNV-1a hash and length (bit level only; numeric
// metrics and the logits summary need level full on both sides).
//
// Exit status of the command (DiffResult::exit_code): 0 when every compared row is bit-equal
// and no tap or position is present on one side only, 1 otherwise, 2 on bad input.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ds4/dump.h"
#include "ds4/json.h"
#include "ds4/metrics.h"
#include "ds4/taps.h"

namespace ds4 {

struct DiffOptions {
  TapFilter filter;                 // --tap / --layer / --position
  double tau = 1e-3;                // §13 near-tie margin, in logits
  double max_abs_threshold = 1e-3;  // §14 thresholded divergence: max_abs > this
  int topk = 5;                     // §12 k
  CompareOptions compare;           // eps_rel, NaN policy
  std::string label;                // configuration name carried to the JSON (for `gate`)
  std::string layer_output_tap = "l_out";
  uint64_t window_bytes = 256ull << 20;  // B rows buffered at once
  size_t max_flips_listed = 100;         // flips kept in the result (all are counted)
};

// A point of divergence: the tap, position and both sides' provenance there.
struct DivergencePoint {
  int64_t pos = kNever;
  int layer = 0;
  std::string tap, variant_a, variant_b;
  uint64_t n_bitdiff = 0;  // elements of the row that differ in bits
  double max_abs = 0;      // of the row
  ElementLoc max_abs_at;   // row = position, index = channel
  bool found() const { return pos != kNever; }
};

struct TapDiff {
  int layer = 0;
  std::string name;
  int64_t rows_compared = 0, rows_bitdiff = 0;
  int64_t rows_only_a = 0, rows_only_b = 0;  // positions present on one side only
  int64_t rows_length_mismatch = 0;          // same position, different row lengths
  CompareStats stats;                        // all compared rows (level full on both sides)
  DivergencePoint first_bit, first_thresh;
  std::string variant_a, variant_b;  // provenance of the first compared row
  bool variants_differ = false;      // some row's provenance differs between A and B
  bool bit_equal() const {
    return rows_bitdiff == 0 && rows_only_a == 0 && rows_only_b == 0 && rows_length_mismatch == 0;
  }
};

struct LayerGrowth {
  int layer = 0;
  std::string tap;
  double max_abs_in = 0, max_abs_out = 0, growth = 0;  // §15 max-abs ratio
  double nmse_in = 0, nmse_out = 0, nmse_growth = 0;   // §15 NMSE ratio (energy-normalised)
  bool input_bit_equal = true, output_bit_equal = true;
};

struct TokenFlip {
  int64_t pos = 0;
  int32_t token_a = 0, token_b = 0;
  double margin = 0;  // reference margin, logits
  FlipKind kind = FlipKind::None;
};

struct LogitsDiff {
  bool present = false;  // result_output compared with data on both sides
  int64_t positions = 0;
  int64_t n_vocab = 0;
  CompareStats stats;        // element metrics over every logit
  DistSummary kld;           // per position, llama.cpp aggregation
  int64_t kld_negative = 0;  // positions with KLD < 0 (storage/precision bug flag)
  double kld_min_value = 0;
  Agreement argmax;  // "same top p"
  DistSummary dp;    // delta-p on the next input token
  double mult_prob_error = 1;
  double topk_overlap_mean = 1, topk_overlap_min = 1, topk_jaccard_mean = 1;
  DistSummary margin;            // reference margin per position (logits)
  int64_t first_token = kNever;  // t*_tok
  CrossContainment cross;        // at t*_tok (meaningful when first_token != kNever)
  int64_t tie_flips = 0, structural_flips = 0;
  std::vector<TokenFlip> flips;  // the first max_flips_listed
};

struct RoutingDiff {
  int64_t rows_compared = 0, flips = 0;
  std::vector<std::pair<int, int64_t>> flips_per_layer;  // (layer, flips), layers with rows
  int first_flip_layer = 0;
  int64_t first_flip_pos = kNever;
  // max-abs over the router scores and gate weights (absent taps leave n = 0).
  CompareStats router_logits, router_probs, gate_weights;
};

struct DiffResult {
  std::string path_a, path_b, label;
  RunManifest manifest_a, manifest_b;
  DiffOptions options;
  bool full_data = false;     // both dumps at level full
  std::vector<TapDiff> taps;  // compared taps, dataflow order of A
  std::vector<TapKey> taps_only_a, taps_only_b;
  int64_t rows_compared = 0, rows_bitdiff = 0, rows_unmatched = 0;
  DivergencePoint first_bit, first_thresh;  // §14 over all taps
  LogitsDiff logits;
  RoutingDiff routing;
  std::vector<LayerGrowth> growth;
  std::vector<std::string> notes;  // manifest differences worth knowing (profile, gates, ...)

  bool bit_equal() const {
    return rows_bitdiff == 0 && rows_unmatched == 0 && taps_only_a.empty() && taps_only_b.empty();
  }
  int exit_code() const { return bit_equal() ? 0 : 1; }
};

// Throws ds4::Error (one line) on unreadable dumps, incompatible manifests or an empty selection.
DiffResult diff_dumps(const std::string& path_a, const std::string& path_b, const DiffOptions& opt);

// Checks the three compatibility fields; throws "dumps are not comparable: ..." naming the field.
void check_comparable(const RunManifest& a, const std::string& path_a, const RunManifest& b,
                      const std::string& path_b);

// Everything in the result as JSON (schema "ds4-parity-diff", version 1; non-finite numbers are
// the strings "inf", "-inf", "nan"; positions that never diverged are null). Key layout is
// documented in harness/PARITY_TOML.md, which the gate reads.
Json diff_result_json(const DiffResult& r);
// Pretty-printed (two-space indent) JSON text of any Json value, with a trailing newline.
std::string json_pretty(const Json& j);
// The human table `ds4-parity diff` prints; `worst` = how many taps the worst-taps table lists.
std::string diff_report_text(const DiffResult& r, size_t worst = 10);

// The whole `ds4-parity diff` command (parsing, diff, table on `out`, JSON file); returns the
// exit code (0 bit-equal, 1 different); bad input throws ds4::Error (the main prints it, exit 2).
int diff_command(const std::vector<std::string>& args, std::string& out);

}  // namespace ds4
