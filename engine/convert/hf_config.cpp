// HF config.json -> HParams, and HF tokenizer.json -> GGUF vocabulary arrays.
//
// Keys read (DeepSeek's V4 config.json; the HF oracle fixture has the same):
//   hidden_size num_hidden_layers num_attention_heads head_dim qk_rope_head_dim q_lora_rank
//   o_lora_rank o_groups sliding_window rms_norm_eps compress_ratios compress_rope_theta
//   index_n_heads index_head_dim index_topk n_routed_experts num_experts_per_tok
//   n_shared_experts moe_intermediate_size routed_scaling_factor norm_topk_prob num_hash_layers
//   swiglu_limit hc_mult hc_sinkhorn_iters hc_eps rope_theta
//   rope_scaling{factor, original_max_position_embeddings, beta_fast, beta_slow}
//   vocab_size max_position_embeddings
// Fallbacks for transformers-style configs: compress_ratios from layer_types + compress_rates,
// num_hash_layers from mlp_layer_types ("hash_moe"), qk_rope_head_dim from head_dim ·
// partial_rotary_factor, rope_scaling from rope_parameters.compress.
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "ds4/convert.h"
#include "ds4/error.h"
#include "ds4/json.h"
#include "ds4/tokenizer.h"

namespace ds4 {

// Whole file as text (also used by convert.cpp).
std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) fail(path + ": read error");
  return s.str();
}

namespace {

struct Config {
  const Json& root;
  const std::string& where;

  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    fail(where + ": key '" + key + "' " + what);
  }
  const Json* find(const std::string& key) const { return root.find(key); }
  const Json& need(const std::string& key) const {
    const Json* v = root.find(key);
    if (!v || v->is_null()) bad(key, "missing");
    return *v;
  }
  static double number(const Config& c, const std::string& key, const Json& v) {
    if (!v.is_number())
      c.bad(key, std::string("is ") + Json::kind_name(v.kind) + ", expected a number");
    return v.number;
  }
  static uint64_t uint(const Config& c, const std::string& key, const Json& v) {
    if (!v.is_number() || !v.is_integer || v.integer < 0)
      c.bad(key, "is " + v.dump() + ", expected a non-negative integer");
    return static_cast<uint64_t>(v.integer);
  }
  uint32_t u32(const std::string& key) const {
    const uint64_t v = uint(*this, key, need(key));
    if (v > UINT32_MAX) bad(key, "is out of range");
    return static_cast<uint32_t>(v);
  }
  uint32_t u32_or(const std::string& key, uint32_t fallback) const {
    const Json* v = find(key);
    return v && !v->is_null() ? u32(key) : fallback;
  }
  float f32(const std::string& key) const {
    return static_cast<float>(number(*this, key, need(key)));
  }
};

std::vector<uint32_t> ratios_from_config(const Config& c, uint32_t n_layer) {
  std::vector<uint32_t> r;
  if (const Json* cr = c.find("compress_ratios"); cr && !cr->is_null()) {
    if (!cr->is_array()) c.bad("compress_ratios", "is not an array");
    for (const Json& v : cr->array)
      r.push_back(static_cast<uint32_t>(Config::uint(c, "compress_ratios", v)));
  } else if (const Json* lt = c.find("layer_types"); lt && lt->is_array()) {
    // transformers names the layer kinds; compress_rates maps the compressed ones to ratios.
    const Json* rates = c.find("compress_rates");
    for (const Json& v : lt->array) {
      if (!v.is_string()) c.bad("layer_types", "has a non-string entry");
      if (v.string == "sliding_attention") {
        r.push_back(0);
      } else {
        const Json* rate = rates ? rates->find(v.string) : nullptr;
        if (!rate) c.bad("compress_rates", "has no entry for layer type '" + v.string + "'");
        r.push_back(static_cast<uint32_t>(Config::uint(c, "compress_rates", *rate)));
      }
    }
  } else {
    c.bad("compress_ratios", "missing (and no layer_types)");
  }
  // Upstream lists one more entry for the MTP layer: keep the trunk's.
  if (r.size() < n_layer)
    c.bad("compress_ratios", "has " + std::to_string(r.size()) + " entries, expected at least " +
                                 std::to_string(n_layer));
  r.resize(n_layer);
  return r;
}

}  // namespace

