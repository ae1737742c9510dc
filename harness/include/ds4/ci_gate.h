// The CI threshold check: `ds4-parity check --config parity.toml RESULT.json... [--junit out.xml]`.
// Each RESULT is the JSON of `ds4-parity diff --json --label NAME`; its label picks the table
// [config.NAME] of the config file, whose keys are thresholds on that result. Every violation is
// printed plainly; the JUnit XML has one test case per (result, threshold).
//
// The config file is TOML v1.0 (read by toml++), documented in harness/PARITY_TOML.md:
//   [config.NAME] tables; key = number | true/false | "string"; # comments.
// Thresholds may be relative to a measured noise floor: the string "Kx LABEL" means K times the
// same metric as measured in the RESULT file labelled LABEL (e.g. "3x noise_floor").
//
// Exit status: 0 every threshold holds, 1 a threshold is violated, 2 bad input (unreadable or
// malformed config or result, unknown key, bad number, a label without a [config.NAME] table, a
// relative threshold whose floor result is missing).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ds4/json.h"

namespace ds4 {

// ---------------------------------------------------------------------------------------------
// TOML
// ---------------------------------------------------------------------------------------------

struct TomlValue {
  enum Kind { Number, Bool, String } kind = Number;
  double number = 0;
  bool is_integer = false;  // a TOML integer (decimal, hex, octal or binary)
  bool boolean = false;
  std::string string;
  int line = 0;
};

struct TomlTable {
  std::string name;  // the full header name, e.g. "config.strict"
  int line = 0;
  std::vector<std::pair<std::string, TomlValue>> keys;  // file order
};

// Parses a TOML document (toml++) whose top level holds only two-level tables [A.B] of scalar
// values (number, boolean, string), in file order; throws ds4::Error "<what>:<line>: <reason>"
// on invalid TOML (toml++'s reason) and on anything else (a top-level key, [A] with values of
// its own, an array of tables, an array, a date or a nested table as a value).
std::vector<TomlTable> parse_toml_tables(std::string_view text, const std::string& what);

// ---------------------------------------------------------------------------------------------
// Gate configuration
// ---------------------------------------------------------------------------------------------

// An absolute threshold, or factor x (the same metric in the result labelled floor_label).
struct Threshold {
  double value = 0;         // the absolute threshold, or the factor K
  std::string floor_label;  // non-empty: relative to this result's measurement
  bool relative() const { return !floor_label.empty(); }
  std::string text() const;  // "1e-05" or "3x noise_floor"
};

// The metrics a configuration can gate, with the direction of each threshold.
enum class GateMetric {
  ArgmaxAgreement,  // argmax_agreement_min: logits.argmax_agreement.p >= threshold
  LogitsMaxAbs,     // logits_max_abs_max:   logits.max_abs <= threshold
  KldMean,          // kld_mean_max:         logits.kld.mean <= threshold
  StructuralFlips,  // structural_flips_max: logits.structural_flips <= threshold
  RoutingFlips,     // routing_flips_max:    routing.flips <= threshold
};
const char* gate_metric_key(GateMetric m);

struct GateConfig {
  std::string name;
  std::string description;
  std::optional<bool> bitwise;  // true: the result must be bit-equal (diff exit 0)
  std::vector<std::pair<GateMetric, Threshold>> thresholds;  // file order
};

struct ParityConfig {
  std::string path;
  std::map<std::string, GateConfig> configs;
};

ParityConfig parse_parity_config(std::string_view text, const std::string& what);
ParityConfig load_parity_config(const std::string& path);  // throws naming the path

// ---------------------------------------------------------------------------------------------
// Running the gate
// ---------------------------------------------------------------------------------------------

struct GateCheck {
  std::string file, label, key;  // key: "bitwise", "kld_mean_max", ... or "recorded"
  bool pass = true;
  std::string message;  // one line: what was measured against what
};

struct GateReport {
  std::vector<GateCheck> checks;
  int violations() const;
};

// A diff result as the gate reads it. Throws "<path>: ..." when it is not a ds4-parity-diff v1
// JSON with a label.
struct GateResult {
  std::string path, label;
  Json json;
};
GateResult load_gate_result(const std::string& path);

// Checks every result against its configuration. Throws ds4::Error on bad input (a label without
// a configuration, a missing or ambiguous floor result, a floor result lacking the metric).
GateReport run_gate(const ParityConfig& config, const std::vector<GateResult>& results);

// JUnit XML: one <testsuite> per result file, one <testcase> per check, <failure> on violation.
std::string junit_xml(const GateReport& report);

// The whole command; returns 0 / 1; bad input throws ds4::Error (the main prints it, exit 2).
int check_command(const std::vector<std::string>& args, std::string& out);

}  // namespace ds4
