// Tokenizer tests: byte-level map, joyai-llm pre-tokenizer splits, BPE merge order, special tokens,
// chat template, synthetic vocabulary and its GGUF round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/tokenizer.h"

namespace {

using ds4::Tokenizer;

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : ds4::pretokenize(text)) out.emplace_back(p);
  return out;
}

using Pieces = std::vector<std::string>;

const std::string kBos = "<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>";
const std::string kUser = "<\uFF5CUser\uFF5C>";
const std::string kAssistant = "<\uFF5CAssistant\uFF5C>";

// ---------------------------------------------------------------------------------------------
// Byte-level map
// ---------------------------------------------------------------------------------------------

TEST(TokenizerByteLevel, KnownCodePoints) {
  EXPECT_EQ(ds4::bytes_to_byte_level("a"), "a");
  EXPECT_EQ(ds4::bytes_to_byte_level(" "), "\u0120");           // Ġ
  EXPECT_EQ(ds4::bytes_to_byte_level("\n"), "\u010A");          // Ċ
  EXPECT_EQ(ds4::bytes_to_byte_level(std::string(1, '\0')), "\u0100");
  EXPECT_EQ(ds4::bytes_to_byte_level("\xAD"), "\u0143");        // the last non-printable byte
  EXPECT_EQ(ds4::bytes_to_byte_level("\xFF"), "\u00FF");
}

TEST(TokenizerByteLevel, AllBytesRoundTripAndAreDistinct) {
  std::string all;
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const std::string u = ds4::bytes_to_byte_level(one);
    EXPECT_TRUE(seen.insert(u).second) << b;
    EXPECT_EQ(ds4::byte_level_to_bytes(u), one) << b;
    all += one;
  }
  EXPECT_EQ(ds4::byte_level_to_bytes(ds4::bytes_to_byte_level(all)), all);
}