HParams hparams_from_hf_config(const Json& root, const std::string& where) {
  if (!root.is_object()) fail(where + ": config is not a JSON object");
  const Config c{root, where};
  HParams hp;
  hp.n_layer = c.u32("num_hidden_layers");
  hp.n_vocab = c.u32("vocab_size");
  hp.n_embd = c.u32("hidden_size");
  hp.n_head = c.u32("num_attention_heads");
  if (c.u32_or("num_key_value_heads", 1) != 1)
    c.bad("num_key_value_heads", "is not 1 (DS4 has one shared KV head)");
  hp.head_dim = c.u32("head_dim");
  if (const Json* rope = c.find("qk_rope_head_dim"); rope && !rope->is_null()) {
    hp.n_rot = c.u32("qk_rope_head_dim");
  } else if (const Json* prf = c.find("partial_rotary_factor"); prf && prf->is_number()) {
    hp.n_rot = static_cast<uint32_t>(std::lround(hp.head_dim * prf->number));
  } else {
    c.bad("qk_rope_head_dim", "missing (and no partial_rotary_factor)");
  }
  hp.q_lora = c.u32("q_lora_rank");
  hp.o_lora = c.u32("o_lora_rank");
  hp.o_groups = c.u32("o_groups");
  hp.window = c.u32("sliding_window");
  hp.eps = c.f32("rms_norm_eps");
  hp.ratios = ratios_from_config(c, hp.n_layer);
  hp.compress_rope_base = c.f32("compress_rope_theta");
  hp.n_idx_head = c.u32_or("index_n_heads", 0);
  hp.idx_head_dim = c.u32_or("index_head_dim", 0);
  hp.idx_top_k = c.u32_or("index_topk", 0);
  hp.n_expert = c.u32("n_routed_experts");
  hp.n_expert_used = c.u32("num_experts_per_tok");
  hp.n_expert_shared = c.u32("n_shared_experts");
  hp.n_ff_exp = c.u32("moe_intermediate_size");
  hp.expert_scale = c.f32("routed_scaling_factor");
  if (const Json* v = c.find("norm_topk_prob"); v && !v->is_null()) {
    if (!v->is_bool()) c.bad("norm_topk_prob", "is not a bool");
    hp.expert_norm = v->boolean;
  }
  if (const Json* v = c.find("scoring_func"); v && !v->is_null()) {
    if (!v->is_string() || v->string != "sqrtsoftplus")
      c.bad("scoring_func", "is " + v->dump() + ", DS4 routing is \"sqrtsoftplus\"");
  }
  hp.gating_func = 4;
  if (const Json* v = c.find("num_hash_layers"); v && !v->is_null()) {
    hp.n_hash_layer = c.u32("num_hash_layers");
  } else if (const Json* mlt = c.find("mlp_layer_types"); mlt && mlt->is_array()) {
    // transformers lists hash-routed layers as a prefix of "hash_moe" entries.
    hp.n_hash_layer = 0;
    while (hp.n_hash_layer < mlt->array.size() && mlt->array[hp.n_hash_layer].is_string() &&
           mlt->array[hp.n_hash_layer].string == "hash_moe")
      ++hp.n_hash_layer;
  } else {
    c.bad("num_hash_layers", "missing (and no mlp_layer_types)");
  }
  const float clamp = c.f32("swiglu_limit");
  hp.clamp_exp.assign(hp.n_layer, clamp);
  hp.clamp_shexp.assign(hp.n_layer, clamp);
  hp.n_hc = c.u32("hc_mult");
  hp.sinkhorn_iters = c.u32("hc_sinkhorn_iters");
  hp.hc_eps = c.f32("hc_eps");
  hp.rope_base = c.f32("rope_theta");
  const Json* rs = c.find("rope_scaling");
  std::string rs_key = "rope_scaling";
  if (!rs || rs->is_null()) {
    const Json* rp = c.find("rope_parameters");
    rs = rp ? rp->find("compress") : nullptr;
    rs_key = "rope_parameters.compress";
  }
  if (!rs || !rs->is_object()) c.bad("rope_scaling", "missing (and no rope_parameters.compress)");
  const Config rc{*rs, where + ": " + rs_key};
  hp.yarn_factor = rc.f32("factor");
  hp.yarn_orig_ctx = rc.u32("original_max_position_embeddings");
  hp.yarn_beta_fast = rc.find("beta_fast") ? rc.f32("beta_fast") : 32.f;
  hp.yarn_beta_slow = rc.find("beta_slow") ? rc.f32("beta_slow") : 1.f;
  if (const Json* v = c.find("max_position_embeddings"); v && !v->is_null())
    hp.n_ctx_train = Config::uint(c, "max_position_embeddings", *v);
  hp.n_mtp = 0;  // MTP tensors are dropped (as llama.cpp's normal conversion does)
  hp.validate(where);
  return hp;
}

