// moe__expert_tiles: see moe.h.
#include <map>
#include <vector>

#include "ops/matmul/linear.h"
#include "ops/moe/moe.h"

namespace ds4 {

void moe_expert_tiles(const WeightRef& gate_exps, const WeightRef& up_exps, const WeightRef& down_exps,
                      const float* X, int64_t n_rows, int64_t d, const std::vector<Routing>& routing,
                      float limit, const ExecCtx& ctx, float* Y) {
  std::map<int32_t, std::vector<std::pair<int64_t, float>>> by_expert;  // expert -> (row, weight)
  for (int64_t r = 0; r < n_rows; ++r)
    for (size_t s = 0; s < routing[r].experts.size(); ++s)
      by_expert[routing[r].experts[s]].push_back({r, routing[r].weights[s]});
  std::fill(Y, Y + n_rows * d, 0.0f);
  const int64_t ff = gate_exps.out;
  for (const auto& [e, members] : by_expert) {
    const int64_t m = static_cast<int64_t>(members.size());
    std::vector<float> Xe(m * d), G(m * ff), U(m * ff), H(m * ff), Ye(m * d);
    for (int64_t i = 0; i < m; ++i) std::copy(X + members[i].first * d, X + (members[i].first + 1) * d, &Xe[i * d]);
    gemm_f32_dequant(gate_exps.expert(e), Xe.data(), m, G.data(), ctx);
    gemm_f32_dequant(up_exps.expert(e), Xe.data(), m, U.data(), ctx);
    swiglu_clamped_ref(G.data(), U.data(), H.data(), m * ff, limit);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < ff; ++j) H[i * ff + j] *= members[i].second;
    gemm_f32_dequant(down_exps.expert(e), H.data(), m, Ye.data(), ctx);
    for (int64_t i = 0; i < m; ++i) {
      float* y = Y + members[i].first * d;
      for (int64_t j = 0; j < d; ++j) y[j] += Ye[i * d + j];
    }
  }
}

}  // namespace ds4
