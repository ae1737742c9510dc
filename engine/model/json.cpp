// ds4::Json on nlohmann-json: parsing through its SAX interface, serialising through its
// serialiser. The RFC 8259 grammar, UTF-8 and \u-escape checks and their error messages are
// nlohmann's; ds4/json.h adds three rules (no duplicate keys, nesting depth 256, no NUL byte).
// Every error is one ds4::Error line "<what>: invalid JSON: <reason>".
#include "ds4/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ds4/error.h"

namespace ds4 {
namespace {

constexpr size_t kMaxDepth = 256;

// Builds a ds4::Json from nlohmann's SAX events; the first error (ours or nlohmann's) is kept in
// `error` and stops the parse.
struct Builder {
  Json root;
  std::vector<Json*> stack;  // open containers, innermost last
  std::string pending_key;   // the key of the next member
  std::string error;

  bool failed(std::string why) {
    error = std::move(why);
    return false;
  }
  Json* put(Json v) {
    if (stack.empty()) {
      root = std::move(v);
      return &root;
    }
    Json& parent = *stack.back();
    if (parent.kind == Json::Array) {
      parent.array.push_back(std::move(v));
      return &parent.array.back();
    }
    parent.members.emplace_back(std::move(pending_key), std::move(v));
    return &parent.members.back().second;
  }
  bool scalar(Json v) {
    put(std::move(v));
    return true;
  }
  // Nesting is bounded so that a hostile "[[[[..." cannot build a tree too deep to destroy.
  bool open(Json::Kind kind) {
    if (stack.size() >= kMaxDepth) return failed("nesting deeper than " + std::to_string(kMaxDepth));
    Json v;
    v.kind = kind;
    stack.push_back(put(std::move(v)));
    return true;
  }
  bool close() {
    stack.pop_back();
    return true;
  }

