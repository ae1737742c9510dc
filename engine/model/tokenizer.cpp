// Byte-level BPE tokenizer (GPT-2 scheme) as ds4 and llama.cpp apply it to DeepSeek V4 Flash
// (ds4-model.md §7).
//
// Encoding a text: pretokenize() splits it (pretokenize.cpp); each piece is mapped byte by byte to
// the printable byte-level alphabet, then adjacent symbols are merged, always the pair with the
// lowest rank in tokenizer.ggml.merges first (leftmost on ties), until no ranked pair remains.
// Each final symbol is emitted as its token; a symbol that is not a token falls back to one token
// per byte (a byte whose single-byte token is missing is dropped, as llama.cpp does).
#include "ds4/tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>

#include "ds4/error.h"
#include "ds4/gguf.h"

namespace ds4 {
namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2 bytes_to_unicode: the printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' map to themselves, the
// other 68 bytes to U+0100 + n in byte order. All 256 targets are below U+0144.
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 0x144> from_cp{};  // code point -> byte, or -1
  ByteMap() {
    from_cp.fill(-1);
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_cp[b] = printable ? b : 0x100 + n++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
      append_utf8(to_utf8[b], to_cp[b]);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

}  // namespace

std::string bytes_to_byte_level(std::string_view bytes) {
  const ByteMap& map = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += map.to_utf8[static_cast<uint8_t>(c)];
  return out;
}

std::string byte_level_to_bytes(std::string_view text) {
  const ByteMap& map = byte_map();
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const uint8_t c0 = static_cast<uint8_t>(text[i]);
    // Every mapped code point is < U+0144: one byte (ASCII) or two bytes (0xC2..0xC5 lead).
    if (c0 < 0x80) {
      const int16_t b = map.from_cp[c0];
      if (b >= 0) out += static_cast<char>(b); else out += static_cast<char>(c0);
      ++i;
      continue;
    }
    if ((c0 & 0xE0) == 0xC0 && i + 1 < text.size() &&
        (static_cast<uint8_t>(text[i + 1]) & 0xC0) == 0x80) {
      const uint32_t cp = ((c0 & 0x1Fu) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3Fu);
      if (cp < map.from_cp.size() && map.from_cp[cp] >= 0) {
        out += static_cast<char>(map.from_cp[cp]);
        i += 2;
        continue;
      }
    }
    // Not a byte-level code point: copy the whole UTF-8 sequence (or the stray byte) through.
    size_t len = 1;
    if ((c0 & 0xE0) == 0xC0) len = 2;
    else if ((c0 & 0xF0) == 0xE0) len = 3;
    else if ((c0 & 0xF8) == 0xF0) len = 4;
    size_t k = 1;
    const auto continuation = [&](size_t j) {
      return j < text.size() && (static_cast<uint8_t>(text[j]) & 0xC0) == 0x80;
    };
    while (k < len && continuation(i + k)) ++k;
    out.append(text.substr(i, k));
    i += k;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_arrays(std::vector<std::string> tokens, std::vector<std::string> merges) {
  if (tokens.empty()) fail("tokenizer.ggml.tokens is empty");
  Tokenizer tok;
  tok.tokens_ = std::move(tokens);
  tok.token_ids_.reserve(tok.tokens_.size());
  for (size_t i = 0; i < tok.tokens_.size(); ++i) {
    tok.token_ids_[tok.tokens_[i]] = static_cast<int32_t>(i);  // a duplicate string: last id wins
  }
  tok.merge_rank_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& m = merges[i];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos || space + 1 >= m.size()) {
      fail("tokenizer.ggml.merges[" + std::to_string(i) + "] '" + m +
           "' is not two symbols separated by one space");
    }
    tok.merge_rank_.emplace(m, static_cast<int32_t>(i));  // a repeated merge keeps its first rank
  }
  tok.index_specials();
  return tok;
}

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  const std::string model = file.get_str("tokenizer.ggml.model");
  if (model != "gpt2") {
    fail(file.path() + ": tokenizer.ggml.model is '" + model + "', expected 'gpt2'");
  }
  // Only the DeepSeek V3 splitter is implemented; another pre-tokenizer would tokenize wrongly.
  const std::string pre = file.get_str_or("tokenizer.ggml.pre", "joyai-llm");
  if (pre != "joyai-llm" && pre != "deepseek-v3") {
    fail(file.path() + ": tokenizer.ggml.pre is '" + pre +
         "', expected 'joyai-llm' or 'deepseek-v3'");
  }
  std::vector<std::string> tokens = file.get_str_array("tokenizer.ggml.tokens");
  std::vector<std::string> merges;
  if (file.has("tokenizer.ggml.merges")) merges = file.get_str_array("tokenizer.ggml.merges");
  if (file.has("tokenizer.ggml.token_type")) {
    const size_t n = file.get_int_array("tokenizer.ggml.token_type").size();
    if (n != tokens.size()) {
      fail(file.path() + ": tokenizer.ggml.token_type has " + std::to_string(n) +
           " entries, tokenizer.ggml.tokens has " + std::to_string(tokens.size()));
    }
  }
  try {
    return from_arrays(std::move(tokens), std::move(merges));
  } catch (const Error& e) {
    fail(file.path() + ": " + e.what());
  }
}

