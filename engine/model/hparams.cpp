// HParams: read from `deepseek4.*` metadata, validated, written back; the tensor inventory.
#include <map>
#include <sstream>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/model.h"

namespace ds4 {
namespace {

const std::string kArch = "deepseek4";
std::string key(const std::string& suffix) { return kArch + "." + suffix; }

std::vector<float> per_layer_floats(const GgufFile& f, const std::string& k, uint32_t n_layer,
                                    float fallback, bool required) {
  const GgufValue* v = f.find(k);
  if (!v) {
    if (required) fail(f.path() + ": metadata key '" + k + "' missing");
    return std::vector<float>(n_layer, fallback);
  }
  if (v->type != GgufType::ARRAY) return std::vector<float>(n_layer, f.get_f32(k));
  std::vector<double> raw = f.get_float_array(k);
  if (raw.size() < n_layer)
    fail(f.path() + ": metadata key '" + k + "' has " + std::to_string(raw.size()) +
         " entries, expected at least " + std::to_string(n_layer));
  return std::vector<float>(raw.begin(), raw.begin() + n_layer);
}

}  // namespace

HParams HParams::from_gguf(const GgufFile& f) {
  const std::string arch = f.get_str("general.architecture");
  if (arch != kArch)
    fail(f.path() + ": metadata key 'general.architecture' is '" + arch + "', expected 'deepseek4'");
  HParams hp;
  hp.n_layer = f.get_u32(key("block_count"));
  hp.n_embd = f.get_u32(key("embedding_length"));
  hp.n_head = f.get_u32(key("attention.head_count"));
  const uint32_t n_head_kv = f.get_u32_or(key("attention.head_count_kv"), 1);
  if (n_head_kv != 1)
    fail(f.path() + ": metadata key '" + key("attention.head_count_kv") + "' is " +
         std::to_string(n_head_kv) + ", DS4 has one shared KV head");
  hp.head_dim = f.get_u32(key("attention.key_length"));
  const uint32_t value_length = f.get_u32_or(key("attention.value_length"), hp.head_dim);
  if (value_length != hp.head_dim)
    fail(f.path() + ": metadata key '" + key("attention.value_length") + "' differs from key_length");
  hp.n_rot = f.get_u32(key("rope.dimension_count"));
  hp.q_lora = f.get_u32(key("attention.q_lora_rank"));
  hp.o_lora = f.get_u32(key("attention.output_lora_rank"));
  hp.o_groups = f.get_u32(key("attention.output_group_count"));
  hp.window = f.get_u32(key("attention.sliding_window"));
  hp.eps = f.get_f32(key("attention.layer_norm_rms_epsilon"));
  {
    std::vector<int64_t> r = f.get_int_array(key("attention.compress_ratios"));
    if (r.size() < hp.n_layer)
      fail(f.path() + ": metadata key '" + key("attention.compress_ratios") + "' has " +
           std::to_string(r.size()) + " entries, expected at least " + std::to_string(hp.n_layer));
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i] != 0 && r[i] != 4 && r[i] != 128)
        fail(f.path() + ": metadata key '" + key("attention.compress_ratios") + "' entry " +
             std::to_string(i) + " is " + std::to_string(r[i]) + ", expected 0, 4 or 128");
    }
    hp.ratios.assign(r.begin(), r.begin() + hp.n_layer);
  }
  hp.compress_rope_base = f.get_f32(key("attention.compress_rope_freq_base"));
  hp.n_idx_head = f.get_u32(key("attention.indexer.head_count"));
  hp.idx_head_dim = f.get_u32(key("attention.indexer.key_length"));
  hp.idx_top_k = f.get_u32(key("attention.indexer.top_k"));
  hp.n_expert = f.get_u32(key("expert_count"));
  hp.n_expert_used = f.get_u32(key("expert_used_count"));
  hp.n_expert_shared = f.get_u32(key("expert_shared_count"));
  hp.n_ff_exp = f.get_u32(key("expert_feed_forward_length"));
  hp.expert_scale = f.get_f32(key("expert_weights_scale"));
  hp.expert_norm = f.get_bool_or(key("expert_weights_norm"), true);
  hp.gating_func = f.get_u32_or(key("expert_gating_func"), 4);
  hp.n_hash_layer = f.get_u32_or(key("hash_layer_count"), 0);
  hp.clamp_exp = per_layer_floats(f, key("swiglu_clamp_exp"), hp.n_layer, 0.f, true);
  hp.clamp_shexp = f.has(key("swiglu_clamp_shexp"))
                       ? per_layer_floats(f, key("swiglu_clamp_shexp"), hp.n_layer, 0.f, true)
                       : hp.clamp_exp;
  hp.n_hc = f.get_u32(key("hyper_connection.count"));
  hp.sinkhorn_iters = f.get_u32(key("hyper_connection.sinkhorn_iterations"));
  hp.hc_eps = f.get_f32(key("hyper_connection.epsilon"));
  hp.rope_base = f.get_f32(key("rope.freq_base"));
  hp.yarn_factor = f.get_f32(key("rope.scaling.factor"));
  hp.yarn_orig_ctx = f.get_u32(key("rope.scaling.original_context_length"));
  hp.yarn_beta_fast = f.get_f32_or(key("rope.scaling.yarn_beta_fast"), 32.f);
  hp.yarn_beta_slow = f.get_f32_or(key("rope.scaling.yarn_beta_slow"), 1.f);
  hp.n_ctx_train = f.has(key("context_length")) ? f.get_u64(key("context_length")) : 0;
  hp.n_mtp = f.get_u32_or(key("nextn_predict_layers"), 0);
  // vocab_size is optional in llama.cpp files: fall back to the embedding's row count.
  if (f.has(key("vocab_size"))) {
    hp.n_vocab = f.get_u32(key("vocab_size"));
  } else {
    const GgufTensor& embd = f.tensor("token_embd.weight");
    if (embd.ne.size() != 2) fail(f.path() + ": tensor 'token_embd.weight' is not 2-D");
    hp.n_vocab = static_cast<uint32_t>(embd.ne[1]);
  }
  hp.validate(f.path());
  return hp;
}

