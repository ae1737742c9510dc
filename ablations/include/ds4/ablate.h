// The ablation matrix (`ds4-parity ablate`, ARCHITECTURE.md §8): which gate breaks bit-equality
// of the batched forward against plain N=1 decode, how much, and which gates must be exact.
//
// Cells (GateSets) over a prompt set, 2G+2 of them for the G gates the backend implements:
//   baseline            every gate fast
//   strict              every gate exact (must be bit-equal: the exact paths are the spec)
//   add_one_in.<g>      only g fast: the divergence g creates alone
//   leave_one_out.<g>   only g exact: the divergence that g's exactness removes from the baseline
// Each cell runs every prompt in-process (a fresh Session per prompt with the cell's GateSet; no
// environment involved) and compares every tap of the run with the prompt's plain reference
// (ds4/run_compare.h).
//
// State directory (resumable, shardable):
//   plan.json            the matrix: model (path, SHA-256), profile, mode, width, prompts with
//                        their teacher-forced tokens, gate axes, cell list; its plan_id (a
//                        SHA-256 of all that) ties every other file to it. A second run with
//                        other settings on the same folder is refused.
//   refs/<prompt>.h5     the plain reference dump of each prompt, computed once (atomic write)
//   cells/<cell>.json    one file per finished cell, written atomically the moment it finishes,
//                        so a killed matrix loses at most the cell that was running and never
//                        records one twice; a resumed run skips every cell whose file exists
//   events.log           one line per cell started / saved (pid, time): the audit trail. The
//                        cell file is the record and its line follows it, so a kill between
//                        the two loses the line; a resumed run then adds "recovered <cell>" for
//                        each cell file without its "saved" line (each cell: exactly one of them)
// `--shard i/n` runs cells i, i+n, i+2n, ... (index order of the plan); shards may share one
// folder or use their own; `--merge DIR...` checks that every folder holds the same plan_id and
// joins the cells (a cell present twice must carry identical results: the exact paths are
// deterministic, so a mismatch means nondeterminism and is reported).
//
// Ranking and the minimal exact set (after all cells):
//   alone       gates ordered by the divergence of add_one_in.<g> (default "severity":
//               divergent before bit-equal, then structural flips, all argmax flips, mean KLD,
//               logits max-abs, logits max ULP, earlier first divergence; --rank-by puts one of
//               first | max-abs | ulp | kld | flips in front of that order)
//   reduction   gates ordered by what leave_one_out.<g> buys over the baseline (bit-equal alone
//               first, then flips removed, KLD reduction, max-abs reduction, first-divergence
//               shift)
//   minimal     the smallest set E of gates whose exactness gives bit-equality (the rest fast).
//               N = {g : add_one_in.<g> diverges} are needed (without g exact the run differs,
//               given that making more gates exact never creates a difference: each exact
//               variant is bit-equal to decode on bit-equal inputs). E = N is verified by a run;
//               if gates interact (N exact is not bit-equal), ddmin over the remaining gates
//               finds a 1-minimal addition S with N u S exact bit-equal. Every set reported has
//               been run and found bit-equal on every prompt. Gates outside the axes (--only,
//               or not on the backend) are held exact in these runs. --verify-minimal also runs E \ {g}
//               for each g and reports whether each removal diverges.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ds4/ablate_util.h"
#include "ds4/drivers.h"
#include "ds4/gates.h"
#include "ds4/run_compare.h"

