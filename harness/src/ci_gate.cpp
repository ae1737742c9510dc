// The CI threshold check (ds4/ci_gate.h): TOML (toml++) into [config.NAME] tables, the parity.toml
// configuration, the checks on diff results, JUnit XML and the `ds4-parity check` command. The
// configuration is documented in harness/PARITY_TOML.md; keep the two in step.
#include "ds4/ci_gate.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

#include "ds4/cli_args.h"
#include "ds4/error.h"

namespace ds4 {

// ---------------------------------------------------------------------------------------------
// TOML
// ---------------------------------------------------------------------------------------------

namespace {

bool bare_key_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}
bool is_bare_key(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!bare_key_char(c)) return false;
  return true;
}
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A TOML decimal number: [+-] int [. digits] [e [+-] digits], '_' only between digits, no leading
// zero on a multi-digit integer part. Returns false if `s` is not one.
bool parse_toml_number(std::string_view s, double& out, bool& is_integer) {
  std::string clean;
  size_t i = 0;
  auto digits = [&](bool& any) {
    any = false;
    const size_t start = i;
    while (i < s.size() && (is_digit(s[i]) || s[i] == '_')) {
      if (s[i] == '_' &&
          (i == start || i + 1 >= s.size() || !is_digit(s[i - 1]) || !is_digit(s[i + 1])))
        return false;
      if (s[i] != '_') {
        clean += s[i];
        any = true;
      }
      ++i;
    }
    return true;
  };
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
  const size_t int_start = i;
  bool any = false;
  if (!digits(any) || !any) return false;
  if (s[int_start] == '0' && i - int_start > 1) return false;  // leading zero
  is_integer = true;
  if (i < s.size() && s[i] == '.') {
    clean += s[i++];
    if (!digits(any) || !any) return false;
    is_integer = false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    clean += s[i++];
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
    if (!digits(any) || !any) return false;
    is_integer = false;
  }
  if (i != s.size()) return false;
  const char* b = clean.data() + (clean[0] == '+' ? 1 : 0);
  const auto r = std::from_chars(b, clean.data() + clean.size(), out);
  return r.ec == std::errc() && r.ptr == clean.data() + clean.size() && std::isfinite(out);
}

// A toml++ node's line (1-based; 0 when toml++ knows none).
int line_of(const toml::node& n) { return static_cast<int>(n.source().begin.line); }

// The members of a TOML table in file order (toml++ keeps them sorted by key).
std::vector<std::pair<std::string, const toml::node*>> in_file_order(const toml::table& t) {
  std::vector<std::pair<std::string, const toml::node*>> out;
  for (const auto& [key, node] : t) out.emplace_back(std::string(key.str()), &node);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    const auto &pa = a.second->source().begin, &pb = b.second->source().begin;
    return pa.line != pb.line ? pa.line < pb.line : pa.column < pb.column;
  });
  return out;
}

const char* toml_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "value";
  }
}

}  // namespace

