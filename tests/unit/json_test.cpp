// Tests for the strict JSON parser (ds4/json.h): values, ordering, escapes, round trips, every
// class of rejected input with nlohmann's reason and line/column (or ours for the three rules
// nlohmann lacks), and the HF config.json fixture.
#include "ds4/json.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "ds4/error.h"

namespace {

using ds4::Json;

// Parses `text` expecting a ds4::Error whose message contains `needle`; returns the message.
std::string parse_error(const std::string& text, const std::string& needle) {
  try {
    Json::parse(text, "t.json");
  } catch (const ds4::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\ninput: " << text;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("t.json: invalid JSON: ", 0), 0u) << msg;
    return msg;
  }
  ADD_FAILURE() << "no error for input: " << text;
  return "";
}

TEST(Json, Scalars) {
  EXPECT_TRUE(Json::parse("null", "t").is_null());
  EXPECT_TRUE(Json::parse(" true ", "t").as_bool());
  EXPECT_FALSE(Json::parse("false", "t").as_bool());
  EXPECT_EQ(Json::parse("\"hi\"", "t").as_string(), "hi");
  EXPECT_EQ(Json::parse("-17", "t").as_int(), -17);
  EXPECT_DOUBLE_EQ(Json::parse("1.5e3", "t").as_number(), 1500.0);
  EXPECT_DOUBLE_EQ(Json::parse("-0.25", "t").as_number(), -0.25);
  EXPECT_DOUBLE_EQ(Json::parse("1E-2", "t").as_number(), 0.01);
  EXPECT_EQ(Json::parse("0", "t").as_int(), 0);
}

TEST(Json, IntegersAreExact) {
  Json big = Json::parse("9223372036854775807", "t");
  EXPECT_TRUE(big.is_integer);
  EXPECT_EQ(big.as_int(), INT64_MAX);
  EXPECT_EQ(Json::parse("-9223372036854775808", "t").as_int(), INT64_MIN);
  // Beyond int64: still a number, but not an integer.
  Json huge = Json::parse("9223372036854775808", "t");
  EXPECT_FALSE(huge.is_integer);
  EXPECT_THROW(huge.as_int(), ds4::Error);
  EXPECT_EQ(Json::parse("2.0", "t").as_int(), 2);
  EXPECT_EQ(Json::parse("1e3", "t").as_int(), 1000);
  EXPECT_THROW(Json::parse("2.5", "t").as_int(), ds4::Error);
}

TEST(Json, ObjectsKeepOrderAndNest) {
  Json v = Json::parse(R"({"z": 1, "a": [1, 2, {"k": null}], "m": {"x": "y"}, "e": {}, "f": []})",
                       "t");
  ASSERT_TRUE(v.is_object());
  const auto& members = v.as_object();
  ASSERT_EQ(members.size(), 5u);
  EXPECT_EQ(members[0].first, "z");
  EXPECT_EQ(members[1].first, "a");
  EXPECT_EQ(members[2].first, "m");
  EXPECT_EQ(v.at("a").as_array().size(), 3u);
  EXPECT_TRUE(v.at("a").as_array()[2].at("k").is_null());
  EXPECT_EQ(v.at("m").at("x").as_string(), "y");
  EXPECT_TRUE(v.at("e").as_object().empty());
  EXPECT_TRUE(v.at("f").as_array().empty());
  EXPECT_EQ(v.find("missing"), nullptr);
  EXPECT_EQ(v.at("z").find("z"), nullptr);  // not an object
}

TEST(Json, Escapes) {
  Json v = Json::parse(R"("a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00")", "t");
  EXPECT_EQ(v.as_string(), "a\"b\\c/d\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  // Raw UTF-8 passes through unchanged.
  EXPECT_EQ(Json::parse("\"\xC3\xA9\xF0\x9F\x98\x80\"", "t").as_string(),
            "\xC3\xA9\xF0\x9F\x98\x80");
}

TEST(Json, DumpRoundTrips) {
  const char* texts[] = {
      R"({"a":1,"b":[true,false,null],"c":"x\"y\n\u0001","d":-0.1,"e":1e+300,"f":{}})",
      R"([0.30000000000000004,123456789012345678,-5,"\u00e9"])",
  };
  for (const char* text : texts) {
    Json v = Json::parse(text, "t");
    std::string once = v.dump();
    Json again = Json::parse(once, "t");
    EXPECT_EQ(again.dump(), once);
  }
  EXPECT_EQ(Json::parse(" { \"a\" : [ 1 , 2.5 ] } ", "t").dump(), R"({"a":[1,2.5]})");
  EXPECT_EQ(Json::parse("0.30000000000000004", "t").as_number(), 0.30000000000000004);
  EXPECT_EQ(Json::parse(R"("\u0001")", "t").dump(), R"("\u0001")");
}

