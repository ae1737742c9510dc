#include "forward/weights.h"

#include <cstring>
#include <map>
#include <sstream>

#include "ds4/error.h"
#include "ds4/gguf.h"

namespace ds4 {
namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < ne.size(); ++i) s << (i ? ", " : "") << ne[i];
  return s.str() + "]";
}

class Binder {
 public:
  Binder(const GgufFile& f, const std::vector<TensorSpec>& specs) : f_(f) {
    for (const TensorSpec& s : specs) specs_[s.name] = s;
  }

  const GgufTensor* find(const std::string& name) const {
    const auto it = specs_.find(name);
    if (it == specs_.end()) fail("internal: no spec for tensor '" + name + "'");
    const TensorSpec& spec = it->second;
    const GgufTensor* t = f_.find_tensor(name);
    if (!t) {
      if (spec.required) fail(f_.path() + ": tensor '" + name + "' missing");
      return nullptr;
    }
    if (t->ne != spec.ne && (spec.alt_ne.empty() || t->ne != spec.alt_ne))
      fail(f_.path() + ": tensor '" + name + "' has shape " + shape_str(t->ne) + ", expected " +
           shape_str(spec.ne));
    return t;
  }

  WeightRef mat(const std::string& name) const {
    const GgufTensor* t = find(name);
    if (!t) return {};
    if (t->type == QType::I32 || t->type == QType::Q8_K)
      fail(f_.path() + ": tensor '" + name + "' has type " + qtype_name(t->type) + ", not a weight type");
    WeightRef w;
    w.data = t->data;
    w.type = t->type;
    w.in = t->ne[0];
    const auto& spec = specs_.at(name);
    w.out = spec.ne.size() >= 2 ? spec.ne[1] : 1;
    w.n_mat = spec.ne.size() >= 3 ? spec.ne[2] : 1;
    w.row_bytes = qtype_row_bytes(t->type, w.in);
    return w;
  }

  Vec vec(const std::string& name) const {
    const GgufTensor* t = find(name);
    if (!t) return {};
    if (t->type != QType::F32 && t->type != QType::F16 && t->type != QType::BF16)
      fail(f_.path() + ": tensor '" + name + "' has type " + qtype_name(t->type) + ", expected f32");
    Vec v(t->nelements());
    dequantize_row(t->type, t->data, v.data(), t->nelements());
    return v;
  }

  std::vector<int32_t> i32(const std::string& name, int64_t n_expert) const {
    const GgufTensor* t = find(name);
    if (!t) return {};
    if (t->type != QType::I32)
      fail(f_.path() + ": tensor '" + name + "' has type " + qtype_name(t->type) + ", expected i32");
    std::vector<int32_t> v(t->nelements());
    std::memcpy(v.data(), t->data, v.size() * sizeof(int32_t));
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] < 0 || v[i] >= n_expert)
        fail(f_.path() + ": tensor '" + name + "' entry " + std::to_string(i) + " is expert " +
             std::to_string(v[i]) + ", out of range");
    }
    return v;
  }

 private:
  const GgufFile& f_;
  std::map<std::string, TensorSpec> specs_;
};

