// Hardening regressions and fault tests (issue 8).
//
//   FuzzRegression.*   every input under tests/fuzz/regressions/<target>/ that once made a fuzz
//                      target fail, replayed through the same reader, plus the specific behaviour
//                      of each fix (one-line errors, JSON -0.0, HDF5 global-heap loop, ...).
//   Fixed.*            bugs found by the bad-input table (tests/unit/bad_input_test.cpp).
//   Fault.*            the real tools under faults: `ds4-parity run` killed with SIGKILL while it
//                      writes its dump and run again; disk full (a 1 MiB tmpfs; skipped where
//                      mount is not permitted) for the dump and GGUF writers; an ablation matrix
//                      killed and resumed once `ds4-parity ablate` exists.
// scripts/fault-tests runs the same faults from the shell against any build.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "ds4/ci_gate.h"
#include "ds4/config.h"
#include "ds4/drivers.h"
#include "ds4/dump.h"
#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/gates.h"
#include "ds4/gguf.h"
#include "ds4/json.h"
#include "ds4/taps.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;
extern char** environ;

namespace {

const std::string kRegressions = std::string(DS4_SOURCE_DIR) + "/tests/fuzz/regressions";
const std::string kParity = std::string(DS4_BINARY_DIR) + "/harness/ds4-parity";
const std::string kSynth = std::string(DS4_BINARY_DIR) + "/engine/ds4-synth";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string scratch_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() /
                     ("ds4-hardening-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::vector<std::string> regression_inputs(const std::string& target) {
  std::vector<std::string> out;
  const fs::path dir = fs::path(kRegressions) / target;
  if (fs::exists(dir))
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Either fn() succeeds or it throws ds4::Error with a one-line message; anything else fails.
void expect_clean(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
  } catch (const ds4::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << what << ": " << m;
    EXPECT_EQ(m.find('\r'), std::string::npos) << what << ": " << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": not a ds4::Error: " << e.what();
  }
}

// Runs fn on a thread; a hang fails the test and ends the program (a stuck reader cannot be
// stopped from outside), instead of waiting for CTest's timeout.
void within_seconds(int seconds, std::function<void()> fn, const std::string& what) {
  std::packaged_task<void()> task(std::move(fn));
  auto done = task.get_future();
  std::thread(std::move(task)).detach();
  if (done.wait_for(std::chrono::seconds(seconds)) != std::future_status::ready) {
    ADD_FAILURE() << what << " still running after " << seconds << " s (hang)";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  done.get();
}

// A swapped process environment for read_environment() (no setenv: glibc keeps every string).
struct ScopedEnviron {
  std::vector<std::string> entries;
  std::vector<char*> ptrs;
  char** saved;
  explicit ScopedEnviron(std::vector<std::string> e) : entries(std::move(e)), saved(environ) {
    for (std::string& s : entries) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
    environ = ptrs.data();
  }
  ~ScopedEnviron() { environ = saved; }
};

std::string one_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Fuzz regressions
// ---------------------------------------------------------------------------------------------

TEST(FuzzRegression, ErrorMessagesAreOneLine) {
  EXPECT_EQ(std::string(ds4::Error("a\nb\rc").what()), "a\\nb\\rc");
  EXPECT_EQ(std::string(ds4::Error("tab\tstays").what()), "tab\tstays");
}

TEST(FuzzRegression, GgufKeyWithNewline) {
  for (const std::string& in : regression_inputs("gguf")) {
    expect_clean(
        [&] {
          const auto f = ds4::GgufFile::open(in);
          for (const auto& kv : f->metadata()) expect_clean([&] { f->get_u32(kv.first); }, in + " get_u32");
        },
        in);
  }
  // The getters quote the key they were asked for.
  ds4::GgufWriter w;
  w.set_str("bad\nkey", "x");
  const std::string path = scratch_dir("gguf") + "/k.gguf";
  w.write(path);
  const auto f = ds4::GgufFile::open(path);
  const std::string m = one_error([&] { f->get_u32("bad\nkey"); });
  EXPECT_NE(m.find("bad\\nkey"), std::string::npos) << m;
}

// ne = [0, 2^54, 2^45]: zero elements, but rows() (the product of ne[1..]) overflowed int64.
TEST(FuzzRegression, GgufZeroDimensionDoesNotHideOverflow) {
  const std::string in = kRegressions + "/gguf/rows-overflow-zero-dim";
  const std::string m = one_error([&] { ds4::GgufFile::open(in); });
  EXPECT_NE(m.find("element count overflows"), std::string::npos) << m;
}

TEST(FuzzRegression, JsonNegativeZeroRoundTrips) {
  const ds4::Json z = ds4::Json::parse("-0.0", "t");
  EXPECT_TRUE(std::signbit(z.number));
  EXPECT_EQ(z.dump(), "-0.0");
  EXPECT_TRUE(std::signbit(ds4::Json::parse(z.dump(), "t").number));
  for (const std::string& in : regression_inputs("json")) {
    const ds4::Json j = ds4::Json::parse(slurp(in), in);
    EXPECT_EQ(ds4::Json::parse(j.dump(), "dump").dump(), j.dump()) << in;
  }
}

TEST(FuzzRegression, StringParsersGiveOneLineErrors) {
  for (const std::string& in : regression_inputs("gates"))
    expect_clean([&] { ds4::GateSet::parse(slurp(in)); }, in);
  EXPECT_NE(one_error([] { ds4::GateSet::parse("\n,,s,=ls,w"); }), "");
  for (const std::string& in : regression_inputs("fault"))
    expect_clean([&] { ds4::FaultInjection::parse(slurp(in)); }, in);
  for (const std::string& in : regression_inputs("tap_filter")) {
    const std::string s = slurp(in);
    std::vector<std::string> f(1);
    for (char c : s) {
      if (c == '\n' && f.size() < 3) f.emplace_back();
      else f.back() += c;
    }
    f.resize(3);
    expect_clean([&] { ds4::TapFilter::parse(f[0], f[1], f[2]); }, in);
  }
  EXPECT_NE(one_error([] { ds4::TapFilter::parse("", "", "31-\n311"); }).find("31-\\n311"),
            std::string::npos);
  for (const std::string& in : regression_inputs("parity_toml"))
    expect_clean([&] { ds4::parse_parity_config(slurp(in), "fuzz.toml"); }, in);
}

TEST(FuzzRegression, EnvironmentNameWithControlBytes) {
  for (const std::string& in : regression_inputs("config")) {
    // Lines before the first empty line are environment entries (tests/fuzz/fuzz_config.cpp).
    std::vector<std::string> env;
    std::string line;
    for (char c : slurp(in)) {
      if (c != '\n') {
        line += c;
        continue;
      }
      if (line.empty()) break;
      env.push_back(line);
      line.clear();
    }
    ScopedEnviron scoped(env);
    expect_clean([] { ds4::read_environment(); }, in);
  }
  ScopedEnviron scoped({"DS4_\r\nX=1"});
  const std::string m = one_error([] { ds4::read_environment(); });
  EXPECT_NE(m.find("DS4_\\r\\nX"), std::string::npos) << m;
}

TEST(FuzzRegression, DumpReaderNeverHangsOnACorruptGlobalHeap) {
  // libhdf5 1.10 loops forever on a global heap collection with a zero-size free-space entry.
  // DumpReader::open refuses such files before HDF5 reads them: first by the DS4 header (these
  // inputs have none, like any file not written by DumpWriter), and behind it by a scan of the
  // global heaps.
  for (const std::string& in : regression_inputs("dump")) {
    within_seconds(60, [&] {
      const std::string m = one_error([&] { ds4::DumpReader::open(in); });
      EXPECT_NE(m, "") << in << " opened";
      EXPECT_NE(m.find("not a readable HDF5 dump ("), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos);
    }, in);
  }
}

TEST(FuzzRegression, DumpReaderRefusesExtentsLargerThanTheFile) {
  // A dataspace is metadata: a dataset may claim 2^40 elements in a 30 KB file. The reader
  // allocated that many before reading (std::bad_alloc, exit 3); now it names the dataset.
  const std::string dir = scratch_dir("extent");
  const std::string path = dir + "/big.h5";
  {
    ds4::RunManifest m;
    m.tokens = {1, 2};
    ds4::DumpWriter w(path, m, ds4::TapLevel::Full);
    const float v[4] = {1, 2, 3, 4};
    w.begin_forward(0, 1);
    w.tap(0, "q", 0, v, 4, "x__ref");
    w.finish();
  }
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Ldelete(f, "tokens", H5P_DEFAULT), 0);
  const hsize_t dims = hsize_t(1) << 40;
  const hid_t space = H5Screate_simple(1, &dims, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  const hsize_t chunk = 1024;
  H5Pset_chunk(dcpl, 1, &chunk);  // chunked: nothing is allocated until written
  const hid_t d = H5Dcreate2(f, "tokens", H5T_STD_I32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(f);
  ds4::reseal_dump(path);  // past the DS4 header check: the reader's size check must catch it
  const std::string m = one_error([&] { ds4::DumpReader::open(path); });
  EXPECT_NE(m.find("tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("more than the whole file"), std::string::npos) << m;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Bugs found by the bad-input table
// ---------------------------------------------------------------------------------------------

TEST(Fixed, FaultSpecNumbersDoNotWrap) {
  EXPECT_NE(one_error([] { ds4::FaultInjection::parse("4294967296:q:0"); }).find("layer"), std::string::npos);
  EXPECT_NE(one_error([] { ds4::FaultInjection::parse("0:q:99999999999999999999"); }), "");
  EXPECT_NE(one_error([] { ds4::FaultInjection::parse("0:q:0:99999999999999999999"); }), "");
  const ds4::FaultInjection f = ds4::FaultInjection::parse("-1:result_output:3:2147483648");
  EXPECT_EQ(f.layer, -1);
  EXPECT_EQ(f.element, 2147483648LL);
}

TEST(Fixed, TokenFileThatIsADirectory) {
  const std::string dir = scratch_dir("tokdir");
  fs::create_directories(dir + "/t.txt");
  fs::create_directories(dir + "/t.i32");
  for (const char* p : {"/t.txt", "/t.i32"}) {
    const std::string m = one_error([&] { ds4::read_token_file(dir + p, 100); });
    EXPECT_NE(m.find("not a regular file"), std::string::npos) << m;
  }
  fs::remove_all(dir);
}

TEST(Fixed, ProfileErrorsNameTheirSource) {
  {
    ScopedEnviron scoped({"DS4_PROFILE=fast"});
    EXPECT_NE(one_error([] { ds4::read_environment(); }).find("DS4_PROFILE"), std::string::npos);
  }
  ScopedEnviron scoped({});
  const ds4::EnvSettings env = ds4::read_environment();
  std::vector<std::string> args = {"ds4", "--profile", "fast"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  EXPECT_NE(one_error([&] { ds4::parse_ds4_cli(3, argv.data(), env); }).find("--profile"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Faults on the real tools
// ---------------------------------------------------------------------------------------------

namespace {

struct Child {
  pid_t pid = -1;
  int status = 0;
};

// Starts `argv` with stdout/stderr to files in `dir`.
Child spawn(const std::vector<std::string>& args, const std::string& dir) {
  Child c;
  c.pid = fork();
  if (c.pid == 0) {
    std::freopen((dir + "/child.out").c_str(), "w", stdout);
    std::freopen((dir + "/child.err").c_str(), "w", stderr);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return c;
}

int wait_exit(Child& c) {
  waitpid(c.pid, &c.status, 0);
  return WIFEXITED(c.status) ? WEXITSTATUS(c.status) : 128 + WTERMSIG(c.status);
}

std::vector<std::string> tmp_files(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path().string());
  return out;
}

// Reads every row of a dump (throws on any defect).
size_t read_all(const std::string& path) {
  const ds4::DumpReader r = ds4::DumpReader::open(path);
  size_t rows = 0;
  for (const ds4::TapKey& k : r.taps()) r.for_each_row(k.layer, k.name, [&](const ds4::DumpRow&) { ++rows; });
  return rows;
}

std::string write_tokens(const std::string& dir, int n) {
  const std::string path = dir + "/tokens.txt";
  std::ofstream f(path);
  for (int32_t t : ds4::testing::pseudo_tokens(n, 512, 11)) f << t << ' ';
  return path;
}

}  // namespace

TEST(Fault, DumpWriteKilledThenRunAgain) {
  const std::string dir = scratch_dir("kill");
  const std::string out = dir + "/x.h5";
  const std::vector<std::string> cmd = {kParity, "run", "-m", ds4::testing::tiny_model_path("ds4"),
                                        "--tokens", write_tokens(dir, 160), "--threads", "2", "-o", out};
  // Kill it as soon as the temporary dump appears: the tool is writing HDF5 then.
  bool killed_mid_write = false;
  for (int attempt = 0; attempt < 3 && !killed_mid_write; ++attempt) {
    Child c = spawn(cmd, dir);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
    while (std::chrono::steady_clock::now() < deadline) {
      if (!tmp_files(dir, "x.h5.tmp.").empty()) {
        kill(c.pid, SIGKILL);
        killed_mid_write = true;
        break;
      }
      if (waitpid(c.pid, &c.status, WNOHANG) == c.pid) break;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (killed_mid_write) {
      waitpid(c.pid, &c.status, 0);
      EXPECT_TRUE(WIFSIGNALED(c.status));
    }
    if (!killed_mid_write) fs::remove(out);  // finished first: try again
  }
  if (!killed_mid_write) GTEST_SKIP() << "the dump was written before it could be killed (3 tries)";
  EXPECT_FALSE(fs::exists(out)) << "a killed write published a dump";
  const std::vector<std::string> stale = tmp_files(dir, "x.h5.tmp.");
  EXPECT_LE(stale.size(), 1u);

  // The next run ignores the stale temporary (its own has another pid) and publishes a complete
  // dump; the stale file is left for the user (its name says whose it was).
  Child again = spawn(cmd, dir);
  ASSERT_EQ(wait_exit(again), 0) << slurp(dir + "/child.err");
  EXPECT_GT(read_all(out), 0u);
  for (const std::string& s : stale) EXPECT_TRUE(fs::exists(s));
  fs::remove_all(dir);
}

TEST(Fault, DumpWriteKilledBeforeFinishLeavesNothing) {
  const std::string dir = scratch_dir("kill-early");
  const std::string out = dir + "/x.h5";
  Child c = spawn({kParity, "run", "-m", ds4::testing::tiny_model_path("ds4"), "--tokens",
                   write_tokens(dir, 160), "--threads", "1", "-o", out},
                  dir);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // loading or running the model
  kill(c.pid, SIGKILL);
  wait_exit(c);
  EXPECT_FALSE(fs::exists(out));
  // Killed before finish() there is no temporary either (unless the run was already writing).
  EXPECT_LE(tmp_files(dir, "x.h5.tmp.").size(), 1u);
  fs::remove_all(dir);
}

namespace {

// A 1 MiB tmpfs mounted for the test, or "" when this process may not mount.
struct SmallTmpfs {
  std::string dir;
  bool mounted = false;
  SmallTmpfs() {
    dir = scratch_dir("full") + "/fs";
    fs::create_directories(dir);
    mounted = ::geteuid() == 0 && ::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m") == 0;
  }
  ~SmallTmpfs() {
    if (mounted) ::umount(dir.c_str());
    fs::remove_all(fs::path(dir).parent_path());
  }
};

}  // namespace

TEST(Fault, DiskFullWhileWritingADump) {
  SmallTmpfs tmpfs;
  if (!tmpfs.mounted) GTEST_SKIP() << "cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)";
  const std::string out = tmpfs.dir + "/x.h5";
  const std::string dir = fs::path(tmpfs.dir).parent_path().string();
  Child c = spawn({kParity, "run", "-m", ds4::testing::tiny_model_path("ds4"), "--tokens",
                   write_tokens(dir, 64), "-o", out},
                  dir);
  EXPECT_EQ(wait_exit(c), 2);  // was SIGSEGV (139) in libhdf5's exit handler
  const std::string err = slurp(dir + "/child.err");
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find(out), std::string::npos) << err;
  EXPECT_NE(err.find("No space left on device"), std::string::npos) << err;
  EXPECT_TRUE(fs::is_empty(tmpfs.dir)) << "a partial file was left";
}

TEST(Fault, DiskFullWhileWritingAGguf) {
  SmallTmpfs tmpfs;
  if (!tmpfs.mounted) GTEST_SKIP() << "cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)";
  const std::string out = tmpfs.dir + "/m.gguf";
  const std::string dir = fs::path(tmpfs.dir).parent_path().string();
  Child c = spawn({kSynth, "--threads", "2", "-o", out}, dir);  // the 5.4 MiB tiny model
  EXPECT_EQ(wait_exit(c), 2);
  const std::string err = slurp(dir + "/child.err");
  EXPECT_EQ(err, "ds4-synth: " + out + ": write failed: No space left on device\n");
  EXPECT_TRUE(fs::is_empty(tmpfs.dir)) << "a partial file was left";
}

TEST(Fault, AblationKilledAndResumed) {
  // `ds4-parity ablate` keeps one file per finished cell in its --state folder and skips those on
  // a rerun. Kill -9 the matrix once a cell is stored, rerun it: it completes, says how many
  // cells it resumed, and ranks the gates exactly as an uninterrupted matrix does.
  const std::string dir = scratch_dir("ablate");
  {
    Child probe = spawn({kParity, "ablate", "--help"}, dir);
    if (wait_exit(probe) != 0) {
      fs::remove_all(dir);
      GTEST_SKIP() << "ds4-parity has no `ablate` subcommand in this build";
    }
  }
  const std::string tokens = write_tokens(dir, 12);
  auto cmd = [&](const std::string& state, const std::string& json) {
    return std::vector<std::string>{kParity, "ablate", "-m", ds4::testing::tiny_model_path("ds4"),
                                    "--tokens", tokens, "--generate", "4", "--only", "q8_gemm,f16_gemm",
                                    "--no-minimal", "--quiet", "--threads", "2", "--state", state,
                                    "--json", json};
  };
  auto stored_cells = [](const std::string& state) {
    size_t n = 0;
    if (fs::exists(state + "/cells"))
      for (const auto& e : fs::directory_iterator(state + "/cells"))
        n += e.path().extension() == ".json";
    return n;
  };
  const std::string killed = dir + "/killed";
  Child c = spawn(cmd(killed, dir + "/killed.json"), dir);
  bool killed_mid = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
  while (std::chrono::steady_clock::now() < deadline) {
    if (stored_cells(killed) >= 1) {
      kill(c.pid, SIGKILL);
      killed_mid = true;
      break;
    }
    if (waitpid(c.pid, &c.status, WNOHANG) == c.pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (!killed_mid) {
    fs::remove_all(dir);
    GTEST_SKIP() << "the matrix finished before a cell was stored";
  }
  waitpid(c.pid, &c.status, 0);
  // Every stored cell is whole (cells are written atomically).
  for (const auto& e : fs::directory_iterator(killed + "/cells"))
    if (e.path().extension() == ".json") expect_clean([&] { ds4::Json::parse(slurp(e.path()), e.path()); }, e.path());
  Child resumed = spawn(cmd(killed, dir + "/resumed.json"), dir);
  ASSERT_EQ(wait_exit(resumed), 0) << slurp(dir + "/child.err");
  Child fresh = spawn(cmd(dir + "/fresh", dir + "/fresh.json"), dir);
  ASSERT_EQ(wait_exit(fresh), 0) << slurp(dir + "/child.err");
  const ds4::Json r = ds4::Json::parse(slurp(dir + "/resumed.json"), "resumed.json");
  const ds4::Json f = ds4::Json::parse(slurp(dir + "/fresh.json"), "fresh.json");
  EXPECT_TRUE(r.at("complete").as_bool());
  EXPECT_GE(r.at("cells_resumed").as_int(), 1);
  EXPECT_EQ(r.at("cells_resumed").as_int() + r.at("cells_run").as_int(), r.at("cells_total").as_int());
  EXPECT_EQ(r.at("ranking").dump(), f.at("ranking").dump()) << "a resumed matrix ranks differently";
  fs::remove_all(dir);
}
