// Strict JSON parser and serialiser (see ds4/json.h for what "strict" rejects).
//
// A recursive-descent parser over a string_view. Every read checks `pos < text.size()` first,
// so a truncated or hostile input can only produce an error, never an out-of-bounds read.
#include "ds4/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "ds4/error.h"

namespace ds4 {
namespace {

constexpr int kMaxDepth = 256;

struct Parser {
  std::string_view text;
  const std::string& what;
  size_t pos = 0;
  int depth = 0;

  [[noreturn]] void error(const std::string& reason, size_t at) const {
    fail(what + ": invalid JSON at byte " + std::to_string(at) + ": " + reason);
  }
  [[noreturn]] void error(const std::string& reason) const { error(reason, pos); }

  bool at_end() const { return pos >= text.size(); }
  char peek() const { return at_end() ? '\0' : text[pos]; }

  void skip_ws() {
    while (!at_end() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n' ||
                         text[pos] == '\r'))
      ++pos;
  }

  void expect(char c) {
    if (at_end()) error(std::string("unexpected end of input, expected '") + c + "'");
    if (text[pos] != c) error(std::string("expected '") + c + "'");
    ++pos;
  }

  void literal(std::string_view word) {
    if (text.substr(pos, word.size()) != word) error("invalid literal");
    pos += word.size();
  }

  Json value() {
    skip_ws();
    if (at_end()) error("unexpected end of input, expected a value");
    Json v;
    switch (text[pos]) {
      case '{': object(v); break;
      case '[': array(v); break;
      case '"': v.kind = Json::String; v.string = string(); break;
      case 't': literal("true"); v.kind = Json::Bool; v.boolean = true; break;
      case 'f': literal("false"); v.kind = Json::Bool; break;
      case 'n': literal("null"); break;
      default: number(v); break;
    }
    return v;
  }

  // Nesting is bounded so that a hostile "[[[[..." cannot exhaust the stack.
  void enter() {
    if (++depth > kMaxDepth) error("nesting deeper than " + std::to_string(kMaxDepth));
  }

  void array(Json& v) {
    enter();
    v.kind = Json::Array;
    ++pos;  // '['
    skip_ws();
    if (peek() == ']') { ++pos; --depth; return; }
    for (;;) {
      v.array.push_back(value());
      skip_ws();
      if (peek() == ',') { ++pos; continue; }
      expect(']');
      break;
    }
    --depth;
  }

  void object(Json& v) {
    enter();
    v.kind = Json::Object;
    size_t start = pos;
    ++pos;  // '{'
    skip_ws();
    if (peek() == '}') { ++pos; --depth; return; }
    for (;;) {
      skip_ws();
      if (peek() != '"') error("expected a string key");
      std::string key = string();
      skip_ws();
      expect(':');
      Json member = value();
      v.members.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (peek() == ',') { ++pos; continue; }
      expect('}');
      break;
    }
    check_duplicate_keys(v.members, start);
    --depth;
  }

  // Sorting indices keeps this O(n log n) for headers with thousands of tensors.
  void check_duplicate_keys(const Json::Members& members, size_t start) const {
    std::vector<const std::string*> keys;
    keys.reserve(members.size());
    for (const auto& m : members) keys.push_back(&m.first);
    std::sort(keys.begin(), keys.end(), [](auto a, auto b) { return *a < *b; });
    for (size_t i = 1; i < keys.size(); ++i)
      if (*keys[i] == *keys[i - 1])
        error("duplicate key '" + printable(*keys[i]) + "' in object", start);
  }