std::vector<TomlTable> parse_toml_tables(std::string_view text, const std::string& what) {
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(what));
  } catch (const toml::parse_error& e) {
    // toml++'s description is one line; a `key = value` line is quoted after it, naming the key.
    const int line = static_cast<int>(e.source().begin.line);
    std::string reason(e.description());
    size_t at = 0;
    for (int l = 1; l < line && at != std::string_view::npos; ++l) {
      at = text.find('\n', at);
      if (at != std::string_view::npos) ++at;
    }
    std::string_view row;
    if (at != std::string_view::npos) row = text.substr(at, text.find('\n', at) - at);
    if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
    // A one-line string that meets the end of its line: toml++ objects to the line break in it.
    if (reason.find("control character") != std::string::npos &&
        e.source().begin.column > row.size())
      reason = "unterminated string";
    std::string msg = what + ":" + std::to_string(line) + ": " + reason;
    if (at != std::string_view::npos) {
      row = trim(row);
      const size_t eq = row.find('=');
      if (eq != std::string_view::npos && is_bare_key(trim(row.substr(0, eq))))
        msg += " (in '" + printable(row, 80) + "')";
    }
    fail(msg);
  }
  auto bad = [&](const toml::node& n, const std::string& why) -> void {
    fail(what + ":" + std::to_string(line_of(n)) + ": " + why);
  };
  auto no_arrays_of_tables = [&](const toml::node& n, const std::string& name) {
    if (n.is_array_of_tables())
      bad(n, "arrays of tables ([[" + name + "]]) are not supported: tables are [config.NAME]");
  };
  std::vector<TomlTable> tables;
  for (const auto& [group, gnode] : in_file_order(root)) {
    no_arrays_of_tables(*gnode, group);
    if (!gnode->is_table()) bad(*gnode, "key '" + group + "' is outside a [config.NAME] table");
    const auto members = in_file_order(*gnode->as_table());
    if (members.empty()) bad(*gnode, "table header '[" + group + "]' is not of the form [config.NAME]");
    for (const auto& [name, tnode] : members) {
      const std::string full = group + "." + name;
      no_arrays_of_tables(*tnode, full);
      if (!tnode->is_table())
        bad(line_of(*gnode) > 0 ? *gnode : *tnode,
            "table header '[" + group + "]' is not of the form [config.NAME]");
      TomlTable t{full, line_of(*tnode), {}};
      for (const auto& [key, v] : in_file_order(*tnode->as_table())) {
        TomlValue val;
        val.line = line_of(*v);
        if (const auto* i = v->as_integer()) {
          val.number = static_cast<double>(i->get());
          val.is_integer = true;
        } else if (const auto* f = v->as_floating_point()) {
          val.number = f->get();
        } else if (const auto* b = v->as_boolean()) {
          val.kind = TomlValue::Bool;
          val.boolean = b->get();
        } else if (const auto* str = v->as_string()) {
          val.kind = TomlValue::String;
          val.string = str->get();
        } else {
          no_arrays_of_tables(*v, full + "." + key);
          bad(*v, "'" + key + "' in [" + full + "] is a TOML " + toml_type_name(*v) +
                      " (values are numbers, true/false or strings)");
        }
        t.keys.emplace_back(key, std::move(val));
      }
      tables.push_back(std::move(t));
    }
  }
  return tables;
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

