// Reports: Markdown and a self-contained HTML page from real ablate / bisect / sweep results on the
// tiny model; the page references nothing outside itself and, when Chromium is installed
// (scripts/report-check installs it), renders in headless Chromium with its tables, heatmaps and
// curves, checked on the DOM Chromium dumps after running the page; a screenshot is kept in the
// build folder (report-check/report.png) as a CI artifact.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include <unistd.h>

#include "ds4/ablate.h"
#include "ds4/bisect.h"
#include "ds4/error.h"
#include "ds4/report.h"
#include "ds4/sweep.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

namespace {

// CTest runs each test of this file as its own process, possibly at the same time: each process
// works in its own folder; the rendered page and its screenshot are then moved to report-check/.
const std::string kKeep = std::string(DS4_BINARY_DIR) + "/report-check";
const std::string kOut = kKeep + "/p" + std::to_string(::getpid());

std::string read(const std::string& p) {
  std::ifstream f(p);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Results of the three commands on the tiny model, written as the CLI writes them.
std::vector<std::string> make_results() {
  fs::remove_all(kOut);
  fs::create_directories(kOut);
  const std::string model = ds4::testing::tiny_model_path("ds4");
  ds4::AblateConfig a;
  a.model_path = model;
  a.prompts = {{"hello", "Hello! Who are you?", ""}, {"math", "What is 17 times 23?", ""}};
  a.generate = 6;
  a.gates = {"q8_gemm", "moe_tiles", "dispatch_batchwide"};
  a.threads = 2;
  a.state_dir = kOut + "/state";
  a.progress = nullptr;
  ds4::write_file_atomic(kOut + "/ablate.json", ds4::json_indented(ds4::ablate_result_json(ds4::run_ablation(a))));
  ds4::BisectConfig b;
  b.model_path = model;
  b.tokens = ds4::testing::pseudo_tokens(16, 512);
  b.cand.mode = ds4::RunMode::Batched;
  b.cand.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  b.threads = 2;
  b.log = nullptr;
  ds4::write_file_atomic(kOut + "/bisect.json", ds4::json_indented(ds4::bisect_result_json(ds4::bisect(b))));
  ds4::SweepConfig s;
  s.model_path = model;
  s.tokens = ds4::testing::pseudo_tokens(16, 512);
  s.prefix = 4;
  s.max_width = 4;
  s.lengths = {1, 4, 16};
  s.gates = ds4::GateSet::parse("all=exact,q8_gemm=fast");
  s.threads = 2;
  s.progress = nullptr;
  ds4::write_file_atomic(kOut + "/sweep.json", ds4::json_indented(ds4::sweep_result_json(ds4::sweep(s))));
  return {kOut + "/ablate.json", kOut + "/bisect.json", kOut + "/sweep.json"};
}

class Report : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { html_path_ = ds4::write_report(ds4::load_report_inputs(make_results()), kOut); }
  static void TearDownTestSuite() { fs::remove_all(kOut); }
  static std::string html_path_;
};
std::string Report::html_path_;

TEST_F(Report, MarkdownHasTheTablesAndManifests) {
  const std::string md = read(kOut + "/report.md");
  for (const char* g : {"q8_gemm", "moe_tiles", "dispatch_batchwide"})
    EXPECT_NE(md.find(std::string("| `") + g + "` |"), std::string::npos) << g;
  for (const char* s : {"## Ablation matrix", "### Gates x metrics", "## Bisect", "## Width sweep", "## Run manifests",
                        "model_sha256:", "minimal exact set", "verdict: **local**"})
    EXPECT_NE(md.find(s), std::string::npos) << s;
}

TEST_F(Report, HtmlIsSelfContained) {
  const std::string html = read(html_path_);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);
  EXPECT_NE(html.find("<svg class=\"heatmap\""), std::string::npos);
  EXPECT_NE(html.find("<svg class=\"chart\""), std::string::npos);
  EXPECT_NE(html.find("id=\"gates-table\""), std::string::npos);
}

TEST_F(Report, InputsAreRecognisedBySchema) {
  const std::string bad = kOut + "/bad.json";
  ds4::write_file_atomic(bad, "{\"schema\": \"something-else\"}\n");
  EXPECT_THROW(ds4::load_report_inputs({bad}), ds4::Error);
  EXPECT_THROW(ds4::load_report_inputs({kOut + "/bisect.json", kOut + "/bisect.json"}), ds4::Error);
  EXPECT_THROW(ds4::load_report_inputs({}), ds4::Error);
}

std::string chromium() {
  for (const char* c : {"chromium", "chromium-browser"})
    if (std::system((std::string("command -v ") + c + " >/dev/null 2>&1").c_str()) == 0) return c;
  return "";
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST_F(Report, RendersInHeadlessChromium) {
  const std::string c = chromium();
  if (c.empty()) GTEST_SKIP() << "chromium is not installed (scripts/report-check installs it)";
  const std::string profile = kOut + "/chromium-profile";
  fs::create_directories(profile);
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
                            " --disable-background-networking --disable-component-update --disable-sync"
                            " --user-data-dir=" + profile;
  const std::string url = "file://" + fs::absolute(html_path_).string();
  const std::string dom = run("timeout 120 " + c + flags + " --dump-dom " + url + " 2>/dev/null");
  ASSERT_FALSE(dom.empty()) << "chromium printed no DOM";
  // The inline script ran and counted what rendered.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(dom, m, std::regex(
      "data-render-check=\"tables=(\\d+) svgs=(\\d+) rects=(\\d+) polylines=(\\d+) gate-rows=(\\d+)\"")))
      << "the page's script did not run";
  EXPECT_GE(std::stoi(m[1]), 4);   // gates, cells, bisect, sweep tables
  EXPECT_GE(std::stoi(m[2]), 6);   // heatmaps, legend, curves
  EXPECT_GT(std::stoi(m[3]), 100); // heatmap cells
  EXPECT_GT(std::stoi(m[4]), 3);   // curve lines
  EXPECT_EQ(std::stoi(m[5]), 3);   // one row per gate
  for (const char* g : {"q8_gemm", "moe_tiles", "dispatch_batchwide"})
    EXPECT_NE(dom.find(std::string("data-gate=\"") + g + "\""), std::string::npos) << g;
  EXPECT_NE(dom.find("id=\"strict\">bit-equal"), std::string::npos);
  EXPECT_NE(dom.find("id=\"bisect-gate\">q8_gemm"), std::string::npos);
  const std::string png = kOut + "/report.png";
  run("timeout 120 " + c + flags + " --window-size=1400,3000 --screenshot=" + png + " " + url + " 2>/dev/null");
  ASSERT_TRUE(fs::exists(png));
  EXPECT_GT(fs::file_size(png), 10000u);
  // Kept as CI artifacts (rename: atomic, and the work folder is removed afterwards).
  fs::rename(png, kKeep + "/report.png");
  fs::rename(html_path_, kKeep + "/report.html");
  std::printf("[report] rendered in %s; kept %s/report.png and report.html\n", c.c_str(), kKeep.c_str());
}

}  // namespace
