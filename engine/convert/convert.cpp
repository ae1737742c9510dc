// HF safetensors -> deepseek4 GGUF (see ds4/convert.h).
//
// Two passes. The plan pass resolves every tensor of expected_tensors(hp) to its upstream
// source(s), checks dtypes, scale siblings and shapes, and then checks that no source tensor is
// left over; it reads no tensor data, so a bad checkpoint fails in seconds. The write pass
// decodes one source tensor (one expert) at a time to F32, quantises it into the GGUF type of the
// quant mix and hands it to the writer.
#include "ds4/convert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/json.h"
#include "ds4/quant.h"
#include "ds4/safetensors.h"
#include "ds4/synth.h"

namespace ds4 {

std::string read_text_file(const std::string& path);  // hf_config.cpp

namespace {

namespace fs = std::filesystem;

// GGUF names (global, and per layer after "blk.N.") -> upstream names (after "layers.N.").
// "{E}" stands for the expert index; those tensors are stacked into one 3-D GGUF tensor.
const std::map<std::string, std::string> kGlobalNames = {
    {"token_embd.weight", "embed.weight"},       {"output_hc_fn.weight", "hc_head_fn"},
    {"output_hc_scale.weight", "hc_head_scale"}, {"output_hc_base.weight", "hc_head_base"},
    {"output_norm.weight", "norm.weight"},       {"output.weight", "head.weight"},
};
const std::map<std::string, std::string> kLayerNames = {
    {"hc_attn_fn.weight", "hc_attn_fn"},
    {"hc_attn_scale.weight", "hc_attn_scale"},
    {"hc_attn_base.weight", "hc_attn_base"},
    {"attn_norm.weight", "attn_norm.weight"},
    {"attn_q_a.weight", "attn.wq_a.weight"},
    {"attn_q_a_norm.weight", "attn.q_norm.weight"},
    {"attn_q_b.weight", "attn.wq_b.weight"},
    {"attn_kv.weight", "attn.wkv.weight"},
    {"attn_kv_a_norm.weight", "attn.kv_norm.weight"},
    {"attn_sinks.weight", "attn.attn_sink"},
    {"attn_output_a.weight", "attn.wo_a.weight"},
    {"attn_output_b.weight", "attn.wo_b.weight"},
    {"attn_compressor_kv.weight", "attn.compressor.wkv.weight"},
    {"attn_compressor_gate.weight", "attn.compressor.wgate.weight"},
    {"attn_compressor_ape.weight", "attn.compressor.ape"},
    {"attn_compressor_norm.weight", "attn.compressor.norm.weight"},
    {"indexer.attn_q_b.weight", "attn.indexer.wq_b.weight"},
    {"indexer.proj.weight", "attn.indexer.weights_proj.weight"},
    {"indexer_compressor_kv.weight", "attn.indexer.compressor.wkv.weight"},
    {"indexer_compressor_gate.weight", "attn.indexer.compressor.wgate.weight"},
    {"indexer_compressor_ape.weight", "attn.indexer.compressor.ape"},
    {"indexer_compressor_norm.weight", "attn.indexer.compressor.norm.weight"},
    {"hc_ffn_fn.weight", "hc_ffn_fn"},
    {"hc_ffn_scale.weight", "hc_ffn_scale"},
    {"hc_ffn_base.weight", "hc_ffn_base"},
    {"ffn_norm.weight", "ffn_norm.weight"},
    {"ffn_gate_inp.weight", "ffn.gate.weight"},
    {"exp_probs_b.bias", "ffn.gate.bias"},
    {"ffn_gate_tid2eid.weight", "ffn.gate.tid2eid"},
    {"ffn_gate_exps.weight", "ffn.experts.{E}.w1.weight"},
    {"ffn_up_exps.weight", "ffn.experts.{E}.w3.weight"},
    {"ffn_down_exps.weight", "ffn.experts.{E}.w2.weight"},
    {"ffn_gate_shexp.weight", "ffn.shared_experts.w1.weight"},
    {"ffn_up_shexp.weight", "ffn.shared_experts.w3.weight"},
    {"ffn_down_shexp.weight", "ffn.shared_experts.w2.weight"},
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t count(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}

// The upstream name(s) of one GGUF tensor: one, or n_expert for a stacked expert tensor.
std::vector<std::string> source_names(const TensorSpec& spec, uint32_t n_expert) {
  if (auto g = kGlobalNames.find(spec.name); g != kGlobalNames.end()) return {g->second};
  const std::string prefix = "blk." + std::to_string(spec.layer) + ".";
  if (spec.layer < 0 || spec.name.compare(0, prefix.size(), prefix) != 0)
    fail("ds4-convert: no upstream name for GGUF tensor '" + spec.name + "'");
  auto l = kLayerNames.find(spec.name.substr(prefix.size()));
  if (l == kLayerNames.end())
    fail("ds4-convert: no upstream name for GGUF tensor '" + spec.name + "'");
  const std::string hf = "layers." + std::to_string(spec.layer) + "." + l->second;
  const size_t at = hf.find("{E}");
  if (at == std::string::npos) return {hf};
  std::vector<std::string> names;
  for (uint32_t e = 0; e < n_expert; ++e)
    names.push_back(hf.substr(0, at) + std::to_string(e) + hf.substr(at + 3));
  return names;
}

// How a source tensor's bytes become F32 values.
enum class Encoding { Float, Fp8Blocks, Fp4Packed, Integer };

struct SourceView {
  std::string name;
  const SafeTensor* t = nullptr;
  const SafeTensor* scale = nullptr;  // FP8 / FP4 scales
  std::string scale_name;
  Encoding enc = Encoding::Float;
  std::vector<int64_t> shape;  // logical HF shape (FP4: unpacked)
};

class Checkpoint {
 public:
  explicit Checkpoint(const std::vector<std::string>& paths) {
    for (const std::string& p : paths) {
      files_.push_back(SafetensorsFile::open(p));
      for (const SafeTensor& t : files_.back()->tensors()) {
        auto [it, fresh] = index_.emplace(t.name, Entry{&t, p});
        if (!fresh) fail(p + ": tensor '" + t.name + "' is also in " + it->second.file);
      }
    }
  }
  const SafeTensor* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second.t;
  }
  const std::string& file_of(const std::string& name) const { return index_.at(name).file; }
  void use(const std::string& name) { used_.insert(name); }
  bool used(const std::string& name) const { return used_.count(name) != 0; }
  // Names in a stable order (sorted), for the leftover check.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [k, v] : index_) n.push_back(k);
    return n;
  }
  size_t size() const { return index_.size(); }

