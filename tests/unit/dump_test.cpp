// The harness dump library: tap level / filter parsing, statistics, SHA-256, the HDF5 dump
// write -> read round trip (full and stats levels, fixed and variable-length taps, out-of-order
// positions, dataflow order), atomic writes (killed writer), the reader's refusals, and a real
// engine run captured through DumpWriter.
#include "ds4/dump.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/synth.h"
#include "ds4/taps.h"
#include "../support/errors.h"

namespace fs = std::filesystem;

namespace {

using ds4::testing::error_of;

std::string test_dir() {
  const std::string dir = std::string(DS4_BINARY_DIR) + "/test-dumps";
  fs::create_directories(dir);
  return dir;
}

std::string fresh_path(const std::string& name) {
  const std::string p = test_dir() + "/" + name;
  fs::remove(p);
  return p;
}

bool bits_equal(const std::vector<float>& a, const float* b, size_t n) {
  return a.size() == n && (n == 0 || std::memcmp(a.data(), b, n * sizeof(float)) == 0);
}

ds4::RunManifest sample_manifest() {
  ds4::RunManifest m;
  m.engine_version = "0.1.0";
  m.engine_git_sha = "abc123def456";
  m.model_path = "/models/tiny.gguf";
  m.model_sha256 = std::string(64, 'e');
  m.model_name = "ds4-synth-tiny-ds4-seed1234";
  m.backend = "cpu";
  m.device_name = "test cpu";
  m.sm_count = 132;
  m.cuda_version = "12.4";
  m.cublas_version = "12.4.5";
  m.profile = "ds4";
  m.gate_set = "all=fast";
  m.run_mode = "batched";
  m.width = 4;
  m.tokens = {1, 2, 3, 500, -7};
  m.seed = 0xfedcba9876543210ULL;
  m.command_line = "ds4-parity run --mode batched --width 4";
  m.extra = {{"prompt_id", "p7"}, {"note", "unicode ok: \xc3\xa9"}};
  return m;
}

// Deterministic row contents for (layer, name, pos), n elements.
std::vector<float> row_for(int layer, const std::string& name, int64_t pos, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(std::sin(0.37 * double(i + 1) + 1.3 * double(pos) +
                                       0.11 * double(layer) + double(name.size())));
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsing, statistics, hashes
// ---------------------------------------------------------------------------------------------

TEST(DumpTapLevel, ParseAndPrint) {
  for (auto l : {ds4::TapLevel::Off, ds4::TapLevel::Stats, ds4::TapLevel::Full})
    EXPECT_EQ(ds4::tap_level_from_name(ds4::tap_level_name(l)), l);
  EXPECT_STREQ(ds4::tap_level_name(ds4::TapLevel::Stats), "stats");
  EXPECT_EQ(error_of([] { ds4::tap_level_from_name("FULL"); }),
            "tap level 'FULL' is not one of off|stats|full");
  EXPECT_EQ(error_of([] { ds4::tap_level_from_name(""); }),
            "tap level '' is not one of off|stats|full");
}

TEST(DumpTapFilter, ParsesFields) {
  const auto all = ds4::TapFilter::parse("", "", "");
  EXPECT_TRUE(all.matches_all());
  EXPECT_TRUE(all.matches(-1, "result_output", 123456));
  EXPECT_EQ(all.to_string(), "all");

  const auto f = ds4::TapFilter::parse("0,2-3,-1", "q, kv", "10-20");
  EXPECT_EQ(f.layers, (std::set<int>{-1, 0, 2, 3}));
  EXPECT_EQ(f.names, (std::set<std::string>{"q", "kv"}));
  EXPECT_EQ(f.pos_begin, 10);
  EXPECT_EQ(f.pos_end, 21);
  EXPECT_TRUE(f.matches(2, "q", 10));
  EXPECT_TRUE(f.matches(-1, "kv", 20));
  EXPECT_FALSE(f.matches(1, "q", 15));          // layer
  EXPECT_FALSE(f.matches(0, "attn_norm", 15));  // name
  EXPECT_FALSE(f.matches(0, "q", 9));           // position
  EXPECT_FALSE(f.matches(0, "q", 21));
  EXPECT_EQ(f.to_string(), "layers=-1,0,2-3 names=kv,q positions=10-20");
  // The text form parses back to the same filter.
  const auto g = ds4::TapFilter::parse("-1,0,2-3", "kv,q", "10-20");
  EXPECT_EQ(g.layers, f.layers);
  EXPECT_EQ(g.names, f.names);
  EXPECT_EQ(g.pos_end, f.pos_end);

  const auto one = ds4::TapFilter::parse("", "", "5");
  EXPECT_TRUE(one.matches(0, "x", 5));
  EXPECT_FALSE(one.matches(0, "x", 6));
  const auto open = ds4::TapFilter::parse("", "", "100-");
  EXPECT_TRUE(open.matches(0, "x", 1'000'000'000));
  EXPECT_FALSE(open.matches(0, "x", 99));
  EXPECT_EQ(open.to_string(), "positions=100-");
}

TEST(DumpTapFilter, ErrorsNameTheField) {
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("0,x2", "", ""); }),
            "tap filter layers: bad item 'x2' (expected a number or a range a-b)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("3-1", "", ""); }),
            "tap filter layers: bad item '3-1' (range end is below its start)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("-2", "", ""); }),
            "tap filter layers: bad item '-2' (layers are -1 (head) .. 100000)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("1,,2", "", ""); }),
            "tap filter layers: bad item '' (expected a number or a range a-b)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "q,", ""); }),
            "tap filter names: bad item '' (empty name)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "a/b", ""); }),
            "tap filter names: bad item 'a/b' (names contain no '/')");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "", "20-10"); }),
            "tap filter positions: bad item '20-10' (range end is below its start)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "", "1,2"); }),
            "tap filter positions: bad item '1,2' (one range only, e.g. 10-20)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "", "-3"); }),
            "tap filter positions: bad item '-3' (positions are >= 0)");
  EXPECT_EQ(error_of([] { ds4::TapFilter::parse("", "", "1-2-3"); }),
            "tap filter positions: bad item '1-2-3' (range end must be a number)");
}

