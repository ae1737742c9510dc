// Ablation matrix on the tiny model: every CPU gate ranked, the strict cell bitwise equal, the
// minimal exact set reported and verified; resume after SIGKILL loses and repeats no cell;
// shards merge; a changed plan is refused; ddmin finds 1-minimal sets.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "ds4/ablate.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
  const std::string d = std::string(DS4_BINARY_DIR) + "/test-tmp/ablate/" + name;
  fs::remove_all(d);
  fs::create_directories(fs::path(d).parent_path());
  return d;
}

ds4::AblateConfig small_config(const std::string& state) {
  ds4::AblateConfig cfg;
  cfg.model_path = ds4::testing::tiny_model_path("ds4");
  cfg.prompts = {{"hello", "Hello! Who are you?", ""}};
  cfg.generate = 8;
  cfg.gates = {"q8_gemm", "f16_gemm", "moe_tiles"};
  cfg.threads = 2;
  cfg.state_dir = state;
  cfg.progress = nullptr;
  return cfg;
}

std::set<std::string> saved_cells(const std::string& state) {
  std::set<std::string> s;
  if (!fs::exists(state + "/cells")) return s;
  for (const auto& e : fs::directory_iterator(state + "/cells"))
    if (e.path().extension() == ".json") s.insert(e.path().stem().string());
  return s;
}

TEST(Ablate, MatrixRanksEveryCpuGateOnTheTinyModel) {
  ds4::AblateConfig cfg;
  cfg.model_path = ds4::testing::tiny_model_path("ds4");
  // ~98 positions: past the indexer's top-k threshold (4 * 16 compressed rows), so the indexer,
  // top-k and batch-wide dispatch gates act too.
  cfg.prompts = {{"hello", "Hello! Who are you?", ""}};
  cfg.generate = 64;
  cfg.threads = 2;
  cfg.state_dir = fresh_dir("full");
  cfg.progress = nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  const ds4::AblateResult r = ds4::run_ablation(cfg);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  size_t cpu_gates = 0;
  for (const auto& g : ds4::all_gates()) cpu_gates += g.on_backend("cpu");
  ASSERT_TRUE(r.complete);
  EXPECT_EQ(r.cells_total, static_cast<int64_t>(2 * cpu_gates + 2));
  EXPECT_EQ(r.cells_run, r.cells_total);
  EXPECT_TRUE(r.strict_bit_equal) << "every gate exact must equal plain decode bit for bit";
  const ds4::CellResult* strict = r.cell("strict");
  ASSERT_NE(strict, nullptr);
  for (const auto& d : strict->prompts) {
    EXPECT_TRUE(d.bit_equal());
    EXPECT_EQ(d.rows_bitdiff, 0);
    EXPECT_GT(d.rows_compared, 1000);
    EXPECT_EQ(d.logits.max_abs, 0.0);
  }
  EXPECT_FALSE(r.cell("baseline")->agg.bit_equal);

  // Every CPU gate is ranked. On the ds4 mix every gate but f32_gemm (no F32 matrices) is
  // exercised and makes some tap differ alone; f32_gemm is ranked last as not exercised.
  ASSERT_EQ(r.alone.size(), cpu_gates);
  ASSERT_EQ(r.reduction_order.size(), cpu_gates);
  for (const ds4::GateRank& g : r.alone) {
    if (g.gate == "f32_gemm") {
      EXPECT_FALSE(g.exercised);
      EXPECT_TRUE(g.alone.bit_equal);
    } else {
      EXPECT_TRUE(g.exercised) << g.gate;
      EXPECT_FALSE(g.alone.bit_equal) << g.gate << " alone fast changed nothing";
      EXPECT_TRUE(g.alone.first_bit.found()) << g.gate;
    }
  }
  EXPECT_EQ(r.alone.back().gate, "f32_gemm");
  // Ranking is by severity: the first gate is at least as bad as the second on logits.
  EXPECT_GE(r.alone[0].alone.structural_flips, r.alone[1].alone.structural_flips);

  // The minimal exact set: every exercised gate, verified by a run.
  ASSERT_TRUE(r.minimal.computed);
  EXPECT_TRUE(r.minimal.verified);
  EXPECT_EQ(r.minimal.exact.size(), cpu_gates - 1);
  EXPECT_EQ(std::count(r.minimal.exact.begin(), r.minimal.exact.end(), "f32_gemm"), 0);
  const ds4::CellResult* v = r.cell(r.minimal.verify_cell);
  ASSERT_NE(v, nullptr);
  EXPECT_TRUE(v->agg.bit_equal);

  const std::string text = ds4::ablate_result_text(r);
  EXPECT_NE(text.find("minimal exact set"), std::string::npos);
  const ds4::Json j = ds4::ablate_result_json(r);
  EXPECT_EQ(j.at("ranking").as_array().size(), cpu_gates);
  EXPECT_EQ(ds4::Json::parse(ds4::json_indented(j), "result").at("cells").as_array().size(), 2 * cpu_gates + 2);
  std::printf("[ablate] tiny model: %lld cells over 1 prompt (%lld positions) in %.1f s\n",
              static_cast<long long>(r.cells_total), static_cast<long long>(strict->prompts[0].pos_end), wall);

  // A rerun resumes everything and runs nothing.
  const ds4::AblateResult again = ds4::run_ablation(cfg);
  EXPECT_EQ(again.cells_run, 0);
  EXPECT_EQ(again.minimal.exact, r.minimal.exact);
}