void HParams::validate(const std::string& where) const {
  auto bad = [&](const std::string& what) { fail(where + ": bad hyperparameters: " + what); };
  if (n_layer == 0) bad("block_count is 0");
  if (n_embd == 0 || n_head == 0 || head_dim == 0 || n_vocab == 0) bad("zero dimension");
  if (n_rot == 0 || n_rot > head_dim || n_rot % 2) bad("rope.dimension_count must be even and <= key_length");
  if (o_groups == 0 || n_head % o_groups) bad("head_count not divisible by output_group_count");
  if (ratios.size() != n_layer) bad("compress_ratios length differs from block_count");
  for (size_t i = 0; i < ratios.size(); ++i)
    if (ratios[i] != 0 && ratios[i] != 4 && ratios[i] != 128)
      bad("compress_ratios entry " + std::to_string(i) + " is " + std::to_string(ratios[i]) +
          ", expected 0, 4 or 128");
  if (n_hc == 0 || n_hc > 16) bad("hyper_connection.count out of range");
  if (sinkhorn_iters == 0) bad("sinkhorn_iterations is 0");
  if (n_expert == 0 || n_expert_used == 0 || n_expert_used > n_expert) bad("expert_used_count");
  if (n_expert_shared > 1) bad("expert_shared_count > 1 is not DS4");
  if (n_hash_layer > n_layer) bad("hash_layer_count > block_count");
  if (gating_func != 4) bad("expert_gating_func must be 4 (sqrt-softplus)");
  if (window == 0) bad("sliding_window is 0");
  bool any_ratio4 = false;
  for (uint32_t r : ratios) any_ratio4 |= (r == 4);
  if (any_ratio4) {
    if (n_idx_head == 0 || idx_head_dim == 0 || idx_top_k == 0) bad("indexer dimensions are 0");
    if (idx_head_dim < n_rot || idx_head_dim % 32) bad("indexer key_length must be >= rope dims and a multiple of 32");
  }
  if (clamp_exp.size() != n_layer || clamp_shexp.size() != n_layer) bad("swiglu clamp arrays");
}