namespace {

constexpr GateMetric kMetrics[] = {GateMetric::ArgmaxAgreement, GateMetric::LogitsMaxAbs,
                                   GateMetric::KldMean, GateMetric::StructuralFlips,
                                   GateMetric::RoutingFlips};

bool metric_is_min(GateMetric m) { return m == GateMetric::ArgmaxAgreement; }

std::string fmt(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

const char* gate_metric_key(GateMetric m) {
  switch (m) {
    case GateMetric::ArgmaxAgreement:
      return "argmax_agreement_min";
    case GateMetric::LogitsMaxAbs:
      return "logits_max_abs_max";
    case GateMetric::KldMean:
      return "kld_mean_max";
    case GateMetric::StructuralFlips:
      return "structural_flips_max";
    case GateMetric::RoutingFlips:
      return "routing_flips_max";
  }
  return "?";
}

std::string Threshold::text() const {
  return relative() ? fmt(value) + "x " + floor_label : fmt(value);
}

ParityConfig parse_parity_config(std::string_view text, const std::string& what) {
  ParityConfig pc;
  pc.path = what;
  std::string known = "bitwise, description";
  for (GateMetric m : kMetrics) known += std::string(", ") + gate_metric_key(m);
  for (const TomlTable& t : parse_toml_tables(text, what)) {
    auto bad = [&](int line, const std::string& why) -> void {
      fail(what + ":" + std::to_string(line) + ": " + why);
    };
    if (t.name.rfind("config.", 0) != 0)
      bad(t.line, "unknown table [" + t.name + "] (only [config.NAME] tables are read)");
    GateConfig c;
    c.name = t.name.substr(7);
    for (const auto& [key, v] : t.keys) {
      if (key == "bitwise") {
        if (v.kind != TomlValue::Bool) bad(v.line, "'bitwise' must be true or false");
        c.bitwise = v.boolean;
        continue;
      }
      if (key == "description") {
        if (v.kind != TomlValue::String) bad(v.line, "'description' must be a string");
        c.description = v.string;
        continue;
      }
      const GateMetric* metric = nullptr;
      for (const GateMetric& m : kMetrics)
        if (key == gate_metric_key(m)) metric = &m;
      if (!metric)
        bad(v.line, "unknown key '" + key + "' in [" + t.name + "] (known: " + known + ")");
      Threshold th;
      if (v.kind == TomlValue::Number) {
        th.value = v.number;
      } else if (v.kind == TomlValue::String) {
        // "Kx LABEL": K a plain decimal, then 'x', then the label of the floor result.
        const std::string& s = v.string;
        const size_t x = s.find('x');
        bool integral = false;
        const std::string label(
            trim(x == std::string::npos ? std::string_view() : std::string_view(s).substr(x + 1)));
        if (x == std::string::npos ||
            !parse_toml_number(trim(std::string_view(s).substr(0, x)), th.value, integral) ||
            !is_bare_key(label))
          bad(v.line, "bad threshold \"" + s + "\" for '" + key +
                          "' (a number, or \"Kx LABEL\" such as \"3x noise_floor\")");
        th.floor_label = label;
      } else {
        bad(v.line, "'" + key + "' must be a number or a \"Kx LABEL\" string");
      }
      if (!std::isfinite(th.value)) bad(v.line, "'" + key + "' must be a finite number");
      if (th.value < 0) bad(v.line, "'" + key + "' must not be negative");
      if (*metric == GateMetric::ArgmaxAgreement && !th.relative() && th.value > 1)
        bad(v.line, "'argmax_agreement_min' is a fraction in [0, 1]");
      c.thresholds.emplace_back(*metric, th);
    }
    pc.configs.emplace(c.name, std::move(c));
  }
  return pc;
}

ParityConfig load_parity_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot read the parity configuration");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_parity_config(ss.str(), path);
}

// ---------------------------------------------------------------------------------------------
// Results and checks
// ---------------------------------------------------------------------------------------------

GateResult load_gate_result(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot read the result file");
  std::stringstream ss;
  ss << f.rdbuf();
  GateResult r;
  r.path = path;
  r.json = Json::parse(ss.str(), path);
  const Json* schema = r.json.find("schema");
  const Json* version = r.json.find("version");
  if (!schema || !schema->is_string() || schema->string != "ds4-parity-diff" || !version ||
      !version->is_number() || version->number != 1)
    fail(path +
         ": not a ds4-parity diff result (schema \"ds4-parity-diff\", version 1; write it with "
         "`ds4-parity diff --json`)");
  const Json* label = r.json.find("label");
  if (!label || !label->is_string() || label->string.empty())
    fail(path +
         ": the result has no label (run `ds4-parity diff --label NAME ...` to choose its "
         "[config.NAME])");
  r.label = label->string;
  return r;
}

namespace {

// A number of the diff JSON, where non-finite values are the strings "inf", "-inf", "nan".
double json_number(const Json& j, const std::string& path, const std::string& key) {
  if (j.is_number()) return j.number;
  if (j.is_string()) {
    if (j.string == "inf") return INFINITY;
    if (j.string == "-inf") return -INFINITY;
    if (j.string == "nan") return NAN;
  }
  fail(path + ": '" + key + "' is not a number");
}

const Json* dig(const Json& j, std::initializer_list<const char*> keys) {
  const Json* p = &j;
  for (const char* k : keys) {
    p = p->find(k);
    if (!p) return nullptr;
  }
  return p;
}

// The measured value of `m` in a result; nullopt when the result has no such measurement (no
// logits in it). Throws when the JSON is malformed.
std::optional<double> measure(const GateResult& r, GateMetric m) {
  const Json& j = r.json;
  auto need = [&](std::initializer_list<const char*> keys, const std::string& name) {
    const Json* v = dig(j, keys);
    if (!v) fail(r.path + ": result lacks '" + name + "'");
    return json_number(*v, r.path, name);
  };
  if (m == GateMetric::RoutingFlips) return need({"routing", "flips"}, "routing.flips");
  const Json* present = dig(j, {"logits", "present"});
  if (!present || !present->is_bool()) fail(r.path + ": result lacks 'logits.present'");
  if (!present->boolean) return std::nullopt;
  switch (m) {
    case GateMetric::ArgmaxAgreement:
      return need({"logits", "argmax_agreement", "p"}, "logits.argmax_agreement.p");
    case GateMetric::LogitsMaxAbs:
      return need({"logits", "max_abs"}, "logits.max_abs");
    case GateMetric::KldMean:
      return need({"logits", "kld", "mean"}, "logits.kld.mean");
    case GateMetric::StructuralFlips:
      return need({"logits", "structural_flips"}, "logits.structural_flips");
    case GateMetric::RoutingFlips:
      break;
  }
  return std::nullopt;
}

std::string divergence_text(const Json& j) {
  std::string s;
  if (const Json* rows = j.find("rows"))
    if (const Json* d = rows->find("bitdiff"), *c = rows->find("compared");
        d && c && d->is_number() && c->is_number())
      s = std::to_string(d->integer) + " of " + std::to_string(c->integer) + " rows differ";
  if (const Json* u = dig(j, {"rows", "unmatched"}); u && u->is_number() && u->integer > 0)
    s += ", " + std::to_string(u->integer) + " unmatched";
  if (const Json* b = dig(j, {"first_divergence", "bit"}); b && b->is_object()) {
    const Json *pos = b->find("pos"), *layer = b->find("layer"), *tap = b->find("tap");
    if (pos && layer && tap && pos->is_number() && layer->is_number() && tap->is_string())
      s += "; first bit divergence at position " + std::to_string(pos->integer) + ", layer " +
           std::to_string(layer->integer) + " '" + tap->string + "'";
  }
  if (const Json* a = dig(j, {"taps_only_a"}); a && a->is_array() && !a->array.empty())
    s += "; " + std::to_string(a->array.size()) + " taps only in A";
  if (const Json* b = dig(j, {"taps_only_b"}); b && b->is_array() && !b->array.empty())
    s += "; " + std::to_string(b->array.size()) + " taps only in B";
  return s;
}

}  // namespace

int GateReport::violations() const {
  int n = 0;
  for (const GateCheck& c : checks) n += !c.pass;
  return n;
}

GateReport run_gate(const ParityConfig& config, const std::vector<GateResult>& results) {
  // Every label must have a table before any check runs: bad input is reported as such.
  for (const GateResult& r : results)
    if (!config.configs.count(r.label))
      fail(r.path + ": label '" + r.label + "' has no [config." + r.label + "] table in " +
           config.path);
  auto floor_of = [&](const std::string& label, GateMetric m, const GateResult& for_result) {
    const GateResult* found = nullptr;
    for (const GateResult& r : results) {
      if (r.label != label) continue;
      if (found)
        fail(config.path + ": [config." + for_result.label + "] " + gate_metric_key(m) +
             " is relative to '" + label + "', but two results carry that label (" + found->path +
             ", " + r.path + ")");
      found = &r;
    }
    if (!found)
      fail(config.path + ": [config." + for_result.label + "] " + gate_metric_key(m) +
           " is relative to '" + label +
           "', but no RESULT file has that label (pass its diff JSON too)");
    const std::optional<double> v = measure(*found, m);
    if (!v)
      fail(found->path + ": the noise-floor result has no logits to measure " + gate_metric_key(m));
    return *v;
  };

  GateReport rep;
  for (const GateResult& r : results) {
    const GateConfig& c = config.configs.at(r.label);
    const std::string where = r.path + " [config." + r.label + "]";
    bool any = false;
    if (c.bitwise && *c.bitwise) {
      any = true;
      const Json* be = r.json.find("bit_equal");
      if (!be || !be->is_bool()) fail(r.path + ": result lacks 'bit_equal'");
      GateCheck ck{r.path, r.label, "bitwise", be->boolean, ""};
      ck.message = where + " bitwise = true: " +
                   (be->boolean ? "bit-equal (" + divergence_text(r.json) + ")"
                                : "NOT bit-equal: " + divergence_text(r.json));
      rep.checks.push_back(std::move(ck));
    }
    for (const auto& [m, th] : c.thresholds) {
      any = true;
      const double bound = th.relative() ? th.value * floor_of(th.floor_label, m, r) : th.value;
      const std::optional<double> v = measure(r, m);
      GateCheck ck{r.path, r.label, gate_metric_key(m), false, ""};
      const std::string lhs = where + " " + gate_metric_key(m) + " = " + th.text() +
                              (th.relative() ? " (= " + fmt(bound) + ")" : "") + ": ";
      if (!v) {
        ck.message = lhs + "the result has no logits (result_output) to measure";
      } else {
        // NaN never passes: both comparisons are false.
        ck.pass = metric_is_min(m) ? *v >= bound : *v <= bound;
        ck.message = lhs + "measured " + fmt(*v) +
                     (ck.pass            ? ""
                      : metric_is_min(m) ? ", below the minimum"
                                         : ", above the maximum");
      }
      rep.checks.push_back(std::move(ck));
    }
    if (!any)
      rep.checks.push_back(
          {r.path, r.label, "recorded", true, where + ": no thresholds (measurement only)"});
  }
  return rep;
}

// ---------------------------------------------------------------------------------------------
// JUnit XML and the command
// ---------------------------------------------------------------------------------------------

namespace {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&apos;";
        break;
      default:
        if (c < 0x20 && c != '\t' && c != '\n') {
          o += "?";  // XML 1.0 forbids most control characters even escaped
        } else {
          o += char(c);
        }
    }
  }
  return o;
}

}  // namespace