 private:
  struct Entry {
    const SafeTensor* t;
    std::string file;
  };
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> index_;
  std::set<std::string> used_;
};

const SafeTensor* find_scale(const Checkpoint& ck, const std::string& name,
                             std::string* scale_name) {
  const std::string base = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0
                               ? name.substr(0, name.size() - 7)
                               : name;
  for (const std::string& cand : {base + ".scale", name + "_scale_inv"}) {
    if (const SafeTensor* s = ck.find(cand)) {
      *scale_name = cand;
      return s;
    }
  }
  return nullptr;
}

// Resolves `name` (needed for GGUF tensor `gguf`), checks dtype, scales and scale shapes.
SourceView resolve(const Checkpoint& ck, const std::string& name, const std::string& gguf,
                   bool integer, const std::string& input) {
  SourceView v;
  v.name = name;
  v.t = ck.find(name);
  if (!v.t) fail(gguf + ": source tensor '" + name + "' not found in " + input);
  const std::string& dt = v.t->dtype;
  const std::string where = ck.file_of(name) + ": tensor '" + name + "'";
  v.shape = v.t->shape;
  if (integer) {
    if (dt != "I64" && dt != "I32" && dt != "I16" && dt != "I8" && dt != "U8")
      fail(where + " has dtype " + dt + ", expected an integer type for " + gguf);
    v.enc = Encoding::Integer;
    return v;
  }
  if (dt == "F32" || dt == "F16" || dt == "BF16" || dt == "F64") return v;
  const bool fp8 = dt == "F8_E4M3";
  const bool fp4 = dt == "I8" || dt == "U8";
  if (!fp8 && !fp4) fail(where + " has dtype " + dt + ", which ds4-convert cannot decode");
  v.scale = find_scale(ck, name, &v.scale_name);
  if (!v.scale)
    fail(where + " is " + (fp8 ? "FP8" : "packed FP4") + " but has no '.scale' sibling");
  if (v.shape.size() != 2 || v.scale->shape.size() != 2)
    fail(where + " (" + dt + ") and its scale '" + v.scale_name + "' must be 2-D");
  const int64_t rows = v.shape[0], cols = v.shape[1];
  std::vector<int64_t> want_scale;
  if (fp8) {
    v.enc = Encoding::Fp8Blocks;  // one scale per 128x128 block (partial blocks at the edges)
    want_scale = {(rows + 127) / 128, (cols + 127) / 128};
  } else {
    v.enc = Encoding::Fp4Packed;  // two E2M1 values per byte, one scale per 32 inputs
    v.shape = {rows, cols * 2};
    if (v.shape[1] % 32)
      fail(where + " unpacks to " + shape_str(v.shape) + ", inputs not a multiple of 32");
    want_scale = {rows, v.shape[1] / 32};
  }
  if (v.scale->shape != want_scale)
    fail(ck.file_of(v.scale_name) + ": scale '" + v.scale_name + "' has shape " +
         shape_str(v.scale->shape) + ", expected " + shape_str(want_scale) + " for " + name);
  const std::string& sdt = v.scale->dtype;
  if (sdt != "F8_E8M0" && sdt != "F32" && sdt != "BF16" && sdt != "F16")
    fail(ck.file_of(v.scale_name) + ": scale '" + v.scale_name + "' has dtype " + sdt +
         ", expected F8_E8M0 or F32");
  return v;
}

std::vector<float> scale_values(const SafeTensor& s) {
  if (s.dtype != "F8_E8M0") return s.to_f32();
  std::vector<float> out(static_cast<size_t>(s.nelements()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = e8m0_to_f32(s.data[i]);
  return out;
}

void check_finite(float v, const SourceView& src) {
  if (std::isnan(v)) fail("tensor '" + src.name + "' decodes to NaN");
}

// F32 values of a float source in HF (row-major) order.
std::vector<float> decode(const SourceView& src) {
  if (src.enc == Encoding::Float) return src.t->to_f32();
  const int64_t rows = src.shape[0], cols = src.shape[1];
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const std::vector<float> scale = scale_values(*src.scale);
  for (float s : scale) check_finite(s, src);
  const uint8_t* w = src.t->data;
  if (src.enc == Encoding::Fp8Blocks) {
    const int64_t scols = (cols + 127) / 128;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float v = fp8_e4m3_to_f32(w[r * cols + c]);
        check_finite(v, src);
        out[static_cast<size_t>(r * cols + c)] =
            v * scale[static_cast<size_t>((r / 128) * scols + c / 128)];
      }
    }
  } else {  // Fp4Packed: byte j of a row holds elements 2j (low nibble) and 2j+1 (high nibble)
    const int64_t packed = cols / 2, sblocks = cols / 32;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < packed; ++j) {
        const uint8_t b = w[r * packed + j];
        const float s = scale[static_cast<size_t>(r * sblocks + (2 * j) / 32)];
        out[static_cast<size_t>(r * cols + 2 * j)] = fp4_e2m1_to_f32(b & 0x0f) * s;
        out[static_cast<size_t>(r * cols + 2 * j + 1)] = fp4_e2m1_to_f32(b >> 4) * s;
      }
    }
  }
  return out;
}

