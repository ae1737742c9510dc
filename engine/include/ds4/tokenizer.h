// Byte-level BPE tokenizer read from GGUF (tokenizer.ggml.tokens / merges, GPT-2 byte mapping)
// with the DeepSeek V3 / joyai-llm pre-tokenizer, and the DS4 chat template.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ds4 {

class GgufFile;
class GgufWriter;

class Tokenizer {
 public:
  // Reads tokenizer.ggml.{model,pre,tokens,merges,token_type?}; model must be "gpt2".
  // Throws ds4::Error naming the key on a missing or malformed vocabulary.
  static Tokenizer from_gguf(const GgufFile& file);
  // Builds from in-memory arrays (tokens[i] is the byte-level string of id i; merges "a b").
  static Tokenizer from_arrays(std::vector<std::string> tokens, std::vector<std::string> merges);

  // BPE-encodes plain text (no special-token matching).
  std::vector<int32_t> encode(std::string_view text) const;
  // Encodes text in which the DS4 special strings (BOS, EOS, <｜User｜>, <｜Assistant｜>, <think>,
  // </think>, ｜DSML｜) are matched literally and emitted as their ids; the rest goes through BPE.
  std::vector<int32_t> encode_with_specials(std::string_view text) const;
  // Bytes of the given ids concatenated (byte-level decoding; specials as their text).
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string token_bytes(int32_t id) const;
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // Id of an exact token string, or -1.
  int32_t find(std::string_view token) const;

  // Special ids (-1 if the vocabulary lacks them).
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t user() const { return user_; }
  int32_t assistant() const { return assistant_; }
  int32_t think() const { return think_; }
  int32_t think_end() const { return think_end_; }
  int32_t dsml() const { return dsml_; }

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> token_ids_;
  std::unordered_map<std::string, int32_t> merge_rank_;  // key "left right"
  int32_t bos_ = -1, eos_ = -1, user_ = -1, assistant_ = -1, think_ = -1, think_end_ = -1;
  int32_t dsml_ = -1;
  void index_specials();
  // Appends the ids of one pre-token (raw bytes): lowest-rank merge first, leftmost on ties.
  void encode_piece(std::string_view piece, std::string& key, std::vector<int32_t>& out) const;
};

// GPT-2 byte-level mapping (bytes_to_unicode): every byte becomes one printable code point, so
// the result is UTF-8 with one code point per input byte.
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse of bytes_to_byte_level. Code points outside the 256-entry map (the text of special
// tokens such as <｜User｜>) and invalid UTF-8 bytes are copied through unchanged.
std::string byte_level_to_bytes(std::string_view text);

// The joyai-llm / DeepSeek V3 pre-tokenizer (ds4-model.md §7): splits raw text into pieces whose
// concatenation is exactly `text`. Views point into `text`.
std::vector<std::string_view> pretokenize(std::string_view text);

// The DS4 single-turn chat prompt (ds4-model.md §7):
// BOS + BPE(system) + <｜User｜> + BPE(user) + <｜Assistant｜> + (<think> if think else </think>).
std::vector<int32_t> render_chat(const Tokenizer& tok, std::string_view system,
                                 std::string_view user, bool think);

// The DS4 special-token strings, in the order BOS, EOS, User, Assistant, think, /think, DSML.
const std::vector<std::string>& ds4_special_tokens();

// A synthetic byte-level BPE vocabulary of exactly `vocab_size` entries for synthetic models:
// ids 0 and 1 are BOS/EOS, then the other DS4 specials, the 256 byte tokens, then merges learned
// deterministically from a small built-in English text until the size is reached.
// vocab_size must be >= 263 + a few; throws otherwise.
struct SyntheticVocab {
  std::vector<std::string> tokens;
  std::vector<std::string> merges;
  std::vector<int32_t> token_types;  // 1 normal, 3 control (llama.cpp's LLAMA_TOKEN_TYPE)
};
SyntheticVocab make_synthetic_vocab(int32_t vocab_size);
// Writes tokenizer.ggml.{model="gpt2", pre="joyai-llm", tokens, merges, token_type,
// bos_token_id, eos_token_id} into a GGUF being written.
void write_tokenizer_metadata(GgufWriter& writer, const SyntheticVocab& vocab);

}  // namespace ds4
