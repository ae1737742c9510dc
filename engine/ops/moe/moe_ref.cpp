#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/moe/moe.h"

namespace ds4 {

void router_probs_ref(const float* logits, int n_expert, float* probs) {
  for (int e = 0; e < n_expert; ++e) {
    const float x = logits[e];
    const float sp = x > 20.0f ? x : (x < -20.0f ? std::exp(x) : std::log1p(std::exp(x)));
    probs[e] = std::sqrt(sp);
  }
}

Routing route_ref(const float* probs, const float* bias, int n_expert, int n_used,
                  const int32_t* hash_ids, bool normalize, float scale) {
  Routing r;
  if (hash_ids) {
    r.experts.assign(hash_ids, hash_ids + n_used);
  } else {
    std::vector<float> sel(n_expert);
    for (int e = 0; e < n_expert; ++e) sel[e] = probs[e] + (bias ? bias[e] : 0.0f);
    std::vector<int32_t> idx(n_expert);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n_used, idx.end(), [&](int32_t a, int32_t b) {
      return sel[a] > sel[b] || (sel[a] == sel[b] && a < b);
    });
    r.experts.assign(idx.begin(), idx.begin() + n_used);
  }
  float sum = 0;
  for (int32_t e : r.experts) sum += probs[e];
  const float den = std::max(sum, 6.103515625e-5f);
  for (int32_t e : r.experts) r.weights.push_back(normalize ? scale * probs[e] / den : scale * probs[e]);
  return r;
}

void swiglu_clamped_ref(const float* g, const float* u, float* h, int64_t n, float limit) {
  const bool clamp = limit > 1e-6f;
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i], ui = u[i];
    if (clamp) {
      gi = std::fmin(gi, limit);
      ui = std::fmax(std::fmin(ui, limit), -limit);
    }
    h[i] = gi / (1.0f + std::exp(-gi)) * ui;
  }
}

void expert_ffn_ref(const WeightRef& gate, const WeightRef& up, const WeightRef& down,
                    const float* x, float weight, float limit, Profile profile, ThreadPool* pool,
                    float* y, std::vector<float>* mid) {
  const int64_t ff = gate.out;
  std::vector<float> g(ff), u(ff), h(ff);
  matvec_ref(gate, x, g.data(), profile, pool);
  matvec_ref(up, x, u.data(), profile, pool);
  swiglu_clamped_ref(g.data(), u.data(), h.data(), ff, limit);
  for (int64_t i = 0; i < ff; ++i) h[i] *= weight;
  if (mid) *mid = h;
  matvec_ref(down, h.data(), y, profile, pool);
}

}  // namespace ds4