// Quantises rows of ne0 values into dst (row_bytes each).
void quantize_rows(QType type, const float* src, int64_t ne0, int64_t rows, uint8_t* dst) {
  const size_t row_bytes = qtype_row_bytes(type, ne0);
  if (type == QType::F32) {
    std::memcpy(dst, src, row_bytes * static_cast<size_t>(rows));
    return;
  }
  for (int64_t r = 0; r < rows; ++r) quantize_row(type, src + r * ne0, dst + row_bytes * r, ne0);
}

struct PlanItem {
  const TensorSpec* spec;
  QType type;
  std::vector<SourceView> parts;  // one, or one per expert
};

std::vector<std::string> input_files(const std::string& input) {
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(input)) {
      if (e.is_regular_file() && e.path().extension() == ".safetensors")
        files.push_back(e.path().string());
    }
    if (files.empty()) fail(input + ": no *.safetensors files in the directory");
    std::sort(files.begin(), files.end());
    return files;
  }
  if (!fs::is_regular_file(input, ec)) fail(input + ": no such file or directory");
  return {input};
}

// general.name of the output: the checkpoint folder's name and the mix ("hf-tiny-f32").
std::string model_name(const std::string& dir, const std::string& mix) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string() + "-" + mix;
}

std::string input_dir(const std::string& input) {
  std::error_code ec;
  if (fs::is_directory(input, ec)) return input;
  const fs::path parent = fs::path(input).parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

// ---- element decoders ----

float fp8_e4m3_to_f32(uint8_t bits) {
  const bool neg = bits & 0x80;
  const int exp = (bits >> 3) & 0x0f, man = bits & 0x07;
  float v;
  if (exp == 0x0f && man == 0x07) {
    v = std::nanf("");
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 · 2^-6
  } else {
    v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  }
  return neg ? -v : v;
}

float e8m0_to_f32(uint8_t bits) {
  if (bits == 0xff) return std::nanf("");
  return std::ldexp(1.0f, static_cast<int>(bits) - 127);
}

float fp4_e2m1_to_f32(uint8_t nibble) {
  static const float kValues[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  const float v = kValues[nibble & 7];
  return nibble & 8 ? -v : v;
}

// ---- conversion ----

ConvertResult convert_hf_to_gguf(const ConvertOptions& opt) {
  if (opt.output.empty()) fail("ds4-convert: no output path");
  const std::string dir = input_dir(opt.input);
  const std::vector<std::string> files = input_files(opt.input);
  const std::string config_path =
      opt.config.empty() ? (fs::path(dir) / "config.json").string() : opt.config;
  const Json config = Json::parse(read_text_file(config_path), config_path);

  ConvertResult res;
  res.hp = hparams_from_hf_config(config, config_path);
  const HParams& hp = res.hp;
  const QuantMix mix = QuantMix::by_name(opt.quant_mix);
  const std::vector<TensorSpec> specs = expected_tensors(hp);
  const std::vector<QType> types = plan_tensor_types(specs, mix);

  // ---- plan: every expected tensor from its sources, shapes checked ----
  Checkpoint ck(files);
  std::vector<PlanItem> plan;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    PlanItem item{&spec, types[i], {}};
    const bool stacked =
        spec.role == TensorRole::ExpertGateUp || spec.role == TensorRole::ExpertDown;
    // HF shape = reversed GGUF ne (one expert's matrix for stacked tensors).
    std::vector<int64_t> want(spec.ne.rbegin() + (stacked ? 1 : 0), spec.ne.rend());
    for (const std::string& name : source_names(spec, hp.n_expert)) {
      SourceView v = resolve(ck, name, spec.name, spec.role == TensorRole::HashTable, opt.input);
      if (v.shape != want)
        fail(ck.file_of(name) + ": tensor '" + name + "' has shape " + shape_str(v.shape) +
             ", but '" + spec.name + "' (GGUF ne " + shape_str(spec.ne) + ") needs HF shape " +
             shape_str(want));
      ck.use(name);
      if (v.scale) ck.use(v.scale_name);
      item.parts.push_back(std::move(v));
    }
    plan.push_back(std::move(item));
  }

  // ---- leftovers: ignored on purpose, or an error ----
  size_t n_mtp = 0, n_hash_bias = 0;
  for (const std::string& name : ck.names()) {
    if (ck.used(name)) continue;
    if (name.compare(0, 4, "mtp.") == 0) {
      ++n_mtp;
      continue;
    }
    // The router bias of hash-routed layers is unused (llama.cpp's converter drops it too).
    unsigned layer = 0;
    int consumed = 0;
    if (std::sscanf(name.c_str(), "layers.%u.ffn.gate.bias%n", &layer, &consumed) == 1 &&
        static_cast<size_t>(consumed) == name.size() && layer < hp.n_layer &&
        hp.is_hash_layer(layer)) {
      ++n_hash_bias;
      continue;
    }
    fail(ck.file_of(name) + ": unknown tensor '" + name +
         "' (no deepseek4 GGUF tensor maps to it)");
  }
  if (n_mtp)
    res.notes.push_back("dropped " + std::to_string(n_mtp) +
                        " mtp.* tensors (the MTP block is not converted)");
  if (n_hash_bias)
    res.notes.push_back("dropped the router bias (ffn.gate.bias) of " +
                        std::to_string(n_hash_bias) +
                        " hash-routed layers (unused by hash routing)");

  // ---- write ----
  GgufWriter w;
  w.spill_tensors_near(opt.output);  // a real checkpoint is larger than memory
  hp.write(w);
  w.set_str("general.name", model_name(dir, mix.name));
  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  if (fs::exists(tok_path)) {
    const SyntheticVocab vocab = vocab_from_hf_tokenizer(tok_path, hp.n_vocab);
    write_tokenizer_metadata(w, vocab);
    // The model's own special ids win over whatever the vocabulary writer guessed.
    for (const char* key : {"bos_token_id", "eos_token_id"}) {
      const Json* id = config.find(key);
      if (id && id->is_number() && id->is_integer && id->integer >= 0 && id->integer < hp.n_vocab)
        w.set_u32(std::string("tokenizer.ggml.") + key, static_cast<uint32_t>(id->integer));
    }
    res.notes.push_back("tokenizer: " + tok_path + " (" + std::to_string(vocab.merges.size()) +
                        " merges)");
  } else {
    write_tokenizer_metadata(w, make_synthetic_vocab(static_cast<int32_t>(hp.n_vocab)));
    res.notes.push_back("no tokenizer.json in " + dir + ": wrote a synthetic " +
                        std::to_string(hp.n_vocab) + "-token vocabulary");
  }

  for (const PlanItem& item : plan) {
    const TensorSpec& spec = *item.spec;
    const std::vector<int64_t>& ne = spec.alt_ne.empty() ? spec.ne : spec.alt_ne;
    std::vector<uint8_t> data;
    if (item.type == QType::I32) {
      // tid2eid: I64 [vocab, n_used] -> I32 GGUF [n_used, vocab] (same element order).
      const SourceView& src = item.parts[0];
      const std::vector<int64_t> ids = src.t->to_i64();
      data.resize(ids.size() * sizeof(int32_t));
      for (size_t k = 0; k < ids.size(); ++k) {
        if (ids[k] < 0 || ids[k] >= hp.n_expert)
          fail("tensor '" + src.name + "' has expert id " + std::to_string(ids[k]) + " at token " +
               std::to_string(k / static_cast<size_t>(spec.ne[0])) + ", outside [0, " +
               std::to_string(hp.n_expert) + ")");
        const int32_t v = static_cast<int32_t>(ids[k]);
        std::memcpy(data.data() + k * sizeof(int32_t), &v, sizeof v);
      }
    } else {
      const int64_t ne0 = spec.ne[0];
      const size_t part_rows = static_cast<size_t>(count(spec.ne) / ne0) / item.parts.size();
      const size_t part_bytes = qtype_row_bytes(item.type, ne0) * part_rows;
      data.resize(part_bytes * item.parts.size());
      for (size_t p = 0; p < item.parts.size(); ++p) {
        const std::vector<float> f = decode(item.parts[p]);
        quantize_rows(item.type, f.data(), ne0, static_cast<int64_t>(part_rows),
                      data.data() + p * part_bytes);
      }
    }
    w.add_tensor(spec.name, ne, item.type, data.data(), data.size());
    for (const SourceView& v : item.parts) res.n_source_tensors += v.scale ? 2 : 1;
  }
  w.write(opt.output);
  res.n_tensors = plan.size();
  return res;
}

}  // namespace ds4