void HParams::write(GgufWriter& w) const {
  w.set_str("general.architecture", kArch);
  w.set_u32(key("block_count"), n_layer);
  w.set_u32(key("context_length"), static_cast<uint32_t>(n_ctx_train ? n_ctx_train : 1048576));
  w.set_u32(key("embedding_length"), n_embd);
  w.set_u32(key("vocab_size"), n_vocab);
  w.set_u32(key("feed_forward_length"), n_ff_exp);
  w.set_u32(key("attention.head_count"), n_head);
  w.set_u32(key("attention.head_count_kv"), 1);
  w.set_u32(key("attention.key_length"), head_dim);
  w.set_u32(key("attention.value_length"), head_dim);
  w.set_u32(key("rope.dimension_count"), n_rot);
  w.set_u32(key("attention.q_lora_rank"), q_lora);
  w.set_u32(key("attention.output_lora_rank"), o_lora);
  w.set_u32(key("attention.output_group_count"), o_groups);
  w.set_u32(key("attention.sliding_window"), window);
  w.set_f32(key("attention.layer_norm_rms_epsilon"), eps);
  std::vector<int32_t> r(ratios.begin(), ratios.end());
  for (uint32_t i = 0; i < n_mtp; ++i) r.push_back(0);  // the MTP block is a ratio-0 layer
  w.set_arr_i32(key("attention.compress_ratios"), r);
  w.set_f32(key("attention.compress_rope_freq_base"), compress_rope_base);
  w.set_u32(key("attention.indexer.head_count"), n_idx_head);
  w.set_u32(key("attention.indexer.key_length"), idx_head_dim);
  w.set_u32(key("attention.indexer.top_k"), idx_top_k);
  w.set_u32(key("expert_count"), n_expert);
  w.set_u32(key("expert_used_count"), n_expert_used);
  w.set_u32(key("expert_shared_count"), n_expert_shared);
  w.set_u32(key("expert_feed_forward_length"), n_ff_exp);
  w.set_f32(key("expert_weights_scale"), expert_scale);
  w.set_bool(key("expert_weights_norm"), expert_norm);
  w.set_u32(key("expert_gating_func"), gating_func);
  w.set_u32(key("hash_layer_count"), n_hash_layer);
  std::vector<float> ce = clamp_exp, cs = clamp_shexp;
  for (uint32_t i = 0; i < n_mtp; ++i) {
    ce.push_back(clamp_exp.back());
    cs.push_back(clamp_shexp.back());
  }
  w.set_arr_f32(key("swiglu_clamp_exp"), ce);
  w.set_arr_f32(key("swiglu_clamp_shexp"), cs);
  w.set_u32(key("hyper_connection.count"), n_hc);
  w.set_u32(key("hyper_connection.sinkhorn_iterations"), sinkhorn_iters);
  w.set_f32(key("hyper_connection.epsilon"), hc_eps);
  w.set_f32(key("rope.freq_base"), rope_base);
  w.set_str(key("rope.scaling.type"), "yarn");
  w.set_f32(key("rope.scaling.factor"), yarn_factor);
  w.set_u32(key("rope.scaling.original_context_length"), yarn_orig_ctx);
  w.set_f32(key("rope.scaling.yarn_beta_fast"), yarn_beta_fast);
  w.set_f32(key("rope.scaling.yarn_beta_slow"), yarn_beta_slow);
  if (n_mtp) w.set_u32(key("nextn_predict_layers"), n_mtp);
}

std::string HParams::summary() const {
  std::ostringstream s;
  s << "deepseek4: " << n_layer << " layers, d=" << n_embd << ", vocab=" << n_vocab << ", "
    << n_head << "x" << head_dim << " heads (rope " << n_rot << "), q_lora=" << q_lora
    << ", out " << o_groups << "x" << o_lora << ", experts " << n_expert << " top-"
    << n_expert_used << " ff=" << n_ff_exp << ", hash layers " << n_hash_layer
    << ", indexer " << n_idx_head << "x" << idx_head_dim << " top-" << idx_top_k
    << ", window " << window << ", ratios [";
  for (size_t i = 0; i < ratios.size(); ++i) s << (i ? "," : "") << ratios[i];
  s << "]" << (n_mtp ? ", MTP" : "");
  return s.str();
}

