// MoE routing and experts (ds4-model.md §4.7).
#pragma once
#include <cstdint>
#include <vector>

#include "ds4/engine.h"
#include "ops/matmul/matvec.h"

namespace ds4 {

class ThreadPool;

// router__ref: probs_e = sqrt(softplus(logit_e)), softplus three-branch (x > 20: x; x < -20: e^x;
// else log1p(e^x)). Selection: `hash_ids` if given (hash layers), else the top-k of probs + bias
// (ties to the lower index, bias may be null). Weights: scale * probs_e / max(sum_S probs, 6.1035e-5)
// when `normalize`, else scale * probs_e; slot order = selection order.
struct Routing {
  std::vector<int32_t> experts;  // n_used, slot order
  std::vector<float> weights;    // n_used
};
void router_probs_ref(const float* logits, int n_expert, float* probs);
Routing route_ref(const float* probs, const float* bias, int n_expert, int n_used,
                  const int32_t* hash_ids, bool normalize, float scale);

// swiglu_clamped__ref: h_i = silu(min(g_i, L)) * clamp(u_i, -L, L) (no clamp when L <= 1e-6),
// silu(x) = x / (1 + exp(-x)).
void swiglu_clamped_ref(const float* g, const float* u, float* h, int64_t n, float limit);

// expert_ffn__ref: y = W_down (weight * swiglu(W_gate x, W_up x)); the routing weight multiplies
// the SwiGLU output before the down projection, as ds4 does (weight = 1 for the shared expert).
// mid (optional) receives the weighted SwiGLU output (tap ffn_moe_weighted_swiglu).
void expert_ffn_ref(const WeightRef& gate, const WeightRef& up, const WeightRef& down,
                    const float* x, float weight, float limit, Profile profile, ThreadPool* pool,
                    float* y, std::vector<float>* mid);

}  // namespace ds4

namespace ds4 {
struct ExecCtx;
// moe__expert_tiles (moe_tiles fast): the (row, slot) pairs of a batch sorted by expert; per
// expert, gate/up/down as F32 GEMMs on exactly dequantised weights with F32 activations (no Q8_K
// quantisation of x or of the mid vector), routing weight applied before down; each row's routed
// output summed in expert-id order (not slot order). Not bit-equal to expert_ffn_ref per slot.
// X: n_rows x d inputs; Y: n_rows x d outputs (overwritten).
void moe_expert_tiles(const WeightRef& gate_exps, const WeightRef& up_exps, const WeightRef& down_exps,
                      const float* X, int64_t n_rows, int64_t d, const std::vector<Routing>& routing,
                      float limit, const ExecCtx& ctx, float* Y);
}  // namespace ds4
