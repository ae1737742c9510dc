// Manifold-constrained hyper-connections (ds4-model.md §4.2, §4.3, §4.8).
// The HC state X is n_hc streams of d floats, stream-major (X_i at X + i*d).
#pragma once
#include <cstdint>
#include <vector>

#include "ds4/engine.h"
#include "ops/matmul/matvec.h"

namespace ds4 {

struct HcMix {
  std::vector<float> pre;   // n_hc
  std::vector<float> post;  // n_hc
  std::vector<float> comb;  // n_hc * n_hc, C[a][b] at a*n_hc + b (a = input stream)
};

// hc_pre__ref: z = RMSNorm0(flat X) (eps), m = fn z (matvec__ref), then
// pre_i = sigmoid(s0*m_i + b_i) + hc_eps; post_j = 2*sigmoid(s1*m_j + b_j);
// C = row-softmax(s2*m_comb + b_comb) + hc_eps, column-normalise, then (iters-1) x (row, column)
// normalisations, each denominator + hc_eps. Writes the mix and x = sum_i pre_i X_i (i ascending).
// `mixes` (optional) receives m (the raw projections, tap "hc_attn_pre_mixes").
void hc_pre_ref(const float* X, int n_hc, int64_t d, const WeightRef& fn, const float* scale,
                const float* base, int iters, float eps, float hc_eps, Profile profile,
                HcMix* mix, float* x, std::vector<float>* mixes);
// hc_post__ref: X'_b = post_b * y + sum_a C[a][b] * X_a (a ascending), written to X_out.
void hc_post_ref(const float* X, const float* y, const HcMix& mix, int n_hc, int64_t d,
                 float* X_out);
// hc_head__ref: w_i = sigmoid(scale*m_i + base_i) + hc_eps with m = fn RMSNorm0(flat X);
// e = sum_i w_i X_i.
void hc_head_ref(const float* X, int n_hc, int64_t d, const WeightRef& fn, float scale,
                 const float* base, float eps, float hc_eps, Profile profile, float* e);

}  // namespace ds4