TEST(DumpStats, HandComputed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {1.5f, -3.0f, nan, -inf, 0.5f};
  const auto s = ds4::compute_stats(v.data(), v.size());
  EXPECT_EQ(s.absmax, 3.0);  // over finite values only
  EXPECT_DOUBLE_EQ(s.mean, (1.5 - 3.0 + 0.5) / 3.0);
  EXPECT_EQ(s.nan_count, 1u);
  EXPECT_EQ(s.inf_count, 1u);
  EXPECT_EQ(s.hash, ds4::fnv1a64(v.data(), v.size() * 4));
  const auto empty = ds4::compute_stats(nullptr, 0);
  EXPECT_EQ(empty.absmax, 0.0);
  EXPECT_EQ(empty.mean, 0.0);
  EXPECT_EQ(empty.hash, 0xcbf29ce484222325ULL);
  // -0.0 and +0.0 hash differently (a bit difference, metrics.md §1).
  const float pz = 0.0f, nz = -0.0f;
  EXPECT_NE(ds4::compute_stats(&pz, 1).hash, ds4::compute_stats(&nz, 1).hash);
  // FNV-1a 64 reference vector.
  EXPECT_EQ(ds4::fnv1a64("a", 1), 0xaf63dc4c8601ec8cULL);
}

TEST(DumpSha256, KnownVectors) {
  EXPECT_EQ(ds4::sha256_hex("", 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ds4::sha256_hex("abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(ds4::sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A file crossing the 1 MiB read block: one million 'a' (FIPS 180-2 vector).
  const std::string p = fresh_path("million_a.bin");
  {
    std::ofstream f(p, std::ios::binary);
    f << std::string(1000000, 'a');
  }
  EXPECT_EQ(ds4::sha256_file(p),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_NE(error_of([] {
              ds4::sha256_file("/nonexistent/model.gguf");
            }).find("/nonexistent/model.gguf: cannot read ("),
            std::string::npos);
}

TEST(DumpManifest, TextFormIsStable) {
  const auto m = sample_manifest();
  const std::string t = m.to_text();
  EXPECT_EQ(t, m.to_text());
  EXPECT_EQ(t.rfind("schema_version: 1\nengine_version: 0.1.0\n", 0), 0u) << t;
  EXPECT_NE(t.find("\ntokens: [5] 1,2,3,500,-7\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\nseed: 18364758544493064720\n"), std::string::npos) << t;
  // extra keys sorted, after the fields.
  EXPECT_NE(t.find("extra.note: unicode ok: \xc3\xa9\nextra.prompt_id: p7\n"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

namespace {

struct Tapped {
  int layer;
  std::string name;
  int64_t pos;
  std::vector<float> data;
  std::string variant;
};

// A small synthetic capture: three layers (0, 1 and the head -1), a fixed-length tap "q" (8),
// a variable-length tap "lid_score" (pos % 5 elements, 0 at some positions), a tap that fires
// only at odd positions ("csa_state_compress"), and positions that arrive out of order.
std::vector<Tapped> synthetic_taps() {
  std::vector<Tapped> out;
  const std::vector<int64_t> order = {3, 0, 2, 1, 5, 4};  // arrival order of positions
  for (int64_t p : order) {
    for (int layer : {0, 1}) {
      out.push_back({layer, "q", p, row_for(layer, "q", p, 8), "matvec__ref"});
      if (p % 2 == 1)
        out.push_back(
            {layer, "csa_state_compress", p, row_for(layer, "csa", p, 4), "compress__ref"});
      out.push_back({layer, "lid_score", p, row_for(layer, "lid_score", p, size_t(p % 5)),
                     p < 3 ? "indexer__scalar" : "indexer__wmma"});
    }
    out.push_back({-1, "result_output", p, row_for(-1, "result_output", p, 16), "matvec__ref"});
  }
  return out;
}

void feed(ds4::DumpWriter& w, const std::vector<Tapped>& taps) {
  w.begin_forward(0, 6);
  for (const auto& t : taps)
    w.tap(t.layer, t.name.c_str(), t.pos, t.data.data(), t.data.size(), t.variant.c_str());
}

}  // namespace

TEST(DumpRoundTrip, FullLevel) {
  const std::string path = fresh_path("full.h5");
  const auto taps = synthetic_taps();
  ds4::RunManifest written;
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    feed(w, taps);
    EXPECT_EQ(w.rows(), taps.size());
    written = w.manifest();
    EXPECT_FALSE(fs::exists(path));  // nothing before finish()
    w.finish();
  }
  ASSERT_TRUE(fs::exists(path));
  EXPECT_EQ(written.tap_level, "full");
  EXPECT_EQ(written.tap_filter, "all");
  EXPECT_FALSE(written.created_utc.empty());

  const auto r = ds4::DumpReader::open(path);
  EXPECT_EQ(r.manifest(), written);
  EXPECT_EQ(r.level(), ds4::TapLevel::Full);
  EXPECT_EQ(r.forwards(), (std::vector<std::pair<int64_t, int64_t>>{{0, 6}}));
  // Dataflow order: csa_state_compress first appears at position 3 (arrival), still placed
  // between q and lid_score of its layer.
  const std::vector<ds4::TapKey> expect_order = {{0, "q"},
                                                 {0, "csa_state_compress"},
                                                 {0, "lid_score"},
                                                 {1, "q"},
                                                 {1, "csa_state_compress"},
                                                 {1, "lid_score"},
                                                 {-1, "result_output"}};
  EXPECT_EQ(r.taps(), expect_order);
  EXPECT_EQ(r.positions(0, "q"), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(r.positions(1, "csa_state_compress"), (std::vector<int64_t>{1, 3, 5}));
  for (const auto& t : taps) {
    const auto row = r.row(t.layer, t.name, t.pos);
    EXPECT_TRUE(bits_equal(row, t.data.data(), t.data.size()))
        << ds4::tap_key_text(t.layer, t.name) << " pos " << t.pos;
    EXPECT_EQ(r.stats(t.layer, t.name, t.pos), ds4::compute_stats(t.data.data(), t.data.size()));
    EXPECT_EQ(r.variant(t.layer, t.name, t.pos), t.variant);
  }
  // Streaming gives the same rows in ascending position order.
  std::vector<int64_t> seen;
  r.for_each_row(0, "lid_score", [&](const ds4::DumpRow& row) {
    seen.push_back(row.pos);
    ASSERT_TRUE(row.has_data);
    const auto expect = row_for(0, "lid_score", row.pos, size_t(row.pos % 5));
    EXPECT_EQ(row.length, expect.size());
    EXPECT_TRUE(bits_equal(expect, row.data.data(), row.data.size()));
    EXPECT_EQ(row.variant, row.pos < 3 ? "indexer__scalar" : "indexer__wmma");
  });
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));

  EXPECT_EQ(error_of([&] { r.row(0, "nope", 0); }), path + ": no tap layer 0 'nope' in this dump");
  EXPECT_EQ(
      error_of([&] { r.row(1, "csa_state_compress", 2); }),
      path + ": layer 1 'csa_state_compress' has no position 2 (stored: 3 positions in 1..5)");
  EXPECT_FALSE(r.has_tap(2, "q"));
  EXPECT_TRUE(r.has_tap(-1, "result_output"));
}

TEST(DumpRoundTrip, StatsLevel) {
  const std::string path = fresh_path("stats.h5");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {2.0f, nan, -4.0f, inf, 1.0f, -0.5f};
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Stats);
    w.tap(0, "ffn_out", 7, v.data(), v.size(), "moe__tile16");
    EXPECT_EQ(w.data_bytes(), 0u);
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  EXPECT_EQ(r.level(), ds4::TapLevel::Stats);
  EXPECT_FALSE(r.has_data());
  const auto s = r.stats(0, "ffn_out", 7);
  EXPECT_EQ(s.absmax, 4.0);
  EXPECT_DOUBLE_EQ(s.mean, (2.0 - 4.0 + 1.0 - 0.5) / 4.0);
  EXPECT_EQ(s.nan_count, 1u);
  EXPECT_EQ(s.inf_count, 1u);
  EXPECT_EQ(s.hash, ds4::fnv1a64(v.data(), v.size() * sizeof(float)));
  EXPECT_EQ(r.variant(0, "ffn_out", 7), "moe__tile16");
  EXPECT_EQ(error_of([&] { r.row(0, "ffn_out", 7); }),
            path +
                ": layer 0 'ffn_out' position 7: this dump holds stats only (tap level "
                "stats); rerun with tap level full");
  int n = 0;
  r.for_each_row(0, "ffn_out", [&](const ds4::DumpRow& row) {
    EXPECT_FALSE(row.has_data);
    EXPECT_TRUE(row.data.empty());
    EXPECT_EQ(row.length, v.size());
    EXPECT_EQ(row.stats, s);
    ++n;
  });
  EXPECT_EQ(n, 1);
  // No data dataset in the file.
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  EXPECT_GT(H5Lexists(f, "layer_000/ffn_out/hash", H5P_DEFAULT), 0);
  EXPECT_EQ(H5Lexists(f, "layer_000/ffn_out/data", H5P_DEFAULT), 0);
  H5Fclose(f);
}

TEST(DumpRoundTrip, FilterApplied) {
  const std::string path = fresh_path("filtered.h5");
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full,
                      ds4::TapFilter::parse("1,-1", "q,result_output", "2-4"));
    feed(w, synthetic_taps());
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  EXPECT_EQ(r.manifest().tap_filter, "layers=-1,1 names=q,result_output positions=2-4");
  EXPECT_EQ(r.taps(), (std::vector<ds4::TapKey>{{1, "q"}, {-1, "result_output"}}));
  EXPECT_EQ(r.positions(1, "q"), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(r.positions(-1, "result_output"), (std::vector<int64_t>{2, 3, 4}));
}

TEST(DumpRoundTrip, OffWritesManifestOnly) {
  const std::string path = fresh_path("off.h5");
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Off);
    feed(w, synthetic_taps());
    EXPECT_EQ(w.rows(), 0u);
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  EXPECT_TRUE(r.taps().empty());
  EXPECT_EQ(r.manifest().tokens, sample_manifest().tokens);
}

// Plain runs deliver taps position-major, batched runs layer-major; both must give the same
// dataflow order and the same rows.
TEST(DumpRoundTrip, PlainAndBatchedAlign) {
  auto taps_at = [](int layer, int64_t p) {
    std::vector<std::string> names = {"attn_norm", "q"};
    if (p % 4 == 3) names.push_back("csa_state_compress");  // fires every 4th position
    if (p >= 2) names.push_back("lid_top_k");               // from position 2 on
    names.push_back("l_out");
    (void)layer;
    return names;
  };
  const std::string plain = fresh_path("plain.h5"), batched = fresh_path("batched.h5");
  {
    ds4::DumpWriter w(plain, sample_manifest(), ds4::TapLevel::Full);
    for (int64_t p = 0; p < 8; ++p) {
      w.begin_forward(p, 1);
      for (int l = 0; l < 2; ++l)
        for (const auto& n : taps_at(l, p)) {
          const auto v = row_for(l, n, p, 3);
          w.tap(l, n.c_str(), p, v.data(), v.size(), "x__ref");
        }
      const auto v = row_for(-1, "result_output", p, 5);
      w.tap(-1, "result_output", p, v.data(), v.size(), "x__ref");
    }
    w.finish();
  }
  {
    ds4::DumpWriter w(batched, sample_manifest(), ds4::TapLevel::Full);
    w.begin_forward(0, 8);
    for (int l = 0; l < 2; ++l)
      for (int64_t p = 0; p < 8; ++p)
        for (const auto& n : taps_at(l, p)) {
          const auto v = row_for(l, n, p, 3);
          w.tap(l, n.c_str(), p, v.data(), v.size(), "x__gemm");
        }
    for (int64_t p = 0; p < 8; ++p) {
      const auto v = row_for(-1, "result_output", p, 5);
      w.tap(-1, "result_output", p, v.data(), v.size(), "x__gemm");
    }
    w.finish();
  }
  const auto a = ds4::DumpReader::open(plain), b = ds4::DumpReader::open(batched);
  const std::vector<ds4::TapKey> expect = {
      {0, "attn_norm"},     {0, "q"}, {0, "csa_state_compress"}, {0, "lid_top_k"}, {0, "l_out"},
      {1, "attn_norm"},     {1, "q"}, {1, "csa_state_compress"}, {1, "lid_top_k"}, {1, "l_out"},
      {-1, "result_output"}};
  EXPECT_EQ(a.taps(), expect);
  EXPECT_EQ(b.taps(), expect);
  EXPECT_EQ(a.forwards().size(), 8u);
  EXPECT_EQ(b.forwards().size(), 1u);
  for (const auto& k : expect) {
    ASSERT_EQ(a.positions(k.layer, k.name), b.positions(k.layer, k.name));
    for (int64_t p : a.positions(k.layer, k.name)) {
      EXPECT_EQ(a.row(k.layer, k.name, p), b.row(k.layer, k.name, p));
      EXPECT_EQ(a.variant(k.layer, k.name, p), "x__ref");
      EXPECT_EQ(b.variant(k.layer, k.name, p), "x__gemm");
    }
  }
}

TEST(DumpRoundTrip, DuplicatePositionAndRollback) {
  const std::string path = fresh_path("dup.h5");
  const std::vector<float> v = {1, 2, 3};
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    for (int64_t p = 0; p < 4; ++p) w.tap(0, "q", p, v.data(), v.size(), "a");
    w.tap(0, "q", 2, v.data(), v.size(), "a");
    EXPECT_EQ(error_of([&] { w.finish(); }),
              path +
                  ": layer 0 'q' position 2 was captured twice (call DumpWriter::rollback "
                  "before re-running positions)");
  }
  EXPECT_FALSE(fs::exists(path));
  {
    // A verifier that rejected positions 2..3 rolls back and re-runs them with another variant.
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    for (int64_t p = 0; p < 4; ++p) w.tap(0, "q", p, v.data(), v.size(), "verify");
    w.tap(0, "only_late", 3, v.data(), v.size(), "verify");
    w.rollback(2);
    EXPECT_EQ(w.rows(), 2u);
    EXPECT_EQ(w.data_bytes(), 2 * 3 * sizeof(float));
    const std::vector<float> u = {4, 5};
    for (int64_t p = 2; p < 4; ++p) w.tap(0, "q", p, u.data(), u.size(), "decode");
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  EXPECT_EQ(r.taps(), (std::vector<ds4::TapKey>{{0, "q"}}));  // emptied tap left out
  EXPECT_EQ(r.row(0, "q", 1), v);
  EXPECT_EQ(r.row(0, "q", 3), (std::vector<float>{4, 5}));
  EXPECT_EQ(r.variant(0, "q", 3), "decode");
}

// Rows wait in an unlinked scratch file, not in memory, and come back in position order across
// the 16 MiB write pieces: rows that arrive out of order, a rollback that re-runs positions, and
// one row longer than a whole piece (5M floats). While the writer runs, its folder shows no file.
TEST(DumpRoundTrip, RowsSpilledToAScratchFileComeBackExactly) {
  const std::string dir = test_dir() + "/spill";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = dir + "/spill.h5";
  const size_t long_row = size_t{5} << 20;
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    for (int64_t p : {5, 1, 3, 0, 2, 4, 6}) {
      const auto r = row_for(0, "hc", p, 1u << 20);  // 4 MiB rows: pieces of 4 rows
      w.tap(0, "hc", p, r.data(), r.size(), "a");
    }
    const auto big = row_for(-1, "logits", 0, long_row);
    w.tap(-1, "logits", 0, big.data(), big.size(), "a");
    const auto junk = row_for(0, "hc", 99, 1u << 20);
    w.tap(0, "hc", 7, junk.data(), junk.size(), "rejected");
    w.rollback(7);  // a verifier's rejected row: its bytes stay in the scratch file, unused
    const auto r7 = row_for(0, "hc", 7, 3);  // re-run with another length
    w.tap(0, "hc", 7, r7.data(), r7.size(), "b");
    EXPECT_TRUE(fs::is_empty(dir)) << "the scratch file must have no name";
    EXPECT_EQ(w.data_bytes(), (7 * (size_t{1} << 20) + 3 + long_row) * sizeof(float));
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  const std::vector<int64_t> want_pos = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(r.positions(0, "hc"), want_pos);
  for (int64_t p = 0; p < 7; ++p) {
    const auto want = row_for(0, "hc", p, 1u << 20);
    const auto got = r.row(0, "hc", p);
    EXPECT_TRUE(bits_equal(got, want.data(), want.size())) << "position " << p;
  }
  EXPECT_EQ(r.row(0, "hc", 7), row_for(0, "hc", 7, 3));
  EXPECT_EQ(r.variant(0, "hc", 7), "b");
  const auto big = row_for(-1, "logits", 0, long_row);
  EXPECT_TRUE(bits_equal(r.row(-1, "logits", 0), big.data(), big.size()));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"spill.h5"});
  fs::remove_all(dir);
}

TEST(DumpRoundTrip, BadTapNameIsReported) {
  const std::string path = fresh_path("badname.h5");
  ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Stats);
  const float x = 1;
  w.tap(3, "a/b", 0, &x, 1, "v");
  EXPECT_EQ(error_of([&] { w.finish(); }),
            path + ": tap name 'a/b' (layer 3) cannot be an HDF5 group name");
  EXPECT_FALSE(fs::exists(path));
}

