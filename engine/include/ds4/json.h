// Strict JSON (RFC 8259) for safetensors headers, HF config.json files and report JSON: a small
// value type whose parse() and dump() are nlohmann-json's (engine/model/json.cpp).
//
// Strict means RFC 8259 as nlohmann checks it (no comments, no trailing commas, no NaN/Infinity,
// no leading zeros, no raw control characters in strings, valid UTF-8 and \u escapes, nothing but
// whitespace after the value; a UTF-8 byte-order mark is skipped, a number that underflows reads
// as 0) plus three rules of ours: no duplicate object keys, nesting depth at most 256, no NUL byte.
// Any defect throws one ds4::Error line "<what>: invalid JSON: <reason>", the reason being
// nlohmann's ("parse error at line L, column C: ...") or ours.
//
//   ds4::Json cfg = ds4::Json::parse(text, "config.json");
//   int64_t layers = cfg.at("num_hidden_layers").as_int();
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ds4 {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object };
  using Members = std::vector<std::pair<std::string, Json>>;  // objects keep file order

  Kind kind = Null;
  bool boolean = false;
  double number = 0;         // every Number
  int64_t integer = 0;       // exact value when is_integer
  bool is_integer = false;   // the literal had no fraction/exponent and fits in int64
  std::string string;
  std::vector<Json> array;
  Members members;

  // Declared here and defaulted in json.cpp: clang with libstdc++ 12 in C++20 mode otherwise
  // instantiates the implicit constructor (and through it vector<pair<string, Json>>) while
  // Json is still incomplete, and rejects the header (std::pair's explicit(...) check).
  Json();

  static Json parse(std::string_view text, const std::string& what);

  static const char* kind_name(Kind kind);  // "null", "bool", "number", ...
  bool is_null() const { return kind == Null; }
  bool is_bool() const { return kind == Bool; }
  bool is_number() const { return kind == Number; }
  bool is_string() const { return kind == String; }
  bool is_array() const { return kind == Array; }
  bool is_object() const { return kind == Object; }

  // Object lookup (linear; objects here are small). find returns nullptr when absent or when
  // this is not an object; at throws ds4::Error "JSON key '<key>' missing".
  const Json* find(const std::string& key) const;
  const Json& at(const std::string& key) const;

  // Typed access; each throws ds4::Error "JSON value is <kind>, expected <kind>" on a mismatch.
  // as_int also accepts an integral float such as 2.0 within int64 range, else it throws.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const std::vector<Json>& as_array() const;
  const Members& as_object() const;

  // Compact serialisation; parse(dump()) gives back an equal value. A number without a fraction
  // (an integer, or a double with an integral value in int64/uint64 range) is written as digits
  // ("2", not "2.0"), other doubles in their shortest round-trip form ("-0.0" keeps the sign);
  // bytes that are not UTF-8 in a string are written as U+FFFD.
  std::string dump() const;
};

// Text read from a file (a key, a tensor name) made safe for a one-line error message: control
// bytes and DEL become \xNN and anything past `max_len` bytes is cut and marked "...". Used by
// the JSON, safetensors and GGUF readers.
std::string printable(std::string_view text, size_t max_len = 200);

}  // namespace ds4
