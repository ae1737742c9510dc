// DS4 model description: hyperparameters read from `deepseek4.*` GGUF metadata (never compiled-in
// constants: the 4-layer tiny model and the 43-layer Flash load through the same code) and the
// tensor inventory of ds4-model.md §2, which is the single list used by the loader (binding and
// shape checks), the synthetic generator and the HF converter.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ds4/quant.h"

namespace ds4 {

class GgufFile;
class GgufWriter;

struct HParams {
  uint32_t n_layer = 0;          // block_count (trunk layers, MTP not counted)
  uint32_t n_vocab = 0;          // vocab_size (rows of token_embd / output)
  uint32_t n_embd = 0;           // embedding_length (d)
  uint32_t n_head = 0;           // attention.head_count (H)
  uint32_t head_dim = 0;         // attention.key_length (= value_length) (D)
  uint32_t n_rot = 0;            // rope.dimension_count (R, rotated tail dims)
  uint32_t q_lora = 0;           // attention.q_lora_rank
  uint32_t o_lora = 0;           // attention.output_lora_rank (per group)
  uint32_t o_groups = 0;         // attention.output_group_count
  uint32_t window = 0;           // attention.sliding_window
  float eps = 1e-6f;             // attention.layer_norm_rms_epsilon
  std::vector<uint32_t> ratios;  // attention.compress_ratios, one per layer: 0, 4 or 128
  float compress_rope_base = 160000.f;  // attention.compress_rope_freq_base
  uint32_t n_idx_head = 0;       // attention.indexer.head_count
  uint32_t idx_head_dim = 0;     // attention.indexer.key_length
  uint32_t idx_top_k = 0;        // attention.indexer.top_k
  uint32_t n_expert = 0;         // expert_count
  uint32_t n_expert_used = 0;    // expert_used_count
  uint32_t n_expert_shared = 0;  // expert_shared_count
  uint32_t n_ff_exp = 0;         // expert_feed_forward_length
  float expert_scale = 1.5f;     // expert_weights_scale
  bool expert_norm = true;       // expert_weights_norm
  uint32_t gating_func = 4;      // expert_gating_func (4 = sqrt-softplus, the only one DS4 uses)
  uint32_t n_hash_layer = 0;     // hash_layer_count
  std::vector<float> clamp_exp;    // swiglu_clamp_exp, per layer
  std::vector<float> clamp_shexp;  // swiglu_clamp_shexp, per layer (defaults to clamp_exp)
  uint32_t n_hc = 4;             // hyper_connection.count
  uint32_t sinkhorn_iters = 20;  // hyper_connection.sinkhorn_iterations
  float hc_eps = 1e-6f;          // hyper_connection.epsilon
  float rope_base = 10000.f;     // rope.freq_base (ratio-0 layers and MTP)
  float yarn_factor = 16.f;      // rope.scaling.factor
  uint32_t yarn_orig_ctx = 65536;  // rope.scaling.original_context_length
  float yarn_beta_fast = 32.f;   // rope.scaling.yarn_beta_fast
  float yarn_beta_slow = 1.f;    // rope.scaling.yarn_beta_slow
  uint64_t n_ctx_train = 0;      // context_length
  uint32_t n_mtp = 0;            // nextn_predict_layers (1 if an MTP block is in the file)

  // Derived.
  uint32_t nope() const { return head_dim - n_rot; }
  uint32_t ratio(uint32_t il) const { return ratios.at(il); }
  uint32_t compressor_width(uint32_t il) const {  // W = coff * head_dim
    return ratios.at(il) == 4 ? 2 * head_dim : head_dim;
  }
  uint32_t heads_per_group() const { return n_head / o_groups; }
  bool is_hash_layer(uint32_t il) const { return il < n_hash_layer; }