void Tokenizer::index_specials() {
  const std::vector<std::string>& s = ds4_special_tokens();
  bos_ = find(s[0]);
  eos_ = find(s[1]);
  user_ = find(s[2]);
  assistant_ = find(s[3]);
  think_ = find(s[4]);
  think_end_ = find(s[5]);
  dsml_ = find(s[6]);
}

int32_t Tokenizer::find(std::string_view token) const {
  const auto it = token_ids_.find(std::string(token));
  return it == token_ids_.end() ? -1 : it->second;
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

void Tokenizer::encode_piece(std::string_view piece, std::string& key,
                             std::vector<int32_t>& out) const {
  // Symbols are byte ranges of the byte-level string `bl`; symbol k starts as raw byte k.
  // Merging keeps the left symbol's start, so (start, len) identifies a symbol's text exactly.
  const ByteMap& map = byte_map();
  std::string bl;
  bl.reserve(piece.size() * 2);
  struct Symbol {
    uint32_t start, len;  // bytes of bl; len == 0 once merged into its left neighbour
    int32_t prev, next;   // -1 at the ends
  };
  std::vector<Symbol> sym(piece.size());
  for (size_t k = 0; k < piece.size(); ++k) {
    const std::string& u = map.to_utf8[static_cast<uint8_t>(piece[k])];
    sym[k] = {static_cast<uint32_t>(bl.size()), static_cast<uint32_t>(u.size()),
              static_cast<int32_t>(k) - 1, k + 1 < piece.size() ? static_cast<int32_t>(k + 1) : -1};
    bl += u;
  }

  struct Pair {
    int32_t rank, left, right;
    uint32_t left_len, right_len;  // lengths when queued; a mismatch later means "stale"
  };
  // Lowest rank first, then leftmost (llama.cpp's llm_bigram_bpe order).
  const auto later = [](const Pair& a, const Pair& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(later)> queue(later);
  const auto push_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& a = sym[left];
    const Symbol& b = sym[right];
    key.assign(bl, a.start, a.len);
    key += ' ';
    key.append(bl, b.start, b.len);
    const auto it = merge_rank_.find(key);
    if (it != merge_rank_.end()) queue.push({it->second, left, right, a.len, b.len});
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(sym.size()); ++k) push_pair(k, k + 1);

  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    Symbol& a = sym[p.left];
    Symbol& b = sym[p.right];
    if (a.len != p.left_len || b.len != p.right_len || a.next != p.right) continue;  // stale
    a.len += b.len;
    b.len = 0;
    a.next = b.next;
    if (b.next >= 0) sym[b.next].prev = p.left;
    push_pair(a.prev, p.left);
    push_pair(p.left, a.next);
  }

  for (int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[k].next) {
    const Symbol& s = sym[k];
    key.assign(bl, s.start, s.len);
    const auto it = token_ids_.find(key);
    if (it != token_ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Not a token: one token per byte. Symbol k covers raw bytes [k, next live symbol).
    const int32_t stop = s.next < 0 ? static_cast<int32_t>(sym.size()) : s.next;
    for (int32_t j = k; j < stop; ++j) {
      const auto byte_it = token_ids_.find(map.to_utf8[static_cast<uint8_t>(piece[j])]);
      if (byte_it != token_ids_.end()) out.push_back(byte_it->second);
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  std::string key;
  for (std::string_view piece : pretokenize(text)) encode_piece(piece, key, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_specials(std::string_view text) const {
  const std::vector<std::string>& specials = ds4_special_tokens();
  const int32_t ids[] = {bos_, eos_, user_, assistant_, think_, think_end_, dsml_};
  std::vector<int32_t> out;
  std::string key;
  size_t pos = 0;
  while (pos < text.size()) {
    // The earliest special string at or after pos (the longest one on a tie).
    size_t best_at = std::string_view::npos, best = 0;
    for (size_t s = 0; s < specials.size(); ++s) {
      if (ids[s] < 0) continue;
      const size_t at = text.find(specials[s], pos);
      if (at < best_at || (at == best_at && at != std::string_view::npos &&
                           specials[s].size() > specials[best].size())) {
        best_at = at;
        best = s;
      }
    }
    const size_t plain_end = std::min(best_at, text.size());
    for (std::string_view piece : pretokenize(text.substr(pos, plain_end - pos))) {
      encode_piece(piece, key, out);
    }
    if (best_at == std::string_view::npos) break;
    out.push_back(ids[best]);
    pos = best_at + specials[best].size();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    fail("token id " + std::to_string(id) + " out of range [0, " + std::to_string(vocab_size()) +
         ")");
  }
  return byte_level_to_bytes(tokens_[id]);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

}  // namespace ds4