// ---------------------------------------------------------------------------------------------
// External readers, refusals, atomicity
// ---------------------------------------------------------------------------------------------

TEST(DumpFile, H5dumpReadsIt) {
  if (!fs::exists("/usr/bin/h5dump")) GTEST_SKIP() << "h5dump not installed";
  const std::string path = fresh_path("for_h5dump.h5");
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    feed(w, synthetic_taps());
    w.finish();
  }
  const std::string out = test_dir() + "/h5dump.txt";
  const std::string cmd = "/usr/bin/h5dump -A '" + path + "' > '" + out + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(out);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("ATTRIBUTE \"schema_version\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"ds4-parity run --mode batched --width 4\""), std::string::npos);
  EXPECT_NE(text.find("GROUP \"layer_-1\""), std::string::npos);
  EXPECT_NE(text.find("GROUP \"layer_000\""), std::string::npos);
  // And the data of one tap.
  const std::string cmd2 =
      "/usr/bin/h5dump -d /layer_000/q/positions '" + path + "' > '" + out + "' 2>&1";
  ASSERT_EQ(std::system(cmd2.c_str()), 0) << cmd2;
  std::ifstream f2(out);
  const std::string text2((std::istreambuf_iterator<char>(f2)), std::istreambuf_iterator<char>());
  EXPECT_NE(text2.find("(0): 0, 1, 2, 3, 4, 5"), std::string::npos) << text2;
}

