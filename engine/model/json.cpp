// ds4::Json on nlohmann-json: parsing through its SAX interface, serialising through its
// serialiser. The RFC 8259 grammar, UTF-8 and \u-escape checks are nlohmann's; what ds4/json.h
// adds on top (duplicate keys, the nesting limit, no byte-order mark) is checked here, and every
// error becomes one ds4::Error line "<what>: invalid JSON at byte <offset>: <reason>" with the
// reasons ds4/json.h has always used (tests/unit/json_test.cpp lists them).
#include "ds4/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <nlohmann/json.hpp>

#include "ds4/error.h"

namespace ds4 {
namespace {

constexpr size_t kMaxDepth = 256;

// A char iterator that records, in *consumed, how far nlohmann's lexer has read. The lexer reads
// a '{' or '[' and hands it to the SAX handler before reading on, so at start_object/start_array
// the bracket is the byte just before *consumed (duplicate-key and depth errors name it).
struct CountingIter {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;
  const char* p = nullptr;
  const char** consumed = nullptr;
  reference operator*() const { return *p; }
  CountingIter& operator++() {
    *consumed = ++p;
    return *this;
  }
  CountingIter operator++(int) {
    CountingIter old = *this;
    ++*this;
    return old;
  }
  bool operator==(const CountingIter& o) const { return p == o.p; }
  bool operator!=(const CountingIter& o) const { return p != o.p; }
};

// nlohmann's lexer message (the text between " - " and "; last read:") -> our reason.
std::string lexer_reason(const std::string& msg, bool at_eof) {
  auto has = [&](const char* s) { return msg.find(s) != std::string::npos; };
  if (has("missing closing quote")) return "unterminated string";
  if (has("forbidden character after backslash"))
    return at_eof ? "unterminated string" : "invalid escape";
  if (has("must be followed by 4 hex digits"))
    return at_eof ? "truncated \\u escape" : "bad hex digit in \\u escape";
  if (has("must be followed by U+DC00")) return "unpaired high surrogate";
  if (has("must follow U+D800")) return "unpaired low surrogate";
  if (has("control character")) return "control character in string";
  if (has("ill-formed UTF-8")) return "invalid UTF-8";
  if (has("expected digit after '-'"))
    return at_eof ? "unexpected end of input, expected a value" : "unexpected character";
  if (has("after '.'")) return "expected digits after '.'";
  if (has("exponent")) return "expected digits in exponent";
  return msg;  // not expected from nlohmann 3.11; still one line
}

// The byte a lexer error names, as the hand-written parser did: a number's '-', a string's
// opening quote when it is not closed, the backslash of a bad escape or surrogate, the first
// byte of a bad UTF-8 sequence; otherwise `stop`, where nlohmann stopped. `first` is the
// token's first byte.
size_t error_byte(std::string_view text, const std::string& message, size_t first, size_t stop,
                  bool at_eof) {
  auto has = [&](const char* s) { return message.find(s) != std::string::npos; };
  auto hex = [&](size_t i, const char* allowed) {
    return i < text.size() && std::strchr(allowed, text[i]) != nullptr;
  };
  if (has("after '-'") || has("missing closing quote")) return first;
  if (has("after backslash") && !at_eof) return stop - 1;
  if (has("surrogate")) {  // the nearest \uD800-\uDBFF (high) or \uDC00-\uDFFF (low) before
    const bool high = has("must be followed");
    for (size_t u = stop; u + 12 > stop && u > first; --u)
      if (text[u - 1] == '\\' && hex(u, "u") && hex(u + 1, "dD") &&
          hex(u + 2, high ? "89abAB" : "cdefCDEF")) {
        // "\uD83D\uD83D": a high surrogate followed by another; the first is unpaired
        if (high && u >= first + 7 && text[u - 7] == '\\' && hex(u - 6, "u") &&
            hex(u - 5, "dD") && hex(u - 4, "89abAB"))
          return u - 7;
        return u - 1;
      }
  }
  if (has("UTF-8")) {  // a lead byte whose sequence reaches the bad byte
    for (size_t j = stop; j > first && stop - j < 3; --j) {
      const auto lead = static_cast<unsigned char>(text[j - 1]);
      if ((lead & 0xC0) == 0x80) continue;
      const size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      return j - 1 + len > stop ? j - 1 : stop;
    }
  }
  return stop;
}

// The error where a token came but the context wanted a ':', ']', '}', a
// string key or the end of the input; "" where the context wanted a value.
std::string unexpected_token(const std::string& context, bool after_value, bool is_string) {
  if (after_value) return "trailing characters after the value";
  if (context == "object key") return is_string ? "" : "expected a string key";
  if (context == "object separator") return "expected ':'";
  if (context == "array") return "expected ']'";
  if (context == "object") return "expected '}'";
  return "";
}

// Builds a ds4::Json from nlohmann's SAX events; the first error (ours or nlohmann's) is kept as
// (offset, reason) and parsing stops.
struct Builder {
  std::string_view text;
  const char* consumed = nullptr;  // advanced by CountingIter
  Json root;
  std::vector<Json*> stack;        // open containers, innermost last
  std::vector<size_t> opened_at;   // byte offset of each open container's bracket
  std::string pending_key;  // the key of the next member
  bool failed = false;
  size_t at = 0;
  std::string reason;

