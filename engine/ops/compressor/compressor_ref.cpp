#include <cmath>
#include <cstring>

#include "ops/compressor/compressor.h"

namespace ds4 {

void CompressorState::init(int ratio_, int head_dim_) {
  ratio = ratio_;
  head_dim = head_dim_;
  width = (ratio == 4 ? 2 : 1) * head_dim;
  kv.assign(static_cast<size_t>(rows()) * width, 0.0f);
  score.assign(static_cast<size_t>(rows()) * width, -INFINITY);
}

bool compressor_push_ref(CompressorState& st, const float* a, const float* g, int64_t p,
                         float* pooled) {
  const int u = static_cast<int>(p % st.ratio);
  const int row = st.ratio == 4 ? 4 + u : u;
  std::memcpy(&st.kv[static_cast<size_t>(row) * st.width], a, sizeof(float) * st.width);
  std::memcpy(&st.score[static_cast<size_t>(row) * st.width], g, sizeof(float) * st.width);
  if ((p + 1) % st.ratio != 0) return false;

  const int hd = st.head_dim, W = st.width;
  // Candidate (row, column offset) list for a channel: see compressor.h.
  const int n_cand = st.ratio == 4 ? 8 : st.ratio;
  std::vector<float> e(n_cand);
  for (int j = 0; j < hd; ++j) {
    auto cand = [&](int c, const std::vector<float>& buf) {
      if (st.ratio == 4) return c < 4 ? buf[c * W + j] : buf[c * W + hd + j];
      return buf[c * W + j];
    };
    float m = -INFINITY;
    for (int c = 0; c < n_cand; ++c) m = std::fmax(m, cand(c, st.score));
    float den = 0;
    for (int c = 0; c < n_cand; ++c) {
      e[c] = std::exp(cand(c, st.score) - m);
      den += e[c];
    }
    float acc = 0;
    for (int c = 0; c < n_cand; ++c) acc += (e[c] / den) * cand(c, st.kv);
    pooled[j] = acc;
  }
  if (st.ratio == 4) {
    std::memcpy(&st.kv[0], &st.kv[4 * W], sizeof(float) * 4 * W);
    std::memcpy(&st.score[0], &st.score[4 * W], sizeof(float) * 4 * W);
  }
  return true;
}

}  // namespace ds4