// File-creation properties with the 512-byte user block a sealable dump needs (a property list
// leaked per call: a handful per test run).
hid_t userblock_fcpl() {
  const hid_t p = H5Pcreate(H5P_FILE_CREATE);
  H5Pset_userblock(p, 512);
  return p;
}

TEST(DumpReader, RefusesBadFiles) {
  const std::string good = fresh_path("good.h5");
  {
    ds4::DumpWriter w(good, sample_manifest(), ds4::TapLevel::Full);
    feed(w, synthetic_taps());
    w.finish();
  }
  // Missing.
  const std::string missing = test_dir() + "/does_not_exist.h5";
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(missing); }),
            missing + ": not a readable HDF5 dump (no such file)");
  // Not HDF5.
  const std::string text = fresh_path("not_hdf5.h5");
  std::ofstream(text) << "this is not an HDF5 file\n";
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(text); }),
            text + ": not a readable HDF5 dump (no DS4 dump header: not a file written by ds4-parity)");
  // An HDF5 file without the header (another program's, or a dump from before the header).
  const std::string bare = fresh_path("bare.h5");
  H5Fclose(H5Fcreate(bare.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(bare); }),
            bare + ": not a readable HDF5 dump (an HDF5 file without the DS4 dump header: written "
                   "by another program, or a dump from before the header; regenerate it with "
                   "`ds4-parity run ...`)");
  EXPECT_NE(error_of([&] { ds4::reseal_dump(bare); }).find("superblock is at byte 0"), std::string::npos);
  // One flipped bit anywhere after the header.
  const std::string flipped = fresh_path("flipped.h5");
  fs::copy_file(good, flipped);
  {
    std::fstream f(flipped, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(fs::file_size(flipped) * 2 / 3));
    const int c = f.get();
    f.seekp(static_cast<std::streamoff>(fs::file_size(flipped) * 2 / 3));
    f.put(static_cast<char>(c ^ 0x10));
  }
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(flipped); }),
            flipped + ": not a readable HDF5 dump (checksum mismatch: the file was changed after "
                      "it was written)");
  // Bytes appended.
  const std::string longer = fresh_path("extended.h5");
  fs::copy_file(good, longer);
  std::ofstream(longer, std::ios::app | std::ios::binary) << "x";
  EXPECT_NE(error_of([&] { ds4::DumpReader::open(longer); }).find("(extended: the header says "),
            std::string::npos);
  // Truncated: the superblock survives, the rest does not.
  const std::string cut = fresh_path("truncated.h5");
  fs::copy_file(good, cut);
  fs::resize_file(cut, fs::file_size(good) / 2);
  const std::string e = error_of([&] { ds4::DumpReader::open(cut); });
  EXPECT_EQ(e.rfind(cut + ": not a readable HDF5 dump (", 0), 0u) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;

  // Wrong schema version, written with the HDF5 API directly.
  const std::string v7 = fresh_path("schema7.h5");
  {
    hid_t f = H5Fcreate(v7.c_str(), H5F_ACC_TRUNC, userblock_fcpl(), H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "schema_version", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    const int32_t seven = 7;
    H5Awrite(a, H5T_NATIVE_INT32, &seven);
    H5Aclose(a);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    a = H5Acreate2(f, "command_line", st, sp, H5P_DEFAULT, H5P_DEFAULT);
    const char* cmd = "scripts/make_dumps.sh tiny";
    H5Awrite(a, st, &cmd);
    H5Aclose(a);
    H5Tclose(st);
    H5Sclose(sp);
    H5Fclose(f);
  }
  ds4::reseal_dump(v7);
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(v7); }),
            v7 + ": dump schema version 7 is not supported (this build reads 1); regenerate it "
                 "with `scripts/make_dumps.sh tiny`");
  // Same with a fixed-length ASCII command line (as numpy bytes from h5py would store it).
  const std::string v2 = fresh_path("schema2.h5");
  {
    hid_t f = H5Fcreate(v2.c_str(), H5F_ACC_TRUNC, userblock_fcpl(), H5P_DEFAULT);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "schema_version", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    const int64_t two = 2;
    H5Awrite(a, H5T_NATIVE_INT64, &two);
    H5Aclose(a);
    const char cmd[] = "ds4-parity run --mode plain";
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, sizeof cmd - 1);
    H5Tset_strpad(st, H5T_STR_NULLPAD);
    a = H5Acreate2(f, "command_line", st, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, st, cmd);
    H5Aclose(a);
    H5Tclose(st);
    H5Sclose(sp);
    H5Fclose(f);
  }
  ds4::reseal_dump(v2);
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(v2); }),
            v2 + ": dump schema version 2 is not supported (this build reads 1); regenerate it "
                 "with `ds4-parity run --mode plain`");
  // An HDF5 file that is not a dump at all.
  const std::string other = fresh_path("other.h5");
  H5Fclose(H5Fcreate(other.c_str(), H5F_ACC_TRUNC, userblock_fcpl(), H5P_DEFAULT));
  ds4::reseal_dump(other);
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(other); }),
            other +
                ": not a DS4 tap dump (root attribute 'schema_version' is missing); "
                "regenerate it with `ds4-parity run ...` (see dumps/SCHEMA.md)");

  // Missing required attribute / dataset.
  auto damaged = [&](const std::string& name, auto&& damage) {
    const std::string p = fresh_path(name);
    fs::copy_file(good, p);
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    damage(f);
    H5Fclose(f);
    ds4::reseal_dump(p);
    return p;
  };
  const std::string no_hash =
      damaged("no_model_hash.h5", [](hid_t f) { ASSERT_GE(H5Adelete(f, "model_sha256"), 0); });
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(no_hash); }),
            no_hash + ": dump is missing root attribute 'model_sha256' (required by schema 1)");
  const std::string no_tokens =
      damaged("no_tokens.h5", [](hid_t f) { ASSERT_GE(H5Ldelete(f, "tokens", H5P_DEFAULT), 0); });
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(no_tokens); }),
            no_tokens + ": dump is missing dataset 'tokens' (required by schema 1)");
  const std::string no_mean = damaged(
      "no_mean.h5", [](hid_t f) { ASSERT_GE(H5Ldelete(f, "layer_001/q/mean", H5P_DEFAULT), 0); });
  const auto r = ds4::DumpReader::open(no_mean);  // tap indexes are read lazily
  EXPECT_EQ(error_of([&] { r.stats(1, "q", 0); }),
            no_mean + ": dump is missing dataset 'layer_001/q/mean' (required by schema 1)");
  const std::string no_group = damaged("no_group.h5", [](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "layer_-1/result_output", H5P_DEFAULT), 0);
  });
  EXPECT_EQ(error_of([&] { ds4::DumpReader::open(no_group); }),
            no_group +
                ": dump is missing group 'layer_-1/result_output' listed in tap_order "
                "(required by schema 1)");
}