TEST(Ablate, F32GemmIsRankedOnTheF32Model) {
  ds4::AblateConfig cfg = small_config(fresh_dir("f32"));
  cfg.model_path = ds4::testing::tiny_model_path("f32");
  cfg.profile = ds4::Profile::Plain;
  cfg.gates = {"f32_gemm"};
  const ds4::AblateResult r = ds4::run_ablation(cfg);
  ASSERT_EQ(r.alone.size(), 1u);
  EXPECT_TRUE(r.alone[0].exercised);
  EXPECT_FALSE(r.alone[0].alone.bit_equal);
  EXPECT_TRUE(r.strict_bit_equal);
  EXPECT_EQ(r.minimal.exact, std::vector<std::string>{"f32_gemm"});
}

// --positions / --tap-layers: the reference holds only the captured rows and every cell is
// compared on them alone (what a long context needs: a full reference would not fit in memory).
TEST(Ablate, CaptureFilterLimitsTheReferenceAndTheComparison) {
  ds4::AblateConfig all = small_config(fresh_dir("capture-all"));
  all.gates = {"q8_gemm"};
  const ds4::AblateResult unfiltered = ds4::run_ablation(all);
  const ds4::DivPoint first_all = unfiltered.cell("baseline")->agg.first_bit;
  ASSERT_TRUE(first_all.found());
  ASSERT_LT(first_all.pos, 10) << "the test needs a divergence before the captured range";

  ds4::AblateConfig cfg = small_config(fresh_dir("capture"));
  cfg.gates = {"q8_gemm"};
  cfg.capture = ds4::TapFilter::parse("1,-1", "", "10-");
  const ds4::AblateResult r = ds4::run_ablation(cfg);
  ASSERT_TRUE(r.complete);
  EXPECT_TRUE(r.strict_bit_equal);
  const ds4::DivPoint first = r.cell("baseline")->agg.first_bit;
  ASSERT_TRUE(first.found());
  EXPECT_GE(first.pos, 10);
  EXPECT_TRUE(first.layer == 1 || first.layer == -1) << first.layer;
  EXPECT_EQ(r.cell("baseline")->agg.rows_unmatched, 0);

  // The cached reference holds the captured rows and nothing else.
  int64_t rows = 0;
  for (const auto& e : fs::directory_iterator(cfg.state_dir + "/refs")) {
    const ds4::DumpReader rd = ds4::DumpReader::open(e.path().string());
    EXPECT_EQ(rd.manifest().tap_filter, "layers=-1,1 positions=10-");
    for (const ds4::TapKey& k : rd.taps()) {
      EXPECT_TRUE(k.layer == 1 || k.layer == -1) << k.layer << " " << k.name;
      rd.for_each_row(k.layer, k.name, [&](const ds4::DumpRow& row) {
        EXPECT_GE(row.pos, 10);
        ++rows;
      });
    }
  }
  EXPECT_GT(rows, 0);
  // The filter is part of the plan: the same folder with another filter is refused.
  cfg.capture = ds4::TapFilter::parse("", "", "12-");
  EXPECT_THROW(ds4::run_ablation(cfg), ds4::Error);
}