std::string junit_xml(const GateReport& rep) {
  // Group by file, keeping first-seen order.
  std::vector<std::string> files;
  for (const GateCheck& c : rep.checks)
    if (std::find(files.begin(), files.end(), c.file) == files.end()) files.push_back(c.file);
  std::string x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  x += "<testsuites name=\"ds4-parity check\" tests=\"" + std::to_string(rep.checks.size()) +
       "\" failures=\"" + std::to_string(rep.violations()) + "\">\n";
  for (const std::string& f : files) {
    int tests = 0, failures = 0;
    for (const GateCheck& c : rep.checks)
      if (c.file == f) ++tests, failures += !c.pass;
    x += "  <testsuite name=\"" + xml_escape(f) + "\" tests=\"" + std::to_string(tests) +
         "\" failures=\"" + std::to_string(failures) + "\" errors=\"0\">\n";
    for (const GateCheck& c : rep.checks) {
      if (c.file != f) continue;
      x += "    <testcase classname=\"parity." + xml_escape(c.label) + "\" name=\"" +
           xml_escape(c.key) + "\"";
      if (c.pass) {
        x += "/>\n";
      } else {
        x += ">\n      <failure message=\"" + xml_escape(c.message) + "\">" +
             xml_escape(c.message) + "</failure>\n    </testcase>\n";
      }
    }
    x += "  </testsuite>\n";
  }
  return x + "</testsuites>\n";
}