namespace {

// Fills a writer with ~`mib` MiB of full-level data spread over many taps.
void fill_big(ds4::DumpWriter& w, int mib) {
  std::vector<float> v(64 * 1024);  // 256 KiB per row
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i);
  const int rows = mib * 4;
  for (int r = 0; r < rows; ++r)
    w.tap(r % 40, ("t" + std::to_string(r % 7)).c_str(), r, v.data(), v.size(), "big");
}

}  // namespace

TEST(DumpWriterAtomic, DestructorWithoutFinishLeavesNothing) {
  const std::string path = fresh_path("unfinished.h5");
  {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    feed(w, synthetic_taps());
  }
  EXPECT_FALSE(fs::exists(path));
  for (const auto& e : fs::directory_iterator(test_dir()))
    EXPECT_EQ(e.path().filename().string().rfind("unfinished.h5.tmp.", 0), std::string::npos);
}

TEST(DumpWriterAtomic, ExitBeforeFinishLeavesNothing) {
  const std::string path = fresh_path("exited.h5");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    feed(w, synthetic_taps());
    _exit(0);  // no destructor, no finish
  }
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(child)));
}

TEST(DumpWriterAtomic, KilledMidWriteLeavesNoFinalFile) {
  const std::string path = fresh_path("killed.h5");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ds4::DumpWriter w(path, sample_manifest(), ds4::TapLevel::Full);
    fill_big(w, 256);
    w.finish();
    _exit(0);
  }
  // Kill the child as soon as its temporary file appears (it is being written then).
  const std::string tmp = path + ".tmp." + std::to_string(child);
  bool saw_tmp = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(tmp)) {
      saw_tmp = true;
      kill(child, SIGKILL);
      break;
    }
    int st;
    if (waitpid(child, &st, WNOHANG) == child) break;  // finished before we saw it
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(saw_tmp) << "the writer finished before it could be killed";
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_FALSE(fs::exists(path));  // at most the temporary name is left behind
  fs::remove(tmp);
}

