// Bisection: first divergence, provenance, confirmation by isolation reruns, ddmin over gates
// (see ds4/bisect.h for the method and why it is sound).
#include "ds4/bisect.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "ds4/error.h"
#include "ds4/gates.h"

namespace ds4 {

namespace {

// Feeds every row of a dump into a sink, as if the run were happening again.
void replay_dump(const DumpReader& rd, TapSink& sink) {
  for (const TapKey& k : rd.taps())
    rd.for_each_row(k.layer, k.name, [&](const DumpRow& r) {
      const std::string v(r.variant);
      sink.tap(k.layer, k.name.c_str(), r.pos, r.data.data(), r.data.size(), v.c_str());
    });
}

std::string spec_text(const RunSpec& s) {
  std::string t = run_mode_name(s.mode);
  if (s.mode != RunMode::Plain) {
    t += " W=" + (s.width ? std::to_string(s.width) : std::string("all"));
    if (s.mode == RunMode::Verify) t += " prefix " + std::to_string(s.prefix);
    t += ", gates " + s.gates.to_string();
  }
  if (s.fault.enabled) t += ", fault " + s.fault.to_string();
  return t + ", profile " + profile_name(s.profile);
}

class Bisector {
 public:
  explicit Bisector(const BisectConfig& cfg) : cfg_(cfg) {}

  BisectResult run() {
    BisectResult r;
    const bool dumps = !cfg_.dump_a.empty() || !cfg_.dump_b.empty();
    if (dumps) {
      if (cfg_.dump_a.empty() || cfg_.dump_b.empty()) fail("bisect: two dumps are needed (A.h5 B.h5)");
      from_dumps(r);
    } else {
      from_runs(r);
    }
    if (r.bit_equal) {
      r.verdict = "equal";
      r.explanation = "every compared tap is bit-equal";
      return r;
    }
    bool fast = false;
    if (const GateInfo* g = gate_of_variant(r.first.variant_cand, &fast)) {
      r.gate = g->id;
      r.gate_side = fast ? "fast" : "exact";
    }
    if (cand_.fault.enabled) {
      r.fault = cand_.fault.to_string();
      r.fault_at_first = cand_.fault.layer == r.first.layer && cand_.fault.tap == r.first.tap &&
                         cand_.fault.pos == r.first.pos;
    }
    if (cfg_.confirm) {
      if (!can_rerun_) {
        r.verdict = "unconfirmed";
        r.explanation = r.note;
      } else {
        confirm(r);
      }
    }
    if (cfg_.minimize_gates) {
      if (!can_rerun_) fail("bisect --minimize-gates: cannot rerun (" + r.note + ")");
      gate_ddmin(r);
    }
    return r;
  }

 private:
  // ---- obtaining the two runs ----

  void from_dumps(BisectResult& r) {
    r.ref_desc = cfg_.dump_a;
    r.cand_desc = cfg_.dump_b;
    ref_ = Reference::load(cfg_.dump_a);
    const DumpReader b = DumpReader::open(cfg_.dump_b);
    const RunManifest& ma = ref_->manifest();
    const RunManifest& mb = b.manifest();
    if (ma.model_sha256 != mb.model_sha256) fail("bisect: the dumps come from different models (model_sha256)");
    if (ma.tokens != mb.tokens) fail("bisect: the dumps ran different tokens");
    if (!b.has_data()) fail(cfg_.dump_b + ": bisect needs tap level full (this dump has stats only)");
    r.ref_desc += " (" + ma.run_mode + (ma.run_mode == "plain" ? "" : ", gates " + ma.gate_set) + ")";
    r.cand_desc += " (" + mb.run_mode + " W=" + (mb.width ? std::to_string(mb.width) : std::string("all")) +
                   (mb.run_mode == "plain" ? "" : ", gates " + mb.gate_set) + ")";
    CompareSink sink(ref_, cfg_.compare);
    replay_dump(b, sink);
    set_first(r, sink.finish());

    // What is needed to rerun: B's model file, its settings, given (teacher-forced) drafts.
    cand_.backend = backend_from_name(mb.backend.empty() ? "cpu" : mb.backend);
    cand_.profile = profile_from_name(mb.profile);
    cand_.mode = run_mode_from_name(mb.run_mode);
    cand_.width = mb.width;
    cand_.tokens = mb.tokens;
    cand_.threads = cfg_.threads;
    if (cand_.mode != RunMode::Plain) cand_.gates = GateSet::parse(mb.gate_set);
    auto extra = [&](const std::string& k) {
      auto it = mb.extra.find(k);
      return it == mb.extra.end() ? std::string() : it->second;
    };
    if (const std::string f = extra("fault"); !f.empty() && f != "off") cand_.fault = FaultInjection::parse(f);
    if (cand_.mode == RunMode::Verify) {
      cand_.prefix = std::stoll(extra("verify_prefix").empty() ? "1" : extra("verify_prefix"));
      cand_.drafts = extra("drafts").empty() ? "given" : extra("drafts");
    }
    ref_gates_ = ma.run_mode == "plain" ? GateSet::all_exact() : GateSet::parse(ma.gate_set);
    ref_mode_plain_ = ma.run_mode == "plain";
    if (cand_.drafts != "given") {
      r.note = "the candidate verified MTP drafts (its tokens depend on the run); reruns need given drafts";
    } else if (!std::filesystem::exists(mb.model_path)) {
      r.note = "the candidate's model " + mb.model_path + " is not here";
    } else {
      model_ = Model::load(mb.model_path);
      if (sha256_file(mb.model_path) != mb.model_sha256) {
        r.note = mb.model_path + " changed since the dump was written (SHA-256 differs)";
        model_.reset();
      }
    }
    can_rerun_ = model_ != nullptr;
  }