// --backend cuda: every run of the matrix (reference decode included) on the GPU.
TEST(Ablate, CudaBackendWithoutADeviceIsAOneLineError) {
  if (ds4::cuda_device_info().available) GTEST_SKIP() << "a CUDA device is present";
  ds4::AblateConfig cfg = small_config(fresh_dir("cuda-none"));
  cfg.backend = "cuda";
  try {
    ds4::run_ablation(cfg);
    ADD_FAILURE() << "no error";
  } catch (const ds4::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("ablate --backend cuda: ", 0), 0u) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  cfg.backend = "tpu";
  EXPECT_THROW(ds4::run_ablation(cfg), ds4::Error);
}

TEST(Ablate, SmallMatrixOnCudaHasABitEqualStrictCell) {
  if (!ds4::cuda_device_info().available) GTEST_SKIP() << "no CUDA device";
  ds4::AblateConfig cfg = small_config(fresh_dir("cuda"));
  cfg.backend = "cuda";
  cfg.generate = 64;  // past the indexer's top-k threshold: indexed attention on the GPU too
  cfg.gates = {"q8_gemm", "moe_tiles", "indexed_attn_online"};
  const ds4::AblateResult r = ds4::run_ablation(cfg);
  ASSERT_TRUE(r.complete);
  EXPECT_TRUE(r.strict_bit_equal);
  for (const ds4::GateRank& g : r.alone) {
    EXPECT_TRUE(g.exercised) << g.gate;
    EXPECT_FALSE(g.alone.bit_equal) << g.gate << " alone fast changed nothing on the GPU";
  }
  EXPECT_FALSE(r.cell("baseline")->agg.bit_equal);
  std::printf("%s", ds4::ablate_result_text(r).c_str());
}

TEST(Ablate, ResumeAfterSigkillLosesAndRepeatsNoCell) {
  const std::string state = fresh_dir("kill");
  const ds4::AblateConfig cfg = small_config(state);
  const size_t total = ds4::matrix_cells(cfg.gates).size();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      ds4::AblateConfig c = cfg;
      c.minimal = false;
      ds4::run_ablation(c);
    } catch (...) {
      _exit(3);
    }
    _exit(0);
  }
  // Kill the matrix once a few cells are saved, wherever it is (usually inside the next cell).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (saved_cells(state).size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the matrix finished before it could be killed";
  const std::set<std::string> before = saved_cells(state);
  ASSERT_GE(before.size(), 3u);
  ASSERT_LT(before.size(), total);

  ds4::AblateConfig resume = cfg;
  std::vector<std::string> ran;
  resume.on_cell_saved = [&](const std::string& id) { ran.push_back(id); };
  const ds4::AblateResult r = ds4::run_ablation(resume);
  ASSERT_TRUE(r.complete);
  EXPECT_EQ(r.cells_resumed, static_cast<int64_t>(before.size()));
  std::set<std::string> matrix_ran;
  for (const std::string& id : ran)
    if (id.rfind("set.", 0) != 0) matrix_ran.insert(id);
  EXPECT_EQ(matrix_ran.size(), total - before.size());
  for (const std::string& id : matrix_ran) EXPECT_EQ(before.count(id), 0u) << id << " ran twice";
  EXPECT_EQ(saved_cells(state).size() - (ran.size() - matrix_ran.size()), total);
  // The audit log: every matrix cell saved exactly once, across both processes. A kill between a
  // cell's file and its "saved" line (the test kills right after the third file appears) is
  // accounted for by one "recovered" line from the resumed run, for a cell saved before the kill.
  std::map<std::string, int> saves, recovered;
  std::ifstream log(state + "/events.log");
  for (std::string line; std::getline(log, line);) {
    if (const size_t at = line.find(" saved "); at != std::string::npos) ++saves[line.substr(at + 7)];
    if (const size_t at = line.find(" recovered "); at != std::string::npos) ++recovered[line.substr(at + 11)];
  }
  for (const auto& c : ds4::matrix_cells(cfg.gates)) {
    EXPECT_EQ(saves[c.id] + recovered[c.id], 1) << c.id;
    if (recovered[c.id]) EXPECT_EQ(before.count(c.id), 1u) << c.id << " recovered but not saved before the kill";
  }
  EXPECT_TRUE(r.strict_bit_equal);
}