// ---------------------------------------------------------------------------------------------
// The real engine
// ---------------------------------------------------------------------------------------------

namespace {

std::string tiny_model() {
  const std::string dir = std::string(DS4_BINARY_DIR) + "/test-models";
  fs::create_directories(dir);
  const std::string path = dir + "/tiny-ds4.gguf";
  if (!fs::exists(path)) ds4::write_synth_model(ds4::SynthOptions{}, path);
  return path;
}

std::vector<int32_t> tokens_for(int n, int vocab) {
  std::vector<int32_t> t(n);
  uint64_t s = 7;
  for (int i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    t[i] = static_cast<int32_t>((s >> 33) % uint64_t(vocab));
  }
  return t;
}

ds4::RunManifest engine_manifest(const std::string& model_path, const std::vector<int32_t>& tok) {
  ds4::RunManifest m;
  m.engine_version = "0.1.0";
  m.model_path = model_path;
  m.model_sha256 = ds4::sha256_file(model_path);
  m.backend = "cpu";
  m.profile = "ds4";
  m.run_mode = "batched";
  m.width = int64_t(tok.size());
  m.tokens = tok;
  m.command_line = "dump_test";
  return m;
}

}  // namespace

TEST(DumpEngine, ForwardCapturedAtFullLevel) {
  const std::string model_path = tiny_model();
  auto model = ds4::Model::load(model_path);
  const auto& hp = model->hparams();
  const auto tokens = tokens_for(40, int(hp.n_vocab));
  ds4::SessionOptions so;
  so.n_threads = 2;
  ds4::Session session(model, so);
  const std::string path = fresh_path("engine_full.h5");
  std::vector<float> logits;
  {
    ds4::DumpWriter w(path, engine_manifest(model_path, tokens), ds4::TapLevel::Full);
    session.set_tap_sink(&w);
    logits = session.forward(tokens);
    session.set_tap_sink(nullptr);
    w.finish();
  }
  const auto r = ds4::DumpReader::open(path);
  EXPECT_EQ(r.manifest().tokens, tokens);
  EXPECT_EQ(r.forwards(), (std::vector<std::pair<int64_t, int64_t>>{{0, 40}}));
  ASSERT_FALSE(r.taps().empty());
  EXPECT_EQ(r.taps().front().layer, 0);
  EXPECT_EQ(r.taps().back(), (ds4::TapKey{-1, "result_output"}));
  std::vector<int64_t> all(40);
  for (int i = 0; i < 40; ++i) all[i] = i;
  EXPECT_EQ(r.positions(0, "attn_norm"), all);
  EXPECT_EQ(r.positions(int(hp.n_layer) - 1, "l_out"), all);
  EXPECT_EQ(r.row(0, "attn_norm", 5).size(), hp.n_embd);
  EXPECT_FALSE(r.variant(0, "attn_norm", 5).empty());
  // Each layer's taps are contiguous in the order and layers ascend, the head last.
  int prev = 0;
  for (const auto& k : r.taps()) {
    const int rank = k.layer < 0 ? 1 << 20 : k.layer;
    EXPECT_GE(rank, prev) << ds4::tap_key_text(k.layer, k.name);
    prev = rank;
  }
  // The logits tap equals the returned logits bit for bit.
  int64_t n_rows = 0;
  r.for_each_row(-1, "result_output", [&](const ds4::DumpRow& row) {
    ASSERT_EQ(row.length, hp.n_vocab);
    EXPECT_TRUE(std::memcmp(row.data.data(), logits.data() + row.pos * hp.n_vocab,
                            hp.n_vocab * sizeof(float)) == 0)
        << "position " << row.pos;
    ++n_rows;
  });
  EXPECT_EQ(n_rows, 40);
}