  void from_runs(BisectResult& r) {
    if (cfg_.model_path.empty()) fail("bisect: give two dumps, or a model and tokens");
    if (cfg_.tokens.empty()) fail("bisect: no tokens");
    model_ = Model::load(cfg_.model_path, cfg_.mtp_path);
    cand_ = cfg_.cand;
    cand_.tokens = cfg_.tokens;
    cand_.threads = cfg_.threads;
    // The reference (a verifier too unless plain) and every rerun share the verifier's N=1
    // prefix (drivers.h, PrefixCache) when the reference captures none of it. Replayed dumps
    // (from_dumps) keep decoding it: their reference was captured elsewhere, with its own filter.
    if (prefix_unobserved(cand_, cfg_.capture)) cand_.prefix_cache = std::make_shared<PrefixCache>();
    ref_mode_plain_ = cfg_.ref_plain;
    ref_gates_ = cfg_.ref_plain ? GateSet::all_exact() : cfg_.ref_gates;
    RunSpec rs = cand_;
    rs.fault = FaultInjection{};
    if (cfg_.ref_plain) {
      rs.mode = RunMode::Plain;
    } else {
      rs.gates = cfg_.ref_gates;
    }
    ReferenceRecorder rec(make_manifest(*model_, rs, "ds4-parity bisect (reference)"), cfg_.capture);
    run_model(model_, rs, &rec);
    ref_ = rec.finish();
    r.ref_desc = spec_text(rs);
    r.cand_desc = spec_text(cand_);
    CompareSink sink(ref_, cfg_.compare);
    run_model(model_, cand_, &sink);
    set_first(r, sink.finish());
    can_rerun_ = true;
  }

  void set_first(BisectResult& r, const RunDivergence& d) {
    r.bit_equal = d.bit_equal();
    r.first = d.first_bit;
    r.first_thresh = d.first_thresh;
  }

  // ---- reruns ----

  BisectRun rerun(const std::string& purpose, const GateSet& gates, bool with_fault, BisectResult& r) {
    RunSpec s = cand_;
    s.gates = gates;
    if (!with_fault) s.fault = FaultInjection{};
    // A plain candidate (fault runs) has no gates to vary; isolation needs the batched shape.
    BisectRun br;
    br.purpose = purpose;
    br.gates = s.mode == RunMode::Plain ? "n/a (N=1 decode)" : gates.to_string();
    br.fault = s.fault.enabled;
    const auto t0 = std::chrono::steady_clock::now();
    CompareSink sink(ref_, cfg_.compare);
    run_model(model_, s, &sink);
    const RunDivergence d = sink.finish();
    br.bit_equal = d.bit_equal();
    br.first = d.first_bit;
    br.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (cfg_.log)
      std::fprintf(cfg_.log, "bisect rerun (%s; gates %s%s): first divergence %s\n", purpose.c_str(),
                   br.gates.c_str(), br.fault ? ", with the fault" : "", br.first.where().c_str());
    r.runs.push_back(br);
    return br;
  }

  // Gates whose setting differs between reference and candidate (on the candidate's backend).
  std::vector<Gate> differing_gates() const {
    std::vector<Gate> out;
    if (cand_.mode == RunMode::Plain) return out;
    for (const GateInfo& g : all_gates())
      if (g.on_backend(backend_name(cand_.backend)) && cand_.gates.get(g.gate) != ref_gates_.get(g.gate))
        out.push_back(g.gate);
    return out;
  }

