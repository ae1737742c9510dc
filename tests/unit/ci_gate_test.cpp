// `ds4-parity check`: TOML into [config.NAME] tables (harness/PARITY_TOML.md), the parity configuration, the
// checks on diff results (bitwise, thresholds, noise-floor relative thresholds), JUnit XML, the
// command's exit codes, and the checked-in tests/parity.toml.
#include "ds4/ci_gate.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ds4/error.h"
#include "../support/errors.h"
#include "../support/scratch.h"

namespace fs = std::filesystem;

namespace {

using ds4::testing::error_of;
using ds4::testing::read_text;

std::string test_dir() {
  static const ds4::testing::ProcessDir dir(std::string(DS4_BINARY_DIR) + "/test-gate");
  return dir.path();
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string p = test_dir() + "/" + name;
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
  return p;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// TOML
// ---------------------------------------------------------------------------------------------

TEST(CiGateToml, ParsesTablesInFileOrder) {
  const auto t = ds4::parse_toml_tables(
      "# a comment\n"
      "\n"
      "[config.strict]   # trailing comment\n"
      "bitwise = true\n"
      "  argmax_agreement_min=1.0\n"
      "n = 1_000\n"
      "neg = -2.5e-3 # comment after a number\n"
      "plus = +3\n"
      "s = \"3x noise \\\"floor\\\" # not a comment\"\n"
      "lit = 'c:\\path'\n"
      "[ config.fast-2 ]\r\n"
      "off = false\n",
      "t.toml");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "config.strict");
  EXPECT_EQ(t[0].line, 3);
  ASSERT_EQ(t[0].keys.size(), 7u);
  EXPECT_EQ(t[0].keys[0].second.kind, ds4::TomlValue::Bool);
  EXPECT_TRUE(t[0].keys[0].second.boolean);
  EXPECT_EQ(t[0].keys[1].first, "argmax_agreement_min");
  EXPECT_EQ(t[0].keys[1].second.number, 1.0);
  EXPECT_FALSE(t[0].keys[1].second.is_integer);
  EXPECT_EQ(t[0].keys[2].second.number, 1000.0);
  EXPECT_TRUE(t[0].keys[2].second.is_integer);
  EXPECT_EQ(t[0].keys[3].second.number, -2.5e-3);
  EXPECT_EQ(t[0].keys[4].second.number, 3.0);
  EXPECT_EQ(t[0].keys[5].second.string, "3x noise \"floor\" # not a comment");
  EXPECT_EQ(t[0].keys[6].second.string, "c:\\path");  // literal strings take no escapes
  EXPECT_EQ(t[1].name, "config.fast-2");
  EXPECT_FALSE(t[1].keys[0].second.boolean);
}

TEST(CiGateToml, FullTomlValues) {
  const auto t = ds4::parse_toml_tables(
      "[config.\"a b\"]\nhex = 0x10\ninf = inf\nu = \"\\u00e9\"\n\"quoted\" = 1\n", "t.toml");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].name, "config.a b");
  ASSERT_EQ(t[0].keys.size(), 4u);
  EXPECT_EQ(t[0].keys[0].second.number, 16.0);
  EXPECT_TRUE(t[0].keys[0].second.is_integer);
  EXPECT_TRUE(std::isinf(t[0].keys[1].second.number));
  EXPECT_EQ(t[0].keys[2].second.string, "\xC3\xA9");
  EXPECT_EQ(t[0].keys[3].first, "quoted");
}

