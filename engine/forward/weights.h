// Bound model weights: views into the GGUF mapping, shape-checked against expected_tensors().
#pragma once
#include <vector>

#include "ds4/model.h"
#include "ops/matmul/matvec.h"

namespace ds4 {

class GgufFile;

// F32 vector tensor (norms, sinks, biases, scales) converted to float at load.
using Vec = std::vector<float>;

struct LayerWeights {
  uint32_t ratio = 0;
  bool hash = false;
  WeightRef hc_attn_fn, hc_ffn_fn;   // [n_hc*d] -> (2+n_hc)*n_hc
  Vec hc_attn_scale, hc_attn_base, hc_ffn_scale, hc_ffn_base;
  Vec attn_norm, q_a_norm, kv_norm, sinks, ffn_norm;
  WeightRef q_a, q_b, kv, out_a, out_b;  // out_a: [group_in] -> o_lora*o_groups (row block per group)
  // Compressor (ratio != 0) and indexer (ratio 4).
  WeightRef comp_kv, comp_gate;   // d -> W
  Vec comp_ape;                   // [ratio][W]: element (j, u) at u*W + j
  Vec comp_norm;                  // head_dim
  WeightRef idx_q_b, idx_proj, idx_comp_kv, idx_comp_gate;
  Vec idx_comp_ape, idx_comp_norm;
  // FFN.
  WeightRef router;               // d -> n_expert
  Vec router_bias;                // n_expert, empty if absent
  std::vector<int32_t> tid2eid;   // [n_vocab][n_used], hash layers only
  WeightRef gate_exps, up_exps, down_exps;  // 3-D: expert(e)
  WeightRef gate_sh, up_sh, down_sh;
  // MTP block only. Single-file layout: eh_proj over [enorm(e); hnorm(h)]. Published sidecar:
  // e_proj enorm(e) + h_proj hnorm(h) (eh_proj empty).
  WeightRef eh_proj, e_proj, h_proj;
  Vec enorm, hnorm, mtp_norm, mtp_hc_scale, mtp_hc_base;
  WeightRef mtp_hc_fn;
};

struct ModelWeights {
  WeightRef token_embd;           // d per row, n_vocab rows
  WeightRef output;               // d -> n_vocab
  WeightRef output_hc_fn;         // n_hc*d -> n_hc
  Vec output_hc_scale, output_hc_base, output_norm;
  std::vector<LayerWeights> layers;  // trunk layers
  std::vector<LayerWeights> mtp;     // 0 or 1 MTP block

  // Binds every tensor; throws ds4::Error naming a missing tensor or a shape/type mismatch.
  static ModelWeights bind(const GgufFile& file, const HParams& hp);
  // The MTP block of a deepseek4_mtp_support sidecar (expected_mtp_sidecar_tensors(hp)) for the
  // trunk `hp`; throws naming the sidecar and the first tensor that does not match the trunk.
  static LayerWeights bind_mtp_sidecar(const GgufFile& sidecar, const HParams& hp);
};

}  // namespace ds4
