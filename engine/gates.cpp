// Gate registry and GateSet parsing, generated from gates.def.
#include "ds4/gates.h"

#include <sstream>

#include "ds4/error.h"

namespace ds4 {

const std::vector<GateInfo>& all_gates() {
  static const std::vector<GateInfo> gates = {
#define GATE(id, family, backends, fast, exact, det, ref, doc) \
  {Gate::id, #id, #family, backends, fast, exact, det != 0, ref, doc},
#include "gates.def"
#undef GATE
  };
  return gates;
}

bool GateInfo::on_backend(const std::string& backend) const {
  const std::string list = std::string(",") + backends + ",";
  return list.find("," + backend + ",") != std::string::npos;
}

const GateInfo& gate_info(Gate g) { return all_gates().at(static_cast<size_t>(g)); }
const char* gate_name(Gate g) { return gate_info(g).id; }

Gate gate_from_name(const std::string& name) {
  for (const GateInfo& g : all_gates())
    if (name == g.id) return g.gate;
  std::string known;
  for (const GateInfo& g : all_gates()) known += (known.empty() ? "" : ", ") + std::string(g.id);
  fail("unknown gate '" + name + "' (known: all, " + known + ")");
}

std::string gates_markdown_table() {
  std::string t =
      "| gate | family | backends | fast variant | exact variant | deterministic | ds4 | what it changes |\n"
      "|---|---|---|---|---|---|---|---|\n";
  for (const GateInfo& g : all_gates())
    t += std::string("| `") + g.id + "` | " + g.family + " | " + g.backends + " | `" + g.fast_variant + "` | `" +
         g.exact_variant + "` | " + (g.deterministic ? "yes" : "**no**") + " | " + g.ds4_ref + " | " + g.doc + " |\n";
  return t;
}

GateSet GateSet::all_exact() {
  GateSet g;
  g.states_.fill(GateState::Exact);
  return g;
}

static GateState state_from_name(const std::string& item, const std::string& v) {
  if (v == "fast") return GateState::Fast;
  if (v == "exact") return GateState::Exact;
  fail("bad gate setting '" + item + "': state must be fast or exact");
}

void GateSet::apply(const std::string& spec) {
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail("bad gate setting '" + item + "': expected id=fast or id=exact");
    const std::string id = item.substr(0, eq);
    const GateState st = state_from_name(item, item.substr(eq + 1));
    if (id == "all") {
      states_.fill(st);
    } else {
      set(gate_from_name(id), st);
    }
  }
}

bool GateSet::all_exact_set() const {
  for (GateState s : states_)
    if (s != GateState::Exact) return false;
  return true;
}

std::string GateSet::to_string() const {
  int n_exact = 0;
  for (GateState s : states_) n_exact += s == GateState::Exact;
  const GateState base = n_exact * 2 > kGateCount ? GateState::Exact : GateState::Fast;
  std::string out = base == GateState::Exact ? "all=exact" : "all=fast";
  for (const GateInfo& g : all_gates())
    if (get(g.gate) != base) out += "," + std::string(g.id) + (base == GateState::Exact ? "=fast" : "=exact");
  return out;
}

}  // namespace ds4