// Errors are one line "p.toml:LINE: ...": toml++'s reason for invalid TOML (and the line when
// it is `key = ...`), ours for valid TOML that is not [config.NAME] tables of scalars.
TEST(CiGateToml, RejectsBadTomlAndOtherShapes) {
  auto err = [](const std::string& text) {
    std::string e = error_of([&] { ds4::parse_toml_tables(text, "p.toml"); });
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    return e;
  };
  EXPECT_EQ(err("x = 1\n"), "p.toml:1: key 'x' is outside a [config.NAME] table");
  EXPECT_EQ(err("[config]\n"), "p.toml:1: table header '[config]' is not of the form [config.NAME]");
  EXPECT_TRUE(has(err("[config]\nx = 1\n[config.a]\n"), "p.toml:1: table header '[config]'"));
  EXPECT_TRUE(has(err("[[config.a]]\n"), "p.toml:1: arrays of tables ([[config.a]])"));
  EXPECT_TRUE(has(err("[config.a]\n[config.a]\n"), "p.toml:2: "));
  EXPECT_TRUE(has(err("[config.a]\n[config.a]\n"), "'config.a'"));
  EXPECT_TRUE(has(err("[config.a]\nx = 1\nx = 2\n"), "p.toml:3: "));
  EXPECT_TRUE(has(err("[config.a]\nx = 1\nx = 2\n"), "'x'"));
  for (const char* bad : {"1e", "01", "1__0", "1.", ".5", "_1", "1_", "--1", "1e5.0", "1e-3x"})
    EXPECT_TRUE(has(err(std::string("[config.a]\nx = ") + bad + "\n"), "p.toml:2: ")) << bad;
  EXPECT_EQ(err("[config.a]\nkld = 1e-3x # c\n"),
            "p.toml:2: Error while parsing floating-point: expected decimal digit, saw 'x' "
            "(in 'kld = 1e-3x # c')");
  EXPECT_EQ(err("[config.a]\nx = \"open\n"), "p.toml:2: unterminated string (in 'x = \"open')");
  EXPECT_EQ(err("[config.a]\r\nx = \"open\r\n"), "p.toml:2: unterminated string (in 'x = \"open')");
  EXPECT_TRUE(has(err("[config.a]\nx = \"a\x01b\"\n"), "control character"));
  EXPECT_TRUE(has(err("[config.a]\nx = \"a\\q\"\n"), "escape"));
  EXPECT_TRUE(has(err("[config.a]\nx = \"a\" b\n"), "p.toml:2: "));
  EXPECT_TRUE(has(err("[config.a]\nx = 1 2\n"), "p.toml:2: "));
  EXPECT_TRUE(has(err("[config.a]\njust words\n"), "p.toml:2: "));
  EXPECT_TRUE(has(err("[config.a] x\n"), "p.toml:1: "));
  EXPECT_EQ(err("[config.a]\nx = [1, 2]\n"),
            "p.toml:2: 'x' in [config.a] is a TOML array (values are numbers, true/false or strings)");
  EXPECT_TRUE(has(err("[config.a]\nx = {y = 1}\n"), "'x' in [config.a] is a TOML table"));
  EXPECT_TRUE(has(err("[config.a]\nx.y = 1\n"), "'x' in [config.a] is a TOML table"));
  EXPECT_TRUE(has(err("[config.a.b]\n"), "'b' in [config.a] is a TOML table"));
  EXPECT_TRUE(has(err("[config.a]\nd = 1979-05-27\n"), "is a TOML date"));
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

TEST(CiGateConfig, KeysAndRelativeThresholds) {
  const ds4::ParityConfig c = ds4::parse_parity_config(
      "[config.exact]\nbitwise = true\nstructural_flips_max = 0\n"
      "[config.fast]\ndescription = \"all fast\"\nlogits_max_abs_max = \"3x noise_floor\"\n"
      "kld_mean_max = 1e-4\nargmax_agreement_min = 0.99\nrouting_flips_max = 2\n"
      "[config.noise_floor]\n",
      "p.toml");
  ASSERT_EQ(c.configs.size(), 3u);
  EXPECT_EQ(c.configs.at("exact").bitwise, true);
  const ds4::GateConfig& f = c.configs.at("fast");
  EXPECT_EQ(f.description, "all fast");
  ASSERT_EQ(f.thresholds.size(), 4u);
  EXPECT_EQ(f.thresholds[0].first, ds4::GateMetric::LogitsMaxAbs);
  EXPECT_TRUE(f.thresholds[0].second.relative());
  EXPECT_EQ(f.thresholds[0].second.value, 3.0);
  EXPECT_EQ(f.thresholds[0].second.floor_label, "noise_floor");
  EXPECT_EQ(f.thresholds[0].second.text(), "3x noise_floor");
  EXPECT_EQ(f.thresholds[1].second.value, 1e-4);
  EXPECT_TRUE(c.configs.at("noise_floor").thresholds.empty());
}

TEST(CiGateConfig, BadKeysAndValues) {
  auto err = [](const std::string& text) {
    return error_of([&] { ds4::parse_parity_config(text, "p.toml"); });
  };
  EXPECT_TRUE(
      has(err("[config.a]\nlogits_max_abs = 1\n"),
          "p.toml:2: unknown key 'logits_max_abs' in [config.a] (known: bitwise, description, "
          "argmax_agreement_min, logits_max_abs_max, kld_mean_max, structural_flips_max, "
          "routing_flips_max)"));
  EXPECT_TRUE(has(err("[other.a]\n"), "p.toml:1: unknown table [other.a]"));
  EXPECT_EQ(err("[config.a]\nbitwise = 1\n"), "p.toml:2: 'bitwise' must be true or false");
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = \"3y floor\"\n"), "bad threshold \"3y floor\""));
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = \"x floor\"\n"), "bad threshold"));
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = \"3x\"\n"), "bad threshold"));
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = true\n"), "must be a number"));
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = -1\n"), "must not be negative"));
  EXPECT_TRUE(has(err("[config.a]\nargmax_agreement_min = 99\n"), "fraction in [0, 1]"));
  EXPECT_EQ(err("[config.a]\nkld_mean_max = nan\n"), "p.toml:2: 'kld_mean_max' must be a finite number");
  EXPECT_TRUE(has(err("[config.a]\nkld_mean_max = inf\n"), "must be a finite number"));
  EXPECT_TRUE(has(err("[config.a]\n\"quoted\" = 1\n"), "p.toml:2: unknown key 'quoted'"));
  EXPECT_EQ(ds4::parse_parity_config("[config.a]\nrouting_flips_max = 0x2\n", "p.toml")
                .configs.at("a").thresholds[0].second.value,
            2.0);
  EXPECT_TRUE(has(error_of([] { ds4::load_parity_config(test_dir() + "/none.toml"); }),
                  "none.toml: cannot read"));
}