// A plain run (N decodes) and a batched run of the same tokens give dumps with the same taps
// and positions (the rows may differ: the batched run uses the fast variants).
TEST(DumpEngine, PlainAndBatchedDumpsAlign) {
  const std::string model_path = tiny_model();
  auto model = ds4::Model::load(model_path);
  const auto tokens = tokens_for(24, int(model->hparams().n_vocab));
  ds4::SessionOptions so;
  so.n_threads = 2;
  const std::string plain = fresh_path("engine_plain.h5"),
                    batched = fresh_path("engine_batched.h5");
  {
    ds4::Session s(model, so);
    ds4::DumpWriter w(plain, engine_manifest(model_path, tokens), ds4::TapLevel::Stats);
    s.set_tap_sink(&w);
    for (int32_t t : tokens) s.decode(t);
    w.finish();
  }
  {
    ds4::Session s(model, so);
    ds4::DumpWriter w(batched, engine_manifest(model_path, tokens), ds4::TapLevel::Stats);
    s.set_tap_sink(&w);
    s.forward(tokens);
    w.finish();
  }
  const auto a = ds4::DumpReader::open(plain), b = ds4::DumpReader::open(batched);
  EXPECT_EQ(a.taps(), b.taps());
  EXPECT_EQ(a.forwards().size(), tokens.size());
  for (const auto& k : a.taps()) {
    if (!b.has_tap(k.layer, k.name)) continue;
    EXPECT_EQ(a.positions(k.layer, k.name), b.positions(k.layer, k.name))
        << ds4::tap_key_text(k.layer, k.name);
  }
}