std::vector<TensorSpec> expected_tensors(const HParams& hp) {
  std::vector<TensorSpec> out;
  const int64_t d = hp.n_embd, hc = hp.n_hc, hc_mix = (2 + hp.n_hc) * hp.n_hc;
  auto add = [&](std::string name, std::vector<int64_t> ne, TensorRole role, int layer,
                 bool required = true, std::vector<int64_t> alt = {}) {
    out.push_back({std::move(name), std::move(ne), role, layer, required, std::move(alt)});
  };
  add("token_embd.weight", {d, hp.n_vocab}, TensorRole::Embedding, -1);
  // One block (trunk layer il, or the MTP block at index n_layer with ratio 0 and no hashing).
  auto block = [&](uint32_t il, bool mtp) {
    const std::string p = "blk." + std::to_string(il) + ".";
    const int L = static_cast<int>(il);
    const uint32_t ratio = mtp ? 0 : hp.ratios[il];
    const bool hash = !mtp && hp.is_hash_layer(il);
    add(p + "hc_attn_fn.weight", {hc * d, hc_mix}, TensorRole::SmallMatrix, L);
    add(p + "hc_attn_scale.weight", {3}, TensorRole::Vector, L);
    add(p + "hc_attn_base.weight", {hc_mix}, TensorRole::Vector, L);
    add(p + "attn_norm.weight", {d}, TensorRole::Vector, L);
    add(p + "attn_q_a.weight", {d, hp.q_lora}, TensorRole::AttnProj, L);
    add(p + "attn_q_a_norm.weight", {hp.q_lora}, TensorRole::Vector, L);
    add(p + "attn_q_b.weight", {hp.q_lora, int64_t(hp.n_head) * hp.head_dim}, TensorRole::AttnProj, L);
    add(p + "attn_kv.weight", {d, hp.head_dim}, TensorRole::AttnProj, L);
    add(p + "attn_kv_a_norm.weight", {hp.head_dim}, TensorRole::Vector, L);
    add(p + "attn_sinks.weight", {hp.n_head}, TensorRole::Vector, L);
    const int64_t group_in = int64_t(hp.heads_per_group()) * hp.head_dim;
    add(p + "attn_output_a.weight", {group_in, int64_t(hp.o_lora) * hp.o_groups},
        TensorRole::AttnProj, L, true, {group_in, hp.o_lora, hp.o_groups});
    add(p + "attn_output_b.weight", {int64_t(hp.o_lora) * hp.o_groups, d}, TensorRole::AttnProj, L);
    if (ratio != 0) {
      const int64_t w = ratio == 4 ? 2 * hp.head_dim : hp.head_dim;
      add(p + "attn_compressor_kv.weight", {d, w}, TensorRole::SmallMatrix, L);
      add(p + "attn_compressor_gate.weight", {d, w}, TensorRole::SmallMatrix, L);
      add(p + "attn_compressor_ape.weight", {w, ratio}, TensorRole::SmallMatrix, L);
      add(p + "attn_compressor_norm.weight", {hp.head_dim}, TensorRole::Vector, L);
    }
    if (ratio == 4) {
      const int64_t iw = 2 * hp.idx_head_dim;
      add(p + "indexer.attn_q_b.weight", {hp.q_lora, int64_t(hp.n_idx_head) * hp.idx_head_dim},
          TensorRole::SmallMatrix, L);
      add(p + "indexer.proj.weight", {d, hp.n_idx_head}, TensorRole::SmallMatrix, L);
      add(p + "indexer_compressor_kv.weight", {d, iw}, TensorRole::SmallMatrix, L);
      add(p + "indexer_compressor_gate.weight", {d, iw}, TensorRole::SmallMatrix, L);
      add(p + "indexer_compressor_ape.weight", {iw, 4}, TensorRole::SmallMatrix, L);
      add(p + "indexer_compressor_norm.weight", {hp.idx_head_dim}, TensorRole::Vector, L);
    }
    add(p + "hc_ffn_fn.weight", {hc * d, hc_mix}, TensorRole::SmallMatrix, L);
    add(p + "hc_ffn_scale.weight", {3}, TensorRole::Vector, L);
    add(p + "hc_ffn_base.weight", {hc_mix}, TensorRole::Vector, L);
    add(p + "ffn_norm.weight", {d}, TensorRole::Vector, L);
    add(p + "ffn_gate_inp.weight", {d, hp.n_expert}, TensorRole::SmallMatrix, L);
    // exp_probs_b: selection bias of learned-routing layers; llama.cpp has none on hash layers.
    if (!hash) add(p + "exp_probs_b.bias", {hp.n_expert}, TensorRole::Vector, L);
    if (hash) add(p + "ffn_gate_tid2eid.weight", {hp.n_expert_used, hp.n_vocab}, TensorRole::HashTable, L);
    add(p + "ffn_gate_exps.weight", {d, hp.n_ff_exp, hp.n_expert}, TensorRole::ExpertGateUp, L);
    add(p + "ffn_up_exps.weight", {d, hp.n_ff_exp, hp.n_expert}, TensorRole::ExpertGateUp, L);
    add(p + "ffn_down_exps.weight", {hp.n_ff_exp, d, hp.n_expert}, TensorRole::ExpertDown, L);
    if (hp.n_expert_shared) {
      const int64_t ffs = int64_t(hp.n_ff_exp) * hp.n_expert_shared;
      add(p + "ffn_gate_shexp.weight", {d, ffs}, TensorRole::SharedExpert, L);
      add(p + "ffn_up_shexp.weight", {d, ffs}, TensorRole::SharedExpert, L);
      add(p + "ffn_down_shexp.weight", {ffs, d}, TensorRole::SharedExpert, L);
    }
    if (mtp) {
      // llama.cpp's MTP layout (blk.<n_layer>.nextn.*) plus the MTP's own HC head, which llama.cpp
      // keeps in a separate file as the root output_hc_*; one file here carries both.
      add(p + "nextn.eh_proj.weight", {2 * d, d}, TensorRole::AttnProj, L);
      add(p + "nextn.enorm.weight", {d}, TensorRole::Vector, L);
      add(p + "nextn.hnorm.weight", {d}, TensorRole::Vector, L);
      add(p + "nextn.shared_head_norm.weight", {d}, TensorRole::Vector, L);
      add(p + "nextn.hc_head_fn.weight", {hc * d, hc}, TensorRole::SmallMatrix, L);
      add(p + "nextn.hc_head_scale.weight", {1}, TensorRole::Vector, L);
      add(p + "nextn.hc_head_base.weight", {hc}, TensorRole::Vector, L);
    }
  };
  for (uint32_t il = 0; il < hp.n_layer; ++il) block(il, false);
  for (uint32_t m = 0; m < hp.n_mtp; ++m) block(hp.n_layer + m, true);
  add("output_hc_fn.weight", {hc * d, hc}, TensorRole::SmallMatrix, -1);
  add("output_hc_scale.weight", {1}, TensorRole::Vector, -1);
  add("output_hc_base.weight", {hc}, TensorRole::Vector, -1);
  add("output_norm.weight", {d}, TensorRole::Vector, -1);
  add("output.weight", {d, hp.n_vocab}, TensorRole::Output, -1);
  return out;
}