TEST(CiGateConfig, CheckedInParityTomlParses) {
  const ds4::ParityConfig c =
      ds4::load_parity_config(std::string(DS4_SOURCE_DIR) + "/tests/parity.toml");
  ASSERT_TRUE(c.configs.count("exact"));
  EXPECT_EQ(c.configs.at("exact").bitwise, true);
}

// ---------------------------------------------------------------------------------------------
// Checks on results
// ---------------------------------------------------------------------------------------------

// A diff result with the fields the gate reads (the layout of diff_result_json).
std::string result_json(const std::string& label, bool bit_equal, const std::string& max_abs,
                        double agree, const std::string& kld_mean, int structural, int routing,
                        bool logits = true) {
  std::string j =
      "{\"schema\": \"ds4-parity-diff\", \"version\": 1, \"label\": \"" + label + "\", ";
  j += "\"bit_equal\": " + std::string(bit_equal ? "true" : "false") + ", ";
  j += "\"rows\": {\"compared\": 10, \"bitdiff\": " + std::string(bit_equal ? "0" : "2") +
       ", \"unmatched\": 0}, ";
  j += "\"first_divergence\": {\"bit\": " +
       std::string(bit_equal ? "null" : "{\"pos\": 3, \"layer\": 1, \"tap\": \"q\"}") + "}, ";
  if (logits)
    j += "\"logits\": {\"present\": true, \"max_abs\": " + max_abs +
         ", \"argmax_agreement\": {\"p\": " + std::to_string(agree) +
         "}, \"kld\": {\"mean\": " + kld_mean +
         "}, \"structural_flips\": " + std::to_string(structural) + "}, ";
  else
    j += "\"logits\": {\"present\": false}, ";
  j += "\"routing\": {\"flips\": " + std::to_string(routing) + "}}";
  return j;
}

ds4::GateResult result(const std::string& name, const std::string& json) {
  return ds4::load_gate_result(write_file(name, json));
}

const char* kConfig =
    "[config.exact]\nbitwise = true\nstructural_flips_max = 0\n"
    "[config.fast]\nlogits_max_abs_max = \"3x noise_floor\"\nkld_mean_max = 1e-3\n"
    "argmax_agreement_min = 0.99\nstructural_flips_max = 0\nrouting_flips_max = 0\n"
    "[config.noise_floor]\n";

TEST(CiGateRun, BitwiseConfiguration) {
  const ds4::ParityConfig c = ds4::parse_parity_config(kConfig, "p.toml");
  const ds4::GateReport ok =
      ds4::run_gate(c, {result("eq.json", result_json("exact", true, "0", 1, "0", 0, 0))});
  EXPECT_EQ(ok.violations(), 0);
  ASSERT_EQ(ok.checks.size(), 2u);  // bitwise, structural_flips_max
  const ds4::GateReport bad =
      ds4::run_gate(c, {result("ne.json", result_json("exact", false, "1e-6", 1, "0", 0, 0))});
  EXPECT_EQ(bad.violations(), 1);
  EXPECT_EQ(bad.checks[0].key, "bitwise");
  EXPECT_FALSE(bad.checks[0].pass);
  EXPECT_TRUE(has(bad.checks[0].message,
                  "ne.json [config.exact] bitwise = true: NOT bit-equal: 2 of 10 rows differ; "
                  "first bit divergence "
                  "at position 3, layer 1 'q'"))
      << bad.checks[0].message;
}

