// Manifold-constrained hyper-connections (ds4-model.md §4.2, §4.3, §4.8).
// The HC state X is n_hc streams of d floats, stream-major (X_i at X + i*d). The projection
// m = fn RMSNorm0(flat X) is a linear layer (ops/matmul/linear.h) so it can be batched; the
// functions here are the row-wise parts around it.
#pragma once
#include <cstdint>
#include <vector>

namespace ds4 {

struct HcMix {
  std::vector<float> pre;   // n_hc
  std::vector<float> post;  // n_hc
  std::vector<float> comb;  // n_hc * n_hc, C[a][b] at a*n_hc + b (a = input stream)
};

// hc_split__ref: from the raw mixes m ((2 + n_hc) * n_hc):
// pre_i = sigmoid(s0*m_i + b_i) + hc_eps; post_j = 2*sigmoid(s1*m_j + b_j);
// C = row-softmax(s2*m_comb + b_comb) + hc_eps, column-normalise, then (iters-1) x (row, column)
// normalisations, each denominator + hc_eps.
HcMix hc_split_ref(const float* m, int n_hc, const float* scale, const float* base, int iters, float hc_eps);
// x = sum_i w_i X_i (i ascending).
void hc_collapse_ref(const float* X, const float* w, int n_hc, int64_t d, float* x);
// hc_post__ref: X'_b = post_b * y + sum_a C[a][b] * X_a (a ascending), written to X_out.
void hc_post_ref(const float* X, const float* y, const HcMix& mix, int n_hc, int64_t d, float* X_out);
// Output-head weights: w_i = sigmoid(scale*m_i + base_i) + hc_eps.
std::vector<float> hc_head_weights_ref(const float* m, int n_hc, float scale, const float* base, float hc_eps);

}  // namespace ds4
