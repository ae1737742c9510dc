// Gates: generated from engine/gates.def (the single list). A GateSet holds each gate's state;
// it is parsed once (CLI > environment > default, see ds4/config.h) and passed by const reference.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace ds4 {

enum class Gate : uint8_t {
#define GATE(id, family, backends, fast, exact, det, ref, doc) id,
#include "../../gates.def"
#undef GATE
};

inline constexpr int kGateCount = 0
#define GATE(id, family, backends, fast, exact, det, ref, doc) +1
#include "../../gates.def"
#undef GATE
    ;

struct GateInfo {
  Gate gate;
  const char* id;
  const char* family;
  const char* backends;
  const char* fast_variant;
  const char* exact_variant;
  bool deterministic;
  const char* ds4_ref;
  const char* doc;
  bool on_backend(const std::string& backend) const;  // "cpu" or "cuda"
};

const std::vector<GateInfo>& all_gates();
const GateInfo& gate_info(Gate g);
const char* gate_name(Gate g);
// Throws ds4::Error "unknown gate 'x' (known: ...)".
Gate gate_from_name(const std::string& name);

// The README's gate table (Markdown), generated from gates.def.
std::string gates_markdown_table();

enum class GateState : uint8_t { Fast, Exact };

class GateSet {
 public:
  GateSet() { states_.fill(GateState::Fast); }  // default: every gate fast (the baseline)
  static GateSet all_fast() { return GateSet(); }
  static GateSet all_exact();
  // Parses "id=exact,id2=fast", "all=fast", "all=exact,q8_gemm=fast" (applied left to right) on top
  // of *this; throws ds4::Error naming the bad item.
  void apply(const std::string& spec);
  static GateSet parse(const std::string& spec) {
    GateSet g;
    g.apply(spec);
    return g;
  }
  void set(Gate g, GateState s) { states_[static_cast<int>(g)] = s; }
  GateState get(Gate g) const { return states_[static_cast<int>(g)]; }
  bool exact(Gate g) const { return get(g) == GateState::Exact; }
  bool fast(Gate g) const { return get(g) == GateState::Fast; }
  bool all_exact_set() const;
  // Canonical text: "all=fast", "all=exact", or "all=fast,id=exact,..." (minimal form).
  std::string to_string() const;
  bool operator==(const GateSet&) const = default;

 private:
  std::array<GateState, kGateCount> states_;
};

}  // namespace ds4
