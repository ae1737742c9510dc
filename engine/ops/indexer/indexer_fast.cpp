// Fast indexer scoring variants (see indexer.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ds4/quant.h"
#include "ops/indexer/indexer.h"

namespace ds4 {

void indexer_scores_wmma(const float* q, int n_head, int head_dim, const float* w, const float* K,
                         int64_t n_rows, float* scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim)) / std::sqrt(static_cast<float>(n_head));
  std::vector<float> qh(static_cast<size_t>(n_head) * head_dim), kh(head_dim);
  for (size_t i = 0; i < qh.size(); ++i) qh[i] = round_f16(q[i]);
  for (int64_t c = 0; c < n_rows; ++c) {
    for (int i = 0; i < head_dim; ++i) kh[i] = round_f16(K[c * head_dim + i]);
    float acc = 0;
    for (int h = 0; h < n_head; ++h) {
      float d = 0;
      for (int i0 = 0; i0 < head_dim; i0 += 16) {
        float chunk = 0;
        for (int i = i0; i < std::min(head_dim, i0 + 16); ++i) chunk += qh[h * head_dim + i] * kh[i];
        d += chunk;
      }
      acc += std::fmax(d, 0.0f) * w[h];
    }
    scores[c] = acc * scale;
  }
}

void indexer_scores_scalar(const float* q, int n_head, int head_dim, const float* w, const float* K,
                           int64_t n_rows, float* scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim)) / std::sqrt(static_cast<float>(n_head));
  std::vector<float> part(head_dim);
  for (int64_t c = 0; c < n_rows; ++c) {
    float acc = 0;
    for (int h = 0; h < n_head; ++h) {
      for (int i = 0; i < head_dim; ++i) part[i] = q[h * head_dim + i] * K[c * head_dim + i];
      int width = 1;
      while (width < head_dim) width *= 2;
      part.resize(width, 0.0f);
      for (int off = width / 2; off >= 1; off /= 2)
        for (int i = 0; i < off; ++i) part[i] += part[i + off];
      acc += std::fmax(part[0], 0.0f) * w[h];
      part.assign(head_dim, 0.0f);
    }
    scores[c] = acc * scale;
  }
}

std::vector<int32_t> topk_score_order_ref(const float* scores, int64_t n, int64_t k) {
  std::vector<int32_t> idx = topk_ascending_ref(scores, n, k);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  return idx;
}

}  // namespace ds4