  GateSet isolate(Gate g) const {
    GateSet s = ref_gates_;
    s.set(g, cand_.gates.get(g));
    return s;
  }

  void confirm(BisectResult& r) {
    const DivPoint& D = r.first;
    if (cand_.fault.enabled && r.fault_at_first) {
      // The fault is the suspect: without it the point must vanish (or move later).
      const BisectRun br = rerun("without the planted fault", cand_.gates, false, r);
      if (!br.first.found() || !br.first.same_place(D)) {
        r.verdict = "fault";
        r.explanation = "the planted fault " + r.fault +
                        " sits exactly at the first divergence, and the same run without it " +
                        (br.first.found() ? "first diverges elsewhere (" + br.first.where() + ")" : "is bit-equal") +
                        ": the one-ULP change is created there (local)";
      } else {
        r.verdict = "unconfirmed";
        r.explanation = "the point is still the first divergence without the planted fault: something else creates it";
      }
      return;
    }
    std::vector<Gate> suspects;
    if (!r.gate.empty() && r.gate_side == "fast" && cand_.mode != RunMode::Plain &&
        cand_.gates.get(gate_from_name(r.gate)) != ref_gates_.get(gate_from_name(r.gate))) {
      suspects.push_back(gate_from_name(r.gate));
    } else {
      suspects = differing_gates();
    }
    if (suspects.empty()) {
      r.verdict = "unconfirmed";
      r.explanation = "no gate differs between the two runs and no planted fault explains the point";
      return;
    }
    bool any_later = false, any_earlier = false;
    for (Gate g : suspects) {
      const BisectRun br = rerun(std::string("isolation of ") + gate_name(g), isolate(g), false, r);
      if (br.first.same_place(D)) {
        r.culprits.push_back(gate_name(g));
      } else if (br.first.found() && (br.first.pos < D.pos || (br.first.pos == D.pos && br.first.tap_index < D.tap_index))) {
        any_earlier = true;
      } else {
        any_later = true;
      }
    }
    const std::string method =
        "rerun with the reference's gates except the suspect, so every other op runs the reference's kernel and "
        "the suspect op is fed the reference's (bit-equal) input";
    if (!r.culprits.empty()) {
      r.verdict = "local";
      r.explanation = method + ": the isolation run of " + r.culprits[0] +
                      " first diverges at the same point, so its kernel creates the error there";
      if (r.gate.empty())
        r.explanation += " (the tap's own variant is not gated: the gated op feeding it is untapped)";
    } else if (any_earlier && !any_later) {
      r.verdict = "earlier";
      r.explanation = method + ": in isolation the suspect diverges before the reported point";
    } else {
      r.verdict = "propagated";
      r.explanation = method + ": fed reference inputs the suspect reproduces the reference at this point, so the "
                      "candidate's difference there comes from gates acting together (see --minimize-gates)";
    }
  }