  unsigned hex4() {
    if (text.size() - pos < 4) error("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text[pos++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else error("bad hex digit in \\u escape", pos - 1);
    }
    return v;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  void escape(std::string& out) {
    size_t at = pos - 1;  // the backslash
    if (at_end()) error("unterminated string");
    char c = text[pos++];
    switch (c) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': break;
      default: error("invalid escape", at);
    }
    unsigned cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) error("unpaired low surrogate", at);
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (text.substr(pos, 2) != "\\u") error("unpaired high surrogate", at);
      pos += 2;
      unsigned lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) error("unpaired high surrogate", at);
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    put_utf8(out, cp);
  }

  // Copies one UTF-8 sequence, rejecting overlong forms, surrogates and code points > U+10FFFF.
  void utf8(std::string& out) {
    size_t at = pos;
    auto b0 = static_cast<unsigned char>(text[pos]);
    int len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC0 ? 2 : 0;
    if (len == 0 || b0 > 0xF4 || text.size() - pos < size_t(len)) error("invalid UTF-8", at);
    unsigned cp = b0 & (0x3F >> (len - 1));
    for (int i = 1; i < len; ++i) {
      auto b = static_cast<unsigned char>(text[pos + i]);
      if ((b & 0xC0) != 0x80) error("invalid UTF-8", at);
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr unsigned kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      error("invalid UTF-8", at);
    out.append(text.substr(pos, len));
    pos += len;
  }

  std::string string() {
    size_t start = pos;
    ++pos;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) error("unterminated string", start);
      auto c = static_cast<unsigned char>(text[pos]);
      if (c == '"') { ++pos; return out; }
      if (c == '\\') { ++pos; escape(out); continue; }
      if (c < 0x20) error("control character in string");
      if (c < 0x80) { out += char(c); ++pos; continue; }
      utf8(out);
    }
  }

  size_t digits() {
    size_t n = 0;
    while (!at_end() && text[pos] >= '0' && text[pos] <= '9') { ++pos; ++n; }
    return n;
  }

  // Grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
  void number(Json& v) {
    size_t start = pos;
    if (peek() == '-') ++pos;
    if (peek() == '0') {
      ++pos;
      if (peek() >= '0' && peek() <= '9') error("leading zero in number", start);
    } else if (digits() == 0) {
      error(at_end() ? "unexpected end of input, expected a value" : "unexpected character",
            start);
    }
    bool integral = true;
    if (peek() == '.') {
      ++pos;
      integral = false;
      if (digits() == 0) error("expected digits after '.'");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos;
      integral = false;
      if (peek() == '+' || peek() == '-') ++pos;
      if (digits() == 0) error("expected digits in exponent");
    }
    const char* first = text.data() + start;
    const char* last = text.data() + pos;
    v.kind = Json::Number;
    auto r = std::from_chars(first, last, v.number);
    if (r.ec != std::errc() || !std::isfinite(v.number)) error("number out of range", start);
    if (integral) {
      auto ri = std::from_chars(first, last, v.integer);
      v.is_integer = ri.ec == std::errc() && ri.ptr == last;
    }
  }
};

void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

void dump_value(const Json& v, std::string& out) {
  switch (v.kind) {
    case Json::Null: out += "null"; return;
    case Json::Bool: out += v.boolean ? "true" : "false"; return;
    case Json::Number: {
      // Shortest round-trip form, so parse(dump()) reproduces the same double.
      // hardening (found by tests/fuzz/fuzz_json): -0.0 printed as "-0" came back as the
      // integer 0, losing the sign; write it as a float literal.
      if (!v.is_integer && v.number == 0 && std::signbit(v.number)) {
        out += "-0.0";
        return;
      }
      char buf[32];
      auto r = v.is_integer ? std::to_chars(buf, buf + sizeof buf, v.integer)
                            : std::to_chars(buf, buf + sizeof buf, v.number);
      out.append(buf, r.ptr);
      return;
    }
    case Json::String: dump_string(v.string, out); return;
    case Json::Array:
      out += '[';
      for (size_t i = 0; i < v.array.size(); ++i) {
        if (i) out += ',';
        dump_value(v.array[i], out);
      }
      out += ']';
      return;
    case Json::Object:
      out += '{';
      for (size_t i = 0; i < v.members.size(); ++i) {
        if (i) out += ',';
        dump_string(v.members[i].first, out);
        out += ':';
        dump_value(v.members[i].second, out);
      }
      out += '}';
      return;
  }
}

}  // namespace

Json::Json() = default;

Json Json::parse(std::string_view text, const std::string& what) {
  Parser p{text, what};
  Json v = p.value();
  p.skip_ws();
  if (!p.at_end()) p.error("trailing characters after the value");
  return v;
}

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

std::string Json::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

}  // namespace ds4