// The tensors every block has (trunk layer or MTP block), named `p` + the trunk suffix.
void bind_block_body(const Binder& b, const HParams& hp, const std::string& p, LayerWeights& L) {
  L.hc_attn_fn = b.mat(p + "hc_attn_fn.weight");
  L.hc_attn_scale = b.vec(p + "hc_attn_scale.weight");
  L.hc_attn_base = b.vec(p + "hc_attn_base.weight");
  L.attn_norm = b.vec(p + "attn_norm.weight");
  L.q_a = b.mat(p + "attn_q_a.weight");
  L.q_a_norm = b.vec(p + "attn_q_a_norm.weight");
  L.q_b = b.mat(p + "attn_q_b.weight");
  L.kv = b.mat(p + "attn_kv.weight");
  L.kv_norm = b.vec(p + "attn_kv_a_norm.weight");
  L.sinks = b.vec(p + "attn_sinks.weight");
  L.out_a = b.mat(p + "attn_output_a.weight");
  L.out_b = b.mat(p + "attn_output_b.weight");
  if (L.ratio != 0) {
    L.comp_kv = b.mat(p + "attn_compressor_kv.weight");
    L.comp_gate = b.mat(p + "attn_compressor_gate.weight");
    const GgufTensor* ape = b.find(p + "attn_compressor_ape.weight");
    L.comp_ape.resize(ape->nelements());
    dequantize_row(ape->type, ape->data, L.comp_ape.data(), ape->nelements());
    L.comp_norm = b.vec(p + "attn_compressor_norm.weight");
  }
  if (L.ratio == 4) {
    L.idx_q_b = b.mat(p + "indexer.attn_q_b.weight");
    L.idx_proj = b.mat(p + "indexer.proj.weight");
    L.idx_comp_kv = b.mat(p + "indexer_compressor_kv.weight");
    L.idx_comp_gate = b.mat(p + "indexer_compressor_gate.weight");
    const GgufTensor* ape = b.find(p + "indexer_compressor_ape.weight");
    L.idx_comp_ape.resize(ape->nelements());
    dequantize_row(ape->type, ape->data, L.idx_comp_ape.data(), ape->nelements());
    L.idx_comp_norm = b.vec(p + "indexer_compressor_norm.weight");
  }
  L.hc_ffn_fn = b.mat(p + "hc_ffn_fn.weight");
  L.hc_ffn_scale = b.vec(p + "hc_ffn_scale.weight");
  L.hc_ffn_base = b.vec(p + "hc_ffn_base.weight");
  L.ffn_norm = b.vec(p + "ffn_norm.weight");
  L.router = b.mat(p + "ffn_gate_inp.weight");
  if (!L.hash) L.router_bias = b.vec(p + "exp_probs_b.bias");
  if (L.hash) L.tid2eid = b.i32(p + "ffn_gate_tid2eid.weight", hp.n_expert);
  L.gate_exps = b.mat(p + "ffn_gate_exps.weight");
  L.up_exps = b.mat(p + "ffn_up_exps.weight");
  L.down_exps = b.mat(p + "ffn_down_exps.weight");
  if (hp.n_expert_shared) {
    L.gate_sh = b.mat(p + "ffn_gate_shexp.weight");
    L.up_sh = b.mat(p + "ffn_up_shexp.weight");
    L.down_sh = b.mat(p + "ffn_down_shexp.weight");
  }
}

LayerWeights bind_block(const Binder& b, const HParams& hp, uint32_t il, bool mtp) {
  const std::string p = "blk." + std::to_string(il) + ".";
  LayerWeights L;
  L.ratio = mtp ? 0 : hp.ratios[il];
  L.hash = !mtp && hp.is_hash_layer(il);
  bind_block_body(b, hp, p, L);
  if (mtp) {
    L.eh_proj = b.mat(p + "nextn.eh_proj.weight");
    L.enorm = b.vec(p + "nextn.enorm.weight");
    L.hnorm = b.vec(p + "nextn.hnorm.weight");
    L.mtp_norm = b.vec(p + "nextn.shared_head_norm.weight");
    L.mtp_hc_fn = b.mat(p + "nextn.hc_head_fn.weight");
    L.mtp_hc_scale = b.vec(p + "nextn.hc_head_scale.weight");
    L.mtp_hc_base = b.vec(p + "nextn.hc_head_base.weight");
  }
  return L;
}

}  // namespace

ModelWeights ModelWeights::bind(const GgufFile& file, const HParams& hp) {
  Binder b(file, expected_tensors(hp));
  ModelWeights w;
  w.token_embd = b.mat("token_embd.weight");
  w.output = b.mat("output.weight");
  w.output_hc_fn = b.mat("output_hc_fn.weight");
  w.output_hc_scale = b.vec("output_hc_scale.weight");
  w.output_hc_base = b.vec("output_hc_base.weight");
  w.output_norm = b.vec("output_norm.weight");
  for (uint32_t il = 0; il < hp.n_layer; ++il) w.layers.push_back(bind_block(b, hp, il, false));
  for (uint32_t m = 0; m < hp.n_mtp; ++m) w.mtp.push_back(bind_block(b, hp, hp.n_layer + m, true));
  return w;
}

LayerWeights ModelWeights::bind_mtp_sidecar(const GgufFile& f, const HParams& hp) {
  const std::vector<TensorSpec> specs = expected_mtp_sidecar_tensors(hp);
  Binder b(f, specs);
  // Every tensor is checked before any is read, so a sidecar of another model fails on the first
  // tensor of ds4.c's order whose shape differs, not halfway through converting vectors.
  for (const TensorSpec& s : specs) b.find(s.name);
  LayerWeights L;  // ratio 0, no hashing: the MTP block attends over its own raw window
  bind_block_body(b, hp, "mtp.0.", L);
  L.e_proj = b.mat("mtp.0.e_proj.weight");
  L.h_proj = b.mat("mtp.0.h_proj.weight");
  L.enorm = b.vec("mtp.0.enorm.weight");
  L.hnorm = b.vec("mtp.0.hnorm.weight");
  L.mtp_norm = b.vec("mtp.0.norm.weight");
  L.mtp_hc_fn = b.mat("mtp.0.hc_head_fn.weight");
  L.mtp_hc_scale = b.vec("mtp.0.hc_head_scale.weight");
  L.mtp_hc_base = b.vec("mtp.0.hc_head_base.weight");
  return L;
}

}  // namespace ds4