TEST(TokenizerByteLevel, UnmappedCodePointsPassThrough) {
  EXPECT_EQ(ds4::byte_level_to_bytes(kUser), kUser);
  EXPECT_EQ(ds4::byte_level_to_bytes("\u0120hi\uFF5C"), " hi\uFF5C");
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer (expected pieces worked out by hand from the three regex passes)
// ---------------------------------------------------------------------------------------------

TEST(TokenizerPretokenize, DigitsInGroupsOfThree) {
  EXPECT_EQ(pieces("12345"), (Pieces{"123", "45"}));
  EXPECT_EQ(pieces("1234567"), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(pieces("abc123def"), (Pieces{"abc", "123", "def"}));
  EXPECT_EQ(pieces(" 123"), (Pieces{" ", "123"}));
  EXPECT_EQ(pieces("x = 10;"), (Pieces{"x", " =", " ", "10", ";"}));
}

TEST(TokenizerPretokenize, WordsAndSpaces) {
  EXPECT_EQ(pieces(" hello world"), (Pieces{" hello", " world"}));
  EXPECT_EQ(pieces("hello  world"), (Pieces{"hello", " ", " world"}));
  EXPECT_EQ(pieces("\t\tfoo"), (Pieces{"\t", "\tfoo"}));
  EXPECT_EQ(pieces("foo  "), (Pieces{"foo", "  "}));
  EXPECT_EQ(pieces(""), (Pieces{}));
}

TEST(TokenizerPretokenize, PunctuationAndNewlines) {
  EXPECT_EQ(pieces("Hello, world!\n\n"), (Pieces{"Hello", ",", " world", "!\n\n"}));
  EXPECT_EQ(pieces("I'm"), (Pieces{"I", "'m"}));
  EXPECT_EQ(pieces("a\n\nb"), (Pieces{"a", "\n\n", "b"}));
  EXPECT_EQ(pieces("a \n b"), (Pieces{"a", " \n", " b"}));
  EXPECT_EQ(pieces("f(x) = y;"), (Pieces{"f", "(x", ")", " =", " y", ";"}));
  // llama.cpp's ASCII classes omit '~' from \p{P}/\p{S}; HF would give "a", "~~", "b".
  EXPECT_EQ(pieces("a~~b"), (Pieces{"a", "~", "~b"}));
}

TEST(TokenizerPretokenize, NonAscii) {
  EXPECT_EQ(pieces("Καλημέρα κόσμε"), (Pieces{"Καλημέρα", " κόσμε"}));  // Greek
  EXPECT_EQ(pieces("\u4F60\u597Dworld"), (Pieces{"\u4F60\u597D", "world"}));  // 你好world
  EXPECT_EQ(pieces("\u3053\u3093\u306B\u3061\u306F\u4E16\u754C"),              // こんにちは世界
            (Pieces{"\u3053\u3093\u306B\u3061\u306F\u4E16\u754C"}));
  EXPECT_EQ(pieces("hi \U0001F44D\U0001F3FD!"), (Pieces{"hi", " \U0001F44D\U0001F3FD!"}));
  EXPECT_EQ(pieces("e\u0301t\u00E9"), (Pieces{"e\u0301t\u00E9"}));  // combining mark stays
  EXPECT_EQ(pieces("a\u00A0b"), (Pieces{"a", "\u00A0b"}));           // NBSP is \s
  EXPECT_EQ(pieces("\u201Cquote\u201D"), (Pieces{"\u201C", "quote", "\u201D"}));
  EXPECT_EQ(pieces("\uFF11\uFF12\uFF13\uFF14"), (Pieces{"\uFF11\uFF12\uFF13", "\uFF14"}));
}

TEST(TokenizerPretokenize, PiecesConcatenateToInput) {
  const std::string texts[] = {
      "Mixed: caf\u00E9 \u4E2D\u6587 123456 \U0001F600\r\n\tend ",
      "bad \xFF\xFE utf8 \xE2\x82",
      "   \n\n\n   x",
  };
  for (const std::string& t : texts) {
    std::string joined;
    for (const std::string& p : pieces(t)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, t);
  }
}

// ---------------------------------------------------------------------------------------------
// BPE on hand-made vocabularies
// ---------------------------------------------------------------------------------------------

TEST(TokenizerBpe, LowestRankMergesFirst) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  // "b c" ranks before "a b": a|b|c -> a|bc, and no "a bc" merge exists.
  const Tokenizer t1 = Tokenizer::from_arrays(tokens, {"b c", "a b"});
  EXPECT_EQ(t1.encode("abc"), (std::vector<int32_t>{0, 4}));
  // "a b" first: a|b|c -> ab|c -> abc via "ab c".
  const Tokenizer t2 = Tokenizer::from_arrays(tokens, {"a b", "b c", "ab c"});
  EXPECT_EQ(t2.encode("abc"), (std::vector<int32_t>{5}));
  // Same, but "a bc" ranks first: still ab|c first because "a b" outranks "b c".
  const Tokenizer t3 = Tokenizer::from_arrays(tokens, {"a bc", "a b", "b c"});
  EXPECT_EQ(t3.encode("abc"), (std::vector<int32_t>{3, 2}));
}

TEST(TokenizerBpe, LeftmostOnTiesAndByteFallback) {
  const std::vector<std::string> tokens = {"a", "b", "c", "aa", "ab"};
  const Tokenizer t = Tokenizer::from_arrays(tokens, {"a a", "a b", "ab c"});
  EXPECT_EQ(t.encode("aaa"), (std::vector<int32_t>{3, 0}));
  EXPECT_EQ(t.encode("aaaa"), (std::vector<int32_t>{3, 3}));
  // ab|c merges to "abc", which is not a token: fall back to one token per byte.
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{0, 1, 2}));
  // Bytes without a token are dropped (llama.cpp behaviour).
  EXPECT_EQ(t.encode("ad"), (std::vector<int32_t>{0}));
  EXPECT_EQ(t.find("ab"), 4);
  EXPECT_EQ(t.find("zz"), -1);
  EXPECT_EQ(t.bos(), -1);
}

TEST(TokenizerBpe, MalformedMergeThrows) {
  EXPECT_THROW(Tokenizer::from_arrays({"a"}, {"ab"}), ds4::Error);
  EXPECT_THROW(Tokenizer::from_arrays({}, {}), ds4::Error);
}

// ---------------------------------------------------------------------------------------------
// Special tokens and chat template on a tiny vocabulary
// ---------------------------------------------------------------------------------------------

Tokenizer tiny_chat_vocab() {
  std::vector<std::string> tokens = ds4::ds4_special_tokens();  // ids 0..6
  for (const char* t : {"h", "i", "hi", "\u0120", "\u0120hi"}) tokens.emplace_back(t);  // 7..11
  return Tokenizer::from_arrays(tokens, {"h i", "\u0120 hi"});
}