std::vector<TensorSpec> expected_mtp_sidecar_tensors(const HParams& hp) {
  HParams with_mtp = hp;
  with_mtp.n_mtp = 1;
  const std::string block = "blk." + std::to_string(hp.n_layer) + ".";
  std::map<std::string, TensorSpec> single;  // sidecar name -> spec of the single-file tensor
  for (TensorSpec t : expected_tensors(with_mtp)) {
    if (t.name.rfind(block, 0) != 0) continue;
    const std::string name = mtp_sidecar_name(hp, t.name);
    if (name.empty()) continue;  // eh_proj: split below
    t.name = name;
    t.alt_ne.clear();  // ds4.c checks attn_output_a 2-D only
    single[name] = t;
  }
  const int64_t d = hp.n_embd;
  const int L = static_cast<int>(hp.n_layer);
  single["mtp.0.e_proj.weight"] = {"mtp.0.e_proj.weight", {d, d}, TensorRole::AttnProj, L, true, {}};
  single["mtp.0.h_proj.weight"] = {"mtp.0.h_proj.weight", {d, d}, TensorRole::AttnProj, L, true, {}};
  // ds4.c's mtp_weights_bind order: the head, then the block as a trunk layer binds it.
  static const char* const kOrder[] = {
      "hc_head_base.weight", "hc_head_fn.weight", "hc_head_scale.weight", "e_proj.weight",
      "h_proj.weight", "enorm.weight", "hnorm.weight", "norm.weight",
      "hc_attn_fn.weight", "hc_attn_scale.weight", "hc_attn_base.weight", "attn_norm.weight",
      "attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight", "attn_kv.weight",
      "attn_kv_a_norm.weight", "attn_sinks.weight", "attn_output_a.weight", "attn_output_b.weight",
      "hc_ffn_fn.weight", "hc_ffn_scale.weight", "hc_ffn_base.weight", "ffn_norm.weight",
      "ffn_gate_inp.weight", "exp_probs_b.bias", "ffn_gate_exps.weight", "ffn_up_exps.weight",
      "ffn_down_exps.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"};
  std::vector<TensorSpec> out;
  for (const char* suffix : kOrder) {
    const auto it = single.find(std::string("mtp.0.") + suffix);
    if (it == single.end()) continue;  // shared expert tensors when expert_shared_count = 0
    out.push_back(it->second);
    single.erase(it);
  }
  if (!single.empty()) fail("internal: MTP sidecar tensor '" + single.begin()->first + "' has no place");
  return out;
}