int check_command(const std::vector<std::string>& args, std::string& out) {
  std::vector<std::string> files;
  std::string config_path, junit_path;
  ArgParser p("check");
  p.positionals(&files, "RESULT.json... (from `ds4-parity diff --json --label NAME`)", 1)
      .option("--config", &config_path,
              "thresholds per configuration (TOML, harness/PARITY_TOML.md)")
      .option("--junit", &junit_path, "write JUnit XML here");
  if (!p.parse(args)) {
    out = p.usage() + "exit status: 0 all thresholds hold, 1 a violation, 2 bad input\n";
    return 0;
  }
  if (config_path.empty()) fail("bad flag: --config parity.toml is required");
  const ParityConfig config = load_parity_config(config_path);
  std::vector<GateResult> results;
  for (const std::string& f : files) results.push_back(load_gate_result(f));
  const GateReport rep = run_gate(config, results);
  for (const GateCheck& c : rep.checks)
    out += std::string(c.pass ? "PASS " : "FAIL ") + c.message + "\n";
  const int v = rep.violations();
  out += v ? "check: " + std::to_string(v) + " violation" + (v == 1 ? "" : "s") + " in " +
                 std::to_string(rep.checks.size()) + " checks\n"
           : "check: all " + std::to_string(rep.checks.size()) + " checks pass\n";
  if (!junit_path.empty()) {
    std::ofstream f(junit_path, std::ios::binary | std::ios::trunc);
    if (!f || !(f << junit_xml(rep)) || !f.flush())
      fail(junit_path + ": cannot write the JUnit XML");
  }
  return v ? 1 : 0;
}

}  // namespace ds4