TEST(TokenizerSpecials, Strings) {
  const auto& s = ds4::ds4_special_tokens();
  ASSERT_EQ(s.size(), 7u);
  EXPECT_EQ(s[0], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(s[1], "<｜end▁of▁sentence｜>");
  EXPECT_EQ(s[2], "<｜User｜>");
  EXPECT_EQ(s[3], "<｜Assistant｜>");
  EXPECT_EQ(s[4], "<think>");
  EXPECT_EQ(s[5], "</think>");
  EXPECT_EQ(s[6], "｜DSML｜");
}

TEST(TokenizerSpecials, IdsAndLiteralMatching) {
  const Tokenizer t = tiny_chat_vocab();
  EXPECT_EQ(t.bos(), 0);
  EXPECT_EQ(t.eos(), 1);
  EXPECT_EQ(t.user(), 2);
  EXPECT_EQ(t.assistant(), 3);
  EXPECT_EQ(t.think(), 4);
  EXPECT_EQ(t.think_end(), 5);
  EXPECT_EQ(t.dsml(), 6);
  const std::string text = kBos + "hi" + kUser + " hi" + kAssistant + "</think>hi<think>" +
                           "\uFF5CDSML\uFF5C" + "<\uFF5Cend\u2581of\u2581sentence\uFF5C>";
  EXPECT_EQ(t.encode_with_specials(text),
            (std::vector<int32_t>{0, 9, 2, 11, 3, 5, 9, 4, 6, 1}));
  EXPECT_EQ(t.decode(t.encode_with_specials(text)), text);
}

TEST(TokenizerChat, RenderExactIds) {
  const Tokenizer t = tiny_chat_vocab();
  EXPECT_EQ(ds4::render_chat(t, "hi", " hi", true), (std::vector<int32_t>{0, 9, 2, 11, 3, 4}));
  EXPECT_EQ(ds4::render_chat(t, "hi", " hi", false), (std::vector<int32_t>{0, 9, 2, 11, 3, 5}));
  EXPECT_EQ(ds4::render_chat(t, "", "hi", true), (std::vector<int32_t>{0, 2, 9, 3, 4}));
  const Tokenizer no_specials = Tokenizer::from_arrays({"h", "i"}, {});
  EXPECT_THROW(ds4::render_chat(no_specials, "", "hi", true), ds4::Error);
}

// ---------------------------------------------------------------------------------------------
// Synthetic vocabulary
// ---------------------------------------------------------------------------------------------

TEST(TokenizerSyntheticVocab, ShapeAndDeterminism) {
  const ds4::SyntheticVocab v = ds4::make_synthetic_vocab(1000);
  ASSERT_EQ(v.tokens.size(), 1000u);
  ASSERT_EQ(v.token_types.size(), 1000u);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(v.tokens[i], ds4::ds4_special_tokens()[i]);
    EXPECT_EQ(v.token_types[i], 3);
  }
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(v.tokens[7 + b], ds4::bytes_to_byte_level(std::string(1, static_cast<char>(b))));
    EXPECT_EQ(v.token_types[7 + b], 1);
  }
  EXPECT_GT(v.merges.size(), 0u);
  const ds4::SyntheticVocab again = ds4::make_synthetic_vocab(1000);
  EXPECT_EQ(again.tokens, v.tokens);
  EXPECT_EQ(again.merges, v.merges);
  EXPECT_EQ(again.token_types, v.token_types);
  // A smaller vocabulary is a prefix of a larger one.
  const ds4::SyntheticVocab small = ds4::make_synthetic_vocab(300);
  ASSERT_EQ(small.tokens.size(), 300u);
  EXPECT_TRUE(std::equal(small.tokens.begin(), small.tokens.end(), v.tokens.begin()));
}

TEST(TokenizerSyntheticVocab, MergesReferToTokensAndTokensAreUnique) {
  for (int32_t size : {264, 1000, 4000}) {
    const ds4::SyntheticVocab v = ds4::make_synthetic_vocab(size);
    ASSERT_EQ(static_cast<int32_t>(v.tokens.size()), size);
    const std::set<std::string> set(v.tokens.begin(), v.tokens.end());
    EXPECT_EQ(set.size(), v.tokens.size()) << "duplicate token strings";
    for (const std::string& m : v.merges) {
      const size_t space = m.find(' ');
      ASSERT_NE(space, std::string::npos);
      const std::string left = m.substr(0, space), right = m.substr(space + 1);
      EXPECT_TRUE(set.count(left)) << m;
      EXPECT_TRUE(set.count(right)) << m;
      EXPECT_TRUE(set.count(left + right)) << m;
    }
  }
  EXPECT_THROW(ds4::make_synthetic_vocab(263), ds4::Error);
}