  bool null() { return scalar(Json{}); }
  bool boolean(bool b) {
    Json v;
    v.kind = Json::Bool;
    v.boolean = b;
    return scalar(std::move(v));
  }
  bool number_integer(int64_t i) {
    Json v;
    v.kind = Json::Number;
    v.integer = i;
    v.number = static_cast<double>(i);
    v.is_integer = true;
    return scalar(std::move(v));
  }
  bool number_unsigned(uint64_t u) {
    if (u <= static_cast<uint64_t>(INT64_MAX)) return number_integer(static_cast<int64_t>(u));
    Json v;  // beyond int64: a number, not an integer
    v.kind = Json::Number;
    v.number = static_cast<double>(u);
    return scalar(std::move(v));
  }
  bool number_float(double d, const std::string&) {
    Json v;
    v.kind = Json::Number;
    v.number = d;
    return scalar(std::move(v));
  }
  bool string(std::string& s) {
    Json v;
    v.kind = Json::String;
    v.string = std::move(s);
    return scalar(std::move(v));
  }
  bool binary(nlohmann::json::binary_t&) { return failed("binary value"); }  // not in JSON text
  bool start_object(size_t) { return open(Json::Object); }
  bool key(std::string& k) {
    pending_key = std::move(k);
    return true;
  }
  // A duplicate key would let two readers of one file see different values. Sorting pointers
  // keeps this O(n log n) for safetensors headers with thousands of tensors.
  bool end_object() {
    std::vector<const std::string*> keys;
    for (const auto& m : stack.back()->members) keys.push_back(&m.first);
    std::sort(keys.begin(), keys.end(), [](auto a, auto b) { return *a < *b; });
    for (size_t i = 1; i < keys.size(); ++i)
      if (*keys[i] == *keys[i - 1])
        return failed("duplicate key '" + printable(*keys[i]) + "' in object");
    return close();
  }
  bool start_array(size_t) { return open(Json::Array); }
  bool end_array() { return close(); }
  // nlohmann's message without its "[json.exception.parse_error.101] " tag, e.g. "parse error at
  // line 1, column 4: syntax error while parsing value - invalid literal; last read: 'tru]'".
  // The quoted input is escaped and clipped so that the message stays one short line.
  bool parse_error(size_t, const std::string&, const nlohmann::json::exception& e) {
    const std::string msg = e.what();
    const size_t tag = msg.find("] ");
    return failed(printable(tag == std::string::npos ? msg : msg.substr(tag + 2), 300));
  }
};

nlohmann::ordered_json to_nlohmann(const Json& v) {
  switch (v.kind) {
    case Json::Null: return nullptr;
    case Json::Bool: return v.boolean;
    case Json::Number: {
      if (v.is_integer) return v.integer;
      // An integral double within int64/uint64 is written as an integer ("2", not "2.0"), as
      // std::to_chars did; -0.0 stays a float ("-0.0") so that parse(dump()) keeps its sign
      // (found by tests/fuzz/fuzz_json).
      const double d = v.number;
      if (std::isfinite(d) && d == std::trunc(d) && !(d == 0 && std::signbit(d))) {
        if (d >= -9223372036854775808.0 && d < 9223372036854775808.0)
          return static_cast<int64_t>(d);
        if (d > 0 && d < 18446744073709551616.0) return static_cast<uint64_t>(d);
      }
      return d;
    }
    case Json::String: return v.string;
    case Json::Array: {
      nlohmann::ordered_json a = nlohmann::ordered_json::array();
      for (const Json& x : v.array) a.push_back(to_nlohmann(x));
      return a;
    }
    case Json::Object: {
      nlohmann::ordered_json o = nlohmann::ordered_json::object();
      // The vector under ordered_map: members are appended in order, duplicates kept as built.
      auto& members = static_cast<nlohmann::ordered_json::object_t::Container&>(
          o.get_ref<nlohmann::ordered_json::object_t&>());
      for (const auto& [key, value] : v.members) members.emplace_back(key, to_nlohmann(value));
      return o;
    }
  }
  return nullptr;
}

}  // namespace

Json Json::parse(std::string_view text, const std::string& what) {
  // nlohmann stops at a NUL byte as at the end of the input, which would hide what follows it.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    fail(what + ": invalid JSON: NUL byte at offset " + std::to_string(nul));
  Builder b;
  try {
    nlohmann::json::sax_parse(text.begin(), text.end(), &b);
  } catch (const nlohmann::json::exception& e) {  // not expected: the SAX parser reports errors
    b.error = printable(e.what(), 300);
  }
  if (!b.error.empty()) fail(what + ": invalid JSON: " + b.error);
  return std::move(b.root);
}

// Compact serialisation by nlohmann; bytes that are not UTF-8 are written as U+FFFD, so the output
// is always valid JSON.
std::string Json::dump() const {
  return to_nlohmann(*this).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Json::Json() = default;

std::string printable(std::string_view text, size_t max_len) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_len; ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  if (text.size() > max_len) out += "...";
  return out;
}

const char* Json::kind_name(Kind kind) {
  switch (kind) {
    case Null: return "null";
    case Bool: return "bool";
    case Number: return "number";
    case String: return "string";
    case Array: return "array";
    case Object: return "object";
  }
  return "?";
}

static void expect_kind(const Json& v, Json::Kind want) {
  if (v.kind != want)
    fail(std::string("JSON value is ") + Json::kind_name(v.kind) + ", expected " +
         Json::kind_name(want));
}

const Json* Json::find(const std::string& key) const {
  if (kind != Object) return nullptr;
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

const Json& Json::at(const std::string& key) const {
  expect_kind(*this, Object);
  const Json* v = find(key);
  if (!v) fail("JSON key '" + printable(key) + "' missing");
  return *v;
}

bool Json::as_bool() const { expect_kind(*this, Bool); return boolean; }
double Json::as_number() const { expect_kind(*this, Number); return number; }
const std::string& Json::as_string() const { expect_kind(*this, String); return string; }
const std::vector<Json>& Json::as_array() const { expect_kind(*this, Array); return array; }
const Json::Members& Json::as_object() const { expect_kind(*this, Object); return members; }

int64_t Json::as_int() const {
  expect_kind(*this, Number);
  if (is_integer) return integer;
  // 2^63 is exactly representable; anything at or beyond it does not fit.
  if (number != std::trunc(number) || number < -9223372036854775808.0 ||
      number >= 9223372036854775808.0)
    fail("JSON number " + dump() + " is not an int64 integer");
  return static_cast<int64_t>(number);
}

}  // namespace ds4