  // Reads and validates every key; throws ds4::Error "<file>: metadata key '<key>' ..." naming
  // the first missing or inconsistent key.
  static HParams from_gguf(const GgufFile& file);
  // Checks internal consistency (divisibility, ratios in {0,4,128}, array lengths, ...).
  void validate(const std::string& where) const;
  // Writes general.architecture = deepseek4 and every deepseek4.* key read by from_gguf.
  void write(GgufWriter& writer) const;
  std::string summary() const;  // one line
};

// Role of a tensor in a quant mix (which types a synthetic or converted model gives it).
enum class TensorRole {
  Embedding,      // token_embd
  Output,         // output.weight (LM head)
  AttnProj,       // attn_q_a, attn_q_b, attn_kv, attn_output_a, attn_output_b (Q8_0 in ds4)
  SharedExpert,   // ffn_{gate,up,down}_shexp (Q8_0 in ds4)
  ExpertGateUp,   // ffn_gate_exps, ffn_up_exps (IQ2_XXS in ds4)
  ExpertDown,     // ffn_down_exps (Q2_K in ds4)
  SmallMatrix,    // HC fns, router, compressor, indexer matrices, APE (F16 in ds4)
  Vector,         // norms, sinks, scales, biases (F32 always)
  HashTable,      // ffn_gate_tid2eid (I32 always)
};

struct TensorSpec {
  std::string name;           // GGUF name, e.g. "blk.2.attn_compressor_kv.weight"
  std::vector<int64_t> ne;    // GGUF order (ne[0] contiguous)
  TensorRole role;
  int layer = -1;             // -1 for global tensors
  bool required = true;       // false: may be absent (exp_probs_b on hash layers)
  // Alternative accepted shape (same bytes): attn_output_a may be 2-D [in, o_lora*groups]
  // (ds4) or 3-D [in, o_lora, groups] (llama.cpp). Empty if none.
  std::vector<int64_t> alt_ne;
};

// The tensor inventory of a DS4 trunk with these hyperparameters, in file order. With n_mtp = 1
// it includes the MTP block as blk.<n_layer>.* (our single-file layout, as `ds4-synth --mtp`
// writes it).
std::vector<TensorSpec> expected_tensors(const HParams& hp);

// The published MTP sidecar (DeepSeek-V4-Flash-MTP-*.gguf, general.architecture
// "deepseek4_mtp_support"): the MTP block of the trunk `hp` as 32 tensors mtp.0.*, named and
// shaped as antirez/ds4's mtp_weights_bind / mtp_weights_validate_layout expect, in that order.
// It differs from the single-file block in its head: e_proj and h_proj (each d x d, summed)
// instead of one eh_proj over [e; h], and enorm/hnorm/norm/hc_head_* without the nextn. prefix.
inline constexpr const char* kMtpSidecarArch = "deepseek4_mtp_support";
std::vector<TensorSpec> expected_mtp_sidecar_tensors(const HParams& hp);
// The sidecar name of a single-file MTP tensor (blk.<n_layer>.X -> mtp.0.X; nextn.shared_head_norm
// -> mtp.0.norm, ...); "" for nextn.eh_proj, which the sidecar splits into e_proj and h_proj.
std::string mtp_sidecar_name(const HParams& hp, const std::string& single_file_name);

// A quant mix: the type given to each TensorRole. "ds4" is the real Flash recipe (IQ2_XXS gate/up,
// Q2_K down, Q8_0 attention/shared/output, F16 embed/router/HC/compressor/indexer, F32 vectors);
// "f32" and "f16" put every matrix in that type; "q8_0" puts every matrix in Q8_0 and vectors F32;
// "q4_k" is "ds4" with Q4_K experts.
struct QuantMix {
  std::string name;
  QType embedding, output, attn_proj, shared_expert, expert_gate_up, expert_down, small_matrix;
  QType type_for(TensorRole role) const;
  static QuantMix by_name(const std::string& name);  // throws naming the mix
  static std::vector<std::string> names();
};

}  // namespace ds4
