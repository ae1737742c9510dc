#include <algorithm>
#include <cmath>
#include <numeric>

#include "ds4/quant.h"
#include "ops/indexer/indexer.h"

namespace ds4 {

void indexer_scores_ref(const float* q, int n_head, int head_dim, const float* w,
                        const float* K, int64_t n_rows, float* scores) {
  const float qk_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(n_head));
  for (int64_t c = 0; c < n_rows; ++c) {
    const float* k = K + c * head_dim;
    float acc = 0;
    for (int h = 0; h < n_head; ++h) {
      const float d = dot_f32_f32(q + static_cast<int64_t>(h) * head_dim, k, head_dim);
      acc += (std::fmax(d, 0.0f) * qk_scale) * (w[h] * w_scale);
    }
    scores[c] = acc;
  }
}

std::vector<int32_t> topk_ascending_ref(const float* scores, int64_t n, int64_t k) {
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, n);
  // Strict order: higher score first, lower index wins ties.
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int32_t> topk_torch_cpu_ref(const float* scores, int64_t n, int64_t k, int64_t queue_len) {
  const int64_t len = std::max(n, queue_len);
  std::vector<std::pair<float, int32_t>> queue;
  queue.reserve(len);
  for (int64_t i = 0; i < len; ++i) queue.emplace_back(i < n ? scores[i] : -INFINITY, static_cast<int32_t>(i));
  k = std::min(k, len);
  auto greater = [](const std::pair<float, int32_t>& x, const std::pair<float, int32_t>& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  if (k * 64 <= len) {
    std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), greater);
  } else {
    std::nth_element(queue.begin(), queue.begin() + (k - 1), queue.end(), greater);
  }
  std::vector<int32_t> idx;
  for (int64_t i = 0; i < k; ++i)
    if (queue[i].second < n) idx.push_back(queue[i].second);  // padding never wins over a real row
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace ds4
