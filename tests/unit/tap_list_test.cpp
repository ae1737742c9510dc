// The tap and variant lists (engine/taps.def, engine/variants.def) against what the forwards emit:
//   - the lists themselves: round trips, name shapes, gates.def's variants are members;
//   - the CPU forward of the tiny model (decode, batched all-exact and all-fast, ds4 and plain
//     profile, MTP draft, torch top-k ties) emits only declared taps, each declared tap at least
//     once, within each (layer, position) in the declared dataflow order, and only declared
//     variants of the CPU backend;
//   - the one graph and its backends, statically (no GPU needed): taps are emitted only by the
//     forward graph (engine/forward), which every backend runs, so tap sets and order are the same
//     for every built backend; no backend source (engine/backend/**) taps; the graph taps every
//     declared tap; the variant literals of the graph are declared for every backend, those of
//     backend/cpu for the CPU, those of backend/cuda/forward_cuda*.cpp, the variant_name() tables
//     of ops/*/*_cuda.cu and the cuda_matmul table for CUDA.
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

// ---- (c): the one graph and its backends, statically ------------------------------------------

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

// The C++ sources of a folder (recursively) with the given extensions.
std::vector<std::filesystem::path> sources(const std::filesystem::path& dir, const std::set<std::string>& exts) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file() && exts.count(e.path().extension().string())) out.push_back(e.path());
  return out;
}

// Every `<op>__<what>` literal of `text` must be a variants.def variant of `backend` ("cpu",
// "cuda", or both for the graph, which reports its own provenance on every backend).
void check_variant_literals(const std::string& text, const std::string& where, const std::vector<std::string>& backends) {
  static const std::regex variant_shape("[a-z0-9_]+__[a-z0-9_]+");
  for (const std::string& l : literals(text)) {
    if (!std::regex_match(l, variant_shape)) continue;
    const ds4::VariantInfo* info = ds4::find_variant(l);
    for (const std::string& b : backends)
      EXPECT_TRUE(info && has_backend(*info, b)) << where << ": variant '" << l << "' is not a " << b
                                                 << " variant of variants.def";
  }
}

TEST(TapList, TheGraphAloneTapsForEveryBackend) {
  const std::filesystem::path src = DS4_SOURCE_DIR;
  // No backend taps: a backend cannot add, drop, rename or reorder a tap, so every built backend
  // emits the graph's taps in the graph's order (tests/unit/cuda_forward_test.cpp compares a GPU
  // run's taps with the CPU's on a GPU machine).
  int n_backend_files = 0;
  for (const auto& p : sources(src / "engine/backend", {".cpp", ".h", ".cu", ".cuh"})) {
    ++n_backend_files;
    const std::string text = read_source(p);
    for (const char* forbidden : {"Tap::", "tap_name(", "TapSink", "FaultInjection", "fault."})
      EXPECT_EQ(text.find(forbidden), std::string::npos)
          << p.filename() << " uses '" << forbidden << "': taps and fault injection belong to the graph (engine/forward)";
  }
  EXPECT_GT(n_backend_files, 10);
  // The graph taps every declared tap (by the enum, so an undeclared name does not compile).
  std::set<std::string> tapped;
  const std::regex tap_use("Tap::([a-z0-9_]+)");
  for (const auto& p : sources(src / "engine/forward", {".cpp"})) {
    const std::string text = read_source(p);
    for (std::sregex_iterator it(text.begin(), text.end(), tap_use), end; it != end; ++it) tapped.insert((*it)[1]);
    check_variant_literals(text, p.filename().string(), {"cpu", "cuda"});
  }
  for (const ds4::TapInfo& t : ds4::all_taps()) EXPECT_TRUE(tapped.count(t.name)) << "the graph never taps " << t.name;
}

TEST(TapList, BackendVariantLiteralsAreDeclared) {
  const std::filesystem::path src = DS4_SOURCE_DIR;
  for (const auto& p : sources(src / "engine/backend/cpu", {".cpp"}))
    check_variant_literals(read_source(p), p.filename().string(), {"cpu"});
  int n_cuda_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(src / "engine/backend/cuda")) {
    const std::string file = e.path().filename().string();
    if (file.rfind("forward_cuda", 0) != 0 || e.path().extension() != ".cpp") continue;
    ++n_cuda_files;
    check_variant_literals(read_source(e.path()), file, {"cuda"});
  }
  EXPECT_GE(n_cuda_files, 3);

  // The variant_name() tables of the CUDA ops and the cuda_matmul table.
  auto check_cuda = [](const std::string& v, const std::string& where) {
    const ds4::VariantInfo* info = ds4::find_variant(v);
    EXPECT_TRUE(info && has_backend(*info, "cuda")) << where << ": variant '" << v
                                                     << "' is not a CUDA variant of variants.def";
  };
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
        check_cuda(v, file + " variant_name()");
      }
  }
  const std::string mm = read_source(src / "engine/include/ds4/cuda_matmul.h");
  const std::regex row("\\{CudaMatmulVariant::[a-z0-9_]+, \"([a-z0-9_]+)\"");
  for (std::sregex_iterator it(mm.begin(), mm.end(), row), end; it != end; ++it) {
    ++n_names;
    check_cuda((*it)[1], "cuda_matmul.h");
  }
  EXPECT_GT(n_names, 15);
}

}  // namespace