TEST(Json, AccessorErrors) {
  Json v = Json::parse(R"({"n": 1, "s": "x"})", "t");
  EXPECT_THROW(v.at("missing"), ds4::Error);
  EXPECT_THROW(v.at("n").as_string(), ds4::Error);
  EXPECT_THROW(v.at("s").as_number(), ds4::Error);
  EXPECT_THROW(v.at("s").as_int(), ds4::Error);
  EXPECT_THROW(v.at("s").as_bool(), ds4::Error);
  EXPECT_THROW(v.as_array(), ds4::Error);
  EXPECT_THROW(v.at("n").as_object(), ds4::Error);
  EXPECT_THROW(v.at("n").at("x"), ds4::Error);
  try {
    v.at("missing");
  } catch (const ds4::Error& e) {
    EXPECT_STREQ(e.what(), "JSON key 'missing' missing");
  }
  try {
    v.at("s").as_number();
  } catch (const ds4::Error& e) {
    EXPECT_STREQ(e.what(), "JSON value is string, expected number");
  }
}

TEST(Json, RejectsMalformedInput) {
  EXPECT_EQ(parse_error("", "end of input"),
            "t.json: invalid JSON: parse error at line 1, column 1: syntax error while parsing "
            "value - unexpected end of input; expected '[', '{', or a literal");
  EXPECT_EQ(parse_error("[1,]", "unexpected ']'"),
            "t.json: invalid JSON: parse error at line 1, column 4: syntax error while parsing "
            "value - unexpected ']'; expected '[', '{', or a literal");
  parse_error("{\"a\":1,}", "object key - unexpected '}'; expected string literal");
  parse_error("{\"a\" 1}", "expected ':'");
  parse_error("[1 2]", "expected ']'");
  parse_error("[1", "unexpected end of input; expected ']'");
  parse_error("{\"a\":1", "unexpected end of input; expected '}'");
  parse_error("01", "unexpected number literal; expected end of input");  // a leading zero
  parse_error("-", "expected digit after '-'");
  parse_error("1.", "expected digit after '.'");
  parse_error("1e", "after exponent");
  for (const char* bad : {".5", "+1", "NaN", "Infinity", "'a'", "// c\n1", "tru", "nul", "[tru]"})
    parse_error(bad, "invalid literal");
  EXPECT_EQ(parse_error("1e400", "overflow"), "t.json: invalid JSON: number overflow parsing '1e400'");
  parse_error("1 2", "expected end of input");
  parse_error("{\"a\":1}x", "expected end of input");
  EXPECT_EQ(parse_error("\"abc", "missing closing quote"),
            "t.json: invalid JSON: parse error at line 1, column 5: syntax error while parsing "
            "value - invalid string: missing closing quote; last read: '\"abc'");
  parse_error("\"a\\", "forbidden character after backslash");
  parse_error("\"\\x\"", "forbidden character after backslash");
  parse_error("\"a\nb\"", "control character U+000A (LF) must be escaped");  // still one line
  parse_error("\"\\u12zz\"", "'\\u' must be followed by 4 hex digits");
  parse_error("\"\\u12", "'\\u' must be followed by 4 hex digits");
  parse_error("\"\\ud800\"", "must be followed by U+DC00..U+DFFF");
  parse_error("\"\\ud800\\u0041\"", "must be followed by U+DC00..U+DFFF");
  parse_error("\"\\udc00\"", "must follow U+D800..U+DBFF");
  parse_error("\"\xC0\x80\"", "ill-formed UTF-8");      // overlong NUL
  parse_error("\"\xED\xA0\x80\"", "ill-formed UTF-8");  // encoded surrogate
  parse_error("\"\xF5\x80\x80\x80\"", "ill-formed UTF-8");  // above U+10FFFF
  parse_error("\"\x80\"", "ill-formed UTF-8");          // stray continuation byte
  parse_error("\"\xE2\x82\"", "ill-formed UTF-8");      // truncated sequence
  // A pretty-printed file: the line and column of the defect.
  parse_error("{\n  \"a\": 1,\n  \"b\": trux\n}", "line 3, column 11");
  // A long token is quoted clipped, so that the message stays short.
  EXPECT_LT(parse_error("\"" + std::string(100000, 'x') + "\x01\"", "last read").size(), 400u);
}