TEST(TokenizerSyntheticVocab, EncodeDecodeRoundTrip) {
  const ds4::SyntheticVocab v = ds4::make_synthetic_vocab(1000);
  const Tokenizer t = Tokenizer::from_arrays(v.tokens, v.merges);
  const std::string texts[] = {
      "The teacher wrote a question on the board.",
      "  Leading spaces, trailing spaces   \n\n\tand tabs\r\n",
      "Numbers: 3.14159 and 1234567890!",
      "\u039A\u03B1\u03BB\u03B7\u03BC\u03AD\u03C1\u03B1 \u03BA\u03CC\u03C3\u03BC\u03B5",  // Greek
      "\u4F60\u597D\uFF0C\u4E16\u754C\u3002\u3053\u3093\u306B\u3061\u306F",            // CJK
      "emoji \U0001F600\U0001F44D\U0001F3FD and \u2603 snow",
      "raw \xFF\xFE bytes \xC3",
      "a~~b <think> </think> " + kUser,
  };
  for (const std::string& s : texts) {
    const std::vector<int32_t> ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s);
    for (int32_t id : ids) EXPECT_GE(id, 7) << "plain encode must not emit specials";
  }
  // Merges are used: common English needs far fewer tokens than bytes.
  const std::string english = "the river and the market in the town";
  EXPECT_LT(t.encode(english).size(), english.size() / 2);
}

TEST(TokenizerSyntheticVocab, RenderChatMatchesParts) {
  const ds4::SyntheticVocab v = ds4::make_synthetic_vocab(600);
  const Tokenizer t = Tokenizer::from_arrays(v.tokens, v.merges);
  std::vector<int32_t> expected = {0};
  for (int32_t id : t.encode("You are a helpful assistant")) expected.push_back(id);
  expected.push_back(2);
  for (int32_t id : t.encode("Tell me a story.")) expected.push_back(id);
  expected.push_back(3);
  expected.push_back(4);
  EXPECT_EQ(ds4::render_chat(t, "You are a helpful assistant", "Tell me a story.", true),
            expected);
  EXPECT_EQ(t.encode_with_specials(kBos + "You are a helpful assistant" + kUser +
                                   "Tell me a story." + kAssistant + "<think>"),
            expected);
}

// ---------------------------------------------------------------------------------------------
// GGUF round trip
// ---------------------------------------------------------------------------------------------

TEST(TokenizerGguf, WriteReadRoundTrip) {
  const ds4::SyntheticVocab v = ds4::make_synthetic_vocab(800);
  const std::string path = ::testing::TempDir() + "tokenizer_roundtrip.gguf";
  ds4::GgufWriter w;
  write_tokenizer_metadata(w, v);
  w.write(path);
  const auto file = ds4::GgufFile::open(path);
  EXPECT_EQ(file->get_str("tokenizer.ggml.pre"), "joyai-llm");
  EXPECT_EQ(file->get_u32("tokenizer.ggml.bos_token_id"), 0u);
  EXPECT_EQ(file->get_u32("tokenizer.ggml.eos_token_id"), 1u);
  const Tokenizer from_file = Tokenizer::from_gguf(*file);
  const Tokenizer from_mem = Tokenizer::from_arrays(v.tokens, v.merges);
  ASSERT_EQ(from_file.vocab_size(), 800);
  const std::string text = "The old man sold maps of the coast, 12345 \u4E16\u754C \U0001F600\n";
  EXPECT_EQ(from_file.encode(text), from_mem.encode(text));
  EXPECT_EQ(ds4::render_chat(from_file, "sys", "user", false),
            ds4::render_chat(from_mem, "sys", "user", false));
  std::remove(path.c_str());
}

TEST(TokenizerGguf, RejectsNonGpt2Model) {
  const std::string path = ::testing::TempDir() + "tokenizer_bad_model.gguf";
  ds4::GgufWriter w;
  w.set_str("tokenizer.ggml.model", "llama");
  w.set_arr_str("tokenizer.ggml.tokens", {"a"});
  w.write(path);
  const auto file = ds4::GgufFile::open(path);
  try {
    Tokenizer::from_gguf(*file);
    FAIL() << "expected ds4::Error";
  } catch (const ds4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.model"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

}  // namespace
