// HF (DeepSeek upstream safetensors) -> deepseek4 GGUF conversion.
//
// Reads config.json into HParams, maps every upstream tensor name to the GGUF name of
// expected_tensors(hp) (ds4-model.md §2), dequantises FP8 E4M3 (+ per-128x128 block scales) and
// packed FP4 E2M1 experts (+ per-32 E8M0 scales) to F32, stacks per-expert matrices into 3-D
// tensors, narrows tid2eid to I32, and writes the GGUF in a quant mix. Every expected tensor must
// be present with the right shape and every source tensor must be used or explicitly ignored
// (mtp.* and hash-layer router biases); anything else is a one-line ds4::Error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ds4/model.h"
#include "ds4/tokenizer.h"

namespace ds4 {

struct Json;

struct ConvertOptions {
  std::string input;              // a .safetensors file, or a directory of *.safetensors shards
  std::string config;             // config.json; empty = config.json next to the input
  std::string quant_mix = "f32";  // QuantMix::names()
  std::string output;             // .gguf, written atomically
};

struct ConvertResult {
  HParams hp;
  size_t n_tensors = 0;            // GGUF tensors written
  size_t n_source_tensors = 0;     // safetensors entries read (weights, scales, tables)
  std::vector<std::string> notes;  // one-line warnings for stderr (MTP dropped, vocab, ...)
};

// HParams from an HF config.json (keys of DeepSeek's V4 config; see convert.cpp for the list and
// the fallbacks). `where` prefixes every error. The MTP block is not converted: n_mtp = 0.
HParams hparams_from_hf_config(const Json& config, const std::string& where);
HParams hparams_from_hf_config_file(const std::string& path);

ConvertResult convert_hf_to_gguf(const ConvertOptions& options);

// The vocabulary of an HF tokenizer.json (byte-level BPE: model.vocab, model.merges,
// added_tokens) as GGUF arrays of exactly n_vocab entries; unused ids become "[PAD<id>]".
SyntheticVocab vocab_from_hf_tokenizer(const std::string& path, uint32_t n_vocab);

// Element decoders of the checkpoint's storage formats (exposed for tests).
float fp8_e4m3_to_f32(uint8_t bits);    // E4M3 "fn": bias 7, no infinities, 0x7f/0xff NaN
float e8m0_to_f32(uint8_t bits);        // 2^(bits-127); 0 -> 2^-127; 0xff NaN
float fp4_e2m1_to_f32(uint8_t nibble);  // {0, .5, 1, 1.5, 2, 3, 4, 6}, bit 3 = sign

}  // namespace ds4