namespace ds4 {

struct AblateConfig {
  std::string model_path;
  std::string mtp_path;              // MTP sidecar paired with the model ("" none)
  std::vector<PromptInput> prompts;  // empty: default_prompts()
  int64_t generate = 64;             // teacher-forced greedy tokens appended to each prompt
  Profile profile = Profile::Ds4;
  RunMode mode = RunMode::Batched;   // the candidate: batched forwards, or a verifier
  int64_t width = 0;                 // batched: 0 = all tokens in one forward; verify: rows/pass
  int64_t prefix = 0;                // verify: tokens decoded with N=1 first (0: the prompt)
  std::string backend = "cpu";
  std::vector<std::string> gates;    // axes; empty: every gate the backend implements
  // The taps the reference captures and the cells are compared on (--tap-layers, --tap-names,
  // --positions); default all. A long context (indexed attention past 2,048 tokens) needs
  // e.g. the verified positions only: the full reference would not fit in memory.
  TapFilter capture;
  int threads = 0;
  std::string state_dir = "ablate-state";
  int shard_index = 0, shard_count = 1;
  bool minimal = true;
  bool verify_minimal = false;
  std::string rank_by = "severity";
  CompareRunOptions compare;
  std::string command_line;
  std::FILE* progress = stderr;  // nullptr: silent
  // Called after each cell's file is saved (tests use it to kill the process mid-matrix).
  std::function<void(const std::string& cell_id)> on_cell_saved;
};

struct CellSpec {
  std::string id;    // "baseline", "strict", "add_one_in.q8_gemm", "set.<hash>", ...
  std::string kind;  // baseline | strict | add_one_in | leave_one_out | set
  std::string gate;  // the gate of add_one_in / leave_one_out cells
  GateSet gates;
};
// The 2G+2 cells of the matrix for these gate axes, in plan order.
std::vector<CellSpec> matrix_cells(const std::vector<std::string>& gates);

// A cell over the whole prompt set.
struct CellAggregate {
  bool bit_equal = true;
  DivPoint first_bit;
  std::string first_bit_prompt;
  double logits_max_abs = 0, kld_mean = 0, kld_max = 0;
  uint64_t logits_max_ulp = 0, max_ulp = 0;
  int64_t flips = 0, structural_flips = 0, rows_bitdiff = 0, rows_unmatched = 0;
  std::vector<std::string> variants;  // union over prompts
};

struct CellResult {
  CellSpec spec;
  std::vector<std::string> prompt_names;
  std::vector<RunDivergence> prompts;  // plan order
  CellAggregate agg;
  double seconds = 0;
  int64_t pid = 0;
  std::string finished_utc;
};

struct GateRank {
  std::string gate;
  bool exercised = false;  // its fast variant ran in add_one_in.<g> (provenance)
  CellAggregate alone;     // add_one_in.<g>
  CellAggregate loo;       // leave_one_out.<g>
  // Leave-one-out against the baseline (positive: exactness helps).
  double max_abs_reduction = 0, kld_reduction = 0;
  int64_t flips_removed = 0;
  bool needed = false;      // add_one_in.<g> diverges
  bool in_minimal = false;
};

struct MinimalSet {
  bool computed = false;
  std::vector<std::string> exact;  // E
  bool verified = false;           // the cell "E exact, rest fast" is bit-equal on every prompt
  std::string method;              // how E was found
  std::string verify_cell;         // id of the verifying cell
  // --verify-minimal: (gate, E \ {gate} diverges)
  std::vector<std::pair<std::string, bool>> removals;
};

struct AblateResult {
  Json plan;
  std::string state_dir;
  std::vector<CellResult> cells;  // matrix cells, plan order
  std::vector<CellResult> extra;  // verification / ddmin cells
  std::vector<GateRank> alone;    // ranked (alone order)
  std::vector<std::string> reduction_order;
  MinimalSet minimal;
  std::vector<std::string> ref_manifests;  // manifest text of each prompt's reference
  int64_t cells_total = 0, cells_run = 0, cells_resumed = 0;
  double wall_seconds = 0;
  bool complete = false;           // every matrix cell is present (false for a lone shard)
  bool strict_bit_equal = false;
  const CellResult* cell(const std::string& id) const;
};

// Runs (or resumes) this shard's cells; with one shard, also ranks and finds the minimal set.
AblateResult run_ablation(const AblateConfig& cfg);
// Joins shard folders (same plan) and finishes: ranking and the minimal set (its runs are saved
// in dirs[0]). Settings other than threads, ranking, progress and the minimal-set switches are
// taken from the plan.
AblateResult merge_ablation(const std::vector<std::string>& dirs, const AblateConfig& cfg);

Json ablate_result_json(const AblateResult& r);
// The tables `ds4-parity ablate` prints.
std::string ablate_result_text(const AblateResult& r);

}  // namespace ds4
