// Bisection (`ds4-parity bisect`, ARCHITECTURE.md §8): where two runs first stop being bit-equal,
// which kernel variant and gate produced that tensor, and whether the error is created there
// (local) or carried in from elsewhere (propagated).
//
// First divergence: the first position t* at which any tap differs, then the first tap at t* in
// dataflow order (metrics.md §14), a row present on one side only counting as a difference. The
// candidate's provenance at that row names the variant; gates.def maps a variant to its gate.
//
// Confirmation by re-feeding the reference input to the suspect op. The engine has no hook to
// inject a tensor into one op, but the gates give an equivalent that needs none: rerun the
// candidate's tokens with the reference's gate settings (plain decode = every gate exact) except
// the suspect gate g, which takes the candidate's setting. Every other op then runs the kernel the
// reference ran, and exact kernels are deterministic functions of their inputs, so until g's kernel
// first acts every tensor - in particular the suspect op's input - is bit-equal to the reference's
// (the comparison checks this: nothing before the reported point differs). The suspect op is thus
// fed exactly the reference's input, and:
//   - the isolation run diverges at the same (position, layer, tap)  -> LOCAL: g's kernel creates
//     the error itself, from the reference's input;
//   - it diverges later or not at all                                 -> PROPAGATED: with
//     reference inputs the op reproduces the reference; the candidate's difference there comes
//     from other gates acting together with g (use --minimize-gates for the minimal failing set);
//   - it diverges earlier: g acts earlier than the candidate showed (reported as such).
// When the differing tap's variant is not a gated kernel (the divergent op is untapped and its
// output first shows in a later tap, e.g. l_out), each gate the candidate runs differently is
// tried in isolation and those that reproduce the point are named. A planted fault (the fault
// injector, recorded in the candidate's manifest) is confirmed by rerunning without it: the point
// must disappear.
//
// --minimize-gates: ddmin over the gates whose setting differs between reference and candidate, for a
// 1-minimal set that still makes the run differ (runs without any planted fault).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ds4/ablate_util.h"
#include "ds4/drivers.h"
#include "ds4/run_compare.h"

namespace ds4 {

struct BisectConfig {
  // Either two dumps (reference A, candidate B; confirmation reruns need B's model file) ...
  std::string dump_a, dump_b;
  // ... or a model and token sequence run in-process: the reference is plain decode unless
  // ref_gates is set (then a run of `cand` with ref_gates and no fault).
  std::string model_path;
  std::string mtp_path;  // MTP sidecar paired with model_path ("" none)
  std::vector<int32_t> tokens;
  RunSpec cand;                 // mode, width, prefix, gates, fault, profile (tokens: above)
  TapFilter capture;            // in-process runs: the taps compared (default all; see ablate.h)
  bool ref_plain = true;
  GateSet ref_gates = GateSet::all_exact();
  bool confirm = true;
  bool minimize_gates = false;
  int threads = 0;
  CompareRunOptions compare;
  std::FILE* log = stderr;      // one line per rerun; nullptr: silent
};

struct BisectRun {
  std::string purpose;  // "isolation of q8_gemm", "without the planted fault", "ddmin"
  std::string gates;    // gate set text
  bool fault = false;
  bool bit_equal = false;
  DivPoint first;
  double seconds = 0;
};

struct BisectResult {
  std::string ref_desc, cand_desc;
  bool bit_equal = false;
  DivPoint first;              // first bit divergence
  DivPoint first_thresh;       // first divergence with max-abs over the threshold
  std::string gate, gate_side;  // of first.variant_cand ("" when not a gated kernel)
  std::string fault;           // the candidate's planted fault ("" when none)
  bool fault_at_first = false; // the fault sits exactly at the first divergence
  std::string verdict;         // local | propagated | earlier | fault | unconfirmed | equal
  std::string explanation;
  std::vector<std::string> culprits;  // gates whose isolation run reproduces the point
  std::vector<BisectRun> runs;        // every confirmation / ddmin rerun
  bool ddmin_ran = false;
  std::vector<std::string> ddmin_candidates, minimal_failing;
  std::string note;            // why confirmation was skipped, if it was
};

BisectResult bisect(const BisectConfig& cfg);
Json bisect_result_json(const BisectResult& r);
std::string bisect_result_text(const BisectResult& r);

}  // namespace ds4