TEST(CiGateRun, ThresholdsAndNoiseFloor) {
  const ds4::ParityConfig c = ds4::parse_parity_config(kConfig, "p.toml");
  // Noise floor max-abs 0.01 -> logits_max_abs_max = 3 x 0.01 = 0.03; the candidate measures
  // 0.02 (passes), KLD 1e-4 <= 1e-3 (passes), agreement 0.98 < 0.99 (fails), 0 structural flips
  // (passes), 1 routing flip > 0 (fails).
  const auto floor = result("floor.json", result_json("noise_floor", false, "0.01", 1, "0", 0, 0));
  const auto fast = result("fast.json", result_json("fast", false, "0.02", 0.98, "1e-4", 0, 1));
  const ds4::GateReport r = ds4::run_gate(c, {floor, fast});
  ASSERT_EQ(r.checks.size(), 6u);  // floor: "recorded"; fast: five thresholds
  EXPECT_EQ(r.checks[0].key, "recorded");
  EXPECT_TRUE(r.checks[0].pass);
  EXPECT_EQ(r.violations(), 2);
  EXPECT_TRUE(r.checks[1].pass);
  EXPECT_TRUE(
      has(r.checks[1].message, "logits_max_abs_max = 3x noise_floor (= 0.03): measured 0.02"))
      << r.checks[1].message;
  EXPECT_FALSE(r.checks[3].pass);
  EXPECT_TRUE(
      has(r.checks[3].message, "argmax_agreement_min = 0.99: measured 0.98, below the minimum"));
  EXPECT_FALSE(r.checks[5].pass);
  EXPECT_TRUE(has(r.checks[5].message, "routing_flips_max = 0: measured 1, above the maximum"));
  // 1.5x the floor = 0.015 < 0.02: now the max-abs check fails too.
  const ds4::ParityConfig tight = ds4::parse_parity_config(
      "[config.fast]\nlogits_max_abs_max = \"1.5x noise_floor\"\n[config.noise_floor]\n", "p.toml");
  EXPECT_EQ(ds4::run_gate(tight, {floor, fast}).violations(), 1);
}

TEST(CiGateRun, NonFiniteAndMissingMeasurementsFail) {
  const ds4::ParityConfig c = ds4::parse_parity_config(kConfig, "p.toml");
  const auto floor = result("floor.json", result_json("noise_floor", false, "0.01", 1, "0", 0, 0));
  // max-abs "inf" and KLD "nan" (how the diff JSON writes non-finite numbers) never pass.
  const auto inf = result("inf.json", result_json("fast", false, "\"inf\"", 1, "\"nan\"", 0, 0));
  const ds4::GateReport r = ds4::run_gate(c, {floor, inf});
  EXPECT_EQ(r.violations(), 2);
  // No logits in the result: a logits threshold is a violation, not a pass.
  const auto none =
      result("none.json", result_json("exact", true, "0", 1, "0", 0, 0, /*logits=*/false));
  const ds4::GateReport n = ds4::run_gate(c, {none});
  EXPECT_EQ(n.violations(), 1);
  EXPECT_TRUE(has(n.checks[1].message, "no logits"));
}