HParams hparams_from_hf_config_file(const std::string& path) {
  const Json root = Json::parse(read_text_file(path), path);
  return hparams_from_hf_config(root, path);
}

SyntheticVocab vocab_from_hf_tokenizer(const std::string& path, uint32_t n_vocab) {
  const Json root = Json::parse(read_text_file(path), path);
  const Json* model = root.find("model");
  if (!model || !model->is_object()) fail(path + ": key 'model' missing");
  if (const Json* type = model->find("type"); type && (!type->is_string() || type->string != "BPE"))
    fail(path + ": model.type is " + type->dump() + ", expected \"BPE\"");
  const Json* vocab = model->find("vocab");
  if (!vocab || !vocab->is_object()) fail(path + ": key 'model.vocab' missing");

  SyntheticVocab out;
  out.tokens.assign(n_vocab, std::string());
  out.token_types.assign(n_vocab, 0);
  auto put = [&](const std::string& token, const Json& id_json, int32_t type) {
    if (!id_json.is_number() || !id_json.is_integer || id_json.integer < 0 ||
        id_json.integer >= static_cast<int64_t>(n_vocab))
      fail(path + ": token '" + token + "' has id " + id_json.dump() + ", outside vocab_size " +
           std::to_string(n_vocab));
    const size_t id = static_cast<size_t>(id_json.integer);
    out.tokens[id] = token;
    out.token_types[id] = type;
  };
  for (const auto& [token, id] : vocab->members) put(token, id, 1);
  if (const Json* added = root.find("added_tokens"); added && added->is_array()) {
    for (const Json& a : added->array) {
      const Json* content = a.find("content");
      const Json* id = a.find("id");
      if (!content || !content->is_string() || !id) fail(path + ": malformed added_tokens entry");
      const Json* special = a.find("special");
      put(content->string, *id, special && special->is_bool() && special->boolean ? 3 : 4);
    }
  }
  // Ids the tokenizer does not use (the embedding is padded past the vocabulary) get unique
  // placeholder strings, type 5 (unused) as llama.cpp's converter writes them.
  for (size_t i = 0; i < out.tokens.size(); ++i) {
    if (out.token_types[i] == 0) {
      out.tokens[i] = "[PAD" + std::to_string(i) + "]";
      out.token_types[i] = 5;
    }
  }
  if (const Json* merges = model->find("merges"); merges && merges->is_array()) {
    for (const Json& m : merges->array) {
      if (m.is_string()) {
        out.merges.push_back(m.string);
      } else if (m.is_array() && m.array.size() == 2 && m.array[0].is_string() &&
                 m.array[1].is_string()) {
        out.merges.push_back(m.array[0].string + " " + m.array[1].string);
      } else {
        fail(path + ": malformed model.merges entry " + m.dump());
      }
    }
  } else {
    fail(path + ": key 'model.merges' missing");
  }
  return out;
}

}  // namespace ds4