std::string mtp_sidecar_name(const HParams& hp, const std::string& name) {
  const std::string block = "blk." + std::to_string(hp.n_layer) + ".";
  if (name.rfind(block, 0) != 0) fail("internal: '" + name + "' is not an MTP block tensor");
  std::string rest = name.substr(block.size());
  if (rest == "nextn.eh_proj.weight") return "";
  if (rest == "nextn.shared_head_norm.weight") return "mtp.0.norm.weight";
  if (rest.rfind("nextn.", 0) == 0) rest = rest.substr(6);  // enorm, hnorm, hc_head_*
  return "mtp.0." + rest;
}

QType QuantMix::type_for(TensorRole role) const {
  switch (role) {
    case TensorRole::Embedding: return embedding;
    case TensorRole::Output: return output;
    case TensorRole::AttnProj: return attn_proj;
    case TensorRole::SharedExpert: return shared_expert;
    case TensorRole::ExpertGateUp: return expert_gate_up;
    case TensorRole::ExpertDown: return expert_down;
    case TensorRole::SmallMatrix: return small_matrix;
    case TensorRole::Vector: return QType::F32;
    case TensorRole::HashTable: return QType::I32;
  }
  return QType::F32;
}

QuantMix QuantMix::by_name(const std::string& name) {
  using Q = QType;
  if (name == "ds4") return {name, Q::F16, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::IQ2_XXS, Q::Q2_K, Q::F16};
  if (name == "q4_k") return {name, Q::F16, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q4_K, Q::Q4_K, Q::F16};
  if (name == "q8_0") return {name, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q8_0, Q::Q8_0};
  if (name == "f16") return {name, Q::F16, Q::F16, Q::F16, Q::F16, Q::F16, Q::F16, Q::F16};
  if (name == "f32") return {name, Q::F32, Q::F32, Q::F32, Q::F32, Q::F32, Q::F32, Q::F32};
  fail("unknown quant mix '" + name + "' (known: ds4, q4_k, q8_0, f16, f32)");
}

std::vector<std::string> QuantMix::names() { return {"ds4", "q4_k", "q8_0", "f16", "f32"}; }

}  // namespace ds4