  void gate_ddmin(BisectResult& r) {
    r.ddmin_ran = true;
    const std::vector<Gate> cands = differing_gates();
    for (Gate g : cands) r.ddmin_candidates.push_back(gate_name(g));
    if (cands.empty()) {
      r.note += (r.note.empty() ? "" : "; ") + std::string("--minimize-gates: no gate differs between the runs");
      return;
    }
    auto with = [&](const std::vector<int>& sub) {
      GateSet s = ref_gates_;
      for (int i : sub) s.set(cands[static_cast<size_t>(i)], cand_.gates.get(cands[static_cast<size_t>(i)]));
      return s;
    };
    std::vector<int> all(cands.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
    auto fails = [&](const std::vector<int>& sub) {
      return !rerun("ddmin", with(sub), false, r).bit_equal;
    };
    if (!fails(all)) {
      r.note += (r.note.empty() ? "" : "; ") + std::string("--minimize-gates: the candidate's gates alone (no fault) give bit-equality");
      return;
    }
    for (int i : ddmin(all, fails)) r.minimal_failing.push_back(gate_name(cands[static_cast<size_t>(i)]));
  }

  const BisectConfig& cfg_;
  std::shared_ptr<const Model> model_;
  std::shared_ptr<const Reference> ref_;
  RunSpec cand_;
  GateSet ref_gates_ = GateSet::all_exact();
  bool ref_mode_plain_ = true;
  bool can_rerun_ = false;
};

}  // namespace

BisectResult bisect(const BisectConfig& cfg) { return Bisector(cfg).run(); }

Json bisect_result_json(const BisectResult& r) {
  Json j = jobj();
  jput(j, "schema", jstr("ds4-parity-bisect"));
  jput(j, "version", jint(1));
  jput(j, "reference", jstr(r.ref_desc));
  jput(j, "candidate", jstr(r.cand_desc));
  jput(j, "bit_equal", jbool(r.bit_equal));
  jput(j, "first_divergence", divpoint_json(r.first));
  jput(j, "first_thresholded", divpoint_json(r.first_thresh));
  jput(j, "gate", r.gate.empty() ? jnull() : jstr(r.gate));
  jput(j, "gate_side", r.gate.empty() ? jnull() : jstr(r.gate_side));
  jput(j, "fault", r.fault.empty() ? jnull() : jstr(r.fault));
  jput(j, "fault_at_first", jbool(r.fault_at_first));
  jput(j, "verdict", jstr(r.verdict));
  jput(j, "explanation", jstr(r.explanation));
  jput(j, "culprits", jstrs(r.culprits));
  Json runs = jarr();
  for (const BisectRun& b : r.runs) {
    Json o = jobj();
    jput(o, "purpose", jstr(b.purpose));
    jput(o, "gates", jstr(b.gates));
    jput(o, "fault", jbool(b.fault));
    jput(o, "bit_equal", jbool(b.bit_equal));
    jput(o, "first_divergence", divpoint_json(b.first));
    jput(o, "seconds", jnum(b.seconds));
    runs.array.push_back(o);
  }
  jput(j, "reruns", runs);
  Json dd = jobj();
  jput(dd, "ran", jbool(r.ddmin_ran));
  jput(dd, "candidates", jstrs(r.ddmin_candidates));
  jput(dd, "minimal_failing", jstrs(r.minimal_failing));
  jput(j, "gates_ddmin", dd);
  jput(j, "note", jstr(r.note));
  return j;
}

std::string bisect_result_text(const BisectResult& r) {
  std::ostringstream o;
  o << "reference: " << r.ref_desc << "\ncandidate: " << r.cand_desc << "\n";
  if (r.bit_equal) {
    o << "bit-equal: no divergence on any compared tap\n";
    return o.str();
  }
  const DivPoint& d = r.first;
  o << "first divergence (dataflow order): " << d.where() << "\n";
  o << "  variant: reference " << (d.variant_ref.empty() ? "(no row)" : d.variant_ref) << ", candidate "
    << (d.variant_cand.empty() ? "(no row)" : d.variant_cand);
  if (!r.gate.empty())
    o << " -> gate " << r.gate << " (its " << r.gate_side << " variant)";
  else
    o << " (not a gated kernel)";
  o << "\n";
  if (d.only_ref || d.only_cand) {
    o << "  the row exists only in the " << (d.only_ref ? "reference" : "candidate") << " (a different op ran)\n";
  } else {
    char b[256];
    std::snprintf(b, sizeof b, "  row: %llu of %llu elements differ in bits; max-abs %.3g at channel %lld (%.9g vs %.9g)\n",
                  static_cast<unsigned long long>(d.n_bitdiff), static_cast<unsigned long long>(d.n), d.max_abs,
                  static_cast<long long>(d.channel), d.ref_value, d.cand_value);
    o << b;
  }
  if (r.first_thresh.found() && !r.first_thresh.same_place(d))
    o << "first divergence above the max-abs threshold: " << r.first_thresh.where() << "\n";
  if (!r.fault.empty())
    o << "planted fault in the candidate: " << r.fault << (r.fault_at_first ? " (exactly here)" : " (elsewhere)") << "\n";
  for (const BisectRun& b : r.runs)
    o << "  rerun " << b.purpose << ": " << (b.bit_equal ? "bit-equal" : "first divergence " + b.first.where()) << "\n";
  if (!r.verdict.empty()) o << "verdict: " << r.verdict << " - " << r.explanation << "\n";
  if (r.ddmin_ran) {
    o << "minimal failing gate set (ddmin over";
    for (const std::string& g : r.ddmin_candidates) o << " " << g;
    o << "): {";
    for (size_t i = 0; i < r.minimal_failing.size(); ++i) o << (i ? ", " : "") << r.minimal_failing[i];
    o << "}\n";
  }
  if (!r.note.empty()) o << "note: " << r.note << "\n";
  return o.str();
}

}  // namespace ds4