// Not an assertion: prints the size and write time of a full and a stats dump of 320 tokens,
// and the forward time without a sink for comparison.
TEST(DumpEngine, Measure320Tokens) {
  const std::string model_path = tiny_model();
  auto model = ds4::Model::load(model_path);
  const auto tokens = tokens_for(320, int(model->hparams().n_vocab));
  ds4::SessionOptions so;
  so.n_threads = 2;
  {
    ds4::Session session(model, so);
    const auto t0 = std::chrono::steady_clock::now();
    session.forward(tokens);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ measure ] no sink: forward %.3f s\n", s);
  }
  for (auto level : {ds4::TapLevel::Full, ds4::TapLevel::Stats}) {
    ds4::Session session(model, so);
    const std::string path =
        fresh_path(std::string("engine320_") + ds4::tap_level_name(level) + ".h5");
    ds4::DumpWriter w(path, engine_manifest(model_path, tokens), level);
    session.set_tap_sink(&w);
    const auto t0 = std::chrono::steady_clock::now();
    session.forward(tokens);
    const auto t1 = std::chrono::steady_clock::now();
    w.finish();
    const auto t2 = std::chrono::steady_clock::now();
    const double fwd = std::chrono::duration<double>(t1 - t0).count();
    const double wr = std::chrono::duration<double>(t2 - t1).count();
    const auto r = ds4::DumpReader::open(path);
    std::printf(
        "[ measure ] %s: %zu taps x positions = %zu rows, %.1f MiB of row data, file %.2f MiB,"
        " forward+capture %.3f s, finish() %.3f s\n",
        ds4::tap_level_name(level), r.taps().size(), w.rows(), double(w.data_bytes()) / 1048576.0,
        double(fs::file_size(path)) / 1048576.0, fwd, wr);
    EXPECT_EQ(r.positions(-1, "result_output").size(), 320u);
  }
}
