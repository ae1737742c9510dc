// DS4 special tokens, the single-turn chat template (ds4-model.md §7) and the synthetic
// byte-level BPE vocabulary used by synthetic models.
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/tokenizer.h"

namespace ds4 {

const std::vector<std::string>& ds4_special_tokens() {
  // Full-width vertical bar U+FF5C and lower one-eighth block U+2581, as in the DS4 vocabulary.
  static const std::vector<std::string> specials = {
      "<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>",
      "<\uFF5Cend\u2581of\u2581sentence\uFF5C>",
      "<\uFF5CUser\uFF5C>",
      "<\uFF5CAssistant\uFF5C>",
      "<think>",
      "</think>",
      "\uFF5CDSML\uFF5C",
  };
  return specials;
}

std::vector<int32_t> render_chat(const Tokenizer& tok, std::string_view system,
                                 std::string_view user, bool think) {
  const std::vector<std::string>& s = ds4_special_tokens();
  const auto need = [&](int32_t id, size_t which) {
    if (id < 0) fail("render_chat: the vocabulary has no token " + s[which]);
    return id;
  };
  std::vector<int32_t> out = {need(tok.bos(), 0)};
  const std::vector<int32_t> sys_ids = tok.encode(system);
  out.insert(out.end(), sys_ids.begin(), sys_ids.end());
  out.push_back(need(tok.user(), 2));
  const std::vector<int32_t> user_ids = tok.encode(user);
  out.insert(out.end(), user_ids.begin(), user_ids.end());
  out.push_back(need(tok.assistant(), 3));
  out.push_back(think ? need(tok.think(), 4) : need(tok.think_end(), 5));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Synthetic vocabulary
// ---------------------------------------------------------------------------------------------

namespace {

// Training text for the synthetic merges (written for this project). Plain English prose with a
// little punctuation, digits and line breaks, so the learned merges cover common words, the
// " word" pieces of the pre-tokenizer, and the "\n\n" piece.
constexpr const char* kSyntheticCorpus =
    "The river town woke slowly on the first cold morning of the year. Fishermen walked down to "
    "the water with their nets over their shoulders, and the baker opened his shop before the "
    "sun had cleared the hills. Children ran along the stone wall by the harbour, counting the "
    "boats that were coming back from the night, and their voices carried over the still water.\n"
    "\n"
    "In the small school near the market, the teacher wrote a question on the board: how many "
    "ways can a story begin? One student said that a story begins with a person who wants "
    "something. Another said that it begins with a place, because every person comes from "
    "somewhere. A third student, who rarely spoke, said that a story begins when something "
    "changes, and that nothing before the change is really part of it. The teacher smiled and "
    "wrote all three answers under the question, and then she asked them to write their own "
    "beginning before the bell.\n"
    "\n"
    "At noon the market was full. There were apples and pears from the farms in the valley, "
    "bread and cheese, warm soup in large pots, and old books that nobody seemed to buy. An old "
    "man sold maps of the coast that he had drawn by hand over many years. He told anyone who "
    "stopped that the coast was always moving, that the sea took a little of the land every "
    "winter and gave some of it back every summer, and that a good map is only a careful guess "
    "about where things were on one particular day.\n"
    "\n"
    "In the afternoon the wind turned to the north and the sky grew grey. The boats stayed in "
    "the harbour, the shops closed early, and people gathered in the kitchen of the inn to talk "
    "about the weather, the price of fish, and the new road that the council had promised for "
    "years. Someone said the road would bring visitors and money; someone else said it would "
    "bring noise and strangers. They argued until the fire burned low, and then they laughed, "
    "because they had had the same argument every winter for as long as anyone could remember.\n"
    "\n"
    "When the evening came, the lights of the town were reflected in the dark water, and the "
    "first snow began to fall. The teacher read the students' stories at her table. Most of them "
    "began with a person, some began with a place, and one began with a single line: the morning "
    "the river froze, everything changed. She read it twice, put it at the top of the pile, and "
    "turned off the lamp. Tomorrow, she thought, they would write the middle of the story, which "
    "is always the hardest part to get right.\n";

constexpr int32_t kTypeNormal = 1;   // llama.cpp LLAMA_TOKEN_TYPE_NORMAL
constexpr int32_t kTypeControl = 3;  // llama.cpp LLAMA_TOKEN_TYPE_CONTROL

}  // namespace

SyntheticVocab make_synthetic_vocab(int32_t vocab_size) {
  const std::vector<std::string>& specials = ds4_special_tokens();
  const int32_t min_size = static_cast<int32_t>(specials.size()) + 256 + 1;
  if (vocab_size < min_size) {
    fail("synthetic vocabulary size " + std::to_string(vocab_size) + " is below the minimum " +
         std::to_string(min_size) + " (7 specials + 256 bytes + 1 merge)");
  }
  SyntheticVocab v;
  std::set<std::string> known;
  const auto add_token = [&](const std::string& text, int32_t type) {
    v.tokens.push_back(text);
    v.token_types.push_back(type);
    known.insert(text);
  };
  for (const std::string& s : specials) add_token(s, kTypeControl);
  for (int b = 0; b < 256; ++b) {
    add_token(bytes_to_byte_level(std::string(1, static_cast<char>(b))), kTypeNormal);
  }

  // Words of the corpus (pre-tokenized pieces) with their counts, each as a list of byte-level
  // symbols. std::map keeps every step in a fixed order, so the result is deterministic.
  std::map<std::string, int64_t> counts;
  for (std::string_view piece : pretokenize(kSyntheticCorpus)) ++counts[std::string(piece)];
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  for (const auto& [word, count] : counts) {
    std::vector<std::string> symbols;
    for (char c : word) symbols.push_back(bytes_to_byte_level(std::string_view(&c, 1)));
    words.emplace_back(std::move(symbols), count);
  }

  // Greedy BPE learning: merge the most frequent adjacent pair (ties: the lexicographically
  // smallest (left, right)); every merge result becomes a token unless it already is one.
  while (static_cast<int32_t>(v.tokens.size()) < vocab_size) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [symbols, count] : words) {
      for (size_t k = 0; k + 1 < symbols.size(); ++k) pairs[{symbols[k], symbols[k + 1]}] += count;
    }
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const auto [left, right] = best->first;
    const std::string merged = left + right;
    v.merges.push_back(left + " " + right);
    if (!known.count(merged)) add_token(merged, kTypeNormal);
    for (auto& [symbols, count] : words) {
      std::vector<std::string> next;
      next.reserve(symbols.size());
      for (size_t k = 0; k < symbols.size(); ++k) {
        if (k + 1 < symbols.size() && symbols[k] == left && symbols[k + 1] == right) {
          next.push_back(merged);
          ++k;
        } else {
          next.push_back(symbols[k]);
        }
      }
      symbols = std::move(next);
    }
  }

  // The corpus ran out of pairs (every word is one token): pad with unused normal tokens that no
  // merge produces.
  for (int32_t n = 0; static_cast<int32_t>(v.tokens.size()) < vocab_size; ++n) {
    const std::string text = "<unused_" + std::to_string(n) + ">";
    if (!known.count(text)) add_token(text, kTypeNormal);
  }
  return v;
}

void write_tokenizer_metadata(GgufWriter& writer, const SyntheticVocab& vocab) {
  writer.set_str("tokenizer.ggml.model", "gpt2");
  writer.set_str("tokenizer.ggml.pre", "joyai-llm");
  writer.set_arr_str("tokenizer.ggml.tokens", vocab.tokens);
  writer.set_arr_str("tokenizer.ggml.merges", vocab.merges);
  writer.set_arr_i32("tokenizer.ggml.token_type", vocab.token_types);
  writer.set_u32("tokenizer.ggml.bos_token_id", 0);
  writer.set_u32("tokenizer.ggml.eos_token_id", 1);
}

}  // namespace ds4