// What ds4/json.h adds to nlohmann: no duplicate keys (two readers of one file must not see
// different values), no NUL byte (nlohmann stops reading there, hiding what follows) and the
// depth limit (DepthLimit below). What it does not: a byte-order mark is skipped and a number
// that underflows reads as 0, as nlohmann does.
TEST(Json, OurRulesOnTopOfNlohmann) {
  EXPECT_EQ(parse_error("{\"a\":1,\"b\":2,\"a\":3}", "duplicate key 'a'"),
            "t.json: invalid JSON: duplicate key 'a' in object");
  parse_error("[{\"k\":[1],\"k\":[2]}]", "duplicate key 'k'");
  EXPECT_EQ(parse_error(std::string("{}\0", 3), "NUL"), "t.json: invalid JSON: NUL byte at offset 2");
  parse_error(std::string("[1\0]", 4), "NUL byte at offset 2");
  parse_error(std::string("\"a\0b\"", 5), "NUL byte at offset 2");
  EXPECT_TRUE(Json::parse("\xEF\xBB\xBF{}", "t").as_object().empty());
  EXPECT_EQ(Json::parse("1e-400", "t").as_number(), 0.0);
  EXPECT_NO_THROW(Json::parse("5e-324", "t"));  // the smallest subnormal
}

TEST(Json, DumpNumbersAndStrings) {
  EXPECT_EQ(Json::parse("[2.0,-0.0,-0,1e300,0.1,1e15,9223372036854775808]", "t").dump(),
            "[2,-0.0,0,1e+300,0.1,1000000000000000,9223372036854775808]");
  Json s;
  s.kind = Json::String;
  s.string = "a\xff\x01";  // not UTF-8: written as U+FFFD, so the output stays valid JSON
  EXPECT_EQ(s.dump(), "\"a\xEF\xBF\xBD\\u0001\"");
  EXPECT_EQ(Json::parse(s.dump(), "t").as_string(), "a\xEF\xBF\xBD\x01");
}

TEST(Json, PrintableEscapesControlBytesAndClips) {
  EXPECT_EQ(ds4::printable("a\nb\x7f\xC3\xA9"), "a\\x0ab\\x7f\xC3\xA9");
  EXPECT_EQ(ds4::printable(std::string(300, 'x')), std::string(200, 'x') + "...");
  EXPECT_EQ(ds4::printable("abcdef", 3), "abc...");
  // A key with an escaped newline still gives a one-line message.
  parse_error(R"({"a\nb":1,"a\nb":2})", "duplicate key 'a\\x0ab'");
}

TEST(Json, DepthLimit) {
  std::string ok = std::string(256, '[') + std::string(256, ']');
  EXPECT_NO_THROW(Json::parse(ok, "t"));
  std::string deep = std::string(257, '[') + std::string(257, ']');
  parse_error(deep, "nesting deeper than 256");
  // A hostile unterminated nest fails on depth long before it could exhaust the stack.
  parse_error(std::string(1 << 20, '['), "nesting deeper than 256");
  parse_error(std::string(100000, '{'), "expected string literal");
}

// Every prefix of a valid document is rejected (never crashes).
TEST(Json, EveryTruncationIsAnError) {
  const std::string text = R"({"a":[1,-2.5e3,"\u00e9x",true,false,null],"b":{"c":"d"}})";
  EXPECT_NO_THROW(Json::parse(text, "t"));
  for (size_t n = 0; n < text.size(); ++n)
    EXPECT_THROW(Json::parse(text.substr(0, n), "t"), ds4::Error) << "prefix of " << n;
}

TEST(Json, ParsesHfConfigFixture) {
  std::ifstream in(DS4_SOURCE_DIR "/tests/fixtures/hf-tiny/config.json");
  ASSERT_TRUE(in) << "missing fixture";
  std::stringstream ss;
  ss << in.rdbuf();
  Json cfg = Json::parse(ss.str(), "config.json");
  EXPECT_EQ(cfg.at("hidden_size").as_int(), 256);
  EXPECT_EQ(cfg.at("num_hidden_layers").as_int(), 4);
  EXPECT_EQ(cfg.at("vocab_size").as_int(), 512);
  EXPECT_EQ(cfg.at("model_type").as_string(), "deepseek_v4");
  EXPECT_TRUE(cfg.at("pad_token_id").is_null());
  EXPECT_FALSE(cfg.at("tie_word_embeddings").as_bool());
  EXPECT_DOUBLE_EQ(cfg.at("rms_norm_eps").as_number(), 1e-6);
  EXPECT_DOUBLE_EQ(cfg.at("rope_parameters").at("compress").at("rope_theta").as_number(),
                   160000.0);
  const auto& ratios = cfg.at("compress_ratios").as_array();
  ASSERT_EQ(ratios.size(), 4u);
  EXPECT_EQ(ratios[3].as_int(), 128);
  EXPECT_EQ(cfg.at("layer_types").as_array()[2].as_string(), "compressed_sparse_attention");
}

}  // namespace