// A cell whose file was saved but whose "saved" line was lost (a kill between the two) is named
// "recovered" by the next run, once.
TEST(Ablate, ResumeLogsACellSavedWithoutItsLine) {
  const std::string state = fresh_dir("recover");
  ds4::AblateConfig cfg = small_config(state);
  cfg.gates = {"q8_gemm"};
  cfg.minimal = false;
  ds4::run_ablation(cfg);
  const std::string path = state + "/events.log";
  std::vector<std::string> kept;
  {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);)
      if (line.find(" saved strict") == std::string::npos) kept.push_back(line);
  }
  {
    std::ofstream out(path, std::ios::trunc);
    for (const std::string& line : kept) out << line << "\n";
  }
  auto count = [&](const std::string& word) {
    std::ifstream in(path);
    int n = 0;
    for (std::string line; std::getline(in, line);) n += line.find(word) != std::string::npos;
    return n;
  };
  ds4::run_ablation(cfg);
  EXPECT_EQ(count(" recovered strict"), 1);
  EXPECT_EQ(count(" recovered "), 1) << "only the cell whose line was lost";
  ds4::run_ablation(cfg);
  EXPECT_EQ(count(" recovered strict"), 1) << "recorded once";
}

TEST(Ablate, ShardsMergeAndPlanChangesAreRefused) {
  ds4::AblateConfig a = small_config(fresh_dir("shard0"));
  a.shard_index = 0;
  a.shard_count = 2;
  ds4::AblateConfig b = small_config(fresh_dir("shard1"));
  b.shard_index = 1;
  b.shard_count = 2;
  const ds4::AblateResult ra = ds4::run_ablation(a), rb = ds4::run_ablation(b);
  EXPECT_FALSE(ra.complete);
  EXPECT_EQ(ra.cells.size() + rb.cells.size(), ds4::matrix_cells(a.gates).size());
  ds4::AblateConfig m = small_config("");
  const ds4::AblateResult r = ds4::merge_ablation({a.state_dir, b.state_dir}, m);
  ASSERT_TRUE(r.complete);
  EXPECT_EQ(r.alone.size(), 3u);
  EXPECT_TRUE(r.strict_bit_equal);
  EXPECT_TRUE(r.minimal.verified);
  // The same folder with other settings is refused with a one-line message naming the setting.
  ds4::AblateConfig other = a;
  other.generate = 9;
  try {
    ds4::run_ablation(other);
    FAIL() << "a changed plan was accepted";
  } catch (const ds4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("generate"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ds4::merge_ablation({a.state_dir, fresh_dir("empty")}, m), ds4::Error);
}

TEST(Ablate, DdminFindsOneMinimalSets) {
  // Holds iff {2, 5} are both present.
  int calls = 0;
  auto need25 = [&](const std::vector<int>& s) {
    ++calls;
    return std::count(s.begin(), s.end(), 2) && std::count(s.begin(), s.end(), 5);
  };
  std::vector<int> all = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(ds4::ddmin(all, need25), (std::vector<int>{2, 5}));
  // Holds iff 3 is present.
  auto need3 = [](const std::vector<int>& s) { return std::count(s.begin(), s.end(), 3) > 0; };
  EXPECT_EQ(ds4::ddmin(all, need3), (std::vector<int>{3}));
  // Holds always: the empty set.
  EXPECT_TRUE(ds4::ddmin(all, [](const std::vector<int>&) { return true; }).empty());
  EXPECT_LT(calls, 40);
}

}  // namespace