TEST(CiGateRun, BadInput) {
  const ds4::ParityConfig c = ds4::parse_parity_config(kConfig, "p.toml");
  const auto fast = result("fast.json", result_json("fast", false, "0.02", 1, "0", 0, 0));
  const auto floor = result("floor.json", result_json("noise_floor", false, "0.01", 1, "0", 0, 0));
  const auto floor2 =
      result("floor2.json", result_json("noise_floor", false, "0.01", 1, "0", 0, 0));
  // A label without a table.
  const auto other = result("other.json", result_json("other", true, "0", 1, "0", 0, 0));
  EXPECT_TRUE(has(error_of([&] { ds4::run_gate(c, {other}); }),
                  "other.json: label 'other' has no [config.other] table in p.toml"));
  // A relative threshold without (or with two) floor results.
  EXPECT_TRUE(has(error_of([&] { ds4::run_gate(c, {fast}); }),
                  "p.toml: [config.fast] logits_max_abs_max is relative to 'noise_floor', but no "
                  "RESULT file has that label"));
  EXPECT_TRUE(has(error_of([&] {
                    ds4::run_gate(c, {fast, floor, floor2});
                  }),
                  "two results carry that label"));
  // A floor result without logits cannot give a logits floor.
  const auto nolog =
      result("nolog.json", result_json("noise_floor", true, "0", 1, "0", 0, 0, false));
  EXPECT_TRUE(has(error_of([&] {
                    ds4::run_gate(c, {fast, nolog});
                  }),
                  "the noise-floor result has no logits"));
  // Result files: missing, not JSON, another schema, no label.
  EXPECT_TRUE(has(error_of([&] { ds4::load_gate_result(test_dir() + "/missing.json"); }),
                  "cannot read the result file"));
  EXPECT_TRUE(has(error_of([&] { result("bad.json", "{"); }), "bad.json: invalid JSON"));
  EXPECT_TRUE(has(error_of([&] {
                    result("schema.json", "{\"schema\": \"x\", \"version\": 1, \"label\": \"a\"}");
                  }),
                  "not a ds4-parity diff result"));
  EXPECT_TRUE(
      has(error_of([&] { result("nolabel.json", result_json("", true, "0", 1, "0", 0, 0)); }),
          "the result has no label"));
}

TEST(CiGateJunit, OneCasePerCheckAndEscaping) {
  ds4::GateReport rep;
  rep.checks.push_back({"a<1>.json", "exact", "bitwise", false, "NOT bit-equal: 'q' & \"kv\""});
  rep.checks.push_back({"a<1>.json", "exact", "structural_flips_max", true, "ok"});
  rep.checks.push_back({"b.json", "fast", "kld_mean_max", true, "ok"});
  const std::string x = ds4::junit_xml(rep);
  EXPECT_TRUE(has(x, "<testsuites name=\"ds4-parity check\" tests=\"3\" failures=\"1\">"));
  EXPECT_TRUE(
      has(x, "<testsuite name=\"a&lt;1&gt;.json\" tests=\"2\" failures=\"1\" errors=\"0\">"));
  EXPECT_TRUE(has(x, "<testcase classname=\"parity.exact\" name=\"bitwise\">"));
  EXPECT_TRUE(has(x, "<failure message=\"NOT bit-equal: &apos;q&apos; &amp; &quot;kv&quot;\">"));
  EXPECT_TRUE(has(x, "<testcase classname=\"parity.fast\" name=\"kld_mean_max\"/>"));
}

TEST(CiGateCommand, ExitCodesAndJunitFile) {
  const std::string cfg = write_file("cmd.toml", kConfig);
  const std::string eq = write_file("cmd_eq.json", result_json("exact", true, "0", 1, "0", 0, 0));
  const std::string ne =
      write_file("cmd_ne.json", result_json("exact", false, "1e-6", 1, "0", 0, 0));
  const std::string junit = test_dir() + "/cmd.xml";
  std::string out;
  EXPECT_EQ(ds4::check_command({"--config", cfg, eq, "--junit", junit}, out), 0);
  EXPECT_TRUE(has(out, "check: all 2 checks pass")) << out;
  EXPECT_TRUE(has(read_text(junit), "failures=\"0\""));
  EXPECT_EQ(ds4::check_command({"--config", cfg, eq, ne, "--junit", junit}, out), 1);
  EXPECT_TRUE(has(out, "FAIL " + ne + " [config.exact] bitwise = true: NOT bit-equal")) << out;
  EXPECT_TRUE(has(out, "check: 1 violation in 4 checks")) << out;
  EXPECT_TRUE(has(read_text(junit), "failures=\"1\""));
  // Bad input throws (exit 2 in the main).
  EXPECT_TRUE(
      has(error_of([&] { ds4::check_command({eq}, out); }), "--config parity.toml is required"));
  EXPECT_TRUE(has(error_of([&] { ds4::check_command({"--config", cfg}, out); }), "bad flag"));
  EXPECT_TRUE(has(error_of([&] {
                    ds4::check_command({"--config", cfg, test_dir() + "/nope.json"}, out);
                  }),
                  "cannot read the result file"));
  EXPECT_TRUE(has(error_of([&] {
                    ds4::check_command({"--config", cfg, eq, "--bogus"}, out);
                  }),
                  "unknown option"));
  EXPECT_EQ(ds4::check_command({"--help"}, out), 0);
}

}  // namespace