  bool error(size_t offset, std::string why) {
    failed = true;
    at = offset;
    reason = std::move(why);
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
    const size_t bracket = static_cast<size_t>(consumed - text.data()) - 1;
    if (stack.size() >= kMaxDepth)
      return error(bracket, "nesting deeper than " + std::to_string(kMaxDepth));
    Json v;
    v.kind = kind;
    stack.push_back(put(std::move(v)));
    opened_at.push_back(bracket);
    return true;
  }
  bool close() {
    stack.pop_back();
    opened_at.pop_back();
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
  bool number_float(double d, const std::string& literal) {
    // strtod rounds 1e-400 to 0; a literal with a non-zero digit that became 0 is out of range.
    // The lexer has read one byte past the number unless the input ended (a number ends in a
    // digit and the byte after it is never one), so the literal starts at:
    const size_t read = static_cast<size_t>(consumed - text.data());
    const size_t end = read > 0 && text[read - 1] >= '0' && text[read - 1] <= '9' ? read : read - 1;
    const std::string mantissa = literal.substr(0, literal.find_first_of("eE"));
    if (d == 0 && mantissa.find_first_of("123456789") != std::string::npos)
      return error(end - std::min(end, literal.size()), "number out of range");
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
  bool binary(nlohmann::json::binary_t&) { return error(0, "binary value"); }  // not in JSON text
  bool start_object(size_t) { return open(Json::Object); }
  bool key(std::string& k) {
    pending_key = std::move(k);
    return true;
  }
  // Sorting indices keeps this O(n log n) for headers with thousands of tensors.
  bool end_object() {
    const Json::Members& members = stack.back()->members;
    std::vector<const std::string*> keys;
    keys.reserve(members.size());
    for (const auto& m : members) keys.push_back(&m.first);
    std::sort(keys.begin(), keys.end(), [](auto a, auto b) { return *a < *b; });
    for (size_t i = 1; i < keys.size(); ++i)
      if (*keys[i] == *keys[i - 1])
        return error(opened_at.back(), "duplicate key '" + printable(*keys[i]) + "' in object");
    return close();
  }
  bool start_array(size_t) { return open(Json::Array); }
  bool end_array() { return close(); }

  // nlohmann's error -> our offset and reason. `position` counts the bytes read including an
  // end-of-input read, so position > size means the input ended; last_token is the token (a
  // string, number or literal) or, for a lexer error, the bytes read of the bad token.
  bool parse_error(size_t position, const std::string& last_token,
                   const nlohmann::json::exception& ex) {
    const bool at_eof = position > text.size();
    const std::string what = ex.what();
    if (ex.id == 406)  // out_of_range: a float literal beyond double
      return error(position - std::min(position, last_token.size()), "number out of range");
    const size_t dash = what.find(" - ");
    const std::string detail = dash == std::string::npos ? what : what.substr(dash + 3);
    const bool after_value = what.find("; expected end of input") != std::string::npos;
    const size_t last_read = detail.find("; last read: '");
    size_t start = at_eof ? text.size() : position - 1;  // the byte the lexer stopped at
    std::string token = "end of input";
    auto between = [&](const std::string& s, const char* a, const char* b) {
      const size_t i = s.find(a);
      if (i == std::string::npos) return std::string();
      const size_t j = s.find(b, i + std::strlen(a));
      return s.substr(i + std::strlen(a), j == std::string::npos ? j : j - i - std::strlen(a));
    };
    const std::string context = between(what, "while parsing ", " - ");
    if (last_read != std::string::npos) {  // the lexer rejected a token
      const std::string message = detail.substr(0, last_read);
      if (message != "invalid literal") {
        // A string or number token: last_token is its text from its first byte to the bad one
        // (a control byte written as the 8 characters "<U+00XX>").
        size_t bytes = last_token.size();
        for (size_t i = last_token.find("<U+"); i != std::string::npos;
             i = last_token.find("<U+", i + 1))
          bytes -= std::min<size_t>(bytes - 1, 7);
        const size_t first = (at_eof ? text.size() : position) - std::min(position, bytes);
        const bool digit = first < text.size() && text[first] >= '0' && text[first] <= '9';
        if (first > 0 && text[first - 1] == '0' && digit)  // "01.": see below
          return error(first >= 2 && text[first - 2] == '-' ? first - 2 : first - 1,
                       "leading zero in number");
        // Where a ':', ']', '}' or the end was due, that is the error (the token is not read).
        const bool quote = first < text.size() && text[first] == '"';
        if (auto r = unexpected_token(context, after_value, quote); !r.empty())
          return error(first, r);
        start = error_byte(text, message, first, start, at_eof);
        if (message.find("4 hex digits") != std::string::npos)  // "\u12": old reading
          for (size_t u = start; u + 5 > start && u >= 2; --u)
            if (text[u - 1] == 'u' && text[u - 2] == '\\') {
              if (text.size() - u < 4) return error(u, "truncated \\u escape");
              break;
            }
        return error(start, lexer_reason(message, at_eof));
      }
      // "invalid literal": a true/false/null cut short (named at its first letter), else a byte
      // that starts no token, which is then an unexpected token in its context, as below.
      for (const char* word : {"true", "false", "null"})
        for (size_t k = std::min(start, std::strlen(word) - 1); k >= 1; --k)
          if (text.substr(start - k, k) == std::string_view(word, k)) {
            const std::string r = unexpected_token(context, after_value, false);
            return error(start - k, r.empty() ? "invalid literal" : r);
          }
      token = "a stray byte";
    }
    // The parser met a token it did not expect, in `context`.
    if (last_read == std::string::npos) token = between(detail, "unexpected ", ";");
    // A string or number token is last_token (the lexer restarts its token text for them); a
    // literal is its own length; a structural character is the byte just read.
    size_t length = 1;
    if (token == "string literal" || token == "number literal") length = last_token.size();
    else if (token == "true literal" || token == "null literal") length = 4;
    else if (token == "false literal") length = 5;
    if (last_read == std::string::npos)  // a well-formed token: the error names its first byte
      start = at_eof ? text.size() : position - std::min(position, length);
    // "01": the number 0 followed by another number with nothing between them.
    if (token == "number literal" && start > 0 && text[start - 1] == '0' && text[start] != '-') {
      const size_t zero = start >= 2 && text[start - 2] == '-' ? start - 2 : start - 1;
      return error(zero, "leading zero in number");
    }
    const bool end = start >= text.size();
    if (context == "object key") return error(start, "expected a string key");
    if (context == "object separator")
      return error(start, end ? "unexpected end of input, expected ':'" : "expected ':'");
    if (context == "array")
      return error(start, end ? "unexpected end of input, expected ']'" : "expected ']'");
    if (context == "object")
      return error(start, end ? "unexpected end of input, expected '}'" : "expected '}'");
    if (after_value)
      return error(start, "trailing characters after the value");
    return error(start, end ? "unexpected end of input, expected a value" : "unexpected character");
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
  // nlohmann skips a UTF-8 byte-order mark; strict JSON here does not allow one.
  if (!text.empty() && static_cast<unsigned char>(text[0]) == 0xEF)
    fail(what + ": invalid JSON at byte 0: unexpected character");
  Builder b;
  b.text = text;
  b.consumed = text.data();
  CountingIter first{text.data(), &b.consumed}, last{text.data() + text.size(), &b.consumed};
  try {
    nlohmann::json::sax_parse(first, last, &b);
  } catch (const nlohmann::json::exception& e) {  // not expected: the SAX parser reports errors
    fail(what + ": invalid JSON: " + printable(e.what()));
  }
  // nlohmann's lexer takes a NUL byte for the end of the input; here it is a trailing byte.
  if (!b.failed && text.find('\0') != std::string_view::npos)
    b.error(text.find('\0'), "trailing characters after the value");
  if (b.failed)
    fail(what + ": invalid JSON at byte " + std::to_string(b.at) + ": " + b.reason);
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
