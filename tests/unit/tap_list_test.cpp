// The tap and variant lists (engine/taps.def, engine/variants.def) against what the forwards emit:
//   - the lists themselves: round trips, name shapes, gates.def's variants are members;
//   - the CPU forward of the tiny model (decode, batched all-exact and all-fast, ds4 and plain
//     profile, MTP draft, torch top-k ties) emits only declared taps, each declared tap at least
//     once, within each (layer, position) in the declared dataflow order, and only declared
//     variants of the CPU backend;
//   - the CUDA forward, statically (no GPU): the tap names and variant literals of
//     backend/cuda/forward_cuda*.cpp, the variant_name() tables of ops/*/*_cuda.cu and the
//     cuda_matmul table are declared.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "ds4/engine.h"
#include "ds4/gates.h"
#include "ds4/tap_list.h"
#include "../support/tiny_models.h"

namespace {

bool has_backend(const ds4::VariantInfo& v, const std::string& b) {
  const std::string list = std::string(",") + v.backends + ",";
  return list.find("," + b + ",") != std::string::npos;
}

TEST(TapList, RoundTripsAndShapes) {
  ASSERT_EQ(ds4::all_taps().size(), static_cast<size_t>(ds4::kTapCount));
  const std::set<std::string> scopes{"layer", "head"}, whens{"always", "compress", "ratio4", "indexed", "shexp"};
  bool head_seen = false;
  for (int i = 0; i < ds4::kTapCount; ++i) {
    const ds4::TapInfo& t = ds4::all_taps()[i];
    EXPECT_EQ(static_cast<int>(t.tap), i);
    EXPECT_EQ(ds4::tap_index(ds4::tap_name(t.tap)), i) << t.name;
    EXPECT_TRUE(scopes.count(t.scope)) << t.name << ": scope " << t.scope;
    EXPECT_TRUE(whens.count(t.when)) << t.name << ": when " << t.when;
    EXPECT_GT(std::string(t.doc).size(), 5u) << t.name;
    // head taps come last: they follow every layer tap of the MTP block at the same layer.
    if (std::string(t.scope) == "head") head_seen = true;
    else EXPECT_FALSE(head_seen) << t.name << " (a layer tap after a head tap)";
  }
  EXPECT_EQ(ds4::tap_index("no_such_tap"), -1);
}

TEST(VariantList, NamesAreUniqueAndWellFormed) {
  const std::regex shape("[a-z0-9_]+__[a-z0-9_]+");
  const std::set<std::string> backends{"cpu", "cuda", "cpu,cuda", "-"};
  std::set<std::string> seen;
  for (const ds4::VariantInfo& v : ds4::all_variants()) {
    EXPECT_TRUE(seen.insert(v.name).second) << "listed twice: " << v.name;
    EXPECT_TRUE(std::regex_match(std::string(v.name), shape)) << v.name << " is not <op>__<what-differs>";
    EXPECT_TRUE(backends.count(v.backends)) << v.name << ": backends " << v.backends;
    EXPECT_EQ(ds4::find_variant(v.name), &v);
  }
  EXPECT_EQ(ds4::find_variant("ref"), nullptr);
}

TEST(VariantList, GateVariantsAreMembers) {
  for (const ds4::GateInfo& g : ds4::all_gates()) {
    EXPECT_NE(ds4::find_variant(g.fast_variant), nullptr) << g.id << " fast " << g.fast_variant;
    EXPECT_NE(ds4::find_variant(g.exact_variant), nullptr) << g.id << " exact " << g.exact_variant;
    // A gate's fast variant is reported by the taps of every backend that implements the gate
    // (moe_atomic_down's is internal to the MoE kernel: "-").
    if (const ds4::VariantInfo* v = ds4::find_variant(g.fast_variant); v && std::string(v->backends) != "-") {
      std::stringstream ss(g.backends);
      for (std::string b; std::getline(ss, b, ',');)
        EXPECT_TRUE(has_backend(*v, b)) << g.id << ": " << g.fast_variant << " not listed for " << b;
    }
  }
}

// ---- (a), (b): the CPU forward -----------------------------------------------------------------

// Checks every tap as it arrives; `seen` collects (name) and `variants` across runs.
class CheckingSink : public ds4::TapSink {
 public:
  int n_layer = 0;
  std::set<std::string>* seen = nullptr;
  std::set<std::string>* variants = nullptr;
  std::map<std::pair<int, int64_t>, int> last_rank;  // (layer, pos) -> rank of its latest tap
  std::string what;
  void tap(int layer, const char* name, int64_t pos, const float*, size_t, const char* variant) override {
    const int rank = ds4::tap_index(name);
    if (rank < 0) {
      ADD_FAILURE() << what << ": undeclared tap '" << name << "' (layer " << layer << ", pos " << pos << ")";
      return;
    }
    const ds4::TapInfo& t = ds4::all_taps()[rank];
    if (std::string(t.scope) == "head")
      EXPECT_TRUE(layer == -1 || layer == n_layer) << what << ": head tap " << name << " at layer " << layer;
    else
      EXPECT_TRUE(layer >= 0 && layer <= n_layer) << what << ": layer tap " << name << " at layer " << layer;
    auto [it, added] = last_rank.try_emplace({layer, pos}, rank);
    if (!added) {
      EXPECT_GT(rank, it->second) << what << ": tap " << name << " (layer " << layer << ", pos " << pos
                                  << ") arrives after " << ds4::all_taps()[it->second].name
                                  << ", against taps.def's dataflow order";
      it->second = rank;
    }
    seen->insert(name);
    const std::string v = variant ? variant : "";
    const ds4::VariantInfo* info = ds4::find_variant(v);
    EXPECT_TRUE(info && has_backend(*info, "cpu"))
        << what << ": tap " << name << " reports variant '" << v << "', not a CPU variant of variants.def";
    variants->insert(v);
  }
};

TEST(TapList, CpuForwardEmitsDeclaredTapsInDataflowOrder) {
  std::set<std::string> seen, variants;
  constexpr int kTokens = 140;  // crosses the ratio-128 window end (127) and indexed selection (67+)
  struct Case {
    const char* mix;
    ds4::Profile profile;
    const char* gates;
    int width;  // 1 = decode
    ds4::TopkTies ties;
  };
  const Case cases[] = {
      {"ds4", ds4::Profile::Ds4, "all=exact", 1, ds4::TopkTies::LowerIndex},
      {"ds4", ds4::Profile::Ds4, "all=exact", 7, ds4::TopkTies::LowerIndex},
      {"ds4", ds4::Profile::Ds4, "all=fast", 7, ds4::TopkTies::LowerIndex},
      {"ds4", ds4::Profile::Ds4, "all=fast", 64, ds4::TopkTies::TorchCpu},
      {"ds4", ds4::Profile::Ds4, "all=fast,indexer_wmma=exact", 7, ds4::TopkTies::LowerIndex},
      {"ds4", ds4::Profile::Plain, "all=exact", 1, ds4::TopkTies::LowerIndex},
      {"ds4", ds4::Profile::Plain, "all=fast", 7, ds4::TopkTies::LowerIndex},
      {"f32", ds4::Profile::Plain, "all=fast", 7, ds4::TopkTies::LowerIndex},
  };
  for (const Case& k : cases) {
    auto model = ds4::Model::load(ds4::testing::tiny_model_path(k.mix, /*mtp=*/true));
    ASSERT_TRUE(model->has_mtp());
    const auto tokens = ds4::testing::pseudo_tokens(kTokens, static_cast<int>(model->hparams().n_vocab));
    ds4::SessionOptions so;
    so.profile = k.profile;
    so.gates = ds4::GateSet::parse(k.gates);
    so.topk_ties = k.ties;
    so.n_threads = 2;
    ds4::Session s(model, so);
    CheckingSink sink;
    sink.n_layer = static_cast<int>(model->hparams().n_layer);
    sink.seen = &seen;
    sink.variants = &variants;
    sink.what = std::string(k.mix) + "/" + ds4::profile_name(k.profile) + "/" + k.gates +
                "/width " + std::to_string(k.width);
    s.set_tap_sink(&sink);
    for (size_t i = 0; i < tokens.size(); i += k.width) {
      const size_t n = std::min<size_t>(k.width, tokens.size() - i);
      s.forward(std::span<const int32_t>(tokens.data() + i, n));
      if (i % 35 == 0) s.mtp_draft(tokens[(i + n) % tokens.size()]);  // MTP block + its head
    }
    s.mtp_draft(tokens[0]);
  }
  for (const ds4::TapInfo& t : ds4::all_taps()) EXPECT_TRUE(seen.count(t.name)) << "declared tap never emitted: " << t.name;
  // Every CPU variant of the list is emitted by some run (a stale entry fails here).
  for (const ds4::VariantInfo& v : ds4::all_variants())
    if (has_backend(v, "cpu")) EXPECT_TRUE(variants.count(v.name)) << "CPU variant never emitted: " << v.name;
}

// ---- (c): the CUDA forward, statically -----------------------------------------------------------

std::string read_source(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> literals(const std::string& text) {
  std::vector<std::string> out;
  static const std::regex lit("\"([^\"\\\\]*)\"");
  for (std::sregex_iterator it(text.begin(), text.end(), lit), end; it != end; ++it) out.push_back((*it)[1]);
  return out;
}

// The arguments of every call `fn(...)` in `text`, split at top-level commas.
std::vector<std::vector<std::string>> calls(const std::string& text, const std::string& fn) {
  std::vector<std::vector<std::string>> out;
  for (size_t at = text.find(fn + "("); at != std::string::npos; at = text.find(fn + "(", at + 1)) {
    if (at > 0 && (std::isalnum(static_cast<unsigned char>(text[at - 1])) || text[at - 1] == '_' || text[at - 1] == ':'))
      continue;  // another function's name ends with fn, or the definition Impl::fn
    std::vector<std::string> args(1);
    int depth = 0;
    bool in_str = false;
    for (size_t i = at + fn.size() + 1; i < text.size(); ++i) {
      const char c = text[i];
      if (in_str) {
        args.back() += c;
        if (c == '"' && text[i - 1] != '\\') in_str = false;
        continue;
      }
      if (c == '"') in_str = true;
      if (c == '(' ) ++depth;
      if (c == ')' && depth-- == 0) break;
      if (c == ',' && depth == 0) {
        args.emplace_back();
        continue;
      }
      args.back() += c;
    }
    out.push_back(args);
  }
  return out;
}

// CUDA-side drift known when this test was written (the CUDA files are changed in their own PRs):
// each entry must still occur, so the list shrinks when the CUDA side is fixed.
//   "ref": lid_q / lid_weights in forward_cuda_attn.cpp report "ref"; the CPU reports the variant
//          of the projection that produced them (idx_q_b / idx_proj), as for `q`.
const std::set<std::string> kCudaKnownDrift = {"ref"};

TEST(TapList, CudaForwardSourcesUseDeclaredNames) {
  const std::filesystem::path src = DS4_SOURCE_DIR;
  std::set<std::string> drift_seen;
  auto check_variant = [&](const std::string& v, const std::string& where) {
    if (kCudaKnownDrift.count(v)) {
      drift_seen.insert(v);
      return;
    }
    const ds4::VariantInfo* info = ds4::find_variant(v);
    EXPECT_TRUE(info && has_backend(*info, "cuda")) << where << ": variant '" << v
                                                     << "' is not a CUDA variant of variants.def";
  };
  int n_tap_calls = 0;
  std::set<std::string> tap_names;
  const std::regex variant_shape("[a-z0-9_]+__[a-z0-9_]+");
  for (const auto& e : std::filesystem::directory_iterator(src / "engine/backend/cuda")) {
    const std::string file = e.path().filename().string();
    if (file.rfind("forward_cuda", 0) != 0 || e.path().extension() != ".cpp") continue;
    const std::string text = read_source(e.path());
    // Every `<op>__<what>` literal in the forward is a variant name.
    for (const std::string& l : literals(text))
      if (std::regex_match(l, variant_shape)) check_variant(l, file);
    for (const auto& [fn, variant_arg] : {std::pair<std::string, size_t>{"tap_dev", 6}, {"tap_host", 5}}) {
      for (const std::vector<std::string>& args : calls(text, fn)) {
        ASSERT_GT(args.size(), variant_arg) << file << ": a " << fn << " call with " << args.size() << " arguments";
        ++n_tap_calls;
        // The name: literals, "hc_" + which + "_mixes" (which = attn/ffn), or a variable set from
        // literals (`const char* name = ... ? "a" : "b";`).
        // (`which == "attn" ? ...`: the compared literal is not a name.)
        const std::string name_arg = std::regex_replace(args[1], std::regex("==\\s*\"[^\"]*\""), "");
        std::vector<std::string> lits = literals(name_arg);
        const auto trim = [](const std::string& x) { return std::regex_replace(x, std::regex("\\s+"), ""); };
        if (trim(args[0]) == "layer" && trim(name_arg) == "name") continue;  // Impl::tap_dev forwarding to tap_host
        if (lits.empty()) {
          const std::string var = std::regex_replace(name_arg, std::regex("\\s+"), "");
          std::smatch m;
          const std::regex def("const char\\* " + var + " = ([^;]*);");
          ASSERT_TRUE(std::regex_search(text, m, def)) << file << ": cannot resolve tap name '" << var << "'";
          lits = literals(m[1]);
        } else if (name_arg.find('+') != std::string::npos) {
          ASSERT_EQ(lits.size(), 2u) << file << ": tap name " << name_arg;
          lits = {lits[0] + "attn" + lits[1], lits[0] + "ffn" + lits[1]};
        }
        for (const std::string& n : lits) {
          tap_names.insert(n);
          EXPECT_GE(ds4::tap_index(n), 0) << file << ": " << fn << " of undeclared tap '" << n << "'";
        }
        for (const std::string& v : literals(args[variant_arg])) check_variant(v, file + " (" + fn + ")");
      }
    }
  }
  EXPECT_GT(n_tap_calls, 20);
  // The CUDA forward emits every declared tap.
  for (const ds4::TapInfo& t : ds4::all_taps()) EXPECT_TRUE(tap_names.count(t.name)) << "CUDA never taps " << t.name;
  for (const std::string& d : kCudaKnownDrift)
    EXPECT_TRUE(drift_seen.count(d)) << "'" << d << "' is no longer used by the CUDA forward: drop it from kCudaKnownDrift";

  // The variant_name() tables of the CUDA ops and the cuda_matmul table.
  const std::regex ret("return \"([a-z0-9_]+__[a-z0-9_]+)\"|return v == [^?]+\\? \"([a-z0-9_]+)\"\\s*: \"([a-z0-9_]+)\"");
  int n_names = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(src / "engine/ops")) {
    const std::string file = e.path().filename().string();
    if (file.size() < 8 || file.substr(file.size() - 8) != "_cuda.cu") continue;
    const std::string text = read_source(e.path());
    for (std::sregex_iterator it(text.begin(), text.end(), ret), end; it != end; ++it)
      for (int g = 1; g <= 3; ++g) {
        const std::string v = (*it)[g];
        if (v.empty() || v.find("__unknown") != std::string::npos) continue;  // unreachable fallbacks
        ++n_names;
        check_variant(v, file + " variant_name()");
      }
  }
  const std::string mm = read_source(src / "engine/include/ds4/cuda_matmul.h");
  const std::regex row("\\{CudaMatmulVariant::[a-z0-9_]+, \"([a-z0-9_]+)\"");
  for (std::sregex_iterator it(mm.begin(), mm.end(), row), end; it != end; ++it) {
    ++n_names;
    check_variant((*it)[1], "cuda_matmul.h");
  }
  EXPECT_GT(n_names, 15);
}

}  // namespace
